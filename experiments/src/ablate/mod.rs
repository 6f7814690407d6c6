//! `ditmoe ablate`: the routing ablation. Trains every variant of a preset ([`plan`]) on the
//! same data, seeds, steps and batch size; evaluates each ([`evaluate`]) with one classifier
//! ([`classifier`]); summarises the metrics logs ([`summary`]) and writes the report
//! ([`report`]).
//!
//! Output directory:
//! `runs/<variant>/` (checkpoint, `evaluation.json`), `metrics/<variant>.jsonl`,
//! `samples/<variant>.png`, `plots/*.svg`, `classifier.safetensors`, `summary.json`,
//! `report.md`. A variant whose `evaluation.json` exists is finished: running again with the
//! same `--out` skips it, and a half-trained one continues from its checkpoint.

pub mod claims;
pub mod classifier;
pub mod evaluate;
pub mod plan;
pub mod report;
pub mod summary;

use crate::train::{
    checkpoint_dir, damaged_checkpoints, load_for_sampling, open_dataset, read_metrics, read_state,
    train, Progress, TrainOptions, CHECKPOINT_DIRS,
};
use anyhow::{anyhow, bail, Context, Result};
use classifier::{real_images, train_classifier, Classifier, ClassifierMeta, Reference};
use ditmoe_nn::accounting::model_cost;
use evaluate::{evaluate, Evaluation, Judge};
use plan::{AblationPreset, Variant};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `ditmoe ablate` was asked to do.
#[derive(Debug, Clone)]
pub struct AblateOptions {
    /// `quick`, `full` or a preset file.
    pub preset: String,
    pub out: PathBuf,
    /// Variant names to run (all when empty).
    pub variants: Vec<String>,
    /// Overrides the preset's seed.
    pub seed: Option<u64>,
    /// Progress bars (a terminal) or plain lines.
    pub progress_bars: bool,
    /// Print nothing but errors (tests).
    pub quiet: bool,
    /// The command line, for the report.
    pub command: String,
    /// Where the variants train and are sampled (`Device::Cuda(i)`: on GPU i).
    pub device: ditmoe_tensor::Device,
    /// The memory every selected variant's training must fit in (`None`: not checked).
    pub memory_bytes: Option<f64>,
}

fn say(options: &AblateOptions, message: String) {
    if !options.quiet {
        crate::console::eprintln(&message);
    }
}

/// Writes `value` as JSON to `path` atomically ([`ditmoe_nn::files`]), so a reader never sees
/// half of it.
pub(super) fn write_json_atomically(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialises");
    ditmoe_nn::files::write_atomically(path, text.as_bytes())
        .with_context(|| path.display().to_string())
}

/// The classifier of this output directory: loaded if one with the same settings is there,
/// trained and saved otherwise.
fn classifier_for(
    out: &Path,
    preset: &AblationPreset,
    data: &dyn crate::data::Dataset,
    options: &AblateOptions,
) -> Result<(Classifier, ClassifierMeta)> {
    let path = out.join("classifier.safetensors");
    let settings = &preset.evaluation;
    if path.exists() {
        let (classifier, meta) = Classifier::load(&path)?;
        if meta.config == settings.classifier && meta.seed == preset.train.seed {
            say(
                options,
                format!(
                    "classifier: reusing {} (held-out accuracy {:.1}%)",
                    path.display(),
                    100.0 * meta.accuracy
                ),
            );
            return Ok((classifier, meta));
        }
    }
    let began = Instant::now();
    say(
        options,
        format!(
            "classifier: training on {} for {} steps",
            data.name(),
            settings.classifier.steps
        ),
    );
    let (classifier, meta) = train_classifier(
        data,
        &settings.classifier,
        settings.real_images,
        preset.train.seed,
    )?;
    classifier.save(&path, &meta)?;
    say(
        options,
        format!(
            "classifier: held-out accuracy {:.1}% ({:.0} s)",
            100.0 * meta.accuracy,
            began.elapsed().as_secs_f64()
        ),
    );
    Ok((classifier, meta))
}

/// Whether `run` holds a finished variant trained with `variant`'s config; an error if it
/// holds one trained with another config, or only a checkpoint damaged after its save (never
/// overwritten).
fn finished(run: &Path, variant: &Variant) -> Result<bool> {
    let Some(dir) = checkpoint_dir(run) else {
        let damaged = damaged_checkpoints(run);
        if !damaged.is_empty() {
            bail!(
                "{} holds variant `{}` with no complete checkpoint: {}; repair or restore the file(s) named, or remove that directory to train it again",
                run.display(),
                variant.name,
                damaged.join("; ")
            );
        }
        return Ok(false);
    };
    let state = read_state(&dir)?;
    if state.config != variant.config {
        bail!(
            "{} holds variant `{}` trained with a different config (another preset or --seed?); remove that directory or choose another --out",
            run.display(),
            variant.name
        );
    }
    Ok(state.step >= variant.config.steps && run.join("evaluation.json").exists())
}

