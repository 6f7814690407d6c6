//! The MoE layer: routing invariants, equality with a naive per-token loop, the one-expert
//! reduction to a dense SwiGLU, and gradient checks with the routing held fixed.

mod common;

use common::{check_module, max_abs_diff, normal, randomized_f64};
use ditmoe_autograd::Var;
use ditmoe_nn::moe::*;
use ditmoe_nn::Module;
use ditmoe_tensor::{seeded_rng, DType, Tensor};
use proptest::prelude::*;
use std::collections::HashSet;

fn layer(routing: RoutingConfig, kind: ExpertKind, shared: Option<usize>) -> MoeLayer {
    layer_routed_by(RouterConfig::Linear, routing, kind, shared)
}

/// A layer of 4 experts on D = 5 whose router (a two-layer one predicts a target of width 3)
/// and experts have random f64 weights.
fn layer_routed_by(
    router: RouterConfig,
    routing: RoutingConfig,
    kind: ExpertKind,
    shared: Option<usize>,
) -> MoeLayer {
    let config = MoeConfig {
        num_experts: 4,
        expert_hidden: 6,
        expert_kind: kind,
        shared_expert_hidden: shared,
        routing,
        router,
    };
    let moe = MoeLayer::with_target_width(5, config, Some(3), &mut seeded_rng(3)).unwrap();
    randomized_f64(&moe, 0.5, 4);
    moe
}

fn routings() -> Vec<(RoutingConfig, ExpertKind, Option<usize>)> {
    vec![
        (
            RoutingConfig::TokenChoice {
                top_k: 2,
                renormalize: false,
                balance_loss_alpha: 0.01,
                gate: Gate::Softmax,
            },
            ExpertKind::SwiGlu,
            Some(3),
        ),
        (
            RoutingConfig::TokenChoice {
                top_k: 2,
                renormalize: true,
                balance_loss_alpha: 0.0,
                gate: Gate::Softmax,
            },
            ExpertKind::GeluMlp,
            None,
        ),
        (
            RoutingConfig::ExpertChoice {
                capacity_factor: 2.0,
                group: RoutingGroup::PerImage,
                gate: Gate::Softmax,
            },
            ExpertKind::SwiGlu,
            None,
        ),
        (
            RoutingConfig::ExpertChoice {
                capacity_factor: 1.0,
                group: RoutingGroup::Batch,
                gate: Gate::Softmax,
            },
            ExpertKind::GeluMlp,
            Some(3),
        ),
        (
            RoutingConfig::ExpertRace {
                top_k: 2,
                gate: Gate::Identity,
                pool: RacePool::Image,
                inference: RaceInference::Static,
                similarity_loss_weight: 0.0,
            },
            ExpertKind::SwiGlu,
            None,
        ),
        (
            RoutingConfig::Relu {
                top_k: 1,
                l1_init: 0.5,
                l1_multiplier: 1.2,
            },
            ExpertKind::SwiGlu,
            Some(2),
        ),
        (
            RoutingConfig::GlobalPool {
                capacity: 1.5,
                predictor_loss_weight: 1.0,
                threshold_decay: 0.95,
                inference: PoolInference::Static,
                gate: Gate::Softmax,
            },
            ExpertKind::GeluMlp,
            Some(3),
        ),
        (
            RoutingConfig::ExpertRace {
                top_k: 1,
                gate: Gate::Sigmoid,
                pool: RacePool::Position,
                inference: RaceInference::Static,
                similarity_loss_weight: 0.0,
            },
            ExpertKind::SwiGlu,
            None,
        ),
        // Every gate under every rule that takes one (Race-DiT's Table 1 grid, and ReLU).
        (
            RoutingConfig::TokenChoice {
                top_k: 2,
                renormalize: true,
                balance_loss_alpha: 0.01,
                gate: Gate::Sigmoid,
            },
            ExpertKind::SwiGlu,
            None,
        ),
        (
            RoutingConfig::TokenChoice {
                top_k: 1,
                renormalize: false,
                balance_loss_alpha: 0.01,
                gate: Gate::Identity,
            },
            ExpertKind::GeluMlp,
            Some(2),
        ),
        (
            RoutingConfig::ExpertChoice {
                capacity_factor: 1.5,
                group: RoutingGroup::PerImage,
                gate: Gate::Relu,
            },
            ExpertKind::SwiGlu,
            None,
        ),
        (
            RoutingConfig::GlobalPool {
                capacity: 1.0,
                predictor_loss_weight: 1.0,
                threshold_decay: 0.95,
                inference: PoolInference::Static,
                gate: Gate::Sigmoid,
            },
            ExpertKind::SwiGlu,
            None,
        ),
    ]
}

