//! Weight initialisers (each returns a fresh f32 tensor from the caller's seeded RNG).

use ditmoe_tensor::{DType, Result, SeededRng, Tensor};

/// Glorot & Bengio (2010) uniform: U(±√(6 / (fan_in + fan_out))) for a `[fan_out, fan_in]`
/// weight (PyTorch's `xavier_uniform_`). Higher-rank weights use fan_in = Π shape[1..].
pub fn xavier_uniform(shape: &[usize], rng: &mut SeededRng) -> Result<Tensor> {
    let fan_out = shape[0] as f64;
    let fan_in: f64 = shape[1..].iter().product::<usize>() as f64;
    let bound = (6.0 / (fan_in + fan_out)).sqrt();
    Tensor::rand_uniform(shape, -bound, bound, DType::F32, rng)
}

/// N(0, std²).
pub fn normal(shape: &[usize], std: f64, rng: &mut SeededRng) -> Result<Tensor> {
    Tensor::randn(shape, 0.0, std, DType::F32, rng)
}

/// U(±bound).
pub fn uniform(shape: &[usize], bound: f64, rng: &mut SeededRng) -> Result<Tensor> {
    Tensor::rand_uniform(shape, -bound, bound, DType::F32, rng)
}

/// Zeros.
pub fn zeros(shape: &[usize]) -> Result<Tensor> {
    Tensor::zeros(shape, DType::F32)
}
