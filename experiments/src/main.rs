//! `ditmoe`: the command line of the ditmoe stack.
//!
//! The commands (`train`, `sample`, `ablate`) arrive with issues #4 and #5. Until then the binary
//! reports what this build can do and exits with an error for any command.

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    let threads = ditmoe_diffusion::nn::autograd::tensor::parallel::num_threads();
    match command.as_deref() {
        None | Some("--help") | Some("-h") => {
            println!(
                "ditmoe {} — DiT / DiT-MoE / EC-DiT routing ablations in Rust",
                env!("CARGO_PKG_VERSION")
            );
            println!("CPU threads: {threads} (set DITMOE_THREADS to change)");
            println!("commands train, sample and ablate are not implemented yet (issues #4, #5)");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("error: `ditmoe {other}` is not implemented yet: the training and ablation commands land with issues #4 and #5");
            ExitCode::FAILURE
        }
    }
}
