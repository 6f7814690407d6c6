//! Wrappers for `kernels/norm.ptx`: layer norm forward/backward and the adaLN modulation.

use super::rows::warp_per_row;
use super::{check_len, check_u32, ELEMENTWISE_BLOCK};
use crate::error::Result;
use crate::{Buffer, Gpu, LaunchConfig};

/// A layer norm's output with the per-row statistics its backward pass needs.
pub struct LayerNormOutput {
    pub output: Buffer<f32>,
    pub mean: Buffer<f32>,
    pub rstd: Buffer<f32>,
}

/// The gradients of a layer norm (weight and bias only when the norm has them).
pub struct LayerNormGrads {
    pub input: Buffer<f32>,
    pub weight: Option<Buffer<f32>>,
    pub bias: Option<Buffer<f32>>,
}

fn affine_flags(weight: bool, bias: bool) -> u32 {
    weight as u32 | (bias as u32) << 1
}

/// Layer norm over the last dimension of `[rows, cols]`, with optional affine weight and bias.
pub fn layer_norm(
    gpu: &Gpu,
    x: &Buffer<f32>,
    weight: Option<&Buffer<f32>>,
    bias: Option<&Buffer<f32>>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<LayerNormOutput> {
    check_len("layer_norm input", x, rows * cols)?;
    for (what, affine) in [("weight", weight), ("bias", bias)] {
        if let Some(buffer) = affine {
            check_len(&format!("layer_norm {what}"), buffer, cols)?;
        }
    }
    let out = LayerNormOutput {
        output: gpu.zeros(rows * cols)?,
        mean: gpu.zeros(rows)?,
        rstd: gpu.zeros(rows)?,
    };
    gpu.launch(
        "norm",
        "layer_norm_f32",
        warp_per_row(rows),
        &[
            (&out.output).into(),
            (&out.mean).into(),
            (&out.rstd).into(),
            x.into(),
            // An absent weight or bias is never read; x stands in as a valid pointer.
            weight.unwrap_or(x).into(),
            bias.unwrap_or(x).into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
            eps.into(),
            affine_flags(weight.is_some(), bias.is_some()).into(),
        ],
    )?;
    Ok(out)
}

/// The per-row statistics a layer norm saved for its backward pass.
pub struct LayerNormStats<'a> {
    pub mean: &'a Buffer<f32>,
    pub rstd: &'a Buffer<f32>,
}

/// The backward pass of [`layer_norm`] from its saved statistics.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    gpu: &Gpu,
    x: &Buffer<f32>,
    stats: LayerNormStats,
    weight: Option<&Buffer<f32>>,
    has_bias: bool,
    dy: &Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<LayerNormGrads> {
    check_len("layer_norm_backward input", x, rows * cols)?;
    check_len("layer_norm_backward output gradient", dy, rows * cols)?;
    check_len("layer_norm_backward mean", stats.mean, rows)?;
    check_len("layer_norm_backward rstd", stats.rstd, rows)?;
    let grads = LayerNormGrads {
        input: gpu.zeros(rows * cols)?,
        weight: weight.map(|_| gpu.zeros(cols)).transpose()?,
        bias: has_bias.then(|| gpu.zeros(cols)).transpose()?,
    };
    gpu.launch(
        "norm",
        "layer_norm_backward_f32",
        warp_per_row(rows),
        &[
            (&grads.input).into(),
            grads.weight.as_ref().unwrap_or(x).into(),
            grads.bias.as_ref().unwrap_or(x).into(),
            x.into(),
            stats.mean.into(),
            stats.rstd.into(),
            weight.unwrap_or(x).into(),
            dy.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
            affine_flags(weight.is_some(), has_bias).into(),
        ],
    )?;
    Ok(grads)
}

/// adaLN modulation of `x: [batch, tokens, dim]` by `shift, scale: [batch, dim]`:
/// `x · (1 + scale) + shift`.
pub fn modulate(
    gpu: &Gpu,
    x: &Buffer<f32>,
    shift: &Buffer<f32>,
    scale: &Buffer<f32>,
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<Buffer<f32>> {
    let n = batch * tokens * dim;
    check_len("modulate input", x, n)?;
    check_len("modulate shift", shift, batch * dim)?;
    check_len("modulate scale", scale, batch * dim)?;
    let out = gpu.zeros::<f32>(n)?;
    gpu.launch(
        "norm",
        "modulate_f32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            x.into(),
            shift.into(),
            scale.into(),
            check_u32("elements", n)?.into(),
            check_u32("tokens", tokens)?.into(),
            check_u32("dim", dim)?.into(),
        ],
    )?;
    Ok(out)
}

/// Gradients of [`modulate`]: `(dx, dshift, dscale)`.
#[allow(clippy::too_many_arguments)]
pub fn modulate_backward(
    gpu: &Gpu,
    x: &Buffer<f32>,
    scale: &Buffer<f32>,
    dy: &Buffer<f32>,
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<(Buffer<f32>, Buffer<f32>, Buffer<f32>)> {
    let n = batch * tokens * dim;
    check_len("modulate_backward input", x, n)?;
    check_len("modulate_backward output gradient", dy, n)?;
    check_len("modulate_backward scale", scale, batch * dim)?;
    let dx = gpu.zeros::<f32>(n)?;
    let dshift = gpu.zeros::<f32>(batch * dim)?;
    let dscale = gpu.zeros::<f32>(batch * dim)?;
    gpu.launch(
        "norm",
        "modulate_backward_f32",
        LaunchConfig::linear(batch * dim, ELEMENTWISE_BLOCK),
        &[
            (&dx).into(),
            (&dshift).into(),
            (&dscale).into(),
            x.into(),
            scale.into(),
            dy.into(),
            check_u32("batch", batch)?.into(),
            check_u32("tokens", tokens)?.into(),
            check_u32("dim", dim)?.into(),
        ],
    )?;
    Ok((dx, dshift, dscale))
}
