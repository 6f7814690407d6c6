//! Parameter and compute accounting from a config alone — no weights are allocated, so the
//! largest presets can be sized on any machine.
//!
//! Conventions (DiT paper): parameters are the trainable ones (the fixed `pos_embed` excluded);
//! compute is multiply-accumulates of one forward pass of one image, every matmul counted
//! (including attention's QKᵀ and PV), elementwise work, norms and softmax not — what the DiT
//! paper calls "Gflops". For MoE layers "activated" counts, per token, the router, the shared
//! expert and as many routed experts as the routing applies on average (k, or the capacity
//! factor for expert choice).
//!
//! [`memory_estimate`] sizes the memory of training or sampling the same way, so that an
//! absurd config is refused before anything is allocated ([`check_memory`]).

use crate::config::{DitConfig, FfnKind};
use crate::layers::timestep::FREQUENCY_DIM;
use crate::moe::{ExpertKind, MoeConfig, RouterConfig};
use serde::Serialize;

/// The size and cost of a model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelCost {
    /// Every trainable parameter.
    pub params_total: u64,
    /// Parameters that touch each token (all routed experts but the activated ones left out).
    pub params_activated: u64,
    /// Multiply-accumulates (10⁹) of one forward pass of one image, activated experts only.
    pub gmacs: f64,
}

fn linear_params(inputs: usize, outputs: usize, bias: bool) -> f64 {
    (inputs * outputs + if bias { outputs } else { 0 }) as f64
}

/// (parameters, MACs per token) of one expert of width `hidden`.
fn expert_cost(kind: ExpertKind, d: usize, hidden: usize) -> (f64, f64) {
    match kind {
        ExpertKind::SwiGlu => (3.0 * (d * hidden) as f64, 3.0 * (d * hidden) as f64),
        ExpertKind::GeluMlp => (
            linear_params(d, hidden, true) + linear_params(hidden, d, true),
            2.0 * (d * hidden) as f64,
        ),
    }
}

/// (total params, activated params, MACs per token) of an MoE FFN whose tokens get `active`
/// routed experts on average. A global pool's capacity predictor (Linear(D, D), Linear(D, E))
/// and a two-layer router's hidden layer (Linear(D, D)) run on every token; the router's target
/// head (Linear(D, `target_width`)) runs only in training, so it counts in the totals alone.
fn moe_cost(moe: &MoeConfig, d: usize, target_width: usize, active: f64) -> (f64, f64, f64) {
    let (expert_params, expert_macs) = expert_cost(moe.expert_kind, d, moe.expert_hidden);
    let (shared_params, shared_macs) = moe
        .shared_expert_hidden
        .map_or((0.0, 0.0), |h| expert_cost(moe.expert_kind, d, h));
    let (predictor_params, predictor_macs) = match moe.routing.global_pool() {
        Some(_) => (
            linear_params(d, d, true) + linear_params(d, moe.num_experts, true),
            (d * d + d * moe.num_experts) as f64,
        ),
        None => (0.0, 0.0),
    };
    let (router, target_head) = match moe.router {
        RouterConfig::Linear => ((moe.num_experts * d) as f64, 0.0),
        RouterConfig::TwoLayer { .. } => (
            linear_params(d, d, true) + (moe.num_experts * d) as f64,
            linear_params(d, target_width, true),
        ),
    };
    let router_macs = match moe.router {
        RouterConfig::Linear => (moe.num_experts * d) as f64,
        RouterConfig::TwoLayer { .. } => (d * d + moe.num_experts * d) as f64,
    };
    let always = router + shared_params + predictor_params;
    (
        always + target_head + moe.num_experts as f64 * expert_params,
        always + active * expert_params,
        router_macs + predictor_macs + active * expert_macs + shared_macs,
    )
}

/// Parameters and GMACs of `config`, each MoE block applying as many routed experts per token
/// as its routing does on average (k, or the capacity).
pub fn model_cost(config: &DitConfig) -> ModelCost {
    cost(config, None)
}

/// [`model_cost`] with every MoE block applying `experts_per_token` routed experts per token
/// on average: a measured value, for a rule whose compute depends on its inputs (DiffMoE's
/// predictor or a threshold at sampling time).
pub fn model_cost_at(config: &DitConfig, experts_per_token: f64) -> ModelCost {
    cost(config, Some(experts_per_token))
}

