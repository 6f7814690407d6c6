//! The training loop: diffusion loss (+ MoE balance loss) → backward → clip → AdamW → EMA,
//! with JSON-lines metrics, periodic checkpoints and exact resume.
//!
//! Start with [`Trainer::step`] (`trainer.rs`), one step read top to bottom. This file sets a
//! run up and loops over the steps; beside it live the step's losses and their read-back
//! (`read_back.rs`), the metrics log (`metrics.rs`), the progress display (`progress.rs`) and
//! checkpoints (`checkpoint.rs`).
//!
//! Every random draw of step s comes from an RNG seeded by (seed, s), so a resumed run draws
//! exactly what an uninterrupted run would have: N steps + resume + N steps = 2N steps.
//!
//! A run directory belongs to one run: the process holds its lock ([`crate::run_lock`]) while
//! it trains, and a fresh run refuses a directory that holds another run's checkpoint or
//! metrics unless told to continue it (`resume`) or replace it (`overwrite`).

mod checkpoint;
mod metrics;
mod progress;
mod read_back;
mod trainer;

use checkpoint::remove_checkpoints;
pub use checkpoint::{
    checkpoint_dir, damaged_checkpoints, load_for_sampling, load_for_sampling_within, read_state,
    unusable_checkpoints, RunState, CHECKPOINT_DIRS,
};
pub use metrics::{read_metrics, MetricsLine};
pub use progress::Progress;
pub use read_back::StepScalars;
pub use trainer::{StepReport, Trainer};

use crate::config::{DataSpec, Objective, TrainConfig};
use crate::data::files::{Cifar10, IdxDataset};
use crate::data::shapes::Shapes;
use crate::data::Dataset;
use crate::run_lock::RunLock;
use crate::step_profile::StepProfile;
use anyhow::{bail, Result};
use ditmoe_diffusion::{GaussianDiffusion, RectifiedFlow, Schedule};
use ditmoe_nn::DitConfig;
use ditmoe_tensor::{profile, seeded_rng, Device, SeededRng};
use metrics::MetricsLog;
use progress::ProgressDisplay;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The RNG of step `step`.
pub fn step_rng(seed: u64, step: u64) -> SeededRng {
    seeded_rng(
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
            ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ 0x5DEE_CE66,
    )
}

/// Opens the dataset a config names.
pub fn open_dataset(spec: &DataSpec, seed: u64) -> Result<Box<dyn Dataset>> {
    Ok(match spec {
        DataSpec::Shapes { size, count } => Box::new(Shapes::new(seed, *size, *count)),
        DataSpec::Idx { images, labels } => {
            Box::new(IdxDataset::open(Path::new(images), Path::new(labels))?)
        }
        DataSpec::Cifar10 { files } => Box::new(Cifar10::open(
            &files.iter().map(PathBuf::from).collect::<Vec<_>>(),
        )?),
    })
}

