//! What happens to a variant after training: sample quality with its EMA weights, the
//! inference-time compute sweep (top-k or capacity factor changed at sampling time), and the
//! expert-specialisation tables of the DiT-MoE paper (route a fixed evaluation set at several
//! noise levels and count which expert took which timestep bin, patch position and class).

use super::classifier::{score, Classifier, Quality, Reference};
use super::plan::{EvaluationConfig, Variant};
use crate::analysis::{Specialization, SpecializationScores};
use crate::config::{Objective, TrainConfig};
use crate::generate::{generate, sample_labels, Generation};
use crate::grid::write_grid;
use anyhow::Result;
use ditmoe_autograd::{no_grad, Var};
use ditmoe_diffusion::{flow_interpolate, GaussianDiffusion, SamplerKind};
use ditmoe_nn::accounting::{model_cost, model_cost_at};
use ditmoe_nn::moe::{PoolInference, RaceInference, RoutingConfig};
use ditmoe_nn::{Dit, DitConfig, DitOutput, ForwardOptions, Module};
use ditmoe_tensor::{seeded_rng, DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// One point of the inference-time compute sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// `top_k = 1`, `capacity_factor = 4`, …
    pub setting: String,
    pub experts_per_token: f64,
    pub gmacs: f64,
    pub quality: Quality,
    /// Whether this is the setting the variant was trained with.
    pub trained: bool,
}

/// The specialisation tables of one MoE block and their NMI scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpecialization {
    pub block: usize,
    pub tables: Specialization,
    pub nmi: SpecializationScores,
}

/// Everything measured on a trained variant (written as `evaluation.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub quality: Quality,
    /// Empty for dense variants.
    pub sweep: Vec<SweepPoint>,
    /// One entry per MoE block.
    pub specialization: Vec<LayerSpecialization>,
    /// Per block, the root mean square of its output on the evaluation images, mean over the
    /// timestep bins (empty in evaluations written before it was measured).
    #[serde(default)]
    pub block_output_rms: Vec<f64>,
    /// How much an image depends on the others sampled with it; none for a dense model, for a
    /// sampler with noise after the start (DDPM), whose draws depend on the batch size, and in
    /// evaluations written before it was measured.
    #[serde(default)]
    pub batch_gap: Option<BatchGap>,
    pub seconds: f64,
}

/// The batch-size gap: images sampled alone against the same images (same label, same starting
/// noise) sampled as the first of a batch of [`GAP_BATCH`], over `batch_gap_seeds` seeds —
/// zero for a rule that routes every image on its own, as batch-global pools do not.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchGap {
    /// Mean |alone − in batch| over pixels and seeds (images in [−1, 1]).
    pub mean_abs: f64,
    /// The largest pixel difference.
    pub max_abs: f64,
}

/// The batch the gap's images are sampled in.
pub const GAP_BATCH: usize = 16;

/// The batch-size gap of `model` over `seeds` seeds (see [`BatchGap`]); none for a dense model,
/// without seeds, or under a sampler that draws noise after the start.
fn batch_gap(
    model: &Dit,
    config: &TrainConfig,
    labels: &[usize],
    (generation, seeds): (&Generation, u64),
) -> Result<Option<BatchGap>> {
    let draws_later_noise = match generation.sampler {
        SamplerKind::Ddpm => true,
        SamplerKind::Ddim { eta } => eta > 0.0,
        SamplerKind::Euler => false,
    };
    if draws_later_noise || model.config.moe.is_none() || seeds == 0 {
        return Ok(None);
    }
    let batch_labels: Vec<usize> = labels.iter().copied().cycle().take(GAP_BATCH).collect();
    let (mut sum, mut max, mut count) = (0.0f64, 0.0f64, 0usize);
    for seed in 0..seeds {
        let generation = Generation {
            seed: generation.seed ^ (0xBA7C4 + seed),
            ..*generation
        };
        // The first image of the batch starts from the noise the lone image starts from.
        let in_batch = generate(model, config, &batch_labels, &generation)?
            .narrow(0, 0, 1)?
            .to_vec_f64();
        let alone = generate(model, config, &batch_labels[..1], &generation)?.to_vec_f64();
        for (a, b) in alone.iter().zip(&in_batch) {
            let difference = (a - b).abs();
            sum += difference;
            // A NaN difference must not vanish (f64::max ignores NaN).
            if difference.is_nan() || difference > max {
                max = difference;
            }
        }
        count += alone.len();
    }
    Ok(Some(BatchGap {
        mean_abs: sum / count.max(1) as f64,
        max_abs: max,
    }))
}

