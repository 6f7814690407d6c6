//! `ditmoe`: the command line of the ditmoe stack.

use ditmoe_experiments::{commands, console};

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ditmoe",
    version,
    about = "DiT / DiT-MoE / EC-DiT routing ablations on a from-scratch Rust stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every model preset with its parameter count (total / activated per token) and GMACs.
    Zoo {
        /// Image size in pixels for the latent-diffusion presets (latent = size / 8).
        #[arg(long, default_value_t = 256)]
        image_size: usize,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Runs a checkpoint's forward pass on given inputs: the parity bridge to PyTorch.
    Forward {
        /// Model weights (safetensors, config in the metadata).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Inputs: `x` [N,C,H,W] f32, `t` [N] f32, `y` [N] i64.
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write `out` (and `router_probs.blocks.<i>` for MoE blocks).
        #[arg(long)]
        out: PathBuf,
        /// Run even when the model and activations are estimated not to fit in memory.
        #[arg(long)]
        ignore_memory_limit: bool,
    },
    /// Trains a model from a TOML config or a preset (tiny-dense, tiny-moe, tiny-ec, tiny-race).
    Train(commands::TrainArgs),
    /// Writes a PNG grid of class-conditional samples (one row per class) from a checkpoint.
    Sample(commands::SampleArgs),
    /// The routing ablation, the main job: trains every variant of a preset on identical data,
    /// seeds and steps, evaluates them and writes DIR/report.md.
    Ablate {
        /// `quick` (≤ 10 min on 2 CPU cores), `full`, or a preset TOML file.
        #[arg(long, default_value = "quick")]
        preset: String,
        /// Output directory; re-running with the same one skips finished variants.
        #[arg(long, default_value = "runs/ablate")]
        out: PathBuf,
        /// Comma-separated variant names to run (default: all of the preset).
        #[arg(long, value_delimiter = ',')]
        variants: Vec<String>,
        /// Override the preset's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// cpu, cuda or cuda:N: where the variants train and are sampled.
        #[arg(long, default_value = "cpu")]
        device: ditmoe_tensor::Device,
        /// Run even when a variant is estimated not to fit in memory.
        #[arg(long)]
        ignore_memory_limit: bool,
    },
}

/// Counts heap bytes so `ablate` can report each variant's peak memory.
#[global_allocator]
static ALLOCATOR: ditmoe_tensor::memory::CountingAllocator =
    ditmoe_tensor::memory::CountingAllocator;

fn main() -> ExitCode {
    console::keep_standard_streams_open();
    if !ditmoe_tensor::memory::keep_freed_memory() {
        eprintln!("warning: glibc refused a malloc setting; steps will page-fault more (sys time)");
    }
    let cli: Cli = match console::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // Every command runs on a worker of the kernels' thread pool (see `run_on_pool`).
    let result = ditmoe_tensor::parallel::run_on_pool(|| match cli.command {
        Command::Zoo { image_size, json } => commands::zoo(image_size, json),
        Command::Forward {
            checkpoint,
            inputs,
            out,
            ignore_memory_limit,
        } => commands::forward(&checkpoint, &inputs, &out, ignore_memory_limit),
        Command::Train(args) => commands::train(&args).map_err(|e| format!("{e:#}")),
        Command::Sample(args) => commands::sample(&args).map_err(|e| format!("{e:#}")),
        Command::Ablate {
            preset,
            out,
            variants,
            seed,
            device,
            ignore_memory_limit,
        } => commands::ablate(preset, out, variants, seed, device, ignore_memory_limit)
            .map_err(|e| format!("{e:#}")),
    });
    match result {
        Ok(()) if !console::stderr_failed() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(message) => {
            console::eprintln(&format!("error: {message}"));
            ExitCode::FAILURE
        }
    }
}