/// The Gaussian diffusion a config's model samples with (DDPM's schedule; for flow, unused by
/// the Euler sampler, the default one).
pub fn diffusion_of(config: &TrainConfig, learn_sigma: bool) -> GaussianDiffusion {
    match config.objective {
        Objective::Ddpm { steps, schedule } => {
            GaussianDiffusion::new(Schedule::new(schedule, steps), learn_sigma)
        }
        Objective::Flow { .. } => {
            GaussianDiffusion::new(Schedule::new(Default::default(), 1000), false)
        }
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct TrainSummary {
    pub first_loss: f64,
    pub last_loss: f64,
    pub steps: u64,
    pub seconds: f64,
    /// With [`TrainOptions::profile`] and at least two steps run.
    pub profile: Option<StepProfile>,
}

/// How to run [`train`].
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Continue from the checkpoint in the output directory (to the config's `steps`, which may
    /// be more than the checkpoint's run planned).
    pub resume: bool,
    /// Replace a run already in the output directory (its checkpoint and metrics are removed
    /// when the new run starts its first step); without it or `resume`, such a directory is
    /// refused.
    pub overwrite: bool,
    pub progress: Progress,
    /// End after this step, as an interruption would (tests use it).
    pub stop_after: Option<u64>,
    /// The metrics log; `out/metrics.jsonl` when `None`.
    pub metrics: Option<PathBuf>,
    /// Where the model, optimiser state and batches live (`Device::Cuda(i)`: on GPU i).
    pub device: Device,
    /// Profile every step after the first (which loads the GPU kernels) by section and pass
    /// ([`crate::step_profile`]), up to the final checkpoint (left out); the result is
    /// [`TrainSummary::profile`].
    pub profile: bool,
}

impl TrainOptions {
    pub fn new(progress: Progress) -> Self {
        TrainOptions {
            resume: false,
            overwrite: false,
            progress,
            stop_after: None,
            metrics: None,
            device: Device::Cpu,
            profile: false,
        }
    }
}

/// Training wall time, over every resumed part of the run.
struct RunClock {
    began: Instant,
    /// The time of the parts before this one.
    before: f64,
}

impl RunClock {
    fn seconds(&self) -> f64 {
        self.before + self.began.elapsed().as_secs_f64()
    }
}

/// Trains per `config`, writing metrics and checkpoints under `out`, which it locks for the
/// run. With `options.resume`, continues from the checkpoint there (which must come from the
/// same config, but for `steps`).
pub fn train(config: &TrainConfig, out: &Path, options: &TrainOptions) -> Result<TrainSummary> {
    let model_config = config.model_config().map_err(anyhow::Error::msg)?;
    let _lock = RunLock::acquire(out)?;
    // The one place the config's objective becomes an `Objective`.
    match config.objective {
        Objective::Ddpm { .. } => {
            let ddpm = diffusion_of(config, model_config.learn_sigma);
            run(ddpm, config, model_config, out, options)
        }
        Objective::Flow { time_scale } => {
            let flow = RectifiedFlow { time_scale };
            run(flow, config, model_config, out, options)
        }
    }
}

/// [`train`] with `objective`: sets the run up, loops over [`Trainer::step`] with logging and
/// checkpoints, and reports.
fn run<O: ditmoe_diffusion::Objective>(
    objective: O,
    config: &TrainConfig,
    model_config: DitConfig,
    out: &Path,
    options: &TrainOptions,
) -> Result<TrainSummary> {
    let metrics_path = options
        .metrics
        .clone()
        .unwrap_or_else(|| out.join("metrics.jsonl"));
    check_checkpoint_names(out)?;
    if !options.resume && !options.overwrite {
        refuse_to_replace(out, &metrics_path)?;
    }
    let data = open_training_data(config, &model_config)?;
    let mut trainer = Trainer::new(
        config,
        model_config,
        data,
        objective,
        out.to_path_buf(),
        options.device,
    )?;
    let resumed = if options.resume {
        Some(trainer.resume()?)
    } else {
        None
    };
    let start = resumed.as_ref().map_or(0, |state| state.step);
    // Built and restored on the host, then moved.
    trainer.move_to_device()?;
    if options.overwrite && !options.resume {
        // The metrics log is emptied as it opens.
        remove_checkpoints(out)?;
    }
    let resumed_at = options.resume.then_some(start);
    let mut metrics = MetricsLog::open(
        metrics_path,
        resumed_at,
        config.batch_size,
        config.log_every,
    )?;
    let progress = ProgressDisplay::new(&options.progress, config.steps, start);
    ditmoe_tensor::memory::reset_peak();
    let clock = RunClock {
        began: Instant::now(),
        before: resumed.map_or(0.0, |state| state.seconds),
    };
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let mut step_profile = None;
    let end = options
        .stop_after
        .map_or(config.steps, |s| s.min(config.steps));
    for step in start..end {
        if options.profile && step == start + 1 {
            profile::enable();
        }
        let record = (step + 1) % config.log_every == 0;
        let report = trainer.step(step, record)?;
        let _logging_section = profile::section("logging");
        if first_loss.is_nan() {
            first_loss = report.scalars.loss;
        }
        last_loss = report.scalars.loss;
        if let Some(line) = metrics.add(step, &report, record, &clock)? {
            progress.logged(&line);
        }
        progress.advance(step + 1);
        if options.profile && step + 1 == end && step > start {
            // Before the final checkpoint, which a short profiled run would be all about.
            step_profile = Some(StepProfile::new(&profile::finish(), end - start - 1));
        }
        if (step + 1) % config.checkpoint_every == 0 || step + 1 == end {
            let _checkpoint_section = profile::section("checkpoint");
            trainer.save_checkpoint(step + 1, clock.seconds())?;
        }
    }
    progress.finish();
    Ok(TrainSummary {
        first_loss,
        last_loss,
        steps: end - start,
        seconds: clock.began.elapsed().as_secs_f64(),
        profile: step_profile,
    })
}

/// An error unless each checkpoint name under `out` is free or a directory: a file there would
/// make the first save fail after the training it was to keep.
fn check_checkpoint_names(out: &Path) -> Result<()> {
    for path in CHECKPOINT_DIRS.iter().map(|name| out.join(name)) {
        if std::fs::symlink_metadata(&path).is_ok_and(|meta| !meta.is_dir()) {
            bail!(
                "{} exists and is not a directory; checkpoints are saved under that name: move it away first",
                path.display()
            );
        }
    }
    Ok(())
}

/// An error naming `--resume` and `--overwrite` if `out` holds a run (a checkpoint directory,
/// even a half-written one, or a non-empty metrics log), so that a fresh run never silently
/// replaces it. A run that stopped before logging a step (an empty log, a stale lock) holds
/// nothing to lose and is not counted.
fn refuse_to_replace(out: &Path, metrics: &Path) -> Result<()> {
    let mut found: Vec<String> = CHECKPOINT_DIRS
        .iter()
        .filter(|name| out.join(name).exists())
        .map(|name| format!("{name}/"))
        .collect();
    if std::fs::metadata(metrics).is_ok_and(|meta| meta.len() > 0) {
        found.push(metrics.display().to_string());
    }
    if !found.is_empty() {
        bail!(
            "the output directory {} already holds a run ({}): pass --resume to continue it or --overwrite to replace it",
            out.display(),
            found.join(", ")
        );
    }
    Ok(())
}

/// The dataset of `config`, checked to be non-empty and to fit the model.
fn open_training_data(config: &TrainConfig, model: &DitConfig) -> Result<Box<dyn Dataset>> {
    let data = open_dataset(&config.data, config.seed)?;
    if data.is_empty() {
        bail!("dataset {} has no images", data.name());
    }
    let (c, h, w) = data.image_shape();
    let expected = (model.in_channels, model.input_size, model.input_size);
    if (c, h, w) != expected || data.num_classes() != model.num_classes {
        bail!("dataset {} gives {c}×{h}×{w} images of {} classes; the model expects {}×{}×{} and {} classes", data.name(), data.num_classes(), model.in_channels, model.input_size, model.input_size, model.num_classes);
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
