//! Writes the ablation's outputs: `summary.json`, the SVG plots and `report.md` — the setup, the
//! summary table, an automatically generated reading of the numbers, and a section per plot.

use super::evaluate::Evaluation;
use super::plan::{AblationPreset, Variant};
use super::summary::{VariantSummary, FINAL_FRACTION};
use crate::plot::{write_figure, BarChart, Bars, Heatmap, LineChart, Panel, Series};
use crate::train::MetricsLine;
use anyhow::{Context, Result};
use ditmoe_nn::accounting::model_cost_at;
use ditmoe_nn::files::write_atomically;
use ditmoe_nn::moe::{RoutingConfig, RoutingGroup};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

/// Everything the report is written from.
pub struct ReportInput<'a> {
    pub preset_name: &'a str,
    pub preset: &'a AblationPreset,
    pub variants: &'a [Variant],
    pub summaries: &'a [VariantSummary],
    pub evaluations: &'a [Evaluation],
    pub metrics: &'a [Vec<MetricsLine>],
    pub classifier_accuracy: f64,
    pub setup: &'a Setup,
}

/// Where and how the ablation ran.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub command: String,
    pub commit: String,
    pub cpu: String,
    pub cores: usize,
    pub threads: usize,
    pub os: String,
    pub seconds_total: f64,
}

impl Setup {
    /// Describes this machine and checkout.
    pub fn detect(command: String, seconds_total: f64) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".to_string());
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let commit = match (
            git(&["rev-parse", "--short", "HEAD"]),
            git(&["status", "--porcelain"]),
        ) {
            (Some(hash), Some(status)) if !status.is_empty() => {
                format!("{hash} (with local changes)")
            }
            (Some(hash), _) => hash,
            _ => format!("unknown (ditmoe {})", env!("CARGO_PKG_VERSION")),
        };
        Setup {
            command,
            commit,
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: ditmoe_tensor::parallel::num_threads(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            seconds_total,
        }
    }
}

/// `summary.json`: the table's numbers, the sweeps and the setup, machine-readable.
#[derive(Serialize)]
struct SummaryFile<'a> {
    preset: &'a str,
    description: &'a str,
    setup: &'a Setup,
    classifier_accuracy: f64,
    final_window_fraction: f64,
    variants: &'a [VariantSummary],
    sweeps: Vec<(&'a str, &'a [super::evaluate::SweepPoint])>,
}

/// Writes `summary.json`, `plots/*.svg` and `report.md` under `out`.
pub fn write_report(out: &Path, input: &ReportInput) -> Result<()> {
    let summary = SummaryFile {
        preset: input.preset_name,
        description: &input.preset.description,
        setup: input.setup,
        classifier_accuracy: input.classifier_accuracy,
        final_window_fraction: FINAL_FRACTION,
        variants: input.summaries,
        sweeps: input
            .summaries
            .iter()
            .zip(input.evaluations)
            .filter(|(_, e)| !e.sweep.is_empty())
            .map(|(s, e)| (s.name.as_str(), e.sweep.as_slice()))
            .collect(),
    };
    let path = out.join("summary.json");
    super::write_json_atomically(&path, &summary)?;
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| plots.display().to_string())?;
    let figures = write_plots(&plots, input).with_context(|| plots.display().to_string())?;
    let path = out.join("report.md");
    write_atomically(&path, markdown(input, &figures).as_bytes())
        .with_context(|| path.display().to_string())
}

/// The file names of the figures, by section.
struct Figures {
    loss: String,
    balance: Option<String>,
    load: Vec<(String, String)>,
    experts_per_token: Option<String>,
    specialization: Vec<(String, String, String)>,
    quality: String,
}

fn is_moe(summary: &VariantSummary) -> bool {
    summary.routing.is_some()
}

fn curve(lines: &[MetricsLine], value: impl Fn(&MetricsLine) -> Option<f64>) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| value(l).map(|v| (l.step as f64, v)))
        .collect()
}

fn layer_mean(
    line: &MetricsLine,
    value: impl Fn(&crate::analysis::LayerRouting) -> f64,
) -> Option<f64> {
    (!line.routing.is_empty())
        .then(|| line.routing.iter().map(&value).sum::<f64>() / line.routing.len() as f64)
}