fn cost(config: &DitConfig, experts_per_token: Option<f64>) -> ModelCost {
    let d = config.hidden_size;
    let t = config.tokens() as f64;
    let patch_in = config.in_channels * config.patch_size * config.patch_size;
    let patch_out = config.patch_size * config.patch_size * config.out_channels();
    let label_rows = config.num_classes + usize::from(config.class_dropout_prob > 0.0);

    // Embedders and final layer: (params, MACs per image).
    let mut total = linear_params(patch_in, d, true)
        + linear_params(FREQUENCY_DIM, d, true)
        + linear_params(d, d, true)
        + (label_rows * d) as f64;
    total += linear_params(d, 2 * d, true) + linear_params(d, patch_out, true);
    let mut activated = total;
    let mut macs = t * (patch_in * d) as f64
        + ((FREQUENCY_DIM + d) * d) as f64
        + (d * 2 * d) as f64
        + t * (d * patch_out) as f64;

    for block in 0..config.depth {
        let shared = linear_params(d, 6 * d, true)
            + linear_params(d, 3 * d, true)
            + linear_params(d, d, true);
        let attention_macs = t * (4 * d * d) as f64 + 2.0 * t * t * d as f64;
        let (ffn_total, ffn_active, ffn_macs) = match config.ffn(block) {
            FfnKind::Dense => {
                let h = config.mlp_hidden();
                let p = linear_params(d, h, true) + linear_params(h, d, true);
                (p, p, (2 * d * h) as f64)
            }
            FfnKind::Moe(moe) => moe_cost(
                &moe,
                d,
                patch_in,
                experts_per_token.unwrap_or(moe.experts_per_token()),
            ),
        };
        total += shared + ffn_total;
        activated += shared + ffn_active;
        macs += (d * 6 * d) as f64 + attention_macs + t * ffn_macs;
    }
    ModelCost {
        params_total: total.round() as u64,
        params_activated: activated.round() as u64,
        gmacs: macs / 1e9,
    }
}

/// What a model is asked to do, for [`memory_estimate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Training steps on `batch` images: weights, gradients, AdamW's two moments, the EMA
    /// copy, and every block's activations kept for the backward pass.
    Training { batch: usize },
    /// Forward passes of `batch` images without gradients: weights and one block's working
    /// set at a time.
    Inference { batch: usize },
}

/// The memory a workload needs, estimated from the config alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// The model's parameters (trainable ones and the position-embedding buffer).
    pub params: f64,
    pub bytes: f64,
    /// Elements of the largest single tensor, a weight or an activation.
    pub largest_tensor: f64,
}

/// No tensor may hold more elements than this (2^40, 4 TiB of f32), whatever the machine:
/// element counts and byte offsets then stay far from overflowing.
pub const MAX_TENSOR_ELEMENTS: f64 = (1u64 << 40) as f64;

const F32_BYTES: f64 = 4.0;