/// A layer for each of [`routings`], plus Race-DiT's full router (two-layer router, identity
/// gate, router-similarity loss).
fn layers() -> Vec<MoeLayer> {
    let race_full = layer_routed_by(
        RouterConfig::TwoLayer {
            regularization_weight: 1.0,
        },
        RoutingConfig::ExpertRace {
            top_k: 2,
            gate: Gate::Identity,
            pool: RacePool::Batch,
            inference: RaceInference::Static,
            similarity_loss_weight: 0.5,
        },
        ExpertKind::SwiGlu,
        Some(2),
    );
    let each_rule = routings()
        .into_iter()
        .map(|(routing, kind, shared)| layer(routing, kind, shared));
    each_rule.chain([race_full]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn routing_invariants(images in 1usize..4, tokens in 1usize..9, experts in 1usize..7, k_seed in any::<usize>(), cf in 0.1f64..4.0, seed in any::<u64>()) {
        let n = images * tokens;
        let scores = Tensor::rand_uniform(&[n, experts], 0.0, 1.0, DType::F32, &mut seeded_rng(seed)).unwrap();
        let k = 1 + k_seed % experts;
        let distinct = |p: &[usize]| p.iter().collect::<HashSet<_>>().len() == p.len();

        let rule = |routing: RoutingConfig| routing.rule().decide(&scores, images).unwrap();
        let tc = rule(RoutingConfig::TokenChoice { top_k: k, renormalize: false, balance_loss_alpha: 0.0, gate: Gate::Softmax, });
        prop_assert!(tc.token_counts().iter().all(|&c| c == k), "token choice: every token exactly k experts");
        prop_assert!(distinct(&tc.positions));

        for group in [RoutingGroup::PerImage, RoutingGroup::Batch] {
            let ec = rule(RoutingConfig::ExpertChoice { capacity_factor: cf, group, gate: Gate::Softmax, });
            let group_tokens = if group == RoutingGroup::PerImage { tokens } else { n };
            let groups = n / group_tokens;
            let c = capacity(group_tokens, cf, experts);
            prop_assert!(ec.expert_counts().iter().all(|&count| count == groups * c), "expert choice: every expert exactly C tokens per group");
            prop_assert!(distinct(&ec.positions));
            // Each expert's tokens of a group come from that group.
            for slot in 0..ec.len() {
                let g = slot / (experts * c);
                prop_assert_eq!(ec.token(slot) / group_tokens, g);
            }
        }

        let race = rule(RoutingConfig::ExpertRace { top_k: k, gate: Gate::Softmax, pool: RacePool::Batch, inference: RaceInference::Static, similarity_loss_weight: 0.0, });
        prop_assert_eq!(race.len(), n * k, "expert race: exactly N·k pairs");
        prop_assert!(distinct(&race.positions));
        // No unchosen pair scores higher than a chosen one.
        let values = scores.to_vec_f64();
        let worst_chosen = race.positions.iter().map(|&p| values[p]).fold(f64::MAX, f64::min);
        let chosen: HashSet<_> = race.positions.iter().collect();
        prop_assert!(values.iter().enumerate().all(|(p, &v)| chosen.contains(&p) || v <= worst_chosen));

        // Race's other pools: each race's winners exactly its share, none outscored by a
        // member of the same race left out.
        for (pool, races, picks) in [
            (RacePool::Image, images, tokens * k),
            (RacePool::Position, tokens, images * k),
            (RacePool::Expert, experts, (n * k / experts).clamp(1, n)),
        ] {
            let raced = rule(RoutingConfig::ExpertRace { top_k: k, gate: Gate::Softmax, pool, inference: RaceInference::Static, similarity_loss_weight: 0.0, });
            prop_assert_eq!(raced.len(), races * picks, "{:?}", pool);
            prop_assert!(distinct(&raced.positions));
            let race_of = |p: usize| match pool {
                RacePool::Image => p / experts / tokens,
                RacePool::Position => (p / experts) % tokens,
                _ => p % experts,
            };
            for race in 0..races {
                let won: Vec<usize> = raced.positions.iter().copied().filter(|&p| race_of(p) == race).collect();
                prop_assert_eq!(won.len(), picks, "{:?} race {}", pool, race);
                let worst = won.iter().map(|&p| values[p]).fold(f64::MAX, f64::min);
                prop_assert!((0..n * experts).all(|p| race_of(p) != race || won.contains(&p) || values[p] <= worst));
            }
        }

        let pool = rule(RoutingConfig::GlobalPool { capacity: cf.min(experts as f64), predictor_loss_weight: 1.0, threshold_decay: 0.95, inference: PoolInference::Predictor, gate: Gate::Softmax, });
        let c = pool_capacity(n, cf.min(experts as f64), experts);
        prop_assert!(pool.expert_counts().iter().all(|&count| count == c), "global pool: every expert exactly ⌊N/E·C⌋ tokens of the batch");
        prop_assert!(distinct(&pool.positions));
        // Within each expert, no token left out scores higher than one taken.
        for expert in 0..experts {
            let taken: HashSet<usize> = pool.positions.iter().filter(|&&p| p % experts == expert).map(|&p| p / experts).collect();
            let worst = taken.iter().map(|&t| values[t * experts + expert]).fold(f64::MAX, f64::min);
            prop_assert!((0..n).all(|t| taken.contains(&t) || values[t * experts + expert] <= worst));
        }
    }
}

#[test]
fn moe_output_equals_a_naive_per_token_loop() {
    for moe in layers() {
        let routing = moe.config.routing;
        let x = Var::constant(normal(&[2, 5, 5], 9));
        let out = moe.forward(&x, true, false).unwrap();
        let record = out.record.unwrap();
        let scores = record.scores.to_vec_f64();
        let tokens = x.value().reshape(&[10, 5]).unwrap();
        let decision = &record.decision;
        let mut expected = vec![0.0; 10 * 5];
        for t in 0..10 {
            let token = Var::constant(tokens.narrow(0, t, 1).unwrap());
            let slots: Vec<usize> = (0..decision.len())
                .filter(|&s| decision.token(s) == t)
                .collect();
            let norm: f64 = match routing {
                RoutingConfig::TokenChoice {
                    renormalize: true, ..
                } => slots.iter().map(|&s| scores[decision.positions[s]]).sum(),
                _ => 1.0,
            };
            let mut y = vec![0.0; 5];
            for &s in &slots {
                let weight = scores[decision.positions[s]] / norm;
                let e = moe
                    .experts
                    .expert(decision.expert(s))
                    .unwrap()
                    .forward(&token)
                    .unwrap()
                    .value()
                    .to_vec_f64();
                y.iter_mut().zip(e).for_each(|(y, e)| *y += weight * e);
            }
            if let Some(shared) = &moe.shared {
                let e = shared.forward(&token).unwrap().value().to_vec_f64();
                y.iter_mut().zip(e).for_each(|(y, e)| *y += e);
            }
            expected[t * 5..(t + 1) * 5].copy_from_slice(&y);
        }
        let expected = Tensor::from_vec(expected, &[2, 5, 5]).unwrap();
        assert!(
            max_abs_diff(&out.y.value(), &expected) < 1e-12,
            "{routing:?}"
        );
    }
}

#[test]
fn one_expert_top1_equals_the_dense_swiglu() {
    let routing = RoutingConfig::TokenChoice {
        top_k: 1,
        renormalize: false,
        balance_loss_alpha: 0.0,
        gate: Gate::Softmax,
    };
    let config = MoeConfig {
        num_experts: 1,
        expert_hidden: 6,
        expert_kind: ExpertKind::SwiGlu,
        shared_expert_hidden: None,
        routing,
        router: RouterConfig::Linear,
    };
    let moe = MoeLayer::new(5, config, &mut seeded_rng(1)).unwrap();
    let x = Var::constant(normal(&[3, 4, 5], 2).to_dtype(DType::F32).unwrap());
    let dense = moe.experts.expert(0).unwrap().forward(&x).unwrap();
    assert!(
        max_abs_diff(
            &moe.forward(&x, false, false).unwrap().y.value(),
            &dense.value()
        ) < 1e-6
    );
}

#[test]
fn gradients_with_the_routing_held_fixed() {
    for moe in layers() {
        let x = Var::parameter(normal(&[2, 3, 5], 5));
        let scores = moe.scores(&x.reshape(&[6, 5]).unwrap()).unwrap().value();
        let decision = moe.route(&scores, 2).unwrap();
        check_module(&moe, std::slice::from_ref(&x), || {
            let out = moe.forward_with_decision(&x, &decision, false)?;
            // Fold the balance loss in so its gradient is checked too.
            match out.aux_loss {
                Some(aux) => out.y.add(&aux),
                None => Ok(out.y),
            }
        });
    }
}

#[test]
fn routing_records_report_load_and_drops() {
    let moe = layer(
        RoutingConfig::ExpertChoice {
            capacity_factor: 1.0,
            group: RoutingGroup::PerImage,
            gate: Gate::Softmax,
        },
        ExpertKind::SwiGlu,
        None,
    );
    let out = moe
        .forward(&Var::constant(normal(&[2, 8, 5], 1)), true, false)
        .unwrap();
    let record = out.record.unwrap();
    assert_eq!(
        record.expert_load(),
        vec![0.25; 4],
        "expert choice balances load by construction"
    );
    let histogram = record.experts_per_token_histogram();
    assert_eq!(histogram.iter().sum::<usize>(), 16);
    assert!((record.dropped_fraction() - histogram[0] as f64 / 16.0).abs() < 1e-12);
    assert!(out.aux_loss.is_none());
    assert!(moe
        .forward(&Var::constant(normal(&[2, 8, 5], 1)), false, false)
        .unwrap()
        .record
        .is_none());
}

#[test]
fn names_match_ditmoe() {
    // The first routing is DiT-MoE's: top-2 SwiGLU experts and a shared expert.
    let (routing, kind, shared) = routings()[0];
    let moe = layer(routing, kind, shared);
    let names: Vec<String> = moe
        .checkpoint_tensors()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names[0], "gate.weight");
    assert!(names.contains(&"experts.3.up_proj.weight".to_string()));
    assert!(names.contains(&"shared_experts.down_proj.weight".to_string()));
    assert_eq!(names.len(), 1 + 4 * 3 + 3);
}

