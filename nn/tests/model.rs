//! The DiT model: accounting against allocated weights, classifier-free guidance, freezing,
//! input validation.

mod common;

use common::max_abs_diff;
use ditmoe_autograd::Var;
use ditmoe_nn::accounting::model_cost;
use ditmoe_nn::moe::{
    ExpertKind, Gate, MoeConfig, PoolInference, RaceInference, RacePool, RouterConfig,
    RoutingConfig, RoutingGroup,
};
use ditmoe_nn::presets::preset;
use ditmoe_nn::{Dit, DitConfig, ForwardOptions, Module, MoePlacement};
use ditmoe_tensor::{seeded_rng, DType, Tensor};

fn small() -> DitConfig {
    DitConfig::dense(8, 2, 3, 16, 4, 2, 5)
}

fn moe(routing: RoutingConfig, kind: ExpertKind, shared: Option<usize>) -> MoeConfig {
    MoeConfig {
        num_experts: 4,
        expert_hidden: 24,
        expert_kind: kind,
        shared_expert_hidden: shared,
        routing,
        router: RouterConfig::Linear,
    }
}

fn relu_routing() -> RoutingConfig {
    RoutingConfig::Relu {
        top_k: 1,
        l1_init: 1e-8,
        l1_multiplier: 1.2,
    }
}

fn variants() -> Vec<DitConfig> {
    let base = small();
    vec![
        base.clone().with_moe(
            moe(
                RoutingConfig::GlobalPool {
                    capacity: 1.0,
                    predictor_loss_weight: 1.0,
                    threshold_decay: 0.95,
                    inference: PoolInference::Predictor,
                    gate: Gate::Softmax,
                },
                ExpertKind::GeluMlp,
                None,
            ),
            MoePlacement::EveryOther,
        ),
        base.clone().with_moe(
            moe(relu_routing(), ExpertKind::SwiGlu, None),
            MoePlacement::EveryBlock,
        ),
        base.clone(),
        base.clone()
            .with_moe(base.ditmoe_ffn(4, 2), MoePlacement::EveryBlock),
        base.clone().with_moe(
            moe(
                RoutingConfig::ExpertChoice {
                    capacity_factor: 2.0,
                    group: RoutingGroup::PerImage,
                    gate: Gate::Softmax,
                },
                ExpertKind::GeluMlp,
                None,
            ),
            MoePlacement::EveryOther,
        ),
        base.clone().with_moe(
            moe(
                RoutingConfig::ExpertRace {
                    top_k: 2,
                    gate: Gate::Softmax,
                    pool: RacePool::Batch,
                    inference: RaceInference::Static,
                    similarity_loss_weight: 0.0,
                },
                ExpertKind::SwiGlu,
                Some(8),
            ),
            MoePlacement::DeepHalf,
        ),
    ]
}

fn inputs(n: usize, config: &DitConfig) -> (Var, Tensor, Tensor) {
    let (x, t, y) = common::dit_inputs(n, config);
    (Var::constant(x), t, y)
}

/// An image sampled alone gets the output it gets inside a batch of 16 under every rule that
/// routes an image by itself — token choice, per-image expert choice, the per-image race, ReLU
/// routing — and not under the batch-wide race (which shows the test can fail). DiffMoE's
/// global pool and batch-group expert choice depend on the batch by design.
#[test]
fn batch_independent_rules_give_an_image_the_same_output_alone() {
    let base = small();
    let race = |pool| RoutingConfig::ExpertRace {
        top_k: 2,
        gate: Gate::Softmax,
        pool,
        inference: RaceInference::Static,
        similarity_loss_weight: 0.0,
    };
    let routings = [
        (base.ditmoe_ffn(4, 2).routing, true),
        (
            RoutingConfig::ExpertChoice {
                capacity_factor: 2.0,
                group: RoutingGroup::PerImage,
                gate: Gate::Softmax,
            },
            true,
        ),
        (race(RacePool::Image), true),
        (relu_routing(), true),
        (
            RoutingConfig::ExpertRace {
                top_k: 2,
                gate: Gate::Softmax,
                pool: RacePool::Batch,
                inference: RaceInference::Threshold { decay: 0.5 },
                similarity_loss_weight: 0.0,
            },
            true,
        ),
        (race(RacePool::Batch), false),
    ];
    for (routing, independent) in routings {
        let config = base.clone().with_moe(
            moe(routing, ExpertKind::SwiGlu, None),
            MoePlacement::EveryBlock,
        );
        let model = Dit::new(config.clone(), 0).unwrap();
        model.randomize(0.3, 1).unwrap();
        let (x, t, y) = inputs(16, &config);
        // Training passes move the learned threshold (where there is one) off its start.
        for _ in 0..8 {
            let training = ForwardOptions {
                training: true,
                ..ForwardOptions::default()
            };
            model.forward(&x, &t, &y, training).unwrap();
        }
        let first = |v: &Tensor| v.narrow(0, 0, 1).unwrap();
        let batch = model
            .forward(&x, &t, &y, ForwardOptions::default())
            .unwrap()
            .out
            .value();
        let alone = model
            .forward(
                &x.narrow(0, 0, 1).unwrap(),
                &first(&t),
                &first(&y),
                ForwardOptions::default(),
            )
            .unwrap()
            .out
            .value();
        let diff = max_abs_diff(&first(&batch), &alone);
        assert_eq!(diff < 1e-6, independent, "{routing:?}: {diff}");
    }
}

