//! Wrapper for `kernels/attention.ptx`: the FlashAttention-2 forward pass.

use super::check_len;
use super::check_u32;
use crate::error::{CudaError, Result};
use crate::gpu::{Buffer, Gpu, LaunchConfig};
use crate::kernels::attention::{entry, HEAD_DIMS};

/// O and the per-row log-sum-exp of a fused attention forward pass.
pub struct AttentionOutput {
    /// `[heads, T, D]`, f32.
    pub out: Buffer<f32>,
    /// `[heads, T]`, natural log.
    pub lse: Buffer<f32>,
}

/// `heads` independent heads of `[tokens, head_dim]` matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub heads: usize,
    pub tokens: usize,
    pub head_dim: usize,
}

/// softmax(q·kᵀ·scale)·v for every head, q, k, v bf16 `[heads, tokens, head_dim]`.
pub fn flash_attention_forward(
    gpu: &Gpu,
    q: &Buffer<half::bf16>,
    k: &Buffer<half::bf16>,
    v: &Buffer<half::bf16>,
    shape: AttentionShape,
    scale: f32,
) -> Result<AttentionOutput> {
    let AttentionShape {
        heads,
        tokens,
        head_dim,
    } = shape;
    if !HEAD_DIMS.contains(&(head_dim as u32)) {
        return Err(CudaError::InvalidArgument(format!(
            "flash attention is built for head dims {HEAD_DIMS:?}, not {head_dim}"
        )));
    }
    let n = heads * tokens * head_dim;
    check_len("attention q", q, n)?;
    check_len("attention k", k, n)?;
    check_len("attention v", v, n)?;
    let output = AttentionOutput {
        out: gpu.zeros(n)?,
        lse: gpu.zeros(heads * tokens)?,
    };
    if n == 0 {
        return Ok(output);
    }
    let config = LaunchConfig {
        grid: (
            check_u32("query tiles", tokens.div_ceil(64))?,
            check_u32("heads", heads)?,
            1,
        ),
        block: (128, 1, 1),
        shared_bytes: 0,
    };
    gpu.launch(
        "attention",
        &entry(head_dim as u32),
        config,
        &[
            (&output.out).into(),
            (&output.lse).into(),
            q.into(),
            k.into(),
            v.into(),
            check_u32("tokens", tokens)?.into(),
            scale.into(),
        ],
    )?;
    Ok(output)
}