#[test]
fn bad_configs_are_refused() {
    let config = MoeConfig {
        num_experts: 4,
        expert_hidden: 6,
        expert_kind: ExpertKind::SwiGlu,
        shared_expert_hidden: None,
        routing: RoutingConfig::TokenChoice {
            top_k: 5,
            renormalize: false,
            balance_loss_alpha: 0.0,
            gate: Gate::Softmax,
        },
        router: RouterConfig::Linear,
    };
    let err = MoeLayer::new(5, config, &mut seeded_rng(1))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("top_k = 5"), "{err}");
    let config = MoeConfig {
        routing: RoutingConfig::ExpertChoice {
            capacity_factor: 0.0,
            group: RoutingGroup::PerImage,
            gate: Gate::Softmax,
        },
        ..config
    };
    assert!(MoeLayer::new(5, config, &mut seeded_rng(1))
        .err()
        .unwrap()
        .to_string()
        .contains("capacity factor > 0"));
    let config = MoeConfig {
        routing: RoutingConfig::ExpertChoice {
            capacity_factor: 1.0,
            group: RoutingGroup::PerImage,
            gate: Gate::Softmax,
        },
        router: RouterConfig::TwoLayer {
            regularization_weight: -1.0,
        },
        ..config
    };
    let err = config.validate().unwrap_err();
    assert!(err.starts_with("moe.router.regularization_weight"), "{err}");
}

