//! One training step of small DiT / DiT-MoE models — dense, token choice with a shared expert,
//! expert choice, expert race with SwiGLU experts, DiffMoE's global pool, ReLU routing — on
//! `cuda:0` against the same step on the
//! CPU: loss and every gradient. `cuda:0` is the real GPU when the driver has one, else the PTX
//! emulator (the test says which).

mod common;

use ditmoe_autograd::Var;
use ditmoe_cuda::precision;
use ditmoe_cuda::traffic;
use ditmoe_nn::moe::{
    ExpertKind, Gate, MoeConfig, PoolInference, RaceInference, RacePool, RouterConfig,
    RoutingConfig, RoutingGroup,
};
use ditmoe_nn::{Dit, DitConfig, ForwardOptions, Module, MoePlacement};
use ditmoe_tensor::Device;

const GPU: Device = Device::Cuda(0);

/// Loss (mean square of the output + auxiliary loss) and its gradients, on `device`.
fn step(config: &DitConfig, device: Device) -> (f64, Vec<(String, Vec<f64>)>) {
    let model = Dit::new(config.clone(), 1).unwrap();
    model.randomize(0.05, 2).unwrap();
    model.to_device(device).unwrap();
    let (x, t, y) = common::dit_inputs(2, config);
    let x = x.to_device(device).unwrap();
    let (t, y) = (t.to_device(device).unwrap(), y.to_device(device).unwrap());
    // Any tensor shaped like x serves as the target two-layer routers learn to predict.
    let target = x.mul_scalar(0.5).unwrap();
    let x = Var::constant(x);
    let out = model
        .forward(
            &x,
            &t,
            &y,
            ForwardOptions {
                label_dropout: None,
                record_routing: false,
                training: true,
                prediction_target: Some(&target),
            },
        )
        .unwrap();
    let mut loss = out.out.powf(2.0).unwrap().mean_all().unwrap();
    if let Some(aux) = out.aux_loss {
        loss = loss.add(&aux).unwrap();
    }
    loss.backward().unwrap();
    let grads = model
        .named_parameters()
        .into_iter()
        .map(|(name, var)| {
            let grad = var
                .grad()
                .unwrap_or_else(|| panic!("{name} got no gradient"));
            assert_eq!(grad.device(), device, "{name}'s gradient");
            (name, grad.to_vec_f64())
        })
        .collect();
    (loss.value().item().unwrap(), grads)
}

#[test]
fn a_training_step_on_the_gpu_matches_the_cpu() {
    // Exact f32 products (tensor cores off), so the GPU step follows the CPU's.
    ditmoe_cuda::registry::device_or_emulator(0);
    let _exact = precision::set(precision::current().with_tensor_cores(false));
    let base = DitConfig::dense(8, 2, 3, 16, 2, 2, 5);
    let expert_choice = MoeConfig {
        num_experts: 4,
        expert_hidden: 24,
        expert_kind: ExpertKind::GeluMlp,
        shared_expert_hidden: None,
        // Sigmoid gates (Race-DiT's Table 1 knob on every rule).
        routing: RoutingConfig::ExpertChoice {
            capacity_factor: 2.0,
            group: RoutingGroup::PerImage,
            gate: Gate::Sigmoid,
        },
        router: RouterConfig::Linear,
    };
    let race = MoeConfig {
        num_experts: 4,
        expert_hidden: 24,
        expert_kind: ExpertKind::SwiGlu,
        shared_expert_hidden: Some(8),
        routing: RoutingConfig::ExpertRace {
            top_k: 2,
            gate: Gate::Softmax,
            pool: RacePool::Position,
            inference: RaceInference::Static,
            similarity_loss_weight: 0.0,
        },
        router: RouterConfig::Linear,
    };
    let global_pool = MoeConfig {
        routing: global_pool_routing(),
        ..expert_choice
    };
    // ReMoE's ReLU gates (its selection is read back to size it).
    let relu = MoeConfig {
        routing: RoutingConfig::Relu {
            top_k: 1,
            l1_init: 0.1,
            l1_multiplier: 1.2,
        },
        ..race
    };
    // Race-DiT's full router: identity gates, learned threshold, router-similarity loss and
    // the two-layer router with its regularisation.
    let race_full = MoeConfig {
        routing: RoutingConfig::ExpertRace {
            top_k: 2,
            gate: Gate::Identity,
            pool: RacePool::Batch,
            inference: RaceInference::Threshold { decay: 0.95 },
            similarity_loss_weight: 0.5,
        },
        router: RouterConfig::TwoLayer {
            regularization_weight: 1.0,
        },
        ..race
    };
    for config in [
        base.clone(),
        base.clone()
            .with_moe(base.ditmoe_ffn(4, 2), MoePlacement::EveryBlock),
        base.clone().with_moe(global_pool, MoePlacement::EveryOther),
        base.clone().with_moe(relu, MoePlacement::EveryBlock),
        base.clone().with_moe(race_full, MoePlacement::EveryBlock),
        base.clone()
            .with_moe(expert_choice, MoePlacement::EveryOther),
        base.clone().with_moe(race, MoePlacement::DeepHalf),
        // Head dim 16, which the fused FlashAttention-2 kernels take in mixed precision
        // (composed attention here, in exact f32).
        DitConfig::dense(8, 2, 3, 32, 2, 2, 5),
    ] {
        let (cpu_loss, cpu_grads) = step(&config, Device::Cpu);
        let (gpu_loss, gpu_grads) = step(&config, GPU);
        assert!(
            (cpu_loss - gpu_loss).abs() <= 1e-5 * cpu_loss.abs(),
            "loss {cpu_loss} vs {gpu_loss}"
        );
        for ((name, c), (_, g)) in cpu_grads.iter().zip(&gpu_grads) {
            let scale = c.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
            let diff = ditmoe_tensor::compare::max_abs_difference(c, g);
            assert!(
                diff <= 1e-4 * scale,
                "{name}: max difference {diff} (scale {scale})"
            );
        }
    }
}