#[test]
fn accounting_matches_the_allocated_model() {
    for config in variants() {
        let model = Dit::new(config.clone(), 0).unwrap();
        let cost = model_cost(&config);
        assert_eq!(
            cost.params_total as usize,
            model.parameter_count(),
            "{:?}",
            config.moe
        );
        if config.moe.is_some() {
            assert!(cost.params_activated < cost.params_total);
        }
    }
    let moe = model_cost(&preset("DiT-MoE-S/2-8E2A", 256).unwrap());
    let dense = model_cost(&preset("DiT-S/2", 256).unwrap());
    assert!(moe.params_total > 4 * dense.params_total && moe.gmacs > dense.gmacs);
}

#[test]
fn every_variant_runs_forward_and_backward() {
    for config in variants() {
        let model = Dit::new(config.clone(), 1).unwrap();
        model.randomize(0.05, 2).unwrap();
        let (x, t, y) = inputs(2, &config);
        let mut rng = seeded_rng(3);
        let out = model
            .forward(
                &x,
                &t,
                &y,
                ForwardOptions {
                    label_dropout: Some(&mut rng),
                    record_routing: true,
                    training: true,
                    prediction_target: None,
                },
            )
            .unwrap();
        assert_eq!(out.out.shape(), &[2, 6, 8, 8]);
        assert_eq!(
            out.routing.iter().filter(|r| r.is_some()).count(),
            (0..4)
                .filter(|&i| matches!(config.ffn(i), ditmoe_nn::FfnKind::Moe(_)))
                .count()
        );
        // Recorded passes also measure each block's output RMS: positive, one per block.
        assert_eq!(out.block_output_rms.len(), 4);
        assert!(out
            .block_output_rms
            .iter()
            .all(|&rms| rms > 0.0 && rms.is_finite()));
        let loss = out.out.powf(2.0).unwrap().mean_all().unwrap();
        let loss = match out.aux_loss {
            Some(aux) => loss.add(&aux).unwrap(),
            None => loss,
        };
        loss.backward().unwrap();
        for (name, var) in model.named_parameters() {
            assert!(var.grad().is_some(), "{name} got no gradient");
        }
    }
}

#[test]
fn classifier_free_guidance_interpolates_cond_and_uncond() {
    let config = small();
    let model = Dit::new(config.clone(), 1).unwrap();
    model.randomize(0.05, 4).unwrap();
    let (x, t, y) = inputs(3, &config);
    let cond = model
        .forward(&x, &t, &y, ForwardOptions::default())
        .unwrap()
        .out
        .value();
    let null = Tensor::full(&[3], 5.0, DType::I64).unwrap();
    let uncond = model
        .forward(&x, &t, &null, ForwardOptions::default())
        .unwrap()
        .out
        .value();
    assert!(
        max_abs_diff(
            &model.forward_with_cfg(&x, &t, &y, 1.0).unwrap().value(),
            &cond
        ) < 1e-5
    );
    let data = |t: &Tensor| t.narrow(1, 0, 3).unwrap();
    assert!(
        max_abs_diff(
            &data(&model.forward_with_cfg(&x, &t, &y, 0.0).unwrap().value()),
            &data(&uncond)
        ) < 1e-5
    );
    let guided = model.forward_with_cfg(&x, &t, &y, 4.0).unwrap().value();
    let expected = data(&uncond)
        .add(
            &data(&cond)
                .sub(&data(&uncond))
                .unwrap()
                .mul_scalar(4.0)
                .unwrap(),
        )
        .unwrap();
    assert!(
        max_abs_diff(&data(&guided), &expected) < 1e-4,
        "data channels are guided"
    );
    let variance = |t: &Tensor| t.narrow(1, 3, 3).unwrap();
    assert!(
        max_abs_diff(&variance(&guided), &variance(&cond)) < 1e-6,
        "learned-variance channels come from the conditional pass"
    );
}

#[test]
fn freezing_stops_gradients() {
    let config = small();
    let model = Dit::new(config.clone(), 1).unwrap();
    assert_eq!(model.set_trainable("blocks.0.", false).unwrap(), 10);
    let (x, t, y) = inputs(1, &config);
    model
        .forward(&x, &t, &y, ForwardOptions::default())
        .unwrap()
        .out
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in model.named_parameters() {
        assert_eq!(
            var.grad().is_none(),
            name.starts_with("blocks.0."),
            "{name}"
        );
    }
}

#[test]
fn bad_inputs_and_configs_are_reported() {
    let model = Dit::new(small(), 1).unwrap();
    let x = Var::constant(Tensor::zeros(&[2, 3, 6, 6], DType::F32).unwrap());
    let t = Tensor::zeros(&[2], DType::F32).unwrap();
    let y = Tensor::zeros(&[2], DType::I64).unwrap();
    let err = model
        .forward(&x, &t, &y, ForwardOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("[N, 3, 8, 8]") && err.contains("[2, 3, 6, 6]"),
        "{err}"
    );
    let mut bad = small();
    bad.num_heads = 3;
    assert!(Dit::new(bad.clone(), 0)
        .err()
        .unwrap()
        .to_string()
        .contains("3 heads do not divide the hidden size 16"));
    bad.num_heads = 2;
    bad.patch_size = 3;
    assert!(Dit::new(bad, 0)
        .err()
        .unwrap()
        .to_string()
        .contains("not divisible by the patch size 3"));
}
