//! Wrappers for `kernels/elementwise.ptx`: unary functions and their derivatives, broadcasting
//! binary operations, and f32 ↔ bf16 casts.

use std::sync::Arc;

use super::{check_len, check_u32, ELEMENTWISE_BLOCK};
use crate::element::Element;
use crate::error::{CudaError, Result};
use crate::op::{BinaryOp, UnaryOp};
use crate::{Buffer, Gpu, LaunchConfig};

fn launch_unary(
    gpu: &Gpu,
    op: UnaryOp,
    x: &Buffer<f32>,
    grad: Option<&Buffer<f32>>,
) -> Result<Buffer<f32>> {
    let n = x.len();
    if let Some(grad) = grad {
        check_len("unary backward gradient", grad, n)?;
    }
    let out = gpu.zeros::<f32>(n)?;
    let (code, param) = op.ptx_code();
    gpu.launch(
        "elementwise",
        "unary_f32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            x.into(),
            grad.unwrap_or(x).into(),
            check_u32("elements", n)?.into(),
            code.into(),
            param.into(),
            (grad.is_some() as u32).into(),
        ],
    )?;
    Ok(out)
}

/// `f(x)` elementwise.
pub fn unary(gpu: &Gpu, op: UnaryOp, x: &Buffer<f32>) -> Result<Buffer<f32>> {
    launch_unary(gpu, op, x, None)
}

/// `grad · f'(x)` elementwise: the backward pass of [`unary`].
pub fn unary_backward(
    gpu: &Gpu,
    op: UnaryOp,
    x: &Buffer<f32>,
    grad: &Buffer<f32>,
) -> Result<Buffer<f32>> {
    launch_unary(gpu, op, x, Some(grad))
}

/// How two operands map onto a broadcast output: the output shape and, per operand, the
/// element stride of each output dimension (0 where the operand is broadcast) and the element
/// where it starts — so any strided view can be an operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    pub shape: Vec<usize>,
    pub a_strides: Vec<usize>,
    pub b_strides: Vec<usize>,
    pub a_offset: usize,
    pub b_offset: usize,
}

