//! Helpers shared by the tests that run the `ditmoe` binary (`mod common;` in each).

// Every test file is its own binary and uses only some of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `ditmoe ARGS` to the end and returns its exit status and output.
pub fn ditmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ditmoe"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// `ditmoe train --config CONFIG --out OUT` followed by `flags`.
pub fn train(config: &Path, out: &Path, flags: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(flags);
    ditmoe(&args)
}

/// What `output` wrote on stderr, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fresh, empty folder `ditmoe-NAME-PID` in the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ditmoe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// File `file` of the PyTorch reference fixture `model` (in `nn/tests/fixtures`).
pub fn fixture(model: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../nn/tests/fixtures")
        .join(model)
        .join(file)
}

/// The routing of [`tiny_config`] in most tests: token choice, top 2.
pub const TOKEN_CHOICE: &str = r#"{ kind = "token_choice", top_k = 2 }"#;

/// A tiny flow MoE config (8×8 shapes, one block of width 16, four experts routed by
/// `routing`) for `steps` steps of batch `batch_size`, checkpointed and logged every `every`.
pub fn tiny_config(steps: u64, batch_size: u64, every: u64, routing: &str) -> String {
    format!(
        r#"
steps = {steps}
batch_size = {batch_size}
lr = 1e-3
checkpoint_every = {every}
log_every = {every}
objective = {{ kind = "flow", time_scale = 1000.0 }}
data = {{ kind = "shapes", size = 8, count = 100 }}
[model]
input_size = 8
patch_size = 2
in_channels = 3
hidden_size = 16
depth = 1
num_heads = 2
num_classes = 10
learn_sigma = false
moe = {{ num_experts = 4, expert_hidden = 16, routing = {routing} }}
"#
    )
}