/// ReMoE's coefficient: each training pass multiplies λ by α while the layer is denser than
/// k/E and divides it once sparser; the aux loss is λ times the load-weighted L1 of the gates;
/// passes that are not training leave λ alone.
#[test]
fn relu_routing_steers_its_l1_coefficient_toward_the_target_sparsity() {
    let routing = RoutingConfig::Relu {
        top_k: 1,
        l1_init: 1e-3,
        l1_multiplier: 1.2,
    };
    let moe = layer(routing, ExpertKind::SwiGlu, None);
    let lambda = || moe.l1_coefficient.as_ref().unwrap().value().item().unwrap();
    let x = Var::constant(normal(&[2, 8, 5], 9));
    let out = moe.forward(&x, true, false).unwrap();
    assert_eq!(lambda(), f64::from(1e-3_f32), "sampling leaves λ alone");
    let record = out.record.unwrap();
    let active = record.decision.len() as f64 / (16.0 * 4.0);
    assert!(
        active > 0.25,
        "random gates are denser than k/E = 1/4: {active}"
    );
    let relu = moe.config.routing.relu().unwrap();
    let scores = moe.scores(&x.reshape(&[16, 5]).unwrap()).unwrap();
    let dispatch = Tensor::dispatch_order(
        &record
            .decision
            .positions_on(ditmoe_tensor::Device::Cpu)
            .unwrap(),
        4,
    )
    .unwrap();
    let penalty = relu
        .unscaled_l1(&scores, &dispatch.expert_of)
        .unwrap()
        .item()
        .unwrap();
    let aux = out.aux_loss.unwrap().item().unwrap();
    assert!(
        (aux - lambda() * penalty).abs() <= 1e-12 * aux.abs().max(1e-30),
        "{aux} vs λ·{penalty}"
    );

    moe.forward(&x, false, true).unwrap();
    assert!(
        (lambda() - 1.2e-3).abs() < 1e-9,
        "too dense: λ ×= 1.2, now {}",
        lambda()
    );
    // All gates negative: sparsity 1, above the target, so λ shrinks.
    moe.gate
        .set_value(moe.gate.value().abs().unwrap().neg().unwrap())
        .unwrap();
    let positive = Var::constant(normal(&[2, 8, 5], 9).abs().unwrap());
    let out = moe.forward(&positive, true, true).unwrap();
    assert!(
        out.record.unwrap().decision.is_empty(),
        "no positive gate, no pair"
    );
    assert!(
        (lambda() - 1e-3).abs() < 1e-9,
        "too sparse: λ /= 1.2, now {}",
        lambda()
    );
}

