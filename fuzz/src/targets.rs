//! The fuzz targets: each feeds arbitrary bytes to one of ditmoe's parsers of outside input.
//! A target passes when the parser returns (`Ok` or `Err`, either is fine); a panic, an abort
//! or a hang is a finding.
//!
//! This file is shared: the libFuzzer binaries (`fuzz/src/bin/`) call these functions, and the
//! workspace test `experiments/tests/fuzz_regressions.rs` includes it by path to replay the
//! corpus and every saved reproducer under `cargo test`. It needs only `ditmoe-nn` and
//! `ditmoe-experiments`, never libFuzzer.

use ditmoe_experiments::ablate::plan::AblationPreset;
use ditmoe_experiments::config::TrainConfig;
use ditmoe_experiments::data::files::{Cifar10, DataError, IdxDataset};
use ditmoe_experiments::data::Dataset;
use ditmoe_experiments::train::{read_metrics, read_state};
use ditmoe_nn::checkpoint::{load_model, read_tensors};
use ditmoe_nn::DitConfig;
use std::path::PathBuf;

/// A target: its name (the folder under `fuzz/corpus/` and `fuzz/regressions/`, and the
/// binary `fuzz_<name>`) and the function that feeds it one input.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: [Target; 9] = [
    Target {
        name: "safetensors",
        run: safetensors,
    },
    Target {
        name: "checkpoint",
        run: checkpoint,
    },
    Target {
        name: "model_config",
        run: model_config,
    },
    Target {
        name: "train_config",
        run: train_config,
    },
    Target {
        name: "ablation_preset",
        run: ablation_preset,
    },
    Target {
        name: "idx",
        run: idx,
    },
    Target {
        name: "cifar",
        run: cifar,
    },
    Target {
        name: "metrics",
        run: metrics,
    },
    Target {
        name: "run_state",
        run: run_state,
    },
];

/// A safetensors file: `read_tensors` (header, dtypes, offsets, data).
pub fn safetensors(data: &[u8]) {
    let _ = read_tensors(scratch_file("tensors.safetensors", data));
}

/// A model checkpoint: `load_model` (the safetensors file, its `config` metadata as JSON, the
/// model that describes, every tensor loaded into it).
pub fn checkpoint(data: &[u8]) {
    let _ = load_model(scratch_file("model.safetensors", data));
}

/// A model config as checkpoint metadata holds it: `DitConfig::from_json`.
pub fn model_config(data: &[u8]) {
    let _ = DitConfig::from_json(&String::from_utf8_lossy(data));
}

/// A training config file: `TrainConfig::from_toml` (parse and validate).
pub fn train_config(data: &[u8]) {
    let _ = TrainConfig::from_toml(&String::from_utf8_lossy(data), "fuzz");
}

/// An ablation preset file: `AblationPreset::from_toml` (parse, validate, build the variants).
pub fn ablation_preset(data: &[u8]) {
    let _ = AblationPreset::from_toml(&String::from_utf8_lossy(data), "fuzz");
}

/// An MNIST images/labels pair (see [`split_pair`]); when it opens, the first and the last
/// image are decoded too.
pub fn idx(data: &[u8]) {
    let (images, labels) = split_pair(data);
    if let Ok(dataset) = open_idx(images, labels) {
        decode_ends(&dataset);
    }
}

/// A CIFAR-10 batch file; when it opens, the first and the last record are decoded too.
pub fn cifar(data: &[u8]) {
    if let Ok(dataset) = open_cifar(data) {
        decode_ends(&dataset);
    }
}

/// A metrics log: `read_metrics`.
pub fn metrics(data: &[u8]) {
    let _ = read_metrics(&scratch_file("metrics.jsonl", data));
}

/// A checkpoint's `state.json`: `read_state`.
pub fn run_state(data: &[u8]) {
    let path = scratch_file("state.json", data);
    let _ = read_state(path.parent().expect("a scratch file has a folder"));
}

/// The IDX pair `(images, labels)` one input holds: a little-endian u16 giving the length of
/// the images file, the images file, then the labels file. A short input gives what it has.
pub fn split_pair(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((length, rest)) = data.split_first_chunk::<2>() else {
        return (data, &[]);
    };
    rest.split_at((u16::from_le_bytes(*length) as usize).min(rest.len()))
}

/// Opens an IDX pair from bytes through files, the way `ditmoe train` opens them: a file
/// starting with the gzip magic is named `.gz`, so the inflating path runs too.
fn open_idx(images: &[u8], labels: &[u8]) -> Result<IdxDataset, DataError> {
    let images = scratch_file(gzip_aware_name("images", images), images);
    let labels = scratch_file(gzip_aware_name("labels", labels), labels);
    IdxDataset::open(&images, &labels)
}

/// Opens a CIFAR-10 batch from bytes (through a file, like [`open_idx`]).
fn open_cifar(batch: &[u8]) -> Result<Cifar10, DataError> {
    Cifar10::open(&[scratch_file(gzip_aware_name("batch", batch), batch)])
}

fn gzip_aware_name(stem: &str, bytes: &[u8]) -> String {
    let gzip = bytes.starts_with(&[0x1f, 0x8b]);
    format!("{stem}{}", if gzip { ".gz" } else { ".bin" })
}

fn decode_ends(dataset: &dyn Dataset) {
    if !dataset.is_empty() {
        dataset.get(0);
        dataset.get(dataset.len() - 1);
    }
}

/// Writes `bytes` to `name` in this process's scratch folder (in tmpfs `/dev/shm` where there
/// is one) and returns its path.
pub fn scratch_file(name: impl AsRef<str>, bytes: &[u8]) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let folder = base.join(format!("ditmoe-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("create the fuzz scratch folder");
    let path = folder.join(name.as_ref());
    std::fs::write(&path, bytes).expect("write a fuzz input file");
    path
}
