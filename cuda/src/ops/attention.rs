//! Wrappers for `kernels/attention.ptx` and `kernels/attention_backward.ptx`: the
//! FlashAttention-2 forward and backward passes.

use super::check_len;
use super::check_u32;
use crate::error::{CudaError, Result};
use crate::kernels::attention::{
    backward_entries, backward_shared_bytes, entry, BACKWARD_HEAD_DIMS, HEAD_DIMS,
};
use crate::op::{BinaryOp, ReduceOp};
use crate::ops::elementwise::{binary, to_bf16, Broadcast};
use crate::ops::rows::reduce_rows;
use crate::{Arg, Buffer, Gpu, LaunchConfig};

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

/// The gradients of a fused attention, f32 `[heads, T, D]` each.
pub struct AttentionGrads {
    pub q: Buffer<f32>,
    pub k: Buffer<f32>,
    pub v: Buffer<f32>,
}

/// The backward pass of [`flash_attention_forward`] from its inputs, its output `out`, its
/// log-sum-exp `lse` and the output gradient `d_out` (f32). Δ = rowsum(dO ∘ O) is computed
/// first with the elementwise and row kernels; then one kernel gives dK and dV (one each from
/// head dim 72 on), another dQ.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    gpu: &Gpu,
    q: &Buffer<half::bf16>,
    k: &Buffer<half::bf16>,
    v: &Buffer<half::bf16>,
    out: &Buffer<f32>,
    lse: &Buffer<f32>,
    d_out: &Buffer<f32>,
    shape: AttentionShape,
    scale: f32,
) -> Result<AttentionGrads> {
    let AttentionShape {
        heads,
        tokens,
        head_dim,
    } = shape;
    if !BACKWARD_HEAD_DIMS.contains(&(head_dim as u32)) {
        return Err(CudaError::InvalidArgument(format!(
            "the flash attention backward is built for head dims {BACKWARD_HEAD_DIMS:?}, not \
             {head_dim}"
        )));
    }
    let n = heads * tokens * head_dim;
    for (what, buffer) in [("q", q), ("k", k), ("v", v)] {
        check_len(&format!("attention backward {what}"), buffer, n)?;
    }
    check_len("attention backward output", out, n)?;
    check_len("attention backward output gradient", d_out, n)?;
    check_len("attention backward log-sum-exp", lse, heads * tokens)?;
    let grads = AttentionGrads {
        q: gpu.zeros(n)?,
        k: gpu.zeros(n)?,
        v: gpu.zeros(n)?,
    };
    if n == 0 {
        return Ok(grads);
    }
    let same = Broadcast::of(&[n], &[n])?;
    let product = binary(gpu, BinaryOp::Mul, d_out, out, &same)?;
    let delta = reduce_rows(gpu, ReduceOp::Sum, &product, heads * tokens, head_dim)?;
    let d_out16 = to_bf16(gpu, d_out)?;
    let config = LaunchConfig {
        grid: (
            check_u32("tiles", tokens.div_ceil(64))?,
            check_u32("heads", heads)?,
            1,
        ),
        block: (128, 1, 1),
        shared_bytes: backward_shared_bytes(head_dim as u32),
    };
    let (key_kernels, dq) = backward_entries(head_dim as u32);
    // Every backward kernel reads the same inputs after its outputs.
    let inputs: [Arg; 8] = [
        q.into(),
        k.into(),
        v.into(),
        (&d_out16).into(),
        lse.into(),
        (&delta).into(),
        check_u32("tokens", tokens)?.into(),
        scale.into(),
    ];
    let key_args = [[(&grads.k).into(), (&grads.v).into()].as_slice(), &inputs].concat();
    for key_kernel in key_kernels {
        gpu.launch("attention_backward", &key_kernel, config, &key_args)?;
    }
    let query_args = [[(&grads.q).into()].as_slice(), &inputs].concat();
    gpu.launch("attention_backward", &dq, config, &query_args)?;
    Ok(grads)
}
