//! `ditmoe`: the command line of the ditmoe stack.

mod commands;

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
    },
    /// Train a model (lands with issue #4).
    Train,
    /// Sample from a checkpoint (lands with issue #4).
    Sample,
    /// The routing ablation, the main job (lands with issue #5).
    Ablate,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Zoo { image_size, json } => commands::zoo(image_size, json),
        Command::Forward {
            checkpoint,
            inputs,
            out,
        } => commands::forward(&checkpoint, &inputs, &out),
        Command::Train | Command::Sample => Err(
            "`ditmoe train` and `ditmoe sample` are not implemented yet: they land with issue #4"
                .to_string(),
        ),
        Command::Ablate => Err(
            "`ditmoe ablate` (the routing ablation) is not implemented yet: it lands with issue #5"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