/// Estimated bytes and largest tensor of `workload` on `config` (validated), in f64 so that no
/// size can overflow. Activations per image and block: about twelve token-wide tensors (norms,
/// modulations, q, k, v, attention output, residuals), attention scores and probabilities, and
/// the FFN's hidden layer (for an MoE: router scores, each routed expert's gathered input,
/// hidden layers and output, the shared expert).
pub fn memory_estimate(config: &DitConfig, workload: Workload) -> MemoryEstimate {
    let (d, t) = (config.hidden_size as f64, config.tokens() as f64);
    let heads = config.num_heads as f64;
    let pixels = (config.input_size as f64).powi(2);
    let params = model_cost(config).params_total as f64 + t * d;
    let label_rows = (config.num_classes + 1) as f64;
    let mut largest_weight = (label_rows * d)
        .max(6.0 * d * d)
        .max(t * d)
        .max((config.in_channels * config.patch_size * config.patch_size) as f64 * d);
    // Floats per image of one block's activations, and of its widest one.
    let (mut blocks, mut widest_block, mut widest_activation) = (0.0, 0.0_f64, heads * t * t);
    for block in 0..config.depth {
        let ffn = match config.ffn(block) {
            FfnKind::Dense => {
                let h = config.mlp_hidden() as f64;
                largest_weight = largest_weight.max(d * h);
                widest_activation = widest_activation.max(t * h);
                2.0 * h
            }
            FfnKind::Moe(moe) => {
                let (experts, hidden) = (moe.num_experts as f64, moe.expert_hidden as f64);
                let shared = moe.shared_expert_hidden.unwrap_or(0) as f64;
                let routed = moe.experts_per_token();
                largest_weight = largest_weight.max(experts * hidden * d).max(shared * d);
                widest_activation = widest_activation
                    .max(t * routed * hidden)
                    .max(t * experts)
                    .max(t * shared);
                2.0 * experts + routed * (2.0 * d + 3.0 * hidden) + 3.0 * shared
            }
        };
        let floats = t * (12.0 * d + ffn) + 2.0 * heads * t * t;
        blocks += floats;
        widest_block = widest_block.max(floats);
    }
    let image = pixels * (config.in_channels + config.out_channels()) as f64;
    let floats = match workload {
        // Weights, gradients, two moments, EMA; every block's activations and one more
        // block's worth of backward temporaries.
        Workload::Training { batch } => {
            5.0 * params + batch as f64 * (blocks + widest_block + image)
        }
        Workload::Inference { batch } => params + batch as f64 * (2.0 * widest_block + image),
    };
    let batch = match workload {
        Workload::Training { batch } | Workload::Inference { batch } => batch as f64,
    };
    MemoryEstimate {
        params,
        bytes: floats * F32_BYTES,
        largest_tensor: largest_weight.max(batch * widest_activation.max(image)),
    }
}

/// A limit on the memory this process may use, and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryLimit {
    pub bytes: f64,
    /// "MemTotal", "RLIMIT_AS" or "cgroup memory.max".
    pub source: &'static str,
}

/// The smallest limit on this process's memory (Linux): the machine's (`MemTotal` of
/// `/proc/meminfo`), the address-space rlimit (`RLIMIT_AS`, unless unlimited) and the cgroup v2
/// limit (`/sys/fs/cgroup/memory.max`, unless `max`). `None` where none can be read, and the
/// memory check is then skipped.
pub fn memory_limit() -> Option<MemoryLimit> {
    let limit = |bytes: Option<f64>, source| bytes.map(|bytes| MemoryLimit { bytes, source });
    [
        limit(mem_total(), "MemTotal"),
        limit(address_space_limit(), "RLIMIT_AS"),
        limit(cgroup_limit(), "cgroup memory.max"),
    ]
    .into_iter()
    .flatten()
    .min_by(|a, b| a.bytes.total_cmp(&b.bytes))
}

/// The bytes of [`memory_limit`]: what a run must fit in.
pub fn machine_memory() -> Option<f64> {
    memory_limit().map(|limit| limit.bytes)
}

fn mem_total() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

fn address_space_limit() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    (read && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as f64)
}

fn cgroup_limit() -> Option<f64> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    text.trim().parse::<u64>().ok().map(|bytes| bytes as f64)
}

/// Refuses a tensor above [`MAX_TENSOR_ELEMENTS`] always, and an estimate above
/// `memory_bytes` (the machine's memory, or `None` to skip that check). `what` names what
/// needs the memory, in the plural: "model + training state need …".
pub fn check_memory(
    estimate: &MemoryEstimate,
    what: &str,
    memory_bytes: Option<f64>,
) -> Result<(), String> {
    let gib = |bytes: f64| format!("{:.1} GiB", bytes / (1u64 << 30) as f64);
    if estimate.largest_tensor >= MAX_TENSOR_ELEMENTS {
        return Err(format!(
            "{what}: the largest tensor would hold an estimated {:.3e} elements, more than the 2^40 any tensor may have; shrink the model or the batch",
            estimate.largest_tensor
        ));
    }
    match memory_bytes {
        Some(memory) if estimate.bytes > memory => Err(format!(
            "{what} need an estimated {} but this machine has {}{}; shrink the model or the batch, or pass --ignore-memory-limit",
            gib(estimate.bytes),
            gib(memory),
            limit_source(memory)
        )),
        _ => Ok(()),
    }
}