fn write_plots(dir: &Path, input: &ReportInput) -> std::io::Result<Figures> {
    let named = || input.summaries.iter().zip(input.metrics);
    let series = |value: &dyn Fn(&MetricsLine) -> Option<f64>, moe_only: bool| -> Vec<Series> {
        named()
            .enumerate()
            .filter(|(_, (s, _))| !moe_only || is_moe(s))
            .map(|(colour, (s, lines))| Series {
                name: s.name.clone(),
                points: curve(lines, value),
                colour,
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let wide = (600.0, 340.0);

    let loss = LineChart {
        title: "diffusion loss (mean since the previous log line)".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: series(&|l| Some(l.loss), false),
        log_y: true,
        markers: false,
    };
    let aux = LineChart {
        title: "auxiliary (balance) loss".into(),
        x_label: "step".into(),
        y_label: "aux loss".into(),
        series: series(&|l| l.aux_loss.filter(|&a| a > 0.0), true),
        log_y: true,
        markers: false,
    };
    let mut panels: Vec<&dyn Panel> = vec![&loss];
    if !aux.series.is_empty() {
        panels.push(&aux);
    }
    write_figure(&dir.join("loss.svg"), &panels, 2, wide)?;
    let mut figures = Figures {
        loss: "plots/loss.svg".into(),
        balance: None,
        load: Vec::new(),
        experts_per_token: None,
        specialization: Vec::new(),
        quality: "plots/quality-vs-compute.svg".into(),
    };

    let cv = LineChart {
        title: "load imbalance: coefficient of variation (mean over MoE blocks)".into(),
        x_label: "step".into(),
        y_label: "std / mean of expert load".into(),
        series: series(&|l| layer_mean(l, |r| r.coefficient_of_variation), true),
        ..Default::default()
    };
    let max = LineChart {
        title: "load imbalance: max / mean (1 = uniform)".into(),
        x_label: "step".into(),
        y_label: "max / mean expert load".into(),
        series: series(&|l| layer_mean(l, |r| r.max_over_mean), true),
        ..Default::default()
    };
    // Σ_j j·(share of tokens with j experts): fixed for most rules, ReMoE's sparsity trace
    // (1 − this / E) as its L1 coefficient adapts.
    let mean_experts = |r: &crate::analysis::LayerRouting| {
        let shares = r.experts_per_token.iter().enumerate();
        shares.map(|(j, share)| j as f64 * share).sum::<f64>()
    };
    let per_token = LineChart {
        title: "routed experts per token (mean over MoE blocks)".into(),
        x_label: "step".into(),
        y_label: "experts per token".into(),
        series: series(&|l| layer_mean(l, mean_experts), true),
        ..Default::default()
    };
    if !cv.series.is_empty() {
        write_figure(
            &dir.join("load-balance.svg"),
            &[&cv, &max, &per_token],
            2,
            wide,
        )?;
        figures.balance = Some("plots/load-balance.svg".into());
    }

    for (summary, lines) in named().filter(|(s, _)| is_moe(s)) {
        let blocks = lines.first().map_or(0, |l| l.routing.len());
        let experts = lines
            .first()
            .and_then(|l| l.routing.first())
            .map_or(0, |r| r.load.len());
        let charts: Vec<LineChart> = (0..blocks)
            .map(|b| LineChart {
                title: format!("{} · MoE block {}", summary.name, b + 1),
                x_label: "step".into(),
                y_label: "share of token-slots".into(),
                series: (0..experts)
                    .map(|e| Series {
                        name: format!("expert {e}"),
                        points: curve(lines, |l| l.routing.get(b).map(|r| r.load[e])),
                        colour: e,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let panels: Vec<&dyn Panel> = charts.iter().map(|c| c as &dyn Panel).collect();
        let file = format!("load-{}.svg", summary.name);
        write_figure(&dir.join(&file), &panels, 2, (520.0, 300.0))?;
        figures
            .load
            .push((summary.name.clone(), format!("plots/{file}")));
    }

    let moe: Vec<(usize, &VariantSummary)> = input
        .summaries
        .iter()
        .enumerate()
        .filter(|(_, s)| is_moe(s))
        .collect();
    if !moe.is_empty() {
        let longest = moe
            .iter()
            .filter_map(|(_, s)| s.routing.as_ref())
            .map(|r| {
                r.experts_per_token
                    .iter()
                    .rposition(|&f| f > 0.0)
                    .map_or(1, |i| i + 1)
            })
            .max()
            .unwrap_or(1);
        let bars = BarChart {
            title: format!(
                "experts per token (last {:.0}% of training, mean over blocks)",
                FINAL_FRACTION * 100.0
            ),
            x_label: "number of experts that processed the token".into(),
            y_label: "fraction of tokens".into(),
            categories: (0..longest).map(|j| j.to_string()).collect(),
            series: moe
                .iter()
                .map(|&(colour, s)| {
                    let hist = &s.routing.as_ref().expect("MoE").experts_per_token;
                    Bars {
                        name: s.name.clone(),
                        values: hist[..longest.min(hist.len())].to_vec(),
                        colour,
                    }
                })
                .collect(),
        };
        write_figure(
            &dir.join("experts-per-token.svg"),
            &[&bars],
            1,
            (760.0, 340.0),
        )?;
        figures.experts_per_token = Some("plots/experts-per-token.svg".into());
    }

    for ((summary, evaluation), variant) in input
        .summaries
        .iter()
        .zip(input.evaluations)
        .zip(input.variants)
        .filter(|((_, e), _)| !e.specialization.is_empty())
    {
        let (tables, positions) = specialization_figures(summary, evaluation, variant, input);
        let tables_file = format!("specialization-{}.svg", summary.name);
        let panels: Vec<&dyn Panel> = tables.iter().map(|h| h as &dyn Panel).collect();
        write_figure(&dir.join(&tables_file), &panels, 2, (460.0, 300.0))?;
        let positions_file = format!("positions-{}.svg", summary.name);
        let experts = evaluation.specialization[0].tables.by_class[0].len();
        let panels: Vec<&dyn Panel> = positions.iter().map(|h| h as &dyn Panel).collect();
        write_figure(&dir.join(&positions_file), &panels, experts, (170.0, 150.0))?;
        figures.specialization.push((
            summary.name.clone(),
            format!("plots/{tables_file}"),
            format!("plots/{positions_file}"),
        ));
    }

    let quality_series = |value: fn(&super::classifier::Quality) -> f64| -> Vec<Series> {
        input
            .summaries
            .iter()
            .zip(input.evaluations)
            .enumerate()
            .map(|(colour, (s, e))| Series {
                name: s.name.clone(),
                colour,
                points: if e.sweep.is_empty() {
                    vec![(s.gmacs, value(&e.quality))]
                } else {
                    e.sweep
                        .iter()
                        .map(|p| (p.gmacs, value(&p.quality)))
                        .collect()
                },
            })
            .collect()
    };
    let fd = LineChart {
        title: "quality vs compute: Fréchet distance (lower is better)".into(),
        x_label: "activated GMACs per image".into(),
        y_label: "Fréchet distance".into(),
        series: quality_series(|q| q.frechet_distance),
        markers: true,
        ..Default::default()
    };
    let accuracy = LineChart {
        title: "quality vs compute: class accuracy of samples".into(),
        x_label: "activated GMACs per image".into(),
        y_label: "classifier accuracy".into(),
        series: quality_series(|q| q.class_accuracy),
        markers: true,
        ..Default::default()
    };
    write_figure(
        &dir.join("quality-vs-compute.svg"),
        &[&fd, &accuracy],
        2,
        wide,
    )?;
    Ok(figures)
}

/// Each row of `table` divided by its sum: P(expert | row value).
fn row_shares(table: &[Vec<f64>]) -> Vec<Vec<f64>> {
    table
        .iter()
        .map(|row| {
            let total: f64 = row.iter().sum::<f64>().max(1e-12);
            row.iter().map(|v| v / total).collect()
        })
        .collect()
}

/// (timestep and class heatmaps per block, position maps per block and expert).
fn specialization_figures(
    summary: &VariantSummary,
    evaluation: &Evaluation,
    variant: &Variant,
    input: &ReportInput,
) -> (Vec<Heatmap>, Vec<Heatmap>) {
    let bins = input.preset.evaluation.timestep_bins;
    let grid = variant.model().grid();
    let mut tables = Vec::new();
    let mut positions = Vec::new();
    for layer in &evaluation.specialization {
        let experts = layer.tables.by_class[0].len();
        let expert_labels: Vec<String> = (0..experts).map(|e| e.to_string()).collect();
        tables.push(Heatmap {
            title: format!(
                "{} block {}: P(expert | timestep), NMI {:.3}",
                summary.name,
                layer.block + 1,
                layer.nmi.timestep
            ),
            x_label: "expert".into(),
            y_label: "t bin (0 = clean)".into(),
            row_labels: (0..bins)
                .map(|b| format!("{:.1}", (b as f64 + 0.5) / bins as f64))
                .collect(),
            column_labels: expert_labels.clone(),
            values: row_shares(&layer.tables.by_timestep),
            range: None,
        });
        tables.push(Heatmap {
            title: format!(
                "{} block {}: P(expert | class), NMI {:.3}",
                summary.name,
                layer.block + 1,
                layer.nmi.class
            ),
            x_label: "expert".into(),
            y_label: "class".into(),
            row_labels: (0..layer.tables.by_class.len())
                .map(|c| c.to_string())
                .collect(),
            column_labels: expert_labels,
            values: row_shares(&layer.tables.by_class),
            range: None,
        });
        let shares = row_shares(&layer.tables.by_position);
        let top = shares.iter().flatten().cloned().fold(0.0, f64::max);
        positions.extend((0..experts).map(|e| {
            Heatmap {
                title: format!("block {} · expert {e}", layer.block + 1),
                values: shares
                    .chunks(grid)
                    .map(|row| row.iter().map(|position| position[e]).collect())
                    .collect(),
                range: Some((0.0, top)),
                ..Default::default()
            }
        }));
    }
    (tables, positions)
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.digits$}"))
}

fn summary_table(summaries: &[VariantSummary]) -> String {
    let mut table = String::from("| variant | final loss | Fréchet distance ↓ | class accuracy ↑ | train time s | images/s | activated GMACs | params activated / total | MaxVio | load CV | pair usage 95% | router entropy | dropped tokens | peak heap MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in summaries {
        let routing = s.routing.as_ref();
        let _ = writeln!(
            table,
            "| {} | {:.4} ± {:.4} | {:.3} | {:.3} | {:.0} | {:.0} | {:.4} | {:.3}M / {:.3}M | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.final_loss,
            s.final_loss_stderr,
            s.frechet_distance,
            s.class_accuracy,
            s.train_seconds,
            s.images_per_s,
            s.gmacs,
            s.params_activated as f64 / 1e6,
            s.params_total as f64 / 1e6,
            optional(routing.map(|r| r.max_over_mean - 1.0), 3),
            optional(routing.map(|r| r.coefficient_of_variation), 3),
            optional(routing.and_then(|r| r.pair_coverage), 3),
            optional(routing.map(|r| r.router_entropy), 3),
            optional(routing.map(|r| r.dropped), 3),
            optional(s.peak_heap_mib, 0),
        );
    }
    table
}

/// The variants with the lowest and the highest `key` (`None` when there are none).
fn lowest_and_highest(
    rows: &[VariantSummary],
    key: impl Fn(&VariantSummary) -> f64,
) -> Option<(&VariantSummary, &VariantSummary)> {
    let lowest = rows.iter().min_by(|a, b| key(a).total_cmp(&key(b)))?;
    let highest = rows.iter().max_by(|a, b| key(a).total_cmp(&key(b)))?;
    Some((lowest, highest))
}

/// The automatic reading: claims only where the numbers carry them.
fn reading(input: &ReportInput) -> Vec<String> {
    let s = input.summaries;
    let find = |name: &str| s.iter().find(|v| v.name == name);
    let mut notes = Vec::new();
    if let Some((best, worst)) = lowest_and_highest(s, |v| v.final_loss) {
        let noise = 2.0 * (best.final_loss_stderr.powi(2) + worst.final_loss_stderr.powi(2)).sqrt();
        let gap = worst.final_loss - best.final_loss;
        notes.push(format!(
            "**Loss.** Lowest final diffusion loss: `{}` ({:.4}); highest: `{}` ({:.4}), a gap of {:.4} against a noise level (two standard errors of the difference) of {:.4}{}.",
            best.name,
            best.final_loss,
            worst.name,
            worst.final_loss,
            gap,
            noise,
            if gap <= noise {
                " — the variants are not distinguishable by loss at this budget"
            } else {
                ""
            }
        ));
    }
    if let Some(dense) = find("dense") {
        let beaten: Vec<String> = s
            .iter()
            .filter(|v| is_moe(v))
            .filter(|v| {
                let noise =
                    2.0 * (v.final_loss_stderr.powi(2) + dense.final_loss_stderr.powi(2)).sqrt();
                dense.final_loss - v.final_loss > noise
            })
            .map(|v| {
                format!(
                    "`{}` ({:+.1}%)",
                    v.name,
                    100.0 * (v.final_loss / dense.final_loss - 1.0)
                )
            })
            .collect();
        notes.push(if beaten.is_empty() {
            "**MoE vs dense.** No MoE variant's final loss is below the dense DiT's by more than the noise level.".to_string()
        } else {
            format!(
                "**MoE vs dense.** Below the dense DiT's final loss by more than the noise level: {}.",
                beaten.join(", ")
            )
        });
    }
    if let (Some((best_fd, worst_fd)), Some((_, best_acc))) = (
        lowest_and_highest(s, |v| v.frechet_distance),
        lowest_and_highest(s, |v| v.class_accuracy),
    ) {
        notes.push(format!(
            "**Sample quality.** Best Fréchet distance: `{}` ({:.3}; worst `{}` {:.3}). Best class accuracy of generated images: `{}` ({:.1}%). The classifier scores {:.1}% on held-out real images, the ceiling for this number. Both use {} generated images per variant from the same noise, so small differences are within sampling noise.",
            best_fd.name,
            best_fd.frechet_distance,
            worst_fd.name,
            worst_fd.frechet_distance,
            best_acc.name,
            100.0 * best_acc.class_accuracy,
            100.0 * input.classifier_accuracy,
            input.preset.evaluation.samples_per_class * input.variants.first().map_or(0, |v| v.model().num_classes),
        ));
    }
    if let (Some(with), Some(without)) = (find("tc"), find("tc-no-balance")) {
        if let (Some(a), Some(b)) = (&with.routing, &without.routing) {
            let ratio = b.coefficient_of_variation / a.coefficient_of_variation.max(1e-12);
            notes.push(if b.coefficient_of_variation > a.coefficient_of_variation {
                format!(
                    "**Balance loss.** Without it (`tc-no-balance`) the expert load's coefficient of variation over the last {:.0}% of training is {:.3} (max/mean {:.2}) against {:.3} (max/mean {:.2}) with it (`tc`): {:.1}× less even.",
                    FINAL_FRACTION * 100.0,
                    b.coefficient_of_variation,
                    b.max_over_mean,
                    a.coefficient_of_variation,
                    a.max_over_mean,
                    ratio
                )
            } else {
                format!(
                    "**Balance loss.** At this budget removing it did not worsen balance: load CV {:.3} without (`tc-no-balance`) vs {:.3} with (`tc`).",
                    b.coefficient_of_variation, a.coefficient_of_variation
                )
            });
        }
    }
    for v in s.iter().filter(|v| v.name.starts_with("ec")) {
        if let Some(r) = &v.routing {
            notes.push(format!(
                "**Expert choice (`{}`).** Expert load is {} (max/mean {:.3}, CV {:.3}); {:.1}% of tokens were processed by no expert (they pass through the residual only) and the most-served tokens got {} experts.",
                v.name,
                if r.exactly_uniform {
                    "exactly uniform in every block at every logged step, as the routing guarantees"
                } else {
                    "not exactly uniform (capacity does not divide evenly)"
                },
                r.max_over_mean,
                r.coefficient_of_variation,
                100.0 * r.dropped,
                r.experts_per_token.iter().rposition(|&f| f > 0.0).unwrap_or(0)
            ));
        }
    }
    let specialised: Vec<String> = s
        .iter()
        .zip(input.variants)
        .filter_map(|(v, variant)| v.specialization.map(|n| (v, variant, n)))
        .map(|(v, variant, n)| {
            let per_image_capacity = matches!(
                variant.model().moe.map(|m| m.routing),
                Some(RoutingConfig::ExpertChoice {
                    group: RoutingGroup::PerImage,
                    ..
                })
            );
            if per_image_capacity {
                format!(
                    "`{}`: position {:.3}; timestep {:.3} and class {:.3} are zero by construction (every expert takes exactly C tokens of every image, and timestep and class are the same for all tokens of an image), so the claim cannot be tested on expert counts",
                    v.name, n.position, n.timestep, n.class
                )
            } else {
                let holds = n.timestep.min(n.position) > n.class;
                format!(
                    "`{}`: timestep {:.3}, position {:.3}, class {:.3} ({})",
                    v.name,
                    n.timestep,
                    n.position,
                    n.class,
                    if holds { "holds" } else { "does not hold" }
                )
            }
        })
        .collect();
    if !specialised.is_empty() {
        notes.push(format!(
            "**Specialisation.** DiT-MoE reports that experts specialise by timestep and position, not by class. Normalised mutual information between the expert chosen and each variable (mean over MoE blocks; the claim holds here when both timestep and position exceed class): {}.",
            specialised.join("; ")
        ));
    }
    for (v, e) in s.iter().zip(input.evaluations) {
        if e.sweep.len() > 1 {
            let points: Vec<String> = e
                .sweep
                .iter()
                .map(|p| {
                    format!(
                        "{}{} → {:.4} GMACs, FD {:.3}, accuracy {:.1}%",
                        p.setting,
                        if p.trained { " (trained)" } else { "" },
                        p.gmacs,
                        p.quality.frechet_distance,
                        100.0 * p.quality.class_accuracy
                    )
                })
                .collect();
            notes.push(format!(
                "**Inference-time compute (`{}`).** {}.",
                v.name,
                points.join("; ")
            ));
        }
    }
    if let Some((slow, fast)) = lowest_and_highest(s, |v| v.images_per_s) {
        notes.push(format!(
            "**Speed.** Fastest training: `{}` ({:.0} images/s); slowest: `{}` ({:.0} images/s). On a CPU, routing, gathering and per-expert GEMMs cost time beyond their MACs, so equal GMACs need not mean equal speed.",
            fast.name, fast.images_per_s, slow.name, slow.images_per_s
        ));
    }
    notes.push(format!(
        "**Caveat.** One seed and {} steps per variant: the reading above ranks numbers, it does not establish effects. Re-run with other `--seed` values (or `--preset full`) before drawing conclusions.",
        input.variants.first().map_or(0, |v| v.config.steps)
    ));
    notes
}

/// Routed experts per token on the evaluation images by timestep bin (per MoE block) and by
/// class (mean over blocks), with what they cost: GMACs per image at each bin — the compute
/// per sampling step of the rules whose selection varies with the input. Empty when no
/// evaluation kept token counts.
fn experts_per_token_section(input: &ReportInput) -> String {
    let with_counts: Vec<(&VariantSummary, &Evaluation)> = input
        .summaries
        .iter()
        .zip(input.evaluations)
        .filter(|(_, e)| {
            e.specialization
                .iter()
                .any(|l| !l.tables.tokens_by_timestep.is_empty())
        })
        .collect();
    let Some((_, first)) = with_counts.first() else {
        return String::new();
    };
    let bins = first.specialization[0].tables.tokens_by_timestep.len();
    let classes = first.specialization[0].tables.tokens_by_class.len();
    let centres: Vec<String> = (0..bins)
        .map(|b| format!("{:.2}", (b as f64 + 0.5) / bins as f64))
        .collect();
    let mut md = format!(
        "## Experts per token by timestep and class\n\nRouted experts per token on the evaluation images at sampling time, by noise level (the bins' centre, 0 = clean) and block; GMACs per image at that level (all blocks); then by class, mean over blocks.\n\n| variant | block | {} |\n|---|---|{}\n",
        centres.join(" | "),
        "---:|".repeat(bins)
    );
    let mean_over_blocks = |rows: &[Vec<f64>], i: usize| {
        rows.iter().map(|r| r[i]).sum::<f64>() / rows.len().max(1) as f64
    };
    // NaN: no token of that bin or class among the evaluation images.
    let cells = |values: &[f64]| {
        values
            .iter()
            .map(|v| match v.is_nan() {
                true => "–".to_string(),
                false => format!("{v:.2}"),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut by_class = Vec::new();
    for (summary, evaluation) in &with_counts {
        let (by_bin, classes_of): (Vec<Vec<f64>>, Vec<Vec<f64>>) = evaluation
            .specialization
            .iter()
            .map(|layer| layer.tables.experts_per_token())
            .unzip();
        for (layer, row) in evaluation.specialization.iter().zip(&by_bin) {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} |",
                summary.name,
                layer.block + 1,
                cells(row)
            );
        }
        if let Some(variant) = input.variants.iter().find(|v| v.name == summary.name) {
            let config = variant.model();
            let gmacs: Vec<f64> = (0..bins)
                .map(|b| model_cost_at(&config, mean_over_blocks(&by_bin, b)).gmacs)
                .collect();
            let gmacs: Vec<String> = gmacs.iter().map(|g| format!("{g:.4}")).collect();
            let _ = writeln!(md, "| `{}` | GMACs | {} |", summary.name, gmacs.join(" | "));
        }
        let class_means: Vec<f64> = (0..classes)
            .map(|c| mean_over_blocks(&classes_of, c))
            .collect();
        by_class.push((summary.name.as_str(), class_means));
    }
    let _ = writeln!(
        md,
        "\n| variant | {} |\n|---|{}",
        (0..classes)
            .map(|c| format!("class {c}"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(classes)
    );
    for (name, means) in by_class {
        let _ = writeln!(md, "| `{name}` | {} |", cells(&means));
    }
    md + "\n"
}

/// Each MoE variant's batch-size gap (images sampled alone against the same images in a batch
/// of 16); empty when none was measured.
fn batch_gap_section(input: &ReportInput) -> String {
    let rows: Vec<String> = input
        .summaries
        .iter()
        .zip(input.evaluations)
        .filter(|(s, _)| is_moe(s))
        .filter_map(|(s, e)| {
            let gap = e.batch_gap?;
            let verdict = if !gap.max_abs.is_finite() {
                "non-finite samples"
            } else if gap.max_abs == 0.0 {
                "batch-independent"
            } else {
                "depends on the batch"
            };
            Some(format!(
                "| `{}` | {:.2e} | {:.2e} | {verdict} |",
                s.name, gap.mean_abs, gap.max_abs
            ))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "## Batch-size gap\n\nThe same images (label, starting noise) sampled alone and as the first of a batch of {}, over {} seeds: pixel differences (images in [−1, 1]). A rule that routes each image on its own gives exactly 0; a batch-global pool makes an image depend on what it is sampled with.\n\n| variant | mean abs difference | max abs difference | |\n|---|---:|---:|---|\n{}\n\n",
        super::evaluate::GAP_BATCH,
        input.preset.evaluation.batch_gap_seeds,
        rows.join("\n")
    )
}

/// Each block's output RMS by depth (Race-DiT's Fig. 5 measure: in a pre-norm / adaLN DiT the
/// residual stream grows with depth, so shallow blocks contribute little); empty when none
/// was measured.
fn output_norm_section(input: &ReportInput) -> String {
    let rows: Vec<(&str, &[f64])> = input
        .summaries
        .iter()
        .zip(input.evaluations)
        .filter(|(_, e)| !e.block_output_rms.is_empty())
        .map(|(s, e)| (s.name.as_str(), e.block_output_rms.as_slice()))
        .collect();
    let Some(depth) = rows.iter().map(|(_, r)| r.len()).max() else {
        return String::new();
    };
    let mut md = format!(
        "## Block output norm by depth\n\nRoot mean square of the residual stream after each block on the evaluation images (mean over the noise levels). Race-DiT regularises its routers because this grows with depth, leaving the shallow blocks' contributions small.\n\n| variant | {} |\n|---|{}\n",
        (1..=depth).map(|b| format!("block {b}")).collect::<Vec<_>>().join(" | "),
        "---:|".repeat(depth)
    );
    for (name, norms) in rows {
        let cells: Vec<String> = norms.iter().map(|v| format!("{v:.3}")).collect();
        let _ = writeln!(md, "| `{name}` | {} |", cells.join(" | "));
    }
    md + "\n"
}

fn markdown(input: &ReportInput, figures: &Figures) -> String {
    let train = &input.preset.train;
    let setup = input.setup;
    let mut md = String::new();
    let _ = writeln!(md, "# Routing ablation: `{}`\n", input.preset_name);
    let _ = writeln!(md, "{}\n", input.preset.description);
    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(md, "- Command: `{}`", setup.command);
    let _ = writeln!(md, "- Commit: `{}`", setup.commit);
    let _ = writeln!(
        md,
        "- Machine: {} ({} cores, {} compute threads), {}",
        setup.cpu, setup.cores, setup.threads, setup.os
    );
    let variant_seconds: f64 = input
        .summaries
        .iter()
        .map(|s| s.train_seconds + s.eval_seconds)
        .sum();
    let _ = writeln!(
        md,
        "- Wall time: {:.0} s for this invocation (training, evaluation and this report); the \
         variants' training and evaluation took {variant_seconds:.0} s in all, over every \
         interrupted and resumed part",
        setup.seconds_total
    );
    let _ = writeln!(
        md,
        "- Every variant: {} steps × batch {}, lr {:.1e} (warmup {}, {:?}), AdamW, grad clip {}, EMA {}, seed {} — the same data order, noise, timesteps and label dropout for all",
        train.steps, train.batch_size, train.lr, train.warmup_steps, train.lr_decay, train.grad_clip, train.ema_decay, train.seed
    );
    let _ = writeln!(
        md,
        "- Data: {:?}; objective: {:?}",
        train.data, train.objective
    );
    let e = &input.preset.evaluation;
    let _ = writeln!(
        md,
        "- Sampling (EMA weights): {:?}, {} steps, CFG {}; {} images per class, same noise for every variant",
        train.sampler(), e.sample_steps, train.sample.cfg_scale, e.samples_per_class
    );
    let _ = writeln!(
        md,
        "- Quality score: an MLP classifier ({} hidden, {}-d features, {} steps) trained on the dataset; held-out accuracy {:.1}% on {} real images, whose features are the Fréchet reference",
        e.classifier.hidden, e.classifier.features, e.classifier.steps, 100.0 * input.classifier_accuracy, e.real_images
    );
    let _ = writeln!(
        md,
        "- Specialisation: {} images routed at {} noise levels (bin centres of t ∈ (0, 1))\n",
        e.specialization_images, e.timestep_bins
    );
    let _ = writeln!(md, "| variant | what it is | FFN |\n|---|---|---|");
    for v in input.variants {
        let model = v.model();
        let ffn = match model.moe {
            Some(moe) => format!(
                "{} × {:?} experts of width {}{}, {:?}",
                moe.num_experts,
                moe.expert_kind,
                moe.expert_hidden,
                moe.shared_expert_hidden
                    .map_or(String::new(), |h| format!(" + shared expert of width {h}")),
                moe.routing
            ),
            None => format!("dense GELU MLP of width {}", model.mlp_hidden()),
        };
        let _ = writeln!(md, "| `{}` | {} | {} |", v.name, v.about, ffn);
    }
    let _ = writeln!(md, "\n## Summary\n");
    let _ = writeln!(
        md,
        "Final values average the logged lines of the last {:.0}% of training (± one standard error). Load columns average over MoE blocks. The same numbers are in `summary.json`; the curves come from `metrics/<variant>.jsonl`.\n",
        FINAL_FRACTION * 100.0
    );
    md += &summary_table(input.summaries);
    let _ = writeln!(md, "\n## Reading\n");
    for note in reading(input) {
        let _ = writeln!(md, "- {note}");
    }
    let _ = writeln!(md, "\n## Loss curves\n\n![loss curves]({})\n", figures.loss);
    if let Some(balance) = &figures.balance {
        let _ = writeln!(md, "## Expert load\n\nHow far each MoE variant's load is from uniform over training (0 and 1 are uniform), and the routed experts per token over training (fixed by token choice, expert choice and the pools; ReLU routing's sparsity, 1 − this / E, moves as its L1 coefficient adapts):\n\n![load balance]({balance})\n");
        for (name, file) in &figures.load {
            let _ = writeln!(md, "Load per expert of `{name}` (share of token-slots; 1/E is uniform):\n\n![load of {name}]({file})\n");
        }
    }
    if let Some(file) = &figures.experts_per_token {
        let _ = writeln!(md, "## Experts per token\n\nToken choice gives every token exactly k experts; expert choice gives some tokens many and some none (dropped).\n\n![experts per token]({file})\n");
    }
    if !figures.specialization.is_empty() {
        let _ = writeln!(md, "## Expert specialisation\n\nNormalised mutual information I(expert; X) / H(expert): 0 = the expert does not depend on X, 1 = X determines it.\n\n| variant | block | timestep | position | class |\n|---|---|---|---|---|");
        for (v, e) in input.summaries.iter().zip(input.evaluations) {
            for layer in &e.specialization {
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {:.3} | {:.3} | {:.3} |",
                    v.name,
                    layer.block + 1,
                    layer.nmi.timestep,
                    layer.nmi.position,
                    layer.nmi.class
                );
            }
        }
        md += "\n";
        for (name, tables, positions) in &figures.specialization {
            let _ = writeln!(md, "`{name}` — share of each timestep bin's and class's token-slots per expert:\n\n![specialisation of {name}]({tables})\n\n`{name}` — share of each patch position's token-slots per expert (one map per block and expert, common colour scale per block):\n\n![positions of {name}]({positions})\n");
        }
    }
    md += &super::claims::section(input.summaries, input.evaluations);
    md += &experts_per_token_section(input);
    md += &batch_gap_section(input);
    md += &output_norm_section(input);
    let _ = writeln!(
        md,
        "## Samples\n\nOne row per class (EMA weights, same noise for every variant):\n"
    );
    for s in input.summaries {
        let _ = writeln!(
            md,
            "`{}`\n\n![samples of {}](samples/{}.png)\n",
            s.name, s.name, s.name
        );
    }
    let _ = writeln!(md, "## Quality vs compute\n\nMoE variants re-sampled with a different top-k or capacity factor than they were trained with, global-pool (DiffMoE) variants with each sampling rule: the predictor's thresholds, the static top-k of the sampling batch, one threshold γ for every expert (same weights; a global pool's experts per token are measured on the evaluation images at every timestep bin, the others' are what their rule applies); dense variants are single points.\n\n![quality vs compute]({})\n", figures.quality);
    let _ = writeln!(md, "| variant | setting | experts per token | GMACs | Fréchet distance | class accuracy |\n|---|---|---|---|---|---|");
    for (v, e) in input.summaries.iter().zip(input.evaluations) {
        for p in &e.sweep {
            let _ = writeln!(
                md,
                "| `{}` | {}{} | {:.2} | {:.4} | {:.3} | {:.3} |",
                v.name,
                p.setting,
                if p.trained { " (trained)" } else { "" },
                p.experts_per_token,
                p.gmacs,
                p.quality.frechet_distance,
                p.quality.class_accuracy
            );
        }
    }
    let _ = writeln!(md, "\n## Files\n\n- `summary.json` — the table above and the sweeps, machine-readable\n- `metrics/<variant>.jsonl` — one line per {} steps: loss, aux loss, grad norm, lr, images/s, elapsed time, peak heap, routing per MoE block\n- `runs/<variant>/checkpoint/` — weights, EMA, optimizer state; `runs/<variant>/evaluation.json` — quality, sweep, specialisation tables\n- `samples/<variant>.png`, `plots/*.svg`, `classifier.safetensors`", train.log_every);
    md
}
