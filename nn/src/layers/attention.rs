//! Multi-head self-attention with a fused attention core (see `Tensor::flash_attention`).

use crate::layers::Linear;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, SeededRng, TensorError};

/// Which attention core to run: the fused kernel, the naive one that materialises the T×T
/// score matrix, or (default) whichever is faster for the sequence length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    #[default]
    Auto,
    Fused,
    Naive,
}

/// From this many tokens on, `Auto` runs the fused kernel. Below it the naive path's score
/// matrix fits in cache and rides the blocked GEMM: on the 2-core dev box (benches/RESULTS.md)
/// naive fwd+bwd is 2.3× faster at T = 256 and level with fused at T = 1024, while fused needs
/// 20× less memory there and wins from then on.
pub const FUSED_FROM_TOKENS: usize = 1024;

impl AttentionKernel {
    /// The kernel that runs for sequences of `tokens` in `placement`. On a GPU `Auto` runs the
    /// fused tensor-core kernels when they take the shape (mixed precision on, a head dim they
    /// are built for) and composes attention from matmul and softmax otherwise.
    pub fn resolve(self, tokens: usize, placement: Placement) -> AttentionKernel {
        match (self, placement) {
            (AttentionKernel::Auto, Placement::Gpu { fused: true }) => AttentionKernel::Fused,
            (AttentionKernel::Auto, Placement::Gpu { fused: false }) => AttentionKernel::Naive,
            (AttentionKernel::Auto, Placement::Cpu) if tokens >= FUSED_FROM_TOKENS => {
                AttentionKernel::Fused
            }
            (AttentionKernel::Auto, Placement::Cpu) => AttentionKernel::Naive,
            (chosen, _) => chosen,
        }
    }
}

/// Where attention runs, as far as choosing its kernel goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    /// On a GPU; `fused`: whether the fused kernels take these inputs.
    Gpu {
        fused: bool,
    },
}

impl Placement {
    /// The placement of attention over `q`.
    pub fn of(q: &ditmoe_tensor::Tensor) -> Placement {
        if q.is_cuda() {
            Placement::Gpu {
                fused: q.fused_attention_available(),
            }
        } else {
            Placement::Cpu
        }
    }
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
            kernel: AttentionKernel::Auto,
        })
    }

    /// `[B, T, D] → [B, T, D]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let _section = ditmoe_tensor::profile::section("attention");
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
        let o = match self.kernel.resolve(t, Placement::of(&q.value())) {
            AttentionKernel::Naive => naive_attention(&q, &k, &v, scale)?,
            _ => Var::flash_attention(&q, &k, &v, scale)?,
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
