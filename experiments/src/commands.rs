//! The subcommands: `zoo`, `forward`, `train`, `sample` and `ablate`.

use crate::console::{eprintln, print, println};
use ditmoe_autograd::Var;
use ditmoe_nn::accounting::{check_memory, machine_memory, memory_estimate, model_cost, Workload};
use ditmoe_nn::checkpoint::{load_model_within, read_tensors, write_tensors};
use ditmoe_nn::files::same_file;
use ditmoe_nn::presets::{preset, preset_names};
use ditmoe_nn::{DitConfig, ForwardOptions};
use ditmoe_tensor::{DType, Tensor};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Serialize)]
struct ZooRow {
    name: String,
    params_total: u64,
    params_activated: u64,
    gmacs: f64,
}

/// Prints every preset's size and cost.
pub fn zoo(image_size: usize, json: bool) -> Result<(), String> {
    let rows = preset_names()
        .into_iter()
        .map(|name| {
            let config = preset(&name, image_size)?;
            config
                .validate()
                .map_err(|e| format!("--image-size {image_size}: preset {name}: {e}"))?;
            let cost = model_cost(&config);
            Ok(ZooRow {
                name,
                params_total: cost.params_total,
                params_activated: cost.params_activated,
                gmacs: cost.gmacs,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if json {
        let text = serde_json::to_string_pretty(&rows).expect("rows serialise") + "\n";
        return print(&text).map_err(|e| e.to_string());
    }
    let mut table = format!(
        "{:<24} {:>16} {:>18} {:>10}\n",
        "preset", "params (total)", "params (activated)", "GMACs"
    );
    for row in rows {
        table += &format!(
            "{:<24} {:>16} {:>18} {:>10.2}\n",
            row.name, row.params_total, row.params_activated, row.gmacs
        );
    }
    table += &format!("(image size {image_size}: latent presets see {0}×{0}×4 latents; tiny-* presets are 16×16 RGB)\n", image_size / 8);
    print(&table).map_err(|e| e.to_string())
}

/// The memory a run must fit in: this machine's, unless `--ignore-memory-limit` (`ignore`).
fn memory_limit(ignore: bool) -> Option<f64> {
    if ignore {
        None
    } else {
        machine_memory()
    }
}

/// Loads a checkpoint, runs it on `inputs` in evaluation mode, writes `out` and, for every
/// MoE block, the router probabilities and how many tokens each expert took.
pub fn forward(
    checkpoint: &Path,
    inputs: &Path,
    out: &Path,
    ignore_memory_limit: bool,
) -> Result<(), String> {
    refuse_output_onto_inputs(out, &[("--checkpoint", checkpoint), ("--inputs", inputs)])?;
    let memory = memory_limit(ignore_memory_limit);
    let model = load_model_within(checkpoint, memory).map_err(|e| e.to_string())?;
    let tensors = read_tensors(inputs).map_err(|e| e.to_string())?.tensors;
    let get = |name: &str, dtype: DType| {
        let t = tensors
            .get(name)
            .ok_or_else(|| format!("{}: missing input tensor `{name}`", inputs.display()))?;
        t.to_dtype(dtype)
            .map_err(|e| format!("{}: input `{name}`: {e}", inputs.display()))
    };
    if let Some(y) = tensors.get("y") {
        check_label_dtype(y).map_err(|e| format!("{}: {e}", inputs.display()))?;
    }
    let (x, t, y) = (
        get("x", DType::F32)?,
        get("t", DType::F32)?,
        get("y", DType::I64)?,
    );
    check_forward_inputs(&model.config, &x, &t, &y)
        .map_err(|e| format!("{}: {e}", inputs.display()))?;
    let images = x.shape()[0];
    let estimate = memory_estimate(&model.config, Workload::Inference { batch: images });
    let what = format!("model + activations for {images} images");
    check_memory(&estimate, &what, memory)?;
    let result = ditmoe_autograd::no_grad(|| {
        model.forward(
            &Var::constant(x),
            &t,
            &y,
            ForwardOptions {
                label_dropout: None,
                record_routing: true,
                training: false,
                prediction_target: None,
            },
        )
    })
    .map_err(|e| format!("forward: {e}"))?;
    let mut written = BTreeMap::from([("out".to_string(), result.out.value())]);
    for (block, record) in result.routing.iter().enumerate() {
        if let Some(record) = record {
            written.insert(
                format!("router_probs.blocks.{block}"),
                record.scores.clone(),
            );
            let counts: Vec<i64> = record
                .decision
                .expert_counts()
                .into_iter()
                .map(|c| c as i64)
                .collect();
            let experts = counts.len();
            written.insert(
                format!("expert_counts.blocks.{block}"),
                Tensor::from_vec(counts, &[experts]).map_err(|e| e.to_string())?,
            );
        }
    }
    let mark = HashMap::from([(FORWARD_OUTPUT.0.to_string(), FORWARD_OUTPUT.1.to_string())]);
    write_tensors(out, &written, mark).map_err(|e| e.to_string())?;
    println(&format!(
        "wrote {} tensor(s) to {}",
        written.len(),
        out.display()
    ))
    .map_err(|e| e.to_string())
}

/// Refuses labels `y` that are not integers: a float label (1.7, NaN, 1e30) has no honest
/// cast to a class.
fn check_label_dtype(y: &Tensor) -> Result<(), String> {
    match y.dtype() {
        DType::I64 => Ok(()),
        other => Err(format!(
            "input `y`: expected integer class labels (dtype I64), found dtype {other:?}"
        )),
    }
}

/// The metadata entry that marks a file written by `forward`: the only kind of existing file
/// `forward --out` replaces, so it can never overwrite a checkpoint, a metrics log or an input.
const FORWARD_OUTPUT: (&str, &str) = ("written_by", "ditmoe forward");

/// An error unless `--out` can be written without replacing one of the command's `inputs`
/// (flag, path) or any file that is not an earlier output of `forward`.
fn refuse_output_onto_inputs(out: &Path, inputs: &[(&str, &Path)]) -> Result<(), String> {
    let out_text = out.display();
    ditmoe_nn::files::write_destination(out).map_err(|e| format!("--out {out_text}: {e}"))?;
    if let Some((flag, input)) = inputs.iter().find(|(_, input)| same_file(out, input)) {
        return Err(format!(
            "--out {out_text} is the same file as {flag} {}: choose another output path",
            input.display()
        ));
    }
    let written_by_forward = |file: ditmoe_nn::checkpoint::TensorFile| {
        file.metadata.get(FORWARD_OUTPUT.0).map(String::as_str) == Some(FORWARD_OUTPUT.1)
    };
    if out.exists() && !read_tensors(out).is_ok_and(written_by_forward) {
        return Err(format!(
            "--out {out_text} already exists and was not written by `ditmoe forward`: forward \
             replaces only its own outputs; remove the file or choose another path"
        ));
    }
    Ok(())
}

/// An error unless `sample --out` names a `.png` file outside the checkpoint directory (so
/// that no checkpoint file is ever replaced by the grid).
fn check_sample_out(out: &Path, checkpoint: &Path) -> Result<(), String> {
    let is_png = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(format!(
            "--out {}: expected a path ending in .png (sample writes a PNG image)",
            out.display()
        ));
    }
    let destination = ditmoe_nn::files::write_destination(out)
        .map_err(|e| format!("--out {}: {e}", out.display()))?;
    let folder = destination.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    let inside = folder.is_some_and(|folder| same_file(folder, checkpoint));
    let checkpoint_files: Vec<std::path::PathBuf> = std::fs::read_dir(checkpoint)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    if inside || checkpoint_files.iter().any(|file| same_file(out, file)) {
        return Err(format!(
            "--out {}: that is inside the checkpoint directory {}; write the grid elsewhere",
            out.display(),
            checkpoint.display()
        ));
    }
    Ok(())
}

/// Checks `forward`'s inputs against the model: `x` `[N, C, H, W]`, `t` `[N]` finite, `y` `[N]`
/// labels in `0..num_classes` (`num_classes` itself, the null label, where the model has it).
fn check_forward_inputs(
    config: &DitConfig,
    x: &Tensor,
    t: &Tensor,
    y: &Tensor,
) -> Result<(), String> {
    let (side, channels) = (config.input_size, config.in_channels);
    let n = match x.shape() {
        &[n, c, h, w] if n >= 1 && [c, h, w] == [channels, side, side] => n,
        found => {
            return Err(format!(
                "input `x`: expected shape [N, {channels}, {side}, {side}] with N >= 1 (the model takes {channels} channels of {side}×{side}), found {found:?}"
            ))
        }
    };
    for (name, tensor) in [("t", t), ("y", y)] {
        if tensor.shape() != [n] {
            return Err(format!(
                "input `{name}`: expected shape [{n}] (one per image of x), found {:?}",
                tensor.shape()
            ));
        }
    }
    if let Some(bad) = t.to_vec_f64().iter().find(|v| !v.is_finite()) {
        return Err(format!("input `t`: expected finite timesteps, found {bad}"));
    }
    let null = usize::from(config.class_dropout_prob > 0.0);
    let labels = config.num_classes + null;
    let values = y.values::<i64>().map_err(|e| format!("input `y`: {e}"))?;
    if let Some((i, label)) = values
        .iter()
        .enumerate()
        .find(|(_, &l)| !(0..labels as i64).contains(&l))
    {
        let null_note = if null == 1 {
            format!(", {} being the null label of guidance", config.num_classes)
        } else {
            String::new()
        };
        return Err(format!(
            "input `y` is out of range: expected labels in 0..={}{null_note}, found {label} at index {i}",
            labels - 1
        ));
    }
    Ok(())
}

/// The options of `ditmoe train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<std::path::PathBuf>,
    #[arg(long)]
    pub preset: Option<String>,
    /// Override the config's number of steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Output directory (default: runs/<name>).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Continue from the checkpoint in the output directory; with a larger --steps, extend it.
    #[arg(long)]
    pub resume: bool,
    /// Replace the run already in the output directory (its checkpoint and metrics are removed
    /// once the new run starts).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda or cuda:N (DITMOE_CUDA_EMULATOR=1 runs cuda in the PTX emulator).
    #[arg(long, default_value = "cpu")]
    pub device: ditmoe_tensor::Device,
    /// Print where each step's time goes (attention, routing, experts, optimizer, … forward
    /// and backward) and write it to OUT/profile.md; profiled steps run slower.
    #[arg(long)]
    pub profile: bool,
    /// Run even when the model and training state are estimated not to fit in memory.
    #[arg(long)]
    pub ignore_memory_limit: bool,
}

/// The run name of a config file, its stem (`runs/<name>` is the default `--out`); `run` when
/// the stem could not name a folder of its own (empty, `.`, `..`, or holding a separator).
fn run_name(config: &Path) -> String {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem.is_empty() || stem == "." || stem == ".." || stem.contains(std::path::MAIN_SEPARATOR) {
        "run".to_string()
    } else {
        stem
    }
}

/// `ditmoe train`: trains from a config file or preset and prints a summary.
pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    use crate::config::TrainConfig;
    let device = args.device;
    let (mut config, name) = match (args.config.as_deref(), args.preset.as_deref()) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            (
                TrainConfig::from_toml(&text, &path.display().to_string())
                    .map_err(anyhow::Error::msg)?,
                run_name(path),
            )
        }
        (None, Some(name)) => (
            TrainConfig::preset(name).map_err(anyhow::Error::msg)?,
            name.to_string(),
        ),
        _ => anyhow::bail!("give exactly one of --config FILE or --preset NAME"),
    };
    if let Some(steps) = args.steps {
        config.steps = steps;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    config.validate().map_err(anyhow::Error::msg)?;
    config
        .check_training_memory(memory_limit(args.ignore_memory_limit))
        .map_err(anyhow::Error::msg)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("runs").join(&name));
    if let Some(ablation) = crate::ablate::enclosing_ablation(&out) {
        anyhow::bail!(
            "--out {}: that is inside the ablation directory {}, whose runs `ditmoe ablate --out {0}` \
             owns; choose another --out",
            out.display(),
            ablation.display()
        );
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    device.ensure_available()?;
    let replacing = if args.overwrite {
        " (--overwrite: a run there is replaced once this one starts)"
    } else {
        ""
    };
    eprintln(&format!(
        "training {name} for {} steps into {}{replacing} on {device} ({} CPU threads)",
        config.steps,
        out.display(),
        ditmoe_tensor::parallel::num_threads()
    ));
    use crate::train::{Progress, TrainOptions};
    let progress = if terminal {
        Progress::Bar(name.clone())
    } else {
        Progress::Lines(String::new())
    };
    let options = TrainOptions {
        resume: args.resume,
        overwrite: args.overwrite,
        device,
        profile: args.profile,
        ..TrainOptions::new(progress)
    };
    let summary = crate::train::train(&config, &out, &options)?;
    if summary.steps == 0 {
        return println(&format!(
            "nothing to do: the checkpoint in {} is at step {} already",
            out.display(),
            config.steps
        ));
    }
    if let Some(profile) = &summary.profile {
        let text = profile.to_markdown(&device.hardware()?);
        let path = out.join("profile.md");
        ditmoe_nn::files::write_atomically(&path, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println(&format!("{text}(written to {})", path.display()))?;
    }
    println(&format!(
        "trained {} steps in {:.1} s: diffusion loss {:.4} → {:.4}; checkpoint in {}",
        summary.steps,
        summary.seconds,
        summary.first_loss,
        summary.last_loss,
        out.join("checkpoint").display()
    ))
}

/// The options of `ditmoe sample`.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// A checkpoint directory written by `ditmoe train` (e.g. runs/tiny-moe/checkpoint).
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// Number of samples (rounded up to a multiple of the class count).
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Classifier-free guidance scale (default: the training config's).
    #[arg(long)]
    pub cfg: Option<f64>,
    /// ddpm | ddim | euler (default: the training config's).
    #[arg(long)]
    pub sampler: Option<String>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value = "grid.png")]
    pub out: std::path::PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or cuda:N: where the model runs.
    #[arg(long, default_value = "cpu")]
    pub device: ditmoe_tensor::Device,
    /// Run even when the model and the samples are estimated not to fit in memory.
    #[arg(long)]
    pub ignore_memory_limit: bool,
}

