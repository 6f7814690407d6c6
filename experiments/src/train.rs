//! The training loop: diffusion loss (+ MoE balance loss) → backward → clip → AdamW → EMA,
//! with JSON-lines metrics, periodic checkpoints and exact resume.
//!
//! Every random draw of step s comes from an RNG seeded by (seed, s), so a resumed run draws
//! exactly what an uninterrupted run would have: N steps + resume + N steps = 2N steps.

use crate::analysis::LayerRouting;
use crate::config::{DataSpec, Objective, TrainConfig};
use crate::data::files::{Cifar10, IdxDataset};
use crate::data::shapes::Shapes;
use crate::data::{batch, Dataset};
use crate::step_profile::StepProfile;
use anyhow::{anyhow, bail, Context, Result};
use ditmoe_autograd::Var;
use ditmoe_diffusion::{flow_interpolate, flow_loss, GaussianDiffusion, Schedule};
use ditmoe_nn::checkpoint::{read_tensors, save_model, write_tensors};
use ditmoe_nn::module::unstack_names;
use ditmoe_nn::optim::{clip_factor, learning_rate, AdamW, Ema};
use ditmoe_nn::{Dit, ForwardOptions, Module};
use ditmoe_tensor::{profile, seeded_rng, DType, Device, SeededRng, Tensor};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;
use std::io::Write;
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

/// The diffusion process of a DDPM objective (`None` for flow).
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

/// The state written next to the weights.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RunState {
    pub step: u64,
    pub config: TrainConfig,
    /// Training wall time up to `step`, over every resumed part of the run.
    #[serde(default)]
    pub seconds: f64,
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

/// How a run shows its progress.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A progress bar (for a terminal) with this label in front.
    Bar(String),
    /// A plain line per logged step, starting with this label.
    Lines(String),
    Quiet,
}

/// How to run [`train`].
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Continue from the checkpoint in the output directory.
    pub resume: bool,
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
            progress,
            stop_after: None,
            metrics: None,
            device: Device::Cpu,
            profile: false,
        }
    }
}

/// One line of the metrics log (`metrics.jsonl`), written every `log_every` steps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    /// Mean diffusion loss over the steps since the previous line.
    pub loss: f64,
    /// Mean variational-bound term (DDPM with learned σ), same window.
    pub vb: Option<f64>,
    /// Mean auxiliary (balance) loss, same window; `None` without one.
    pub aux_loss: Option<f64>,
    /// Gradient norm before clipping, this step.
    pub grad_norm: f64,
    pub lr: f64,
    /// Throughput over the window.
    pub images_per_s: f64,
    /// Training wall time so far, over resumed parts too.
    pub elapsed_s: f64,
    /// Peak heap since the run (or this resumed part of it) started; `None` when the program
    /// does not count allocations.
    pub peak_heap_mib: Option<f64>,
    /// Routing of this step's batch, per MoE block.
    pub routing: Vec<LayerRouting>,
}

/// Reads a metrics log, naming the file and line of anything malformed.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a metrics line", path.display(), i + 1))
        })
        .collect()
}

/// Means of the losses over the steps since the last metrics line.
#[derive(Default)]
struct Window {
    steps: u64,
    loss: f64,
    aux_loss: f64,
    vb: f64,
}

