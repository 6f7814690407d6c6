//! Checkpoints: the model, its EMA, the AdamW moments and the run state, written so that an
//! interruption never leaves no usable checkpoint, and read back to resume or to sample.

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
pub struct RunState {
    pub step: u64,
    pub config: TrainConfig,
    /// Training wall time up to `step`, over every resumed part of the run.
    #[serde(default)]
    pub seconds: f64,
}

/// Writes the checkpoint directory `out/checkpoint`: each file is written atomically into
/// `checkpoint-new/`, which then replaces the old directory (kept as `checkpoint-old/` until
/// the swap is done), so an interruption never leaves no usable checkpoint.
pub(super) fn save_checkpoint(
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

/// Loads model, EMA and optimizer state from a checkpoint directory.
pub(super) fn restore(
    dir: &Path,
    model: &Dit,
    ema: &mut Ema,
    optimizer: &mut AdamW,
) -> Result<RunState> {
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
    let state = read_state(dir)?;
    let weights = ["ema.safetensors", "model.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("{}: no ema.safetensors or model.safetensors", dir.display()))?;
    let model = ditmoe_nn::checkpoint::load_model_within(&weights, memory_bytes)?;
    Ok((model, state.config))
}
