//! # ditmoe-cuda
//!
//! The GPU side of ditmoe: our hand-written PTX kernels (`cuda/kernels/*.ptx`), the runtime that
//! loads and launches them, and typed wrappers that say what each kernel computes. It knows
//! nothing of tensors: `ditmoe-tensor` decides which kernel runs.
//!
//! Two backends run the same PTX (`gpu.rs`): an NVIDIA GPU through the driver API (`cudarc` with
//! dynamic loading, so this crate builds and runs with no GPU and no CUDA toolkit), and a PTX
//! interpreter on the CPU (`emulator/`), which lets every kernel be tested against its CPU
//! reference anywhere — with out-of-bounds and shared-memory race checks on top.
//!
//! Reading order: `gpu.rs` (buffers, launches), `kernels/mod.rs` (the module catalogue), then a
//! kernel file next to its wrapper: `kernels/elementwise.ptx` with `ops/elementwise.rs`, …;
//! `registry.rs` (one `Gpu` per `cuda:N` per process); `emulator/` (parse, memory, exec).

pub mod element;
pub mod emulator;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod op;
pub mod ops;
pub mod registry;

pub use element::Element;
pub use error::{CudaError, Result};
pub use gpu::{Arg, Buffer, Gpu, KernelTime, LaunchConfig, Traffic};
pub use op::{BinaryOp, ReduceOp, UnaryOp};

use cudarc::driver::sys;

/// Whether a CUDA driver could be loaded on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverStatus {
    /// The driver loaded and initialised; `devices` GPUs are visible.
    Present { devices: usize },
    /// No usable driver, with the reason.
    Missing(String),
}

/// Probes for the NVIDIA driver (`libcuda`) without panicking when it is absent.
pub fn driver_status() -> DriverStatus {
    // SAFETY: `is_culib_present` only tries to dlopen the library.
    if !unsafe { sys::is_culib_present() } {
        return DriverStatus::Missing(
            "no NVIDIA driver found (libcuda could not be loaded); install the NVIDIA driver or \
             use the CPU"
                .to_string(),
        );
    }
    // SAFETY: the library is present, so its entry points can be resolved and called.
    unsafe {
        if sys::cuInit(0) != sys::CUresult::CUDA_SUCCESS {
            return DriverStatus::Missing(
                "the NVIDIA driver failed to initialise (cuInit)".to_string(),
            );
        }
        let mut count = 0;
        if sys::cuDeviceGetCount(&mut count) != sys::CUresult::CUDA_SUCCESS {
            return DriverStatus::Missing("the NVIDIA driver could not count devices".to_string());
        }
        DriverStatus::Present {
            devices: count.max(0) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_never_panics_and_reports_a_reason() {
        match driver_status() {
            DriverStatus::Present { devices } => {
                eprintln!("NVIDIA driver present, {devices} device(s)")
            }
            DriverStatus::Missing(why) => {
                eprintln!("skipped GPU checks: {why}");
                assert!(!why.is_empty());
            }
        }
    }
}