/// Race-DiT's full router: the two-layer router's regularisation (weighted) joins the
/// router-similarity loss (weighted) in a training pass, which needs the target; a sampling
/// pass adds neither the regularisation nor needs the target.
#[test]
fn a_two_layer_router_adds_its_regularization_to_the_similarity_loss_in_training() {
    let routing = RoutingConfig::ExpertRace {
        top_k: 2,
        gate: Gate::Identity,
        pool: RacePool::Batch,
        inference: RaceInference::Static,
        similarity_loss_weight: 0.5,
    };
    let router = RouterConfig::TwoLayer {
        regularization_weight: 0.25,
    };
    let moe = layer_routed_by(router, routing, ExpertKind::SwiGlu, None);
    let x = Var::constant(normal(&[2, 8, 5], 9));
    let target = normal(&[2, 8, 3], 10);
    let trained = moe
        .forward_with_target(&x, Some(&target), true, true)
        .unwrap();
    let tokens = x.reshape(&[16, 5]).unwrap();
    let router_of = moe.router.as_ref().unwrap();
    let features = router_of.features(&tokens).unwrap();
    let logits = features.matmul(&moe.gate.t().unwrap()).unwrap();
    let positions = trained
        .record
        .unwrap()
        .decision
        .positions_on(ditmoe_tensor::Device::Cpu)
        .unwrap();
    let similarity = expert_race::router_similarity_loss(&logits, &positions).unwrap();
    let regularization = router_of
        .regularization(&features, &target.reshape(&[16, 3]).unwrap())
        .unwrap();
    let expect =
        0.5 * similarity.value().item().unwrap() + 0.25 * regularization.value().item().unwrap();
    let aux = trained.aux_loss.unwrap().value().item().unwrap();
    assert!(
        (aux - expect).abs() <= 1e-12 * expect.abs(),
        "{aux} vs {expect}"
    );

    let sampled = moe.forward(&x, false, false).unwrap().aux_loss.unwrap();
    let only_similarity = 0.5 * similarity.value().item().unwrap();
    assert!((sampled.value().item().unwrap() - only_similarity).abs() <= 1e-12);
    let err = moe.forward(&x, false, true).err().unwrap().to_string();
    assert!(err.contains("prediction_target"), "{err}");
    let standalone = MoeLayer::new(5, moe.config, &mut seeded_rng(1))
        .err()
        .unwrap();
    assert!(standalone.to_string().contains("with_target_width"));
}

/// Race-DiT's learned threshold: a training pass moves τ toward the lowest score the race
/// took; a sampling pass takes every pair at or above τ.
#[test]
fn a_thresholded_race_learns_its_threshold_in_training_and_samples_by_it() {
    let routing = RoutingConfig::ExpertRace {
        top_k: 2,
        gate: Gate::Softmax,
        pool: RacePool::Batch,
        inference: RaceInference::Threshold { decay: 0.9 },
        similarity_loss_weight: 0.0,
    };
    let moe = layer(routing, ExpertKind::SwiGlu, None);
    let tau = || moe.race_threshold.as_ref().unwrap().value().item().unwrap();
    let x = Var::constant(normal(&[2, 8, 5], 9));
    let scores = moe.scores(&x.reshape(&[16, 5]).unwrap()).unwrap().value();
    let trained = moe.forward(&x, true, true).unwrap().record.unwrap();
    let values = scores.to_vec_f64();
    let kth = trained
        .decision
        .positions
        .iter()
        .map(|&p| values[p])
        .fold(f64::MAX, f64::min);
    assert_eq!(trained.decision.len(), 16 * 2, "training races: N·k pairs");
    assert!(
        (tau() - 0.1 * kth).abs() < 1e-12,
        "τ = 0.9·0 + 0.1·{kth}, found {}",
        tau()
    );
    let sampled = moe.forward(&x, true, false).unwrap().record.unwrap();
    let expected: Vec<usize> = (0..values.len()).filter(|&p| values[p] >= tau()).collect();
    assert_eq!(sampled.decision.positions, expected);
}
