//! Checkpoints: the model, its EMA, the AdamW moments and the run state, written so that an
//! interruption never leaves no usable checkpoint, and read back to resume or to sample.
//!
//! A save writes `checkpoint-new/` (`state.json` last, everything synced), moves `checkpoint/`
//! aside to `checkpoint-old/`, renames `checkpoint-new/` to `checkpoint/` and removes
//! `checkpoint-old/`. A kill at any moment leaves some of the three; a directory is complete
//! when all its files are there and its `state.json` reads, and [`checkpoint_dir`] picks the
//! complete one of the highest step. The next save first settles the directory on that one
//! ([`settle`]), so it never removes the only good copy.

use crate::config::TrainConfig;
use anyhow::{anyhow, bail, Context, Result};
use ditmoe_nn::checkpoint::{read_tensors, save_model, write_tensors};
use ditmoe_nn::module::unstack_names;
use ditmoe_nn::optim::{AdamW, Ema};
use ditmoe_nn::{Dit, Module};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The state written next to the weights.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    pub step: u64,
    pub config: TrainConfig,
    /// Training wall time up to `step`, over every resumed part of the run.
    #[serde(default)]
    pub seconds: f64,
}

/// Where a checkpoint can be under the run directory, preferred in this order at equal steps.
const CURRENT: &str = "checkpoint";
const FRESH: &str = "checkpoint-new";
const OLD: &str = "checkpoint-old";
pub const CHECKPOINT_DIRS: [&str; 3] = [CURRENT, FRESH, OLD];

/// The files of a checkpoint; `state.json` is written last.
const FILES: [&str; 4] = [
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
];

/// Writes the checkpoint of `state.step` as `out/checkpoint` (see the module docs for the
/// sequence and what an interruption leaves).
pub(super) fn save_checkpoint(
    out: &Path,
    model: &Dit,
    ema: &Ema,
    optimizer: &AdamW,
    state: &RunState,
) -> Result<()> {
    settle(out)?;
    let (current, fresh, old) = (out.join(CURRENT), out.join(FRESH), out.join(OLD));
    write_checkpoint(&fresh, model, ema, optimizer, state)?;
    if current.exists() {
        std::fs::rename(&current, &old).with_context(|| current.display().to_string())?;
    }
    std::fs::rename(&fresh, &current).with_context(|| fresh.display().to_string())?;
    remove_if_present(&old)?;
    sync_dir(out)
}

/// Writes every file of a checkpoint into `dir`, `state.json` last, each synced to disk.
fn write_checkpoint(
    dir: &Path,
    model: &Dit,
    ema: &Ema,
    optimizer: &AdamW,
    state: &RunState,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    save_model(model, dir.join("model.safetensors"))?;
    // EMA and optimizer state are keyed by the training names; the files by PyTorch's.
    let mut ema_state = model.state_dict();
    ema_state.extend(unstack_names(&ema.shadow));
    let meta = HashMap::from([("config".to_string(), model.config.to_json())]);
    write_tensors(dir.join("ema.safetensors"), &ema_state, meta)?;
    let opt_meta = HashMap::from([("step".to_string(), optimizer.step.to_string())]);
    write_tensors(
        dir.join("optimizer.safetensors"),
        &unstack_names(&optimizer.state_dict()),
        opt_meta,
    )?;
    let state_path = dir.join("state.json");
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    ditmoe_nn::files::write_atomically(&state_path, json.as_bytes())
        .with_context(|| state_path.display().to_string())?;
    sync_dir(dir)
}

/// Makes the newest complete checkpoint under `out` (if any) `out/checkpoint` and removes
/// every other checkpoint directory. Each step leaves that checkpoint complete under one of
/// the three names, so an interruption here loses nothing either.
fn settle(out: &Path) -> Result<()> {
    let current = out.join(CURRENT);
    if let Some(best) = checkpoint_dir(out).filter(|best| *best != current) {
        remove_if_present(&current)?;
        std::fs::rename(&best, &current).with_context(|| best.display().to_string())?;
    }
    for name in [FRESH, OLD] {
        remove_if_present(&out.join(name))?;
    }
    Ok(())
}

/// Removes every checkpoint directory under `out` (`--overwrite`).
pub(super) fn remove_checkpoints(out: &Path) -> Result<()> {
    CHECKPOINT_DIRS
        .iter()
        .try_for_each(|name| remove_if_present(&out.join(name)))
}

fn remove_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| dir.display().to_string())
        }
        _ => Ok(()),
    }
}

/// Flushes a directory's entries (the renames in it) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| dir.display().to_string())
}

/// The step of the checkpoint in `dir` if it is complete: every file present and its
/// `state.json`, written last, readable; otherwise why not, naming the file.
fn complete_step(dir: &Path) -> std::result::Result<u64, String> {
    if let Some(missing) = FILES.iter().map(|f| dir.join(f)).find(|p| !p.is_file()) {
        return Err(format!("{} is missing or not a file", missing.display()));
    }
    read_state(dir)
        .map(|state| state.step)
        .map_err(|e| format!("{e:#}"))
}

/// The complete checkpoint directory of the highest step under `out`, if any (see the module
/// docs for the states an interrupted save leaves).
pub fn checkpoint_dir(out: &Path) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for dir in CHECKPOINT_DIRS.iter().map(|name| out.join(name)) {
        if let Ok(step) = complete_step(&dir) {
            if best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, dir));
            }
        }
    }
    best.map(|(_, dir)| dir)
}

/// Why each checkpoint folder under `out` that exists is not a usable checkpoint (empty when
/// there is none, or every one is complete).
pub fn unusable_checkpoints(out: &Path) -> Vec<String> {
    unusable_where(out, |_| true)
}

