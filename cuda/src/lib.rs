//! # ditmoe-cuda
//!
//! The CUDA side of ditmoe. It knows nothing of tensors: it will own device buffers, streams,
//! the module cache of our hand-written PTX kernels and typed launch wrappers; `ditmoe-tensor`
//! decides which kernel runs. Today it answers one question: is an NVIDIA driver present?
//!
//! The driver is loaded at run time (`cudarc` with dynamic loading), so this crate builds and
//! its users run on machines with no GPU and no CUDA toolkit.

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