/// DiffMoE's routing with its released knobs.
fn global_pool_routing() -> RoutingConfig {
    RoutingConfig::GlobalPool {
        capacity: 1.0,
        predictor_loss_weight: 1.0,
        threshold_decay: 0.95,
        inference: PoolInference::Predictor,
        gate: Gate::Softmax,
    }
}

/// Every rule's training pass; a global pool's sampling pass reads its per-expert counts back
/// (the size of its selection), which is not checked here.
#[test]
fn moe_routing_on_the_gpu_reads_nothing_back() {
    // Traffic is counted per thread, so these counts are this test's alone.
    ditmoe_cuda::registry::device_or_emulator(0);
    let token_choice = DitConfig::dense(8, 2, 3, 16, 2, 2, 5).ditmoe_ffn(4, 2);
    let expert_choice = MoeConfig {
        routing: RoutingConfig::ExpertChoice {
            capacity_factor: 2.0,
            group: RoutingGroup::PerImage,
            gate: Gate::Softmax,
        },
        ..token_choice
    };
    let expert_race = MoeConfig {
        routing: RoutingConfig::ExpertRace {
            top_k: 2,
            gate: Gate::Softmax,
            pool: RacePool::Image,
            inference: RaceInference::Static,
            similarity_loss_weight: 0.0,
        },
        ..token_choice
    };
    let global_pool = MoeConfig {
        routing: global_pool_routing(),
        ..token_choice
    };
    let mut rng = ditmoe_tensor::seeded_rng(3);
    for config in [token_choice, expert_choice, expert_race, global_pool] {
        let training = config.routing.global_pool().is_some();
        let layer = ditmoe_nn::moe::MoeLayer::new(16, config, &mut rng).unwrap();
        layer.to_device(GPU).unwrap();
        let x = ditmoe_tensor::Tensor::randn(
            &[2, 6, 16],
            0.0,
            1.0,
            ditmoe_tensor::DType::F32,
            &mut rng,
        )
        .unwrap();
        let x = Var::constant(x.to_device(GPU).unwrap());
        // Mixed precision: the grouped GEMMs build their schedule from the group sizes on the
        // device, so routing, dispatch, experts and combine never wait for the host.
        let _mixed = precision::set(precision::current().with_tensor_cores(true));
        let before = traffic::this_thread();
        let out = layer.forward(&x, false, training).unwrap();
        out.y.sum_all().unwrap().backward().unwrap();
        let used = traffic::this_thread() - before;
        assert_eq!(used.downloads, 0, "forward and backward read nothing back");
        assert_eq!(out.y.value().device(), GPU);
        // The same routing as the CPU's (exact f32 products): the decision recorded on the GPU
        // equals the CPU's.
        let on_gpu = precision::with(precision::current().with_tensor_cores(false), || {
            layer.forward(&x, true, training)
        })
        .unwrap()
        .record
        .unwrap()
        .decision;
        layer.to_device(Device::Cpu).unwrap();
        let cpu_x = Var::constant(x.value().to_device(Device::Cpu).unwrap());
        let on_cpu = layer
            .forward(&cpu_x, true, training)
            .unwrap()
            .record
            .unwrap()
            .decision;
        assert_eq!(on_gpu, on_cpu);
    }
}
