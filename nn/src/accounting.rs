//! Parameter and compute accounting from a config alone — no weights are allocated, so the
//! largest presets can be sized on any machine.
//!
//! Conventions (DiT paper): parameters are the trainable ones (the fixed `pos_embed` excluded);
//! compute is multiply-accumulates of one forward pass of one image, every matmul counted
//! (including attention's QKᵀ and PV), elementwise work, norms and softmax not — what the DiT
//! paper calls "Gflops". For MoE layers "activated" counts, per token, the router, the shared
//! expert and as many routed experts as the routing applies on average (k, or the capacity
//! factor for expert choice).

use crate::config::{DitConfig, FfnKind};
use crate::layers::timestep::FREQUENCY_DIM;
use crate::moe::{ExpertKind, MoeConfig};
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

/// (total params, activated params, MACs per token) of an MoE FFN.
fn moe_cost(moe: &MoeConfig, d: usize) -> (f64, f64, f64) {
    let (expert_params, expert_macs) = expert_cost(moe.expert_kind, d, moe.expert_hidden);
    let (shared_params, shared_macs) = moe
        .shared_expert_hidden
        .map_or((0.0, 0.0), |h| expert_cost(moe.expert_kind, d, h));
    let router = (moe.num_experts * d) as f64;
    let active = moe.experts_per_token();
    (
        router + moe.num_experts as f64 * expert_params + shared_params,
        router + active * expert_params + shared_params,
        router + active * expert_macs + shared_macs,
    )
}

/// Parameters and GMACs of `config`.
pub fn model_cost(config: &DitConfig) -> ModelCost {
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
            FfnKind::Moe(moe) => moe_cost(&moe, d),
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
