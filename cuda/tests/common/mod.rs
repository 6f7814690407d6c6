//! What every kernel test shares: the GPUs to run on, random inputs and the tolerance check.
//!
//! Each test runs on the PTX emulator always, and on a real GPU when the NVIDIA driver finds
//! one; when it does not, the test says that the GPU run was skipped and why.

#![allow(dead_code)]

use ditmoe_cuda::Gpu;
/// The workspace's tolerance check: a NaN never passes.
#[allow(unused_imports)] // not every test binary compares with a tolerance
pub use ditmoe_tensor::compare::assert_close;
use rand::{Rng, SeedableRng};

/// The emulator, plus `cuda:0` when there is one. When there is none, says so once per test
/// binary, on stderr directly so that the test harness does not capture it. With
/// `DITMOE_TEST_GPU_ONLY=1` and a GPU found, only the GPU (the GPU bundle sets it: the emulator
/// runs already passed where the bundle was built).
pub fn gpus() -> Vec<Gpu> {
    let gpu_only = std::env::var("DITMOE_TEST_GPU_ONLY").is_ok_and(|v| v == "1");
    let mut gpus = vec![];
    match Gpu::new(0) {
        Ok(gpu) if gpu_only => return vec![gpu],
        Ok(gpu) => gpus.push(gpu),
        Err(why) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "GPU run skipped (kernels checked in the PTX emulator only): {why}"
                );
            });
        }
    }
    gpus.insert(0, Gpu::emulator());
    gpus
}

pub fn random(len: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// The values rounded to bf16 (so a bf16 kernel and an f64 reference see the same numbers).
pub fn bf16_exact(values: Vec<f32>) -> Vec<f32> {
    values
        .into_iter()
        .map(|x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// The values as bf16, for upload.
pub fn to_bf16(values: &[f32]) -> Vec<half::bf16> {
    values.iter().map(|&x| half::bf16::from_f32(x)).collect()
}

/// The f32 values of a CPU tensor (the reference side of every test).
pub fn values(t: &ditmoe_tensor::Tensor) -> Vec<f32> {
    t.to_vec_f64().into_iter().map(|v| v as f32).collect()
}