/// [`unusable_checkpoints`] among the folders whose save had finished (`state.json`, written
/// last, is there): those were damaged afterwards, and hold weights worth recovering.
pub fn damaged_checkpoints(out: &Path) -> Vec<String> {
    unusable_where(out, |dir| {
        std::fs::symlink_metadata(dir.join("state.json")).is_ok()
    })
}

fn unusable_where(out: &Path, keep: impl Fn(&Path) -> bool) -> Vec<String> {
    CHECKPOINT_DIRS
        .iter()
        .map(|name| out.join(name))
        .filter(|dir| std::fs::symlink_metadata(dir).is_ok() && keep(dir))
        .filter_map(|dir| complete_step(&dir).err())
        .collect()
}

/// The `state.json` of a checkpoint directory, its training config validated as a config
/// file's would be (a tampered or hand-edited one is refused, naming the file).
pub fn read_state(dir: &Path) -> Result<RunState> {
    let path = dir.join("state.json");
    if !path.exists() {
        bail!("{} is not a checkpoint directory written by `ditmoe train` (expected {} inside it, e.g. runs/tiny-moe/checkpoint)", dir.display(), "state.json");
    }
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let state: RunState =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    state
        .config
        .validate()
        .map_err(|e| anyhow!("{}: config: {e}", path.display()))?;
    Ok(state)
}

/// An error unless the checkpoint `state` (in `dir`) can continue as a run of `config`: the
/// same config but for `steps`, which may grow (the run is extended) but not fall below the
/// checkpoint's step. The error names every field that differs.
pub(super) fn check_resumable(state: &RunState, config: &TrainConfig, dir: &Path) -> Result<()> {
    if config.steps < state.step {
        bail!(
            "--resume: the checkpoint in {} is at step {}, past the {} steps asked for; give --steps {} or more",
            dir.display(),
            state.step,
            config.steps,
            state.step
        );
    }
    let extended = TrainConfig {
        steps: state.config.steps,
        ..config.clone()
    };
    let differences = differing_fields(
        &serde_json::to_value(&state.config).expect("config serialises"),
        &serde_json::to_value(&extended).expect("config serialises"),
        "",
    );
    if !differences.is_empty() {
        bail!(
            "--resume: the checkpoint in {} was trained with a different config ({}); only --steps may change",
            dir.display(),
            differences.join("; ")
        );
    }
    Ok(())
}

/// "`path`: a in the checkpoint, b now" for every leaf where two JSON values differ.
fn differing_fields(then: &serde_json::Value, now: &serde_json::Value, path: &str) -> Vec<String> {
    use serde_json::Value;
    match (then, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|key| {
                    let inner = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    differing_fields(
                        a.get(key).unwrap_or(&Value::Null),
                        b.get(key).unwrap_or(&Value::Null),
                        &inner,
                    )
                })
                .collect()
        }
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("`{path}`: {a} in the checkpoint, {b} now")],
    }
}

/// Loads model, EMA and optimizer state from a checkpoint directory. Every tensor must be
/// there with the model's shape; errors name the file and the tensor.
pub(super) fn restore(
    dir: &Path,
    model: &Dit,
    ema: &mut Ema,
    optimizer: &mut AdamW,
    step: u64,
) -> Result<()> {
    let path = dir.join("model.safetensors");
    let weights = read_tensors(&path)?;
    model
        .load_state_dict(&weights.tensors)
        .with_context(|| path.display().to_string())?;
    let path = dir.join("ema.safetensors");
    let ema_file = model
        .stack_names(&read_tensors(&path)?.tensors)
        .with_context(|| path.display().to_string())?;
    for (name, shadow) in ema.shadow.iter_mut() {
        let value = ema_file
            .get(name)
            .ok_or_else(|| anyhow!("{}: EMA lacks `{name}`", path.display()))?;
        if value.shape() != shadow.shape() {
            bail!(
                "{}: EMA `{name}` has shape {:?}, the model's {:?}",
                path.display(),
                value.shape(),
                shadow.shape()
            );
        }
        *shadow = value.clone();
    }
    let path = dir.join("optimizer.safetensors");
    let moments = model
        .stack_names(&read_tensors(&path)?.tensors)
        .with_context(|| path.display().to_string())?;
    optimizer
        .load_state_dict(&model.named_parameters(), &moments, step)
        .with_context(|| path.display().to_string())?;
    Ok(())
}

/// `dir`, or, when `dir` is a run's `checkpoint/` caught in the middle of a save (renamed
/// away for a moment), the newest complete checkpoint beside it.
fn settled_checkpoint(dir: &Path) -> PathBuf {
    let in_a_save =
        !dir.join("state.json").exists() && dir.file_name() == Some("checkpoint".as_ref());
    match dir.parent().filter(|_| in_a_save).and_then(checkpoint_dir) {
        Some(beside) => beside,
        None => dir.to_path_buf(),
    }
}

/// The model weights of a checkpoint directory: EMA if present.
pub fn load_for_sampling(dir: &Path) -> Result<(Dit, TrainConfig)> {
    load_for_sampling_within(dir, ditmoe_nn::accounting::machine_memory())
}

/// [`load_for_sampling`] with the memory the weights must fit in (`None`: only the absolute
/// size caps); both configs, `state.json`'s and the weights', are validated before the model
/// is built.
pub fn load_for_sampling_within(
    dir: &Path,
    memory_bytes: Option<f64>,
) -> Result<(Dit, TrainConfig)> {
    let settled = settled_checkpoint(dir);
    let dir = settled.as_path();
    let state = read_state(dir)?;
    let weights = ["ema.safetensors", "model.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("{}: no ema.safetensors or model.safetensors", dir.display()))?;
    let model = ditmoe_nn::checkpoint::load_model_within(&weights, memory_bytes)?;
    Ok((model, state.config))
}
