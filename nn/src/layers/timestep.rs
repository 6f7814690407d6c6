//! DiT's timestep embedder: a sinusoidal frequency embedding followed by a 2-layer SiLU MLP.

use crate::init;
use crate::layers::Linear;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{DType, Result, SeededRng, Tensor};

/// Width of the frequency embedding.
pub const FREQUENCY_DIM: usize = 256;

/// `[N] → [N, dim]`: [cos(t·f_i), sin(t·f_i)] with f_i = exp(−ln(10000)·i/(dim/2)), cos first
/// (the "Attention is all you need" table as DiT's code writes it). Computed in f32 as the
/// reference does, so checkpoints reproduce bit for bit as far as f32 allows, on `t`'s device
/// (the host never waits for `t`).
pub fn timestep_frequencies(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let n = t.numel();
    let freqs = Tensor::from_vec(freqs, &[1, half])?.to_device(t.device())?;
    let args = t.to_dtype(DType::F32)?.reshape(&[n, 1])?.mul(&freqs)?;
    let mut parts = vec![args.cos()?, args.sin()?];
    if dim > 2 * half {
        parts.push(Tensor::zeros_on(
            &[n, dim - 2 * half],
            DType::F32,
            t.device(),
        )?);
    }
    Tensor::concat(&parts.iter().collect::<Vec<_>>(), 1)
}

/// `t_embedder.mlp.{0,2}`: Linear(256 → D) → SiLU → Linear(D → D).
pub struct TimestepEmbedder {
    pub mlp0: Linear,
    pub mlp2: Linear,
}

impl TimestepEmbedder {
    /// Weights N(0, 0.02), zero biases (DiT).
    pub fn new(dim: usize, rng: &mut SeededRng) -> Result<Self> {
        let mlp0 = Linear::new(FREQUENCY_DIM, dim, true, rng)?;
        let mlp2 = Linear::new(dim, dim, true, rng)?;
        mlp0.weight
            .set_value(init::normal(&[dim, FREQUENCY_DIM], 0.02, rng)?)?;
        mlp2.weight
            .set_value(init::normal(&[dim, dim], 0.02, rng)?)?;
        Ok(TimestepEmbedder { mlp0, mlp2 })
    }

    pub fn forward(&self, t: &Tensor) -> Result<Var> {
        let dtype = self.mlp0.weight.value().dtype();
        let freq = Var::constant(timestep_frequencies(t, FREQUENCY_DIM)?.to_dtype(dtype)?);
        self.mlp2.forward(&self.mlp0.forward(&freq)?.silu()?)
    }
}

impl Module for TimestepEmbedder {
    fn visit(&self, v: &mut Visitor) {
        v.child("mlp.0", &self.mlp0);
        v.child("mlp.2", &self.mlp2);
    }
}
