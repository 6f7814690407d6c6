//! The process-wide GPUs, by ordinal: each is opened once and shared by every tensor on it.
//!
//! `cuda:N` is the NVIDIA GPU N through the driver — or, when the environment variable
//! `DITMOE_CUDA_EMULATOR=1` is set, the PTX emulator, so the whole CUDA path (tensors,
//! training) can be run and debugged on a machine without a GPU, slowly.
//! `DITMOE_GEMM_TILE=wide` makes the tensor-core GEMMs use the 128×256 tile by default
//! (`square`, the default, 128×128; see `crate::precision`): for comparing the two inside a
//! training step. Opening a device checks it, so a bad value is an error, not a silent default.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{CudaError, Result};
use crate::gpu::Gpu;
use crate::precision::Precision;

/// Set to `1` to make every `cuda:N` the PTX emulator.
pub const EMULATOR_ENV: &str = "DITMOE_CUDA_EMULATOR";
pub use crate::precision::GEMM_TILE_ENV;

fn devices() -> &'static Mutex<BTreeMap<usize, Arc<Gpu>>> {
    static DEVICES: OnceLock<Mutex<BTreeMap<usize, Arc<Gpu>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn emulator_requested() -> bool {
    std::env::var(EMULATOR_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Every GPU this process has opened so far, by ordinal (what a profiler waits for).
pub fn opened() -> Vec<Arc<Gpu>> {
    devices()
        .lock()
        .expect("device registry")
        .values()
        .cloned()
        .collect()
}

/// The GPU `cuda:ordinal`, opened on first use.
pub fn device(ordinal: usize) -> Result<Arc<Gpu>> {
    let mut devices = devices().lock().expect("device registry");
    if let Some(gpu) = devices.get(&ordinal) {
        return Ok(Arc::clone(gpu));
    }
    let gpu = if emulator_requested() {
        Gpu::emulator()
    } else {
        Gpu::new(ordinal).map_err(|e| match e {
            CudaError::Unavailable(why) => CudaError::Unavailable(format!(
                "{why} (set {EMULATOR_ENV}=1 to run the CUDA kernels in the PTX emulator on \
                 the CPU)"
            )),
            other => other,
        })?
    };
    // A bad DITMOE_GEMM_TILE is an error here; the per-thread default would fall back to
    // the square tile without a word.
    Precision::from_env()?;
    let gpu = Arc::new(gpu);
    devices.insert(ordinal, Arc::clone(&gpu));
    Ok(gpu)
}

/// `cuda:ordinal` as the real GPU if the driver has it, else as the PTX emulator: for tests
/// that exercise the device path on every machine. Says which on stderr.
pub fn device_or_emulator(ordinal: usize) -> Arc<Gpu> {
    let mut devices = devices().lock().expect("device registry");
    if let Some(gpu) = devices.get(&ordinal) {
        return Arc::clone(gpu);
    }
    let gpu = Arc::new(Gpu::new(ordinal).unwrap_or_else(|why| {
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "cuda:{ordinal} is the PTX emulator (GPU run skipped: {why})"
        );
        Gpu::emulator()
    }));
    devices.insert(ordinal, Arc::clone(&gpu));
    gpu
}