/// `ditmoe sample`: a grid of class-conditional samples from a checkpoint directory. Every
/// flag is checked, and the memory the samples need estimated, before the weights are loaded.
pub fn sample(args: &SampleArgs) -> anyhow::Result<()> {
    use crate::config::{check_cfg_scale, limits};
    use crate::generate::{generate, sample_labels, Generation};
    use ditmoe_diffusion::SamplerKind;
    let SampleArgs {
        checkpoint,
        n,
        cfg,
        sampler,
        steps,
        out,
        seed,
        device,
        ignore_memory_limit,
    } = args;
    let flag = |name: &str| ditmoe_nn::Field::root(name);
    let message = anyhow::Error::msg;
    flag("--n")
        .positive_count(*n, limits::SAMPLES)
        .map_err(message)?;
    let sampler = match sampler.as_deref() {
        None => None,
        Some("ddpm") => Some(SamplerKind::Ddpm),
        Some("ddim") => Some(SamplerKind::Ddim { eta: 0.0 }),
        Some("euler") => Some(SamplerKind::Euler),
        Some(other) => anyhow::bail!("unknown sampler `{other}` (expected ddpm, ddim or euler)"),
    };
    check_sample_out(out, checkpoint).map_err(message)?;
    let config = crate::train::read_state(checkpoint)?.config;
    if let Some(sampler) = sampler {
        config
            .check_sampler(sampler, &flag("--sampler"))
            .map_err(message)?;
    }
    if let Some(steps) = steps {
        config
            .check_sample_steps(*steps, &flag("--steps"))
            .map_err(message)?;
    }
    if let Some(cfg) = cfg {
        check_cfg_scale(*cfg, &flag("--cfg")).map_err(message)?;
    }
    let model_config = config.model_config().map_err(message)?;
    let classes = model_config.num_classes;
    let per_class = n.div_ceil(classes).max(1);
    let labels = sample_labels(classes, per_class);
    if labels.len() > limits::SAMPLES {
        anyhow::bail!(
            "--n {n}: rounded up to a multiple of the {classes} classes that is {} samples, more than the {} allowed; give --n {} or less",
            labels.len(),
            limits::SAMPLES,
            limits::SAMPLES / classes * classes
        );
    }
    // Guidance runs the model on each image with and without its label.
    let images = 2 * labels.len();
    let estimate = memory_estimate(&model_config, Workload::Inference { batch: images });
    let what = format!("model + activations for {} images", labels.len());
    let memory = memory_limit(*ignore_memory_limit);
    check_memory(&estimate, &what, memory).map_err(message)?;
    device.ensure_available()?;
    let (model, config) = crate::train::load_for_sampling_within(checkpoint, memory)?;
    let scale = cfg.unwrap_or(config.sample.cfg_scale);
    let generation = Generation {
        sampler: sampler.unwrap_or(config.sampler()),
        steps: steps.unwrap_or(config.sample_steps()),
        cfg_scale: scale,
        seed: *seed,
        device: *device,
    };
    let images = generate(&model, &config, &labels, &generation)?;
    crate::grid::write_grid(out, &images, classes, &(0..classes).collect::<Vec<_>>())?;
    println(&format!(
        "wrote {} samples ({} per class, cfg {scale}) to {}",
        labels.len(),
        per_class,
        out.display()
    ))?;
    if let Ok(data) = crate::train::open_dataset(&config.data, config.seed) {
        let legend: Vec<String> = (0..classes)
            .map(|c| format!("{c} {}", data.class_name(c)))
            .collect();
        println(&format!("rows: {}", legend.join(", ")))?;
    }
    Ok(())
}

/// `ditmoe ablate`: runs the routing ablation and says where the report is.
pub fn ablate(
    preset: String,
    out: std::path::PathBuf,
    variants: Vec<String>,
    seed: Option<u64>,
    device: ditmoe_tensor::Device,
    ignore_memory_limit: bool,
) -> anyhow::Result<()> {
    use crate::ablate::{ablate, AblateOptions};
    device.ensure_available()?;
    let began = std::time::Instant::now();
    let options = AblateOptions {
        preset,
        out,
        variants,
        seed,
        progress_bars: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        quiet: false,
        command: std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        device,
        memory_bytes: memory_limit(ignore_memory_limit),
    };
    let report = ablate(&options)?;
    println(&format!(
        "wrote {} in {:.0} s",
        report.display(),
        began.elapsed().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_name_is_the_config_stem_unless_it_cannot_be_a_folder() {
        let name = |path: &str| run_name(Path::new(path));
        assert_eq!(name("configs/tiny-moe.toml"), "tiny-moe");
        assert_eq!(name("...toml"), "run");
        assert_eq!(name("..toml"), "run");
        assert_eq!(name(".toml"), ".toml", "a dotfile's stem is its name");
        assert_eq!(name("/"), "run");
    }
}