/// The shared inputs of every evaluation, so all variants are judged identically.
pub struct Judge<'a> {
    pub classifier: &'a Classifier,
    pub reference: &'a Reference,
    /// Evaluation images `[M, C, H, W]` and labels for the specialisation tables.
    pub images: &'a Tensor,
    pub labels: &'a [usize],
    pub settings: &'a EvaluationConfig,
    /// Where the judged models run (sampling and routing); the classifier stays on the CPU.
    pub device: Device,
}

/// Evaluates the EMA weights `model` of `variant`, writing its sample grid to `grid`.
pub fn evaluate(model: &Dit, variant: &Variant, judge: &Judge, grid: &Path) -> Result<Evaluation> {
    let began = Instant::now();
    let config = &variant.config;
    let classes = model.config.num_classes;
    let labels = sample_labels(classes, judge.settings.samples_per_class);
    let generation = Generation {
        sampler: config.sampler(),
        steps: judge.settings.sample_steps,
        cfg_scale: config.sample.cfg_scale,
        seed: config.seed,
        device: judge.device,
    };
    let images = generate(model, config, &labels, &generation)?;
    write_grid(grid, &images, classes, &(0..classes).collect::<Vec<_>>())?;
    let quality = score(judge.classifier, judge.reference, &images, &labels)?;
    let mut sweep = Vec::new();
    for (setting, moe_config) in sweep_settings(&model.config, judge.settings) {
        let trained = moe_config == model.config;
        let swept;
        let routed = if trained {
            model
        } else {
            swept = Dit::new(moe_config.clone(), 0)?;
            // The trained weights; a routing buffer the swept setting has no use for (a
            // race's learned threshold, when it samples by the static top-k) is left out.
            let wanted = swept.state_dict();
            let state = model
                .state_dict()
                .into_iter()
                .filter(|(name, _)| wanted.contains_key(name))
                .collect();
            swept.load_state_dict(&state)?;
            &swept
        };
        let quality = if trained {
            quality
        } else {
            let images = generate(routed, config, &labels, &generation)?;
            score(judge.classifier, judge.reference, &images, &labels)?
        };
        let dynamic = moe_config
            .moe
            .is_some_and(|m| m.routing.rule().compute_varies());
        let (experts_per_token, gmacs) = if dynamic {
            let measured = measured_experts_per_token(routed, config, judge)?;
            (measured, model_cost_at(&moe_config, measured).gmacs)
        } else {
            let nominal = moe_config.moe.map_or(0.0, |m| m.experts_per_token());
            (nominal, model_cost(&moe_config).gmacs)
        };
        sweep.push(SweepPoint {
            setting,
            experts_per_token,
            gmacs,
            quality,
            trained,
        });
    }
    let (specialization, block_output_rms) = routed_statistics(model, config, judge)?;
    Ok(Evaluation {
        quality,
        sweep,
        specialization,
        block_output_rms,
        batch_gap: batch_gap(
            model,
            config,
            &labels,
            (&generation, judge.settings.batch_gap_seeds),
        )?,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// The model configs of the compute sweep with a label for each: top-k for token choice and
/// expert race, the capacity factor for expert choice, the sampling rule (predictor, static
/// top-k, one threshold γ) for a global pool; nothing for a dense model.
pub fn sweep_settings(config: &DitConfig, settings: &EvaluationConfig) -> Vec<(String, DitConfig)> {
    let Some(moe) = config.moe else {
        return Vec::new();
    };
    let with_routing = |routing| {
        let mut swept = moe;
        swept.routing = routing;
        config.clone().with_moe(swept, config.moe_placement)
    };
    match moe.routing {
        RoutingConfig::TokenChoice {
            renormalize,
            balance_loss_alpha,
            gate,
            ..
        } => settings
            .top_k_sweep
            .iter()
            .filter(|&&k| (1..=moe.num_experts).contains(&k))
            .map(|&top_k| {
                let routing = RoutingConfig::TokenChoice {
                    top_k,
                    renormalize,
                    balance_loss_alpha,
                    gate,
                };
                (format!("top_k = {top_k}"), with_routing(routing))
            })
            .collect(),
        RoutingConfig::ExpertRace {
            gate,
            pool,
            inference,
            similarity_loss_weight,
            ..
        } => {
            // Under a learned threshold, the trained point (each pair against τ) beside the
            // static top-k races over the sampling batch.
            let thresholded = matches!(inference, RaceInference::Threshold { .. })
                .then(|| ("learned threshold".to_string(), config.clone()));
            let static_points = settings
                .top_k_sweep
                .iter()
                .filter(|&&k| (1..=moe.num_experts).contains(&k))
                .map(|&top_k| {
                    let routing = RoutingConfig::ExpertRace {
                        top_k,
                        gate,
                        pool,
                        inference: RaceInference::Static,
                        similarity_loss_weight,
                    };
                    (format!("top_k = {top_k}"), with_routing(routing))
                });
            thresholded.into_iter().chain(static_points).collect()
        }
        RoutingConfig::ExpertChoice { group, gate, .. } => settings
            .capacity_sweep
            .iter()
            .filter(|&&f| f > 0.0 && f <= moe.num_experts as f64)
            .map(|&capacity_factor| {
                let routing = RoutingConfig::ExpertChoice {
                    capacity_factor,
                    group,
                    gate,
                };
                (
                    format!("capacity_factor = {capacity_factor}"),
                    with_routing(routing),
                )
            })
            .collect(),
        RoutingConfig::GlobalPool {
            capacity,
            predictor_loss_weight,
            threshold_decay,
            gate,
            ..
        } => {
            let with_inference = |inference| {
                with_routing(RoutingConfig::GlobalPool {
                    capacity,
                    predictor_loss_weight,
                    threshold_decay,
                    inference,
                    gate,
                })
            };
            let thresholds = settings.threshold_sweep.iter().map(|&gamma| {
                (
                    format!("threshold γ = {gamma}"),
                    with_inference(PoolInference::Threshold { gamma }),
                )
            });
            [
                ("predictor".to_string(), PoolInference::Predictor),
                ("static top-k".to_string(), PoolInference::Static),
            ]
            .into_iter()
            .map(|(label, inference)| (label, with_inference(inference)))
            .chain(thresholds)
            .collect()
        }
        // ReLU routing has no sampling-time knob: its one point, at the measured compute.
        RoutingConfig::Relu { .. } => vec![("relu gates".to_string(), config.clone())],
    }
}

/// The model input at noise level `fraction` ∈ (0, 1) of the objective (flow time, or that
/// fraction of the DDPM chain) and the time value the model is given.
fn noised(
    config: &TrainConfig,
    diffusion: &GaussianDiffusion,
    x0: &Tensor,
    noise: &Tensor,
    fraction: f64,
) -> Result<(Tensor, Tensor)> {
    let n = x0.shape()[0];
    Ok(match config.objective {
        Objective::Ddpm { steps, .. } => {
            let t = ((fraction * steps as f64) as usize).min(steps - 1);
            let input = diffusion.q_sample(x0, &vec![t; n], noise)?;
            (input, Tensor::full(&[n], t as f64, DType::F32)?)
        }
        Objective::Flow { time_scale } => {
            let (input, _) = flow_interpolate(x0, noise, &vec![fraction; n])?;
            (
                input,
                Tensor::full(&[n], fraction * time_scale, DType::F32)?,
            )
        }
    })
}

/// Routes the evaluation images at the centre of every timestep bin (sampling-time routing) and
/// hands `visit` each bin's forward pass (its routing records, one per MoE block, and its
/// blocks' output norms).
fn route_at_bins(
    model: &Dit,
    config: &TrainConfig,
    judge: &Judge,
    mut visit: impl FnMut(usize, &DitOutput),
) -> Result<()> {
    let bins = judge.settings.timestep_bins;
    let diffusion = crate::train::diffusion_of(config, model.config.learn_sigma);
    let noise = Tensor::randn(
        judge.images.shape(),
        0.0,
        1.0,
        DType::F32,
        &mut seeded_rng(config.seed ^ 0x5EC1),
    )?;
    let device = judge.device;
    model.to_device(device)?;
    let y = Tensor::from_vec(
        judge.labels.iter().map(|&l| l as i64).collect(),
        &[judge.labels.len()],
    )?
    .to_device(device)?;
    for bin in 0..bins {
        let fraction = (bin as f64 + 0.5) / bins as f64;
        let (input, t) = noised(config, &diffusion, judge.images, &noise, fraction)?;
        let options = ForwardOptions {
            label_dropout: None,
            record_routing: true,
            training: false,
            prediction_target: None,
        };
        let (input, t) = (input.to_device(device)?, t.to_device(device)?);
        let output = no_grad(|| model.forward(&Var::constant(input), &t, &y, options))?;
        visit(bin, &output);
    }
    Ok(())
}

/// The routed experts a token gets on average at sampling time, measured on the evaluation
/// images at every timestep bin over every MoE block: what a global pool's sampling rule
/// (predictor or threshold) applies varies with the inputs, where the other rules apply a
/// fixed number.
fn measured_experts_per_token(model: &Dit, config: &TrainConfig, judge: &Judge) -> Result<f64> {
    let (mut pairs, mut tokens) = (0, 0);
    route_at_bins(model, config, judge, |_, output| {
        for record in output.routing.iter().flatten() {
            pairs += record.decision.len();
            tokens += record.decision.num_tokens;
        }
    })?;
    Ok(pairs as f64 / tokens.max(1) as f64)
}

/// Routes the evaluation images at the centre of every timestep bin, once for both: the expert
/// choices counted by bin, patch position and class per MoE block (none for a dense model), and
/// each block's output RMS, mean over the bins.
fn routed_statistics(
    model: &Dit,
    config: &TrainConfig,
    judge: &Judge,
) -> Result<(Vec<LayerSpecialization>, Vec<f64>)> {
    let tokens = model.config.tokens();
    let experts = model.config.moe.map_or(0, |moe| moe.num_experts);
    let blocks: Vec<usize> = (0..model.config.depth)
        .filter(|&b| matches!(model.config.ffn(b), ditmoe_nn::FfnKind::Moe(_)))
        .collect();
    let mut tables: Vec<Specialization> = blocks
        .iter()
        .map(|_| {
            Specialization::new(
                judge.settings.timestep_bins,
                tokens,
                model.config.num_classes,
                experts,
            )
        })
        .collect();
    let mut rms_sums = vec![0.0; model.config.depth];
    route_at_bins(model, config, judge, |bin, output| {
        for (table, record) in tables.iter_mut().zip(output.routing.iter().flatten()) {
            table.add(record, tokens, bin, judge.labels);
        }
        for (sum, rms) in rms_sums.iter_mut().zip(&output.block_output_rms) {
            *sum += rms;
        }
    })?;
    let specialization = blocks
        .into_iter()
        .zip(tables)
        .map(|(block, tables)| LayerSpecialization {
            block,
            nmi: tables.scores(),
            tables,
        })
        .collect();
    let bins = judge.settings.timestep_bins as f64;
    Ok((
        specialization,
        rms_sums.into_iter().map(|s| s / bins).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ablate::plan::AblationPreset;

    #[test]
    fn the_sweep_changes_only_the_routing_knob_and_marks_the_trained_setting() {
        let preset = AblationPreset::load("quick").unwrap();
        let variants = preset.variants().unwrap();
        let model = |name: &str| variants.iter().find(|v| v.name == name).unwrap().model();
        let settings = &preset.evaluation;
        assert!(sweep_settings(&model("dense"), settings).is_empty());
        let tc = sweep_settings(&model("tc"), settings);
        assert_eq!(
            tc.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            ["top_k = 1", "top_k = 2", "top_k = 4"]
        );
        assert_eq!(tc.iter().filter(|s| s.1 == model("tc")).count(), 1);
        let ec = sweep_settings(&model("ec-cf2"), settings);
        assert_eq!(ec.len(), 3);
        let gmacs: Vec<f64> = ec.iter().map(|s| model_cost(&s.1).gmacs).collect();
        assert!(gmacs[0] < gmacs[1] && gmacs[1] < gmacs[2], "{gmacs:?}");
        for (_, config) in &ec {
            assert_eq!(config.hidden_size, model("ec-cf2").hidden_size);
            assert_eq!(
                config.moe.unwrap().expert_hidden,
                model("ec-cf2").moe.unwrap().expert_hidden
            );
        }
        // A global pool is swept over its sampling rules; the trained one (the predictor) is
        // marked once.
        let pool = sweep_settings(&model("pool"), settings);
        assert_eq!(
            pool.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            [
                "predictor",
                "static top-k",
                "threshold γ = 0.9",
                "threshold γ = 0.5",
                "threshold γ = 0.1",
                "threshold γ = 0.01"
            ]
        );
        assert_eq!(pool.iter().filter(|s| s.1 == model("pool")).count(), 1);
    }
}
