//! One training step, in the order of llm.c's loop: batch, objective draw, forward, loss,
//! backward, one read-back, clip, optimizer, EMA. See [`Trainer::step`].

use super::checkpoint::{
    check_resumable, checkpoint_dir, read_state, restore, save_checkpoint, RunState,
};
use super::read_back::{read_back_step_scalars, StepLosses, StepScalars};
use super::step_rng;
use crate::config::TrainConfig;
use crate::data::{batch, Dataset};
use anyhow::{anyhow, bail, Result};
use ditmoe_autograd::Var;
use ditmoe_diffusion::Objective;
use ditmoe_nn::moe::RoutingRecord;
use ditmoe_nn::optim::{clip_factor, learning_rate, AdamW, Ema};
use ditmoe_nn::{Dit, DitConfig, ForwardOptions, Module};
use ditmoe_tensor::{profile, Device, SeededRng, Tensor};
use rand::Rng;
use std::path::PathBuf;

/// A model being trained, with everything a step changes (optimizer moments, EMA) and what
/// it reads (config, data, objective).
pub struct Trainer<O: Objective> {
    config: TrainConfig,
    objective: O,
    data: Box<dyn Dataset>,
    model: Dit,
    /// The model's parameters by name (the same `Var`s the model holds).
    params: Vec<(String, Var)>,
    optimizer: AdamW,
    ema: Ema,
    /// Where the model, optimizer state and batches live.
    device: Device,
    /// The run directory: the checkpoint is `out/checkpoint`.
    out: PathBuf,
}

/// What a step reports for the metrics log.
pub struct StepReport {
    pub scalars: StepScalars,
    pub lr: f64,
    /// Per block: the routing of this step's batch (when asked for and the block is MoE).
    pub routing: Vec<Option<RoutingRecord>>,
}

impl<O: Objective> Trainer<O> {
    /// A fresh model, optimizer and EMA per `config`, on the host until
    /// [`Trainer::move_to_device`].
    pub fn new(
        config: &TrainConfig,
        model_config: DitConfig,
        data: Box<dyn Dataset>,
        objective: O,
        out: PathBuf,
        device: Device,
    ) -> Result<Self> {
        let model = Dit::new(model_config, config.seed)?;
        let params = model.named_parameters();
        let ema = Ema::new(&params, config.ema_decay);
        Ok(Trainer {
            config: config.clone(),
            objective,
            data,
            model,
            params,
            optimizer: AdamW::new(config.adamw),
            ema,
            device,
            out,
        })
    }

    /// Training step `step` (0-based); `record_routing` asks the MoE layers for their routing.
    pub fn step(&mut self, step: u64, record_routing: bool) -> Result<StepReport> {
        let data_section = profile::section("data");
        let rng = &mut step_rng(self.config.seed, step);
        let (x0, y) = self.draw_batch(rng)?;
        let draw = self.objective.draw(&x0, rng, self.device)?;
        let y = y.to_device(self.device)?;
        drop(data_section);
        let input = Var::constant(draw.model_input.clone());
        let forward = ForwardOptions {
            label_dropout: Some(rng),
            record_routing,
            training: true,
            prediction_target: Some(self.objective.prediction_target(&draw)),
        };
        let result = self.model.forward(&input, &draw.model_time, &y, forward)?;
        let loss_section = profile::section("loss");
        let losses = StepLosses::new(self.objective.loss(&draw, &result.out)?, result.aux_loss)?;
        drop(loss_section);
        losses.total.backward()?;
        let _optimizer_section = profile::section("optimizer");
        let scalars = read_back_step_scalars(&losses, &self.model.named_gradients())?;
        self.stop_unless_finite(step, &scalars)?;
        // The graph holds views of the weights; without it the update writes in place.
        drop((losses, result.out, input));
        let lr = self.learning_rate(step);
        let clip = clip_factor(scalars.grad_norm, self.config.grad_clip);
        let ema = Some(&mut self.ema);
        self.optimizer.step(&self.params, lr, clip, ema)?;
        self.params.iter().for_each(|(_, p)| p.zero_grad());
        Ok(StepReport {
            scalars,
            lr,
            routing: result.routing,
        })
    }

    /// A batch of random images `[B, C, H, W]` and their labels `[B]`, on the host.
    fn draw_batch(&self, rng: &mut SeededRng) -> Result<(Tensor, Tensor)> {
        let indices: Vec<usize> = (0..self.config.batch_size)
            .map(|_| rng.random_range(0..self.data.len()))
            .collect();
        Ok(batch(self.data.as_ref(), &indices, self.config.flip, rng)?)
    }

    /// An error naming the quantity, the 1-based step and the last good checkpoint when a
    /// loss or the gradient norm of step `step` (0-based) is not finite — before the update,
    /// so that the weights and every checkpoint stay finite.
    fn stop_unless_finite(&self, step: u64, scalars: &StepScalars) -> Result<()> {
        let Some((name, value)) = scalars.first_non_finite() else {
            return Ok(());
        };
        let last = match checkpoint_dir(&self.out) {
            Some(dir) => format!("the last good checkpoint is {}", dir.display()),
            None => "no checkpoint was written yet".to_string(),
        };
        bail!(
            "non-finite {name} ({value}) at step {}: stopping before its update; {last}",
            step + 1
        )
    }

    /// The schedule spans the config's `steps`: a run resumed with more steps follows the
    /// longer schedule from its checkpoint on (with cosine decay, the rate jumps up there).
    fn learning_rate(&self, step: u64) -> f64 {
        let c = &self.config;
        learning_rate(c.lr, step, c.warmup_steps, c.steps, c.lr_decay)
    }

    /// Loads the newest complete checkpoint in the run directory, which must come from the
    /// same config but for `steps` (see [`check_resumable`]).
    pub fn resume(&mut self) -> Result<RunState> {
        let dir = checkpoint_dir(&self.out).ok_or_else(|| self.no_checkpoint_to_resume())?;
        let state = read_state(&dir)?;
        check_resumable(&state, &self.config, &dir)?;
        restore(
            &dir,
            &self.model,
            &mut self.ema,
            &mut self.optimizer,
            state.step,
        )?;
        Ok(state)
    }

    /// The error of `--resume` when no complete checkpoint exists: why each checkpoint folder is
    /// unusable, or, when there is none, how to start over.
    fn no_checkpoint_to_resume(&self) -> anyhow::Error {
        let out = self.out.display();
        let damaged = super::unusable_checkpoints(&self.out);
        if damaged.is_empty() {
            return anyhow!(
                "--resume: no checkpoint in {out} (a run stopped before its first checkpoint \
                 cannot be resumed; start it again with --overwrite)"
            );
        }
        anyhow!(
            "--resume: no complete checkpoint in {out}: {}; repair or restore the file(s) named \
             (--overwrite would discard these weights)",
            damaged.join("; ")
        )
    }

    /// Moves the weights, EMA shadow and AdamW moments to the trainer's device.
    pub fn move_to_device(&mut self) -> Result<()> {
        self.model.to_device(self.device)?;
        self.ema.to_device(self.device)?;
        self.optimizer.to_device(self.device)?;
        Ok(())
    }

    /// Writes the checkpoint of the run after `step` steps, `seconds` of training in.
    pub fn save_checkpoint(&self, step: u64, seconds: f64) -> Result<()> {
        let state = RunState {
            step,
            config: self.config.clone(),
            seconds,
        };
        save_checkpoint(&self.out, &self.model, &self.ema, &self.optimizer, &state)
    }
}