/// The variants the report covers, in the preset's order: the `selected` ones and every other
/// variant of the preset already finished in `out`, so `--variants tc` adds to a report rather
/// than replacing it. A variant not selected whose directory holds something else (another
/// config, a damaged checkpoint) is left out of the report.
fn reported_variants(
    preset: &AblationPreset,
    selected: &[Variant],
    out: &Path,
) -> Result<Vec<Variant>> {
    let every = preset.select(&[]).map_err(anyhow::Error::msg)?;
    Ok(every
        .into_iter()
        .filter(|variant| {
            selected.contains(variant)
                || finished(&out.join("runs").join(&variant.name), variant).unwrap_or(false)
        })
        .collect())
}

/// A variant's `evaluation.json`.
fn read_evaluation(path: &Path) -> Result<Evaluation> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: not an evaluation", path.display()))
}

/// Trains `variant` in `run` (continuing a checkpoint there) and evaluates its EMA weights.
fn train_and_evaluate(
    variant: &Variant,
    run: &Path,
    label: &str,
    judge: &Judge,
    options: &AblateOptions,
) -> Result<Evaluation> {
    let resume = checkpoint_dir(run).is_some();
    say(
        options,
        format!(
            "{label}: {} — {} {} steps",
            variant.about,
            if resume { "continuing to" } else { "training" },
            variant.config.steps
        ),
    );
    let progress = match (options.quiet, options.progress_bars) {
        (true, _) => Progress::Quiet,
        (false, true) => Progress::Bar(label.to_string()),
        (false, false) => Progress::Lines(format!("{label} ")),
    };
    // A variant with no checkpoint starts over: its metrics, if any, are an interrupted run's.
    let train_options = TrainOptions {
        resume,
        overwrite: !resume,
        metrics: Some(
            options
                .out
                .join("metrics")
                .join(format!("{}.jsonl", variant.name)),
        ),
        device: options.device,
        ..TrainOptions::new(progress)
    };
    train(&variant.config, run, &train_options)?;
    say(
        options,
        format!("{label}: evaluating (samples, compute sweep, specialisation)"),
    );
    let (model, _) = load_for_sampling(&run.join("checkpoint"))?;
    let grid = options
        .out
        .join("samples")
        .join(format!("{}.png", variant.name));
    let evaluation = evaluate(&model, variant, judge, &grid)?;
    say(
        options,
        format!(
            "{label}: Fréchet distance {:.3}, class accuracy {:.1}% ({:.0} s)",
            evaluation.quality.frechet_distance,
            100.0 * evaluation.quality.class_accuracy,
            evaluation.seconds
        ),
    );
    Ok(evaluation)
}

/// The ablation directory `path` is or lies inside, if any: a directory holding the
/// classifier, or the `runs/`, `metrics/`, `samples/` and `plots/` folders an ablation creates
/// before anything else. `ditmoe train` refuses such an `--out`: its variants are the
/// ablation's to train.
pub fn enclosing_ablation(path: &Path) -> Option<PathBuf> {
    let is_ablation = |dir: &Path| {
        dir.join("classifier.safetensors").is_file()
            || ["runs", "metrics", "samples", "plots"]
                .iter()
                .all(|folder| dir.join(folder).is_dir())
    };
    let absolute = std::path::absolute(path).ok()?;
    absolute
        .ancestors()
        .find(|dir| is_ablation(dir))
        .map(Path::to_path_buf)
}

/// An error if `out` is the run directory of a `ditmoe train` (a checkpoint or metrics log at
/// its top level): an ablation keeps its runs under `out/runs/` and would mix its files in.
fn refuse_train_run(out: &Path) -> Result<()> {
    let train_files = CHECKPOINT_DIRS.iter().chain(&["metrics.jsonl"]);
    if let Some(found) = train_files.into_iter().find(|f| out.join(f).exists()) {
        bail!(
            "--out {}: that directory holds a `ditmoe train` run ({found}); an ablation needs a directory of its own",
            out.display()
        );
    }
    Ok(())
}

/// An error naming `evaluation.real_images` unless `data` holds twice as many images: the
/// evaluation holds that many out and trains its classifier on the rest.
fn check_real_images(data: &dyn crate::data::Dataset, real_images: usize) -> Result<()> {
    if data.len() < 2 * real_images {
        bail!(
            "evaluation.real_images = {real_images}: dataset {} has {} images; the evaluation holds out real_images and trains its classifier on the rest, so it needs at least {} (give real_images <= {})",
            data.name(),
            data.len(),
            2 * real_images,
            data.len() / 2
        );
    }
    Ok(())
}