impl Broadcast {
    /// NumPy broadcasting of two contiguous operands: shapes are aligned at the right, and a
    /// dimension of size 1 (or a missing one) stretches to the other's size.
    pub fn of(a_shape: &[usize], b_shape: &[usize]) -> Result<Broadcast> {
        let rank = a_shape.len().max(b_shape.len());
        let pad = |s: &[usize]| {
            let mut padded = vec![1; rank - s.len()];
            padded.extend_from_slice(s);
            padded
        };
        let (a, b) = (pad(a_shape), pad(b_shape));
        let mut shape = Vec::with_capacity(rank);
        for (&x, &y) in a.iter().zip(&b) {
            if x != y && x != 1 && y != 1 {
                return Err(CudaError::InvalidArgument(format!(
                    "shapes {a_shape:?} and {b_shape:?} do not broadcast"
                )));
            }
            shape.push(x.max(y));
        }
        let strides = |s: &[usize]| {
            let mut strides = vec![0; rank];
            let mut step = 1;
            for d in (0..rank).rev() {
                strides[d] = if s[d] == 1 { 0 } else { step };
                step *= s[d];
            }
            strides
        };
        Ok(Broadcast {
            a_strides: strides(&a),
            b_strides: strides(&b),
            shape,
            a_offset: 0,
            b_offset: 0,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// `a op b` with broadcasting; the result is contiguous with shape `layout.shape`.
pub fn binary(
    gpu: &Gpu,
    op: BinaryOp,
    a: &Buffer<f32>,
    b: &Buffer<f32>,
    layout: &Broadcast,
) -> Result<Buffer<f32>> {
    check_reach(
        "binary operand a",
        a,
        &layout.shape,
        &layout.a_strides,
        layout.a_offset,
    )?;
    check_reach(
        "binary operand b",
        b,
        &layout.shape,
        &layout.b_strides,
        layout.b_offset,
    )?;
    let n = layout.numel();
    let meta = upload_meta(gpu, &[&layout.shape, &layout.a_strides, &layout.b_strides])?;
    let out = gpu.zeros::<f32>(n)?;
    gpu.launch(
        "elementwise",
        "binary_f32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            a.into(),
            b.into(),
            meta.as_ref().into(),
            check_u32("elements", n)?.into(),
            (layout.shape.len() as u32).into(),
            op.ptx_code().into(),
            check_u32("offset", layout.a_offset)?.into(),
            check_u32("offset", layout.b_offset)?.into(),
        ],
    )?;
    Ok(out)
}

/// `cond ? a : b` elementwise (`cond` non-zero), the three operands broadcast to the
/// contiguous output of shape `a.shape`: `views` gives each operand's strides and offset over
/// that shape.
pub fn select(
    gpu: &Gpu,
    cond: (&Buffer<f32>, View),
    a: (&Buffer<f32>, View),
    b: (&Buffer<f32>, View),
) -> Result<Buffer<f32>> {
    let shape = a.1.shape;
    for (what, (buffer, view)) in [("select condition", cond), ("select a", a), ("select b", b)] {
        if view.shape != shape || view.strides.len() != shape.len() {
            return Err(CudaError::InvalidArgument(format!(
                "{what}: expected a view of shape {shape:?}, found {:?}",
                view.shape
            )));
        }
        check_reach(what, buffer, shape, view.strides, view.offset)?;
    }
    let n: usize = shape.iter().product();
    let meta = upload_meta(gpu, &[shape, cond.1.strides, a.1.strides, b.1.strides])?;
    let out = gpu.zeros::<f32>(n)?;
    gpu.launch(
        "elementwise",
        "select_f32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            cond.0.into(),
            a.0.into(),
            b.0.into(),
            meta.as_ref().into(),
            check_u32("elements", n)?.into(),
            (shape.len() as u32).into(),
            check_u32("offset", cond.1.offset)?.into(),
            check_u32("offset", a.1.offset)?.into(),
            check_u32("offset", b.1.offset)?.into(),
        ],
    )?;
    Ok(out)
}

/// The shape/stride table of a strided kernel (`[shape, strides of each operand]`, u32) in a
/// device buffer (uploaded once per distinct table, see [`Gpu::constant_table`]).
fn upload_meta(gpu: &Gpu, sections: &[&[usize]]) -> Result<Arc<Buffer<u32>>> {
    let meta: Vec<u32> = sections
        .iter()
        .flat_map(|section| section.iter())
        .map(|&v| check_u32("shape or stride", v))
        .collect::<Result<_>>()?;
    gpu.constant_table(&meta)
}

/// Fails unless every element a strided view reaches lies inside `buffer`.
fn check_reach<T>(
    what: &str,
    buffer: &Buffer<T>,
    shape: &[usize],
    strides: &[usize],
    offset: usize,
) -> Result<()> {
    if shape.contains(&0) {
        return Ok(());
    }
    let last = offset
        + shape
            .iter()
            .zip(strides)
            .map(|(&n, &s)| (n - 1) * s)
            .sum::<usize>();
    if last >= buffer.len() {
        return Err(CudaError::InvalidArgument(format!(
            "{what}: its strides reach element {last} but it holds {}",
            buffer.len()
        )));
    }
    Ok(())
}

/// A strided view into a buffer: its shape, element strides and first element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View<'a> {
    pub shape: &'a [usize],
    pub strides: &'a [usize],
    pub offset: usize,
}

/// Copies the view `from` of `x` into the view `to` of `out` (same shape), for buffers of
/// 4-byte elements (f32, u32). Overlapping destinations are the caller's bug.
pub fn copy_into<T: Element>(
    gpu: &Gpu,
    out: &Buffer<T>,
    to: View,
    x: &Buffer<T>,
    from: View,
) -> Result<()> {
    if T::BYTES != 4
        || from.shape != to.shape
        || from.shape.len() != from.strides.len()
        || to.shape.len() != to.strides.len()
    {
        return Err(CudaError::InvalidArgument(format!(
            "copy_into takes 4-byte elements and views of one shape with one stride per \
             dimension (got {}-byte elements, shapes {:?} and {:?})",
            T::BYTES,
            from.shape,
            to.shape
        )));
    }
    check_reach("copy source", x, from.shape, from.strides, from.offset)?;
    check_reach("copy destination", out, to.shape, to.strides, to.offset)?;
    let n: usize = from.shape.iter().product();
    if n == 0 {
        return Ok(());
    }
    let meta = upload_meta(gpu, &[from.shape, from.strides, to.strides])?;
    gpu.launch(
        "elementwise",
        "copy_strided_b32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            out.into(),
            x.into(),
            meta.as_ref().into(),
            check_u32("elements", n)?.into(),
            (from.shape.len() as u32).into(),
            check_u32("offset", from.offset)?.into(),
            check_u32("offset", to.offset)?.into(),
        ],
    )
}

