//! The numbers of the report's summary table, computed from each variant's metrics log and
//! evaluation — the one place they are computed, so `summary.json`, `report.md` and the JSONL
//! always agree. "Final" values average the logged lines of the last [`FINAL_FRACTION`] of
//! training (single batches are noisy).

use super::evaluate::Evaluation;
use crate::analysis::SpecializationScores;
use crate::train::MetricsLine;
use ditmoe_nn::accounting::ModelCost;
use serde::{Deserialize, Serialize};

/// The share of training, at its end, that "final" values average over.
pub const FINAL_FRACTION: f64 = 0.2;

/// Routing health over the final window, averaged over logged lines and MoE blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingSummary {
    pub max_over_mean: f64,
    pub coefficient_of_variation: f64,
    pub router_entropy: f64,
    pub dropped: f64,
    /// Fraction of tokens processed by exactly j experts.
    pub experts_per_token: Vec<f64>,
    /// Whether every logged load of every block in the window was exactly uniform.
    pub exactly_uniform: bool,
    /// Mean share of expert pairs covering 95% of co-activations (blocks and lines that have
    /// pairs); `None` when no token ever had two experts.
    #[serde(default)]
    pub pair_coverage: Option<f64>,
}

/// One row of the summary table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantSummary {
    pub name: String,
    pub about: String,
    pub steps: u64,
    /// Mean diffusion loss over the final window, and its standard error.
    pub final_loss: f64,
    pub final_loss_stderr: f64,
    pub final_aux_loss: Option<f64>,
    pub frechet_distance: f64,
    pub class_accuracy: f64,
    /// Training images per second over the whole run.
    pub images_per_s: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub gmacs: f64,
    pub params_total: u64,
    pub params_activated: u64,
    pub peak_heap_mib: Option<f64>,
    /// MoE variants only.
    pub routing: Option<RoutingSummary>,
    /// NMI of the expert choice with timestep / position / class, mean over MoE blocks.
    pub specialization: Option<SpecializationScores>,
}

fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n.max(1) as f64
}

/// The metrics lines of the final window (at least the last line).
pub fn final_window(lines: &[MetricsLine], steps: u64) -> &[MetricsLine] {
    let from = steps as f64 * (1.0 - FINAL_FRACTION);
    let first = lines
        .iter()
        .position(|l| l.step as f64 > from)
        .unwrap_or(lines.len().saturating_sub(1));
    &lines[first..]
}

fn routing_summary(window: &[MetricsLine]) -> Option<RoutingSummary> {
    let layers: Vec<_> = window.iter().flat_map(|l| &l.routing).collect();
    let first = layers.first()?;
    let bins = first.experts_per_token.len();
    Some(RoutingSummary {
        max_over_mean: mean(layers.iter().map(|r| r.max_over_mean)),
        coefficient_of_variation: mean(layers.iter().map(|r| r.coefficient_of_variation)),
        router_entropy: mean(layers.iter().map(|r| r.router_entropy)),
        dropped: mean(layers.iter().map(|r| r.dropped)),
        experts_per_token: (0..bins)
            .map(|j| mean(layers.iter().map(|r| r.experts_per_token[j])))
            .collect(),
        exactly_uniform: layers
            .iter()
            .all(|r| r.load.iter().all(|&l| l == r.load[0])),
        pair_coverage: {
            let covered: Vec<f64> = layers.iter().filter_map(|r| r.pair_coverage).collect();
            (!covered.is_empty()).then(|| mean(covered))
        },
    })
}

