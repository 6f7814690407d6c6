//! Multi-head self-attention with a fused attention core (see `Tensor::flash_attention`).

use crate::layers::Linear;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, SeededRng, TensorError};

/// Which attention core to run: the fused kernel (default) or the naive reference that
/// materialises the T×T score matrix (for tests and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    #[default]
    Fused,
    Naive,
}

/// softmax(q·kᵀ·scale)·v composed from matmul and softmax: the reference for the fused core.
pub fn naive_attention(q: &Var, k: &Var, v: &Var, scale: f64) -> Result<Var> {
    let scores = q.matmul(&k.t()?)?.mul_scalar(scale)?;
    let last = scores.shape().len() - 1;
    scores.softmax(last)?.matmul(v)
}

/// `attn.qkv` (D → 3D, bias) then attention per head, then `attn.proj` (D → D, bias).
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
    pub kernel: AttentionKernel,
}

impl Attention {
    pub fn new(dim: usize, heads: usize, rng: &mut SeededRng) -> Result<Self> {
        if heads == 0 || dim % heads != 0 {
            return Err(TensorError::invalid(
                "attention",
                format!("expected heads dividing the hidden size {dim}, found {heads}"),
            ));
        }
        Ok(Attention {
            qkv: Linear::new(dim, 3 * dim, true, rng)?,
            proj: Linear::new(dim, dim, true, rng)?,
            heads,
            kernel: AttentionKernel::Fused,
        })
    }

    /// `[B, T, D] → [B, T, D]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let head_dim = d / self.heads;
        // [B, T, 3, H, hd] → [3, B, H, T, hd]: q, k, v are views of one buffer.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape(&[b, t, 3, self.heads, head_dim])?
            .permute(&[2, 0, 3, 1, 4])?;
        let parts = qkv.chunk(3, 0)?;
        let (q, k, v) = (
            parts[0].squeeze(0)?,
            parts[1].squeeze(0)?,
            parts[2].squeeze(0)?,
        );
        let scale = (head_dim as f64).powf(-0.5);
        let o = match self.kernel {
            AttentionKernel::Fused => Var::flash_attention(&q, &k, &v, scale)?,
            AttentionKernel::Naive => naive_attention(&q, &k, &v, scale)?,
        };
        self.proj
            .forward(&o.permute(&[0, 2, 1, 3])?.reshape(&[b, t, d])?)
    }
}

impl Module for Attention {
    fn visit(&self, v: &mut Visitor) {
        v.child("qkv", &self.qkv);
        v.child("proj", &self.proj);
    }
}