/// Runs the ablation; returns the path of `report.md`.
pub fn ablate(options: &AblateOptions) -> Result<PathBuf> {
    let began = Instant::now();
    let mut preset = AblationPreset::load(&options.preset).map_err(anyhow::Error::msg)?;
    if let Some(seed) = options.seed {
        preset.train.seed = seed;
    }
    let selected = preset
        .select(&options.variants)
        .map_err(anyhow::Error::msg)?;
    preset
        .check_memory(&selected, options.memory_bytes)
        .map_err(anyhow::Error::msg)?;
    say(
        options,
        format!(
            "ablation `{}` into {} on {} ({} CPU threads)",
            options.preset,
            options.out.display(),
            options.device,
            ditmoe_tensor::parallel::num_threads()
        ),
    );
    let out = &options.out;
    refuse_train_run(out)?;
    // Every refusal comes before anything is created or trained.
    let data = open_dataset(&preset.train.data, preset.train.seed)?;
    let settings = &preset.evaluation;
    check_real_images(data.as_ref(), settings.real_images)?;
    let _lock = crate::run_lock::RunLock::acquire(out)?;
    let done = selected
        .iter()
        .map(|variant| finished(&out.join("runs").join(&variant.name), variant))
        .collect::<Result<Vec<bool>>>()?;
    let variants = reported_variants(&preset, &selected, out)?;
    for dir in ["runs", "metrics", "samples", "plots"] {
        let path = out.join(dir);
        std::fs::create_dir_all(&path).with_context(|| path.display().to_string())?;
    }
    let (classifier, meta) = classifier_for(out, &preset, data.as_ref(), options)?;
    let (real, real_labels) = real_images(data.as_ref(), settings.real_images)?;
    let reference = Reference::of(&classifier, &real)?;
    let held = settings.specialization_images.min(real_labels.len());
    let judge = Judge {
        classifier: &classifier,
        reference: &reference,
        images: &real.narrow(0, 0, held)?,
        labels: &real_labels[..held],
        settings,
        device: options.device,
    };

    let count = selected.len();
    let mut evaluations = std::collections::HashMap::new();
    for (i, variant) in selected.iter().enumerate() {
        let label = format!("[{}/{count}] {}", i + 1, variant.name);
        let run = out.join("runs").join(&variant.name);
        let evaluation_path = run.join("evaluation.json");
        let evaluation = if done[i] {
            say(
                options,
                format!("{label}: finished in an earlier run, skipped"),
            );
            read_evaluation(&evaluation_path)?
        } else {
            let evaluation = train_and_evaluate(variant, &run, &label, &judge, options)?;
            write_json_atomically(&evaluation_path, &evaluation)?;
            evaluation
        };
        evaluations.insert(variant.name.clone(), evaluation);
    }
    // The variants finished by earlier runs but not selected now are reported as they were.
    for variant in variants.iter().filter(|v| !selected.contains(v)) {
        let path = out.join("runs").join(&variant.name).join("evaluation.json");
        evaluations.insert(variant.name.clone(), read_evaluation(&path)?);
    }
    let evaluations: Vec<Evaluation> = variants
        .iter()
        .map(|variant| {
            evaluations
                .remove(&variant.name)
                .expect("every reported variant is evaluated")
        })
        .collect();

    let mut metrics = Vec::with_capacity(count);
    let mut summaries = Vec::with_capacity(count);
    for (variant, evaluation) in variants.iter().zip(&evaluations) {
        let path = out.join("metrics").join(format!("{}.jsonl", variant.name));
        let lines = read_metrics(&path)?;
        if lines.is_empty() {
            return Err(anyhow!("{}: no metrics lines", path.display()));
        }
        summaries.push(summary::summarize(
            &variant.name,
            &variant.about,
            &lines,
            evaluation,
            &model_cost(&variant.model()),
            variant.config.steps,
            variant.config.batch_size,
        ));
        metrics.push(lines);
    }
    let setup = report::Setup::detect(options.command.clone(), began.elapsed().as_secs_f64());
    report::write_report(
        out,
        &report::ReportInput {
            preset_name: &options.preset,
            preset: &preset,
            variants: &variants,
            summaries: &summaries,
            evaluations: &evaluations,
            metrics: &metrics,
            classifier_accuracy: meta.accuracy,
            setup: &setup,
        },
    )?;
    Ok(out.join("report.md"))
}