/// " (its SOURCE limit)" when `memory` is this process's [`memory_limit`], else empty.
fn limit_source(memory: f64) -> String {
    memory_limit()
        .filter(|limit| limit.bytes == memory)
        .map_or(String::new(), |limit| {
            format!(" (its {} limit)", limit.source)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    /// SPEC §1's acceptance numbers (256×256 images, learn_sigma, 1000 classes).
    #[test]
    fn reproduces_the_dit_paper_numbers() {
        let cases = [
            ("DiT-S/2", 256, 32_865_056, 6.06),
            ("DiT-B/2", 256, 130_315_808, 23.01),
            ("DiT-L/2", 256, 457_840_672, 80.70),
            ("DiT-XL/2", 256, 674_834_720, 118.62),
            ("DiT-XL/4", 256, 675_000_704, 29.04),
            ("DiT-XL/2", 512, 674_834_720, 524.54),
        ];
        for (name, image, params, gmacs) in cases {
            let cost = model_cost(&preset(name, image).unwrap());
            assert_eq!(cost.params_total, params, "{name} params");
            assert_eq!(
                cost.params_activated, params,
                "{name}: dense models activate everything"
            );
            assert!(
                (cost.gmacs - gmacs).abs() < 0.005 + 1e-9,
                "{name} at {image}: {} GMACs, expected {gmacs}",
                cost.gmacs
            );
        }
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;
    use crate::module::Module;
    use crate::moe::{Gate, MoeConfig, RouterConfig, RoutingConfig};
    use crate::{Dit, DitConfig, MoePlacement};

    #[test]
    fn the_estimate_counts_the_parameters_a_built_model_has() {
        let dense = DitConfig::dense(8, 2, 3, 16, 2, 2, 10);
        let moe = dense.clone().with_moe(
            MoeConfig {
                num_experts: 4,
                expert_hidden: 24,
                expert_kind: ExpertKind::SwiGlu,
                shared_expert_hidden: Some(8),
                routing: RoutingConfig::TokenChoice {
                    top_k: 2,
                    renormalize: false,
                    balance_loss_alpha: 0.01,
                    gate: Gate::Softmax,
                },
                router: RouterConfig::Linear,
            },
            MoePlacement::EveryOther,
        );
        let mut two_layer = moe.moe.unwrap();
        two_layer.router = RouterConfig::TwoLayer {
            regularization_weight: 1.0,
        };
        let two_layer = moe.clone().with_moe(two_layer, MoePlacement::EveryBlock);
        for config in [dense, moe, two_layer] {
            let model = Dit::new(config.clone(), 0).unwrap();
            let every_tensor: usize = model.state_dict().values().map(|t| t.numel()).sum();
            let estimate = memory_estimate(&config, Workload::Inference { batch: 1 });
            assert_eq!(estimate.params, every_tensor as f64, "{config:?}");
            let training = memory_estimate(&config, Workload::Training { batch: 4 });
            assert!(training.bytes > 5.0 * 4.0 * estimate.params);
            assert!(training.bytes > estimate.bytes);
        }
    }

    #[test]
    fn absurd_sizes_are_refused_without_overflow() {
        let mut huge = DitConfig::dense(4096, 1, 3, 32_768, 1024, 1, 10);
        huge.mlp_ratio = 256.0;
        let estimate = memory_estimate(&huge, Workload::Training { batch: 1 << 20 });
        assert!(estimate.bytes.is_finite() && estimate.bytes > 1e20);
        let err = check_memory(&estimate, "the model", None).unwrap_err();
        assert!(err.contains("more than the 2^40"), "{err}");
        let small = DitConfig::dense(8, 2, 3, 16, 1, 2, 10);
        let estimate = memory_estimate(&small, Workload::Training { batch: 2 });
        assert!(check_memory(&estimate, "the model", Some(1e12)).is_ok());
        let err = check_memory(&estimate, "model + training state", Some(1024.0)).unwrap_err();
        assert!(
            err.starts_with("model + training state need an estimated")
                && err.contains("this machine has 0.0 GiB")
                && err.contains("--ignore-memory-limit"),
            "{err}"
        );
        assert!(machine_memory().is_none_or(|bytes| bytes > 1e6));
        if let Some(limit) = memory_limit() {
            assert!(limit.bytes <= mem_total().unwrap_or(f64::INFINITY));
            let too_big = MemoryEstimate {
                bytes: 2.0 * limit.bytes,
                ..estimate
            };
            let err = check_memory(&too_big, "the model", Some(limit.bytes)).unwrap_err();
            assert!(
                err.contains(&format!("(its {} limit)", limit.source)),
                "{err}"
            );
        }
    }
}