/// Writes the checkpoint directory `out/checkpoint`: each file is written atomically into
/// `checkpoint-new/`, which then replaces the old directory (kept as `checkpoint-old/` until
/// the swap is done), so an interruption never leaves no usable checkpoint.
fn save_checkpoint(
    out: &Path,
    model: &Dit,
    ema: &Ema,
    optimizer: &AdamW,
    state: &RunState,
) -> Result<()> {
    let fresh = out.join("checkpoint-new");
    std::fs::create_dir_all(&fresh).with_context(|| fresh.display().to_string())?;
    save_model(model, fresh.join("model.safetensors"))?;
    // EMA and optimizer state are keyed by the training names; the files by PyTorch's.
    let mut ema_state = model.state_dict();
    ema_state.extend(unstack_names(&ema.shadow));
    let meta = HashMap::from([("config".to_string(), model.config.to_json())]);
    write_tensors(fresh.join("ema.safetensors"), &ema_state, meta)?;
    let opt_meta = HashMap::from([("step".to_string(), optimizer.step.to_string())]);
    write_tensors(
        fresh.join("optimizer.safetensors"),
        &unstack_names(&optimizer.state_dict()),
        opt_meta,
    )?;
    let state_path = fresh.join("state.json");
    std::fs::write(
        &state_path,
        serde_json::to_string_pretty(state).expect("state serialises"),
    )
    .with_context(|| state_path.display().to_string())?;
    let (current, old) = (out.join("checkpoint"), out.join("checkpoint-old"));
    let _ = std::fs::remove_dir_all(&old);
    if current.exists() {
        std::fs::rename(&current, &old).with_context(|| current.display().to_string())?;
    }
    std::fs::rename(&fresh, &current).with_context(|| fresh.display().to_string())?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The latest complete checkpoint directory under `out`, if any.
pub fn checkpoint_dir(out: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint-old"]
        .iter()
        .map(|d| out.join(d))
        .find(|d| d.join("state.json").exists())
}

/// The `state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<RunState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

/// Loads model, EMA and optimizer state from a checkpoint directory.
fn restore(dir: &Path, model: &Dit, ema: &mut Ema, optimizer: &mut AdamW) -> Result<RunState> {
    let state = read_state(dir)?;
    let weights = read_tensors(dir.join("model.safetensors"))?;
    model
        .load_state_dict(&weights.tensors)
        .with_context(|| dir.display().to_string())?;
    let ema_file = model.stack_names(&read_tensors(dir.join("ema.safetensors"))?.tensors)?;
    for name in ema.shadow.clone().keys() {
        let value = ema_file
            .get(name)
            .ok_or_else(|| anyhow!("{}: EMA lacks `{name}`", dir.display()))?;
        ema.shadow.insert(name.clone(), value.clone());
    }
    let opt = model.stack_names(&read_tensors(dir.join("optimizer.safetensors"))?.tensors)?;
    optimizer.load_state_dict(&opt, state.step)?;
    Ok(state)
}

/// Trains per `config`, writing metrics and checkpoints under `out`. With `options.resume`,
/// continues from the checkpoint there (which must come from the same config).
pub fn train(config: &TrainConfig, out: &Path, options: &TrainOptions) -> Result<TrainSummary> {
    let model_config = config.model_config().map_err(anyhow::Error::msg)?;
    let data = open_dataset(&config.data, config.seed)?;
    if data.is_empty() {
        bail!("dataset {} has no images", data.name());
    }
    let (c, h, w) = data.image_shape();
    if (c, h, w)
        != (
            model_config.in_channels,
            model_config.input_size,
            model_config.input_size,
        )
        || data.num_classes() != model_config.num_classes
    {
        bail!("dataset {} gives {c}×{h}×{w} images of {} classes; the model expects {}×{}×{} and {} classes", data.name(), data.num_classes(), model_config.in_channels, model_config.input_size, model_config.input_size, model_config.num_classes);
    }
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let model = Dit::new(model_config.clone(), config.seed)?;
    let params = model.named_parameters();
    let mut optimizer = AdamW::new(config.adamw);
    let mut ema = Ema::new(&params, config.ema_decay);
    let (mut start, mut seconds_before) = (0, 0.0);
    if options.resume {
        let dir = checkpoint_dir(out)
            .ok_or_else(|| anyhow!("--resume: no checkpoint in {}", out.display()))?;
        let state = restore(&dir, &model, &mut ema, &mut optimizer)?;
        if state.config != *config {
            bail!(
                "--resume: the checkpoint in {} was trained with a different config",
                dir.display()
            );
        }
        start = state.step;
        seconds_before = state.seconds;
    }
    // Built and restored on the host, then moved: weights, EMA shadow and AdamW moments.
    model.to_device(options.device)?;
    ema.to_device(options.device)?;
    optimizer.to_device(options.device)?;
    let metrics_path = options
        .metrics
        .clone()
        .unwrap_or_else(|| out.join("metrics.jsonl"));
    if let Some(parent) = metrics_path.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    if options.resume && metrics_path.exists() {
        // Lines logged after the checkpoint was written would be logged again: drop them.
        let kept: Vec<String> = read_metrics(&metrics_path)?
            .iter()
            .filter(|line| line.step <= start)
            .map(|line| serde_json::to_string(line).expect("metrics serialise") + "\n")
            .collect();
        std::fs::write(&metrics_path, kept.concat())
            .with_context(|| metrics_path.display().to_string())?;
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(options.resume)
        .write(true)
        .truncate(!options.resume)
        .open(&metrics_path)
        .with_context(|| metrics_path.display().to_string())?;
    let diffusion = diffusion_of(config, model_config.learn_sigma);
    let bar = match &options.progress {
        Progress::Bar(label) => {
            let bar = indicatif::ProgressBar::new(config.steps);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(label.clone());
            bar.set_position(start);
            Some(bar)
        }
        _ => None,
    };
    ditmoe_tensor::memory::reset_peak();
    let began = Instant::now();
    let mut window_began = Instant::now();
    let mut window = Window::default();
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let mut step_profile = None;
    let end = options
        .stop_after
        .map_or(config.steps, |s| s.min(config.steps));
    for step in start..end {
        if options.profile && step == start + 1 {
            profile::enable();
        }
        let data_section = profile::section("data");
        let rng = &mut step_rng(config.seed, step);
        let indices: Vec<usize> = (0..config.batch_size)
            .map(|_| rng.random_range(0..data.len()))
            .collect();
        let (x0, y) = batch(data.as_ref(), &indices, config.flip, rng)?;
        let noise = Tensor::randn(x0.shape(), 0.0, 1.0, DType::F32, rng)?;
        let record = (step + 1) % config.log_every == 0;
        // The model input and model-time of this objective; DDPM keeps its integer steps.
        let (input, t_model, ddpm_steps, flow_target) = match config.objective {
            Objective::Ddpm { steps, .. } => {
                let t: Vec<usize> = (0..config.batch_size)
                    .map(|_| rng.random_range(0..steps))
                    .collect();
                let t_model = Tensor::from_vec(t.iter().map(|&t| t as f32).collect(), &[t.len()])?;
                (diffusion.q_sample(&x0, &t, &noise)?, t_model, Some(t), None)
            }
            Objective::Flow { time_scale } => {
                // Logit-normal t = sigmoid(n), n ~ N(0, 1).
                let t: Vec<f64> = (0..config.batch_size)
                    .map(|_| {
                        let n: f64 = StandardNormal.sample(rng);
                        1.0 / (1.0 + (-n).exp())
                    })
                    .collect();
                let (z, target) = flow_interpolate(&x0, &noise, &t)?;
                let t_model = Tensor::from_vec(
                    t.iter().map(|&t| (t * time_scale) as f32).collect(),
                    &[t.len()],
                )?;
                (z, t_model, None, Some(target))
            }
        };
        // Batches are drawn on the host (the same draws on every device), then moved.
        let device = options.device;
        let (x0, noise, input) = (
            x0.to_device(device)?,
            noise.to_device(device)?,
            input.to_device(device)?,
        );
        let (t_model, y) = (t_model.to_device(device)?, y.to_device(device)?);
        let flow_target = flow_target.map(|t| t.to_device(device)).transpose()?;
        drop(data_section);
        let forward_options = ForwardOptions {
            label_dropout: Some(rng),
            record_routing: record,
        };
        let result = model.forward(&Var::constant(input.clone()), &t_model, &y, forward_options)?;
        let loss_section = profile::section("loss");
        let (diffusion_loss, vb) = match (ddpm_steps, flow_target) {
            (Some(t), _) => {
                let terms = diffusion.training_losses(&result.out, &x0, &input, &t, &noise)?;
                (terms.total, terms.vb)
            }
            (None, Some(target)) => (flow_loss(&result.out, &target)?, None),
            (None, None) => unreachable!("every objective sets one"),
        };
        let (aux, routing) = (result.aux_loss, result.routing);
        let total = match &aux {
            Some(aux) => diffusion_loss.add(aux)?,
            None => diffusion_loss.clone(),
        };
        drop(loss_section);
        total.backward()?;
        let optimizer_section = profile::section("optimizer");
        // The losses come back with the gradient norm: one wait for the device per step.
        let losses: Vec<Tensor> = [
            Some(&diffusion_loss),
            Some(&total),
            aux.as_ref(),
            vb.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(Var::value)
        .collect();
        let clip = clip_factor(
            &model.named_gradients(),
            config.grad_clip,
            &losses.iter().collect::<Vec<_>>(),
        )?;
        // In order: the diffusion loss, the total, then the aux loss and VB term when present.
        let mut values = clip.scalars.iter().copied();
        let (loss_value, total_value) = (values.next(), values.next());
        let aux_value = aux.as_ref().and_then(|_| values.next());
        let vb_value = vb.as_ref().and_then(|_| values.next());
        let (loss_value, grad_norm) = (loss_value.expect("read back"), clip.norm);
        if !total_value.expect("read back").is_finite() {
            let last = checkpoint_dir(out).map_or("none was written yet".to_string(), |d| {
                d.display().to_string()
            });
            bail!("non-finite loss at step {step}: stopping; the last good checkpoint is {last}");
        }
        let lr = learning_rate(
            config.lr,
            step,
            config.warmup_steps,
            config.steps,
            config.lr_decay,
        );
        optimizer.step(&params, lr, clip.factor)?;
        params.iter().for_each(|(_, p)| p.zero_grad());
        ema.update(&params)?;
        drop(optimizer_section);
        let _logging_section = profile::section("logging");
        if first_loss.is_nan() {
            first_loss = loss_value;
        }
        last_loss = loss_value;
        window.steps += 1;
        window.loss += loss_value;
        window.aux_loss += aux_value.unwrap_or(0.0);
        window.vb += vb_value.unwrap_or(0.0);
        if record {
            let n = window.steps as f64;
            let images_per_s = n * config.batch_size as f64 / window_began.elapsed().as_secs_f64();
            let loss = window.loss / n;
            let routing: Vec<LayerRouting> =
                routing.iter().flatten().map(LayerRouting::of).collect();
            let peak = ditmoe_tensor::memory::is_counting()
                .then(|| ditmoe_tensor::memory::peak_bytes() as f64 / (1u64 << 20) as f64);
            let line = MetricsLine {
                step: step + 1,
                loss,
                vb: vb.is_some().then_some(window.vb / n),
                aux_loss: aux.is_some().then_some(window.aux_loss / n),
                grad_norm,
                lr,
                images_per_s,
                elapsed_s: seconds_before + began.elapsed().as_secs_f64(),
                peak_heap_mib: peak,
                routing,
            };
            let text = serde_json::to_string(&line).expect("metrics serialise");
            writeln!(metrics, "{text}").with_context(|| metrics_path.display().to_string())?;
            match (&bar, &options.progress) {
                (Some(bar), _) => bar.set_message(format!("loss {loss:.4} · {images_per_s:.0} img/s")),
                (None, Progress::Lines(label)) => eprintln!("{label}step {:>6}/{} loss {loss:.4} grad-norm {grad_norm:.3} lr {lr:.2e} {images_per_s:.0} img/s", step + 1, config.steps),
                _ => {}
            }
            window_began = Instant::now();
            window = Window::default();
        }
        if let Some(bar) = &bar {
            bar.set_position(step + 1);
        }
        if options.profile && step + 1 == end && step > start {
            // Before the final checkpoint, which a short profiled run would be all about.
            step_profile = Some(StepProfile::new(&profile::finish(), end - start - 1));
        }
        if (step + 1) % config.checkpoint_every == 0 || step + 1 == end {
            let _checkpoint_section = profile::section("checkpoint");
            save_checkpoint(
                out,
                &model,
                &ema,
                &optimizer,
                &RunState {
                    step: step + 1,
                    config: config.clone(),
                    seconds: seconds_before + began.elapsed().as_secs_f64(),
                },
            )?;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(TrainSummary {
        first_loss,
        last_loss,
        steps: end - start,
        seconds: began.elapsed().as_secs_f64(),
        profile: step_profile,
    })
}

/// The model weights of a checkpoint directory: EMA if present.
pub fn load_for_sampling(dir: &Path) -> Result<(Dit, TrainConfig)> {
    if !dir.join("state.json").exists() {
        bail!("{} is not a checkpoint directory written by `ditmoe train` (expected {} inside it, e.g. runs/tiny-moe/checkpoint)", dir.display(), "state.json");
    }
    let state = read_state(dir)?;
    let weights = ["ema.safetensors", "model.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("{}: no ema.safetensors or model.safetensors", dir.display()))?;
    let model = ditmoe_nn::checkpoint::load_model(&weights)?;
    Ok((model, state.config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ditmoe_nn::checkpoint::read_tensors;
    use ditmoe_tensor::compare::max_abs_difference;

    /// A model small enough to train a few steps in a test.
    fn tiny_config() -> TrainConfig {
        let text = r#"
            steps = 6
            batch_size = 4
            lr = 1e-3
            warmup_steps = 2
            lr_decay = { cosine = { min_lr = 1e-4 } }
            checkpoint_every = 3
            log_every = 2
            objective = { kind = "ddpm", steps = 100 }
            data = { kind = "shapes", size = 8, count = 100 }
            [model]
            input_size = 8
            patch_size = 4
            in_channels = 3
            hidden_size = 16
            depth = 2
            num_heads = 2
            num_classes = 10
            moe = { num_experts = 4, expert_hidden = 16, shared_expert_hidden = 8, routing = { kind = "token_choice", top_k = 2 } }
        "#;
        TrainConfig::from_toml(text, "test").unwrap()
    }

    fn quiet() -> TrainOptions {
        TrainOptions::new(Progress::Quiet)
    }
    fn stop_after(step: u64) -> TrainOptions {
        TrainOptions {
            stop_after: Some(step),
            ..quiet()
        }
    }
    fn resume() -> TrainOptions {
        TrainOptions {
            resume: true,
            ..quiet()
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ditmoe-train-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn resuming_gives_the_same_weights_as_an_uninterrupted_run() {
        let config = tiny_config();
        let (whole, split) = (temp("whole"), temp("split"));
        train(&config, &whole, &quiet()).unwrap();
        train(&config, &split, &stop_after(3)).unwrap();
        // An interruption after logging step 4 but before checkpointing it: the resumed run
        // logs step 4 again, so the stale line must go.
        let metrics = split.join("metrics.jsonl");
        let mut stale = read_metrics(&metrics).unwrap().pop().unwrap();
        stale.step = 4;
        let text = std::fs::read_to_string(&metrics).unwrap();
        std::fs::write(
            &metrics,
            text + &serde_json::to_string(&stale).unwrap() + "\n",
        )
        .unwrap();
        let summary = train(&config, &split, &resume()).unwrap();
        assert_eq!(summary.steps, 3);
        for file in [
            "model.safetensors",
            "ema.safetensors",
            "optimizer.safetensors",
        ] {
            let a = read_tensors(whole.join("checkpoint").join(file))
                .unwrap()
                .tensors;
            let b = read_tensors(split.join("checkpoint").join(file))
                .unwrap()
                .tensors;
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
            for (name, t) in &a {
                assert_eq!(t.to_vec_f64(), b[name].to_vec_f64(), "{file}: {name}");
            }
        }
        let lines = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, vec![2, 4, 6], "metrics continue across the resume");
        for dir in [whole, split] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn training_on_the_gpu_follows_the_cpu_run() {
        // cuda:0 is the real GPU when the driver has one, else the PTX emulator; exact f32
        // products (tensor cores off) so the two runs agree to f32 rounding.
        ditmoe_cuda::registry::device_or_emulator(0).set_tensor_core_matmul(false);
        let on_gpu = TrainOptions {
            device: Device::Cuda(0),
            ..quiet()
        };
        let mut config = tiny_config();
        config.steps = 2;
        config.log_every = 1;
        // DDPM with the learned-variance bound, then rectified flow.
        for objective in [config.objective, Objective::Flow { time_scale: 1000.0 }] {
            config.objective = objective;
            let (cpu, gpu) = (temp("cpu"), temp("gpu"));
            train(&config, &cpu, &quiet()).unwrap();
            train(&config, &gpu, &on_gpu).unwrap();
            let (a, b) = (
                read_metrics(&cpu.join("metrics.jsonl")).unwrap(),
                read_metrics(&gpu.join("metrics.jsonl")).unwrap(),
            );
            assert_eq!(a.len(), 2);
            for (x, y) in a.iter().zip(&b) {
                let what = format!("{:?}: loss {} vs {}", config.objective, x.loss, y.loss);
                assert!((x.loss - y.loss).abs() <= 1e-4 * x.loss.abs(), "{what}");
                assert!(
                    (x.grad_norm - y.grad_norm).abs() <= 1e-3 * x.grad_norm,
                    "{what}"
                );
            }
            // The checkpoint was written from the GPU run and holds the same weights.
            let file = |dir: &Path| read_tensors(dir.join("checkpoint/model.safetensors")).unwrap();
            let (wa, wb) = (file(&cpu).tensors, file(&gpu).tensors);
            for (name, t) in &wa {
                let (x, y) = (t.to_vec_f64(), wb[name].to_vec_f64());
                let diff = max_abs_difference(&x, &y);
                assert!(diff < 1e-4, "{name}: weights differ by {diff}");
            }
            for dir in [cpu, gpu] {
                std::fs::remove_dir_all(dir).unwrap();
            }
        }
    }

    #[test]
    fn a_training_step_on_the_gpu_waits_for_it_once() {
        // cuda:3, which no other test uses, so its traffic is this test's alone; mixed
        // precision, so the MoE layers run their grouped kernels with device-side schedules.
        let gpu = ditmoe_cuda::registry::device_or_emulator(3);
        gpu.set_tensor_core_matmul(true);
        let mut config = tiny_config();
        config.log_every = 100; // no routing records to download
        let downloads = |steps: u64| {
            let options = TrainOptions {
                device: Device::Cuda(3),
                ..stop_after(steps)
            };
            let dir = temp(&format!("one-wait-{steps}"));
            let before = gpu.traffic();
            train(&config, &dir, &options).unwrap();
            std::fs::remove_dir_all(dir).unwrap();
            (gpu.traffic() - before).downloads
        };
        // Two more steps, the same checkpoint at the end: two more downloads, the losses and
        // the gradient norm of each step together.
        assert_eq!(downloads(3) - downloads(1), 2);
    }

    #[test]
    fn sampling_on_the_gpu_gives_the_cpu_images() {
        use crate::generate::{generate, Generation};
        use ditmoe_diffusion::SamplerKind;
        ditmoe_cuda::registry::device_or_emulator(0).set_tensor_core_matmul(false);
        let mut config = tiny_config();
        config.steps = 1;
        let dir = temp("sample-gpu");
        train(&config, &dir, &quiet()).unwrap();
        let (model, config) = load_for_sampling(&dir.join("checkpoint")).unwrap();
        let images = |device| {
            let generation = Generation {
                sampler: SamplerKind::Ddim { eta: 0.0 },
                steps: 2,
                cfg_scale: 2.0,
                seed: 5,
                device,
            };
            generate(&model, &config, &[0, 3, 7], &generation).unwrap()
        };
        let on_gpu = images(Device::Cuda(0));
        assert_eq!(on_gpu.device(), Device::Cpu, "images come back to the host");
        let on_cpu = images(Device::Cpu);
        let (a, b) = (on_cpu.to_vec_f64(), on_gpu.to_vec_f64());
        let diff = max_abs_difference(&a, &b);
        assert!(diff < 1e-4, "images differ by {diff}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_profiled_run_says_where_the_step_time_goes() {
        let options = TrainOptions {
            profile: true,
            ..stop_after(4)
        };
        let summary = train(&tiny_config(), &temp("profile"), &options).unwrap();
        let profile = summary.profile.expect("four steps were run with profiling");
        assert_eq!(
            profile.steps, 3,
            "the first step (kernel loading) is left out"
        );
        for section in [
            "attention",
            "routing",
            "experts",
            "shared expert",
            "optimizer",
            "data",
        ] {
            assert!(profile.share_of(section) > 0.0, "{section}: {profile:?}");
        }
        for section in ["attention", "routing", "experts"] {
            assert!(
                profile
                    .rows
                    .iter()
                    .any(|r| r.section == section && r.pass == profile::Pass::Backward),
                "{section} has a backward row"
            );
        }
        let shares: f64 = profile.rows.iter().map(|r| r.share).sum();
        assert!((shares - 1.0).abs() < 1e-9);
        assert!(profile.kernels.is_empty(), "no GPU kernels on the CPU");
        assert!(train(&tiny_config(), &temp("unprofiled"), &stop_after(2))
            .unwrap()
            .profile
            .is_none());
    }

    #[test]
    fn resume_needs_a_matching_checkpoint() {
        let config = tiny_config();
        let dir = temp("mismatch");
        assert!(train(&config, &dir, &resume())
            .unwrap_err()
            .to_string()
            .contains("no checkpoint"));
        train(&config, &dir, &stop_after(3)).unwrap();
        let mut other = config.clone();
        other.lr = 5e-4;
        assert!(train(&other, &dir, &resume())
            .unwrap_err()
            .to_string()
            .contains("different config"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_dataset_that_does_not_fit_the_model_is_refused() {
        let mut config = tiny_config();
        config.data = DataSpec::Idx {
            images: "/nonexistent/images".into(),
            labels: "/nonexistent/labels".into(),
        };
        let err = train(&config, &temp("data"), &quiet())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/images"), "{err}");
    }
}
