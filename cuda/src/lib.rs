//! # ditmoe-cuda
//!
//! The GPU side of ditmoe: our hand-written PTX kernels (`cuda/kernels/*.ptx`), the runtime that
//! loads and launches them, and typed wrappers that say what each kernel computes. It knows
//! nothing of tensors: `ditmoe-tensor` decides which kernel runs.
//!
//! Two runtimes run the same PTX behind one trait (`runtime.rs`): an NVIDIA GPU through the
//! driver API (`driver.rs`: `cudarc` with dynamic loading, so this crate builds and runs with
//! no GPU and no CUDA toolkit), and a PTX interpreter on the CPU (`emulator/`, its runtime in
//! `emulator/runtime.rs`), which lets every kernel be tested against its CPU reference
//! anywhere — with out-of-bounds and shared-memory race checks on top.
//!
//! Reading order: `gpu.rs` (the handle: buffers, launches), `runtime.rs` (what a runtime does),
//! `buffer.rs` (allocations, buffers, views), `kernels/mod.rs` (the module catalogue), then a
//! kernel file next to its wrapper: `kernels/elementwise.ptx` with `ops/elementwise.rs`, …;
//! `precision.rs` (the scoped mixed-precision setting); `registry.rs` (one `Gpu` per `cuda:N`
//! per process); `traffic.rs` and `kernel_timing.rs` (what a profiler reads);
//! `emulator/` (parse, memory, exec).

pub mod buffer;
mod constant_tables;
pub mod driver;
pub mod element;
pub mod emulator;
pub mod error;
pub mod gpu;
pub mod kernel_timing;
pub mod kernels;
pub mod launch;
pub mod op;
pub mod ops;
pub mod precision;
pub mod registry;
pub mod runtime;
pub mod traffic;

pub use buffer::Buffer;
pub use element::Element;
pub use error::{CudaError, Result};
pub use gpu::Gpu;
pub use kernel_timing::KernelTime;
pub use launch::{Arg, LaunchConfig};
pub use op::{BinaryOp, ReduceOp, UnaryOp};
pub use precision::Precision;
pub use traffic::Traffic;

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
                eprintln!("NVIDIA driver present, {devices} device(s)");
                assert!(
                    devices >= 1,
                    "a driver that sees no GPU is reported as present"
                );
                // cuda:0 opens and holds what it is given, unless it is too old for our
                // kernels, which must then be the reason.
                match Gpu::new(0) {
                    Ok(gpu) => {
                        assert!(gpu.name().contains("(sm_"), "{}", gpu.name());
                        let values = [1.5f32, -2.0, 3.25];
                        let buffer = gpu.upload(&values).unwrap();
                        assert_eq!(gpu.download(&buffer).unwrap(), values);
                    }
                    Err(CudaError::Unavailable(why)) => {
                        assert!(why.contains("compute capability"), "{why}")
                    }
                    Err(other) => panic!("cuda:0 failed to open: {other}"),
                }
            }
            DriverStatus::Missing(why) => {
                eprintln!("skipped GPU checks: {why}");
                assert!(!why.is_empty());
            }
        }
    }
}