/// The strided view `(shape, strides, offset)` of a buffer of 4-byte elements (f32, u32),
/// copied into a new contiguous buffer.
pub fn copy_strided<T: Element>(
    gpu: &Gpu,
    x: &Buffer<T>,
    shape: &[usize],
    strides: &[usize],
    offset: usize,
) -> Result<Buffer<T>> {
    let n: usize = shape.iter().product();
    let out = gpu.zeros::<T>(n)?;
    let dense = contiguous_strides(shape);
    copy_into(
        gpu,
        &out,
        View {
            shape,
            strides: &dense,
            offset: 0,
        },
        x,
        View {
            shape,
            strides,
            offset,
        },
    )?;
    Ok(out)
}

/// Row-major element strides of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// f32 → bf16, rounding to nearest even.
pub fn to_bf16(gpu: &Gpu, x: &Buffer<f32>) -> Result<Buffer<half::bf16>> {
    let out = gpu.zeros::<half::bf16>(x.len())?;
    cast(gpu, "cast_f32_bf16", &out, x)?;
    Ok(out)
}

/// bf16 → f32 (exact).
pub fn to_f32(gpu: &Gpu, x: &Buffer<half::bf16>) -> Result<Buffer<f32>> {
    let out = gpu.zeros::<f32>(x.len())?;
    cast(gpu, "cast_bf16_f32", &out, x)?;
    Ok(out)
}

/// `start + weight · (end − start)` elementwise (an exponential moving average's update).
pub fn lerp(gpu: &Gpu, start: &Buffer<f32>, end: &Buffer<f32>, weight: f32) -> Result<Buffer<f32>> {
    check_len("lerp end", end, start.len())?;
    let out = gpu.zeros::<f32>(start.len())?;
    gpu.launch(
        "elementwise",
        "lerp_f32",
        LaunchConfig::linear(start.len(), ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            start.into(),
            end.into(),
            check_u32("elements", start.len())?.into(),
            weight.into(),
        ],
    )?;
    Ok(out)
}

fn cast<A, B>(gpu: &Gpu, entry: &str, out: &Buffer<A>, x: &Buffer<B>) -> Result<()> {
    gpu.launch(
        "elementwise",
        entry,
        LaunchConfig::linear(x.len(), ELEMENTWISE_BLOCK),
        &[out.into(), x.into(), check_u32("elements", x.len())?.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy_rules() {
        let b = Broadcast::of(&[2, 1, 4], &[3, 1]).unwrap();
        assert_eq!(b.shape, vec![2, 3, 4]);
        assert_eq!(b.a_strides, vec![4, 0, 1]);
        assert_eq!(b.b_strides, vec![0, 1, 0]);
        assert!(Broadcast::of(&[2, 3], &[4, 3]).is_err());
    }
}