/// The summary row of a variant from its metrics log, evaluation and cost.
pub fn summarize(
    name: &str,
    about: &str,
    lines: &[MetricsLine],
    evaluation: &Evaluation,
    cost: &ModelCost,
    steps: u64,
    batch_size: usize,
) -> VariantSummary {
    let window = final_window(lines, steps);
    let losses: Vec<f64> = window.iter().map(|l| l.loss).collect();
    let final_loss = mean(losses.iter().copied());
    let variance = mean(losses.iter().map(|l| (l - final_loss).powi(2)));
    let final_loss_stderr = (variance / (losses.len().max(2) - 1) as f64).sqrt();
    let train_seconds = lines.last().map_or(0.0, |l| l.elapsed_s);
    let layers = &evaluation.specialization;
    VariantSummary {
        name: name.to_string(),
        about: about.to_string(),
        steps,
        final_loss,
        final_loss_stderr,
        final_aux_loss: window
            .iter()
            .map(|l| l.aux_loss)
            .collect::<Option<Vec<f64>>>()
            .map(mean),
        frechet_distance: evaluation.quality.frechet_distance,
        class_accuracy: evaluation.quality.class_accuracy,
        images_per_s: steps as f64 * batch_size as f64 / train_seconds.max(1e-9),
        train_seconds,
        eval_seconds: evaluation.seconds,
        gmacs: cost.gmacs,
        params_total: cost.params_total,
        params_activated: cost.params_activated,
        peak_heap_mib: lines
            .iter()
            .filter_map(|l| l.peak_heap_mib)
            .reduce(f64::max),
        routing: routing_summary(window),
        specialization: (!layers.is_empty()).then(|| SpecializationScores {
            timestep: mean(layers.iter().map(|l| l.nmi.timestep)),
            position: mean(layers.iter().map(|l| l.nmi.position)),
            class: mean(layers.iter().map(|l| l.nmi.class)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ablate::classifier::Quality;
    use crate::analysis::LayerRouting;

    fn line(step: u64, loss: f64, load: Vec<f64>) -> MetricsLine {
        MetricsLine {
            step,
            loss,
            vb: None,
            aux_loss: Some(0.01 * loss),
            grad_norm: 1.0,
            lr: 1e-3,
            images_per_s: 100.0,
            elapsed_s: step as f64 / 10.0,
            peak_heap_mib: Some(step as f64),
            routing: vec![LayerRouting {
                load,
                max_over_mean: 1.0,
                coefficient_of_variation: step as f64,
                router_entropy: 2.0,
                dropped: 0.5,
                experts_per_token: vec![0.5, 0.5],
                // Pairs in every other logged line only.
                pair_coverage: (step % 20 == 0).then_some(step as f64 / 1000.0),
            }],
        }
    }

    #[test]
    fn final_values_average_the_last_fifth_of_training() {
        // 100 steps logged every 10: the window is steps 90 and 100 (> 80).
        let lines: Vec<MetricsLine> = (1..=10)
            .map(|i| line(10 * i, i as f64, vec![0.5, 0.5]))
            .collect();
        let evaluation = Evaluation {
            quality: Quality {
                frechet_distance: 3.0,
                class_accuracy: 0.7,
            },
            sweep: vec![],
            specialization: vec![],
            block_output_rms: vec![],
            batch_gap: None,
            seconds: 2.0,
        };
        let cost = ModelCost {
            params_total: 10,
            params_activated: 5,
            gmacs: 0.5,
        };
        let s = summarize("v", "about", &lines, &evaluation, &cost, 100, 8);
        assert_eq!(s.final_loss, 9.5);
        assert!(
            (s.final_loss_stderr - 0.5).abs() < 1e-12,
            "{}",
            s.final_loss_stderr
        );
        assert!((s.final_aux_loss.unwrap() - 0.095).abs() < 1e-12);
        assert_eq!(s.train_seconds, 10.0);
        assert_eq!(s.images_per_s, 80.0);
        assert_eq!(s.peak_heap_mib, Some(100.0));
        let routing = s.routing.unwrap();
        assert_eq!(routing.coefficient_of_variation, 95.0);
        // Of the window's steps 90 and 100 only 100 has pairs: lines without are left out.
        assert_eq!(routing.pair_coverage, Some(0.1));
        assert!(routing.exactly_uniform);
        assert!(s.specialization.is_none());
        let mut uneven = lines.clone();
        uneven[9].routing[0].load = vec![0.6, 0.4];
        let s = summarize("v", "about", &uneven, &evaluation, &cost, 100, 8);
        assert!(!s.routing.unwrap().exactly_uniform);
    }
}
