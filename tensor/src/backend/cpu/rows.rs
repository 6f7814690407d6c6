//! Row kernels on the CPU: reductions, argmax, softmax and log-softmax, and layer norm (Ba et
//! al., 2016) with its fused backward. Every one first moves the dims it works along to the end
//! (a view), so each output comes from one contiguous row.

use crate::backend::{contiguous_storage, reduced_dims_last, Operand};
use crate::descriptors::ReduceOp;
use crate::dtype::FloatElement;
use crate::error::Result;
use crate::layout::Layout;
use crate::parallel::{
    filled_by_chunks, for_each_chunk_mut, pool, rows_per_chunk, PARALLEL_THRESHOLD,
};
use crate::storage::Storage;
use crate::with_float_type;
use rayon::prelude::*;

/// What a reduction computes on one row.
pub trait ReduceMath {
    fn reduce_row<T: FloatElement>(self, row: &[T]) -> T;
}

impl ReduceMath for ReduceOp {
    fn reduce_row<T: FloatElement>(self, row: &[T]) -> T {
        let n = T::from_f64(row.len() as f64);
        match self {
            ReduceOp::Sum => row.iter().copied().sum(),
            ReduceOp::Mean => row.iter().copied().sum::<T>() / n,
            ReduceOp::Max => row.iter().copied().fold(T::neg_infinity(), T::max),
            ReduceOp::Min => row.iter().copied().fold(T::infinity(), T::min),
            ReduceOp::Var { correction } => {
                let mean = row.iter().copied().sum::<T>() / n;
                let squares: T = row.iter().map(|&v| (v - mean) * (v - mean)).sum();
                squares / T::from_f64(row.len().saturating_sub(correction) as f64)
            }
            ReduceOp::SumOfSquares => sum_of_squares(row),
        }
    }
}

/// Elements per block of a sum of squares: blocks are summed independently (in parallel for a
/// long row), then added in order.
const SQUARES_BLOCK: usize = 1 << 14;
/// Interleaved partial sums within a block: independent additions the compiler turns into
/// SIMD lanes, where one running sum would be a chain of dependent additions.
const SQUARES_LANES: usize = 16;

/// Σ x² of a row (a gradient's squared norm) in a fixed order whatever the thread count:
/// [`SQUARES_LANES`] interleaved partial sums per block of [`SQUARES_BLOCK`] elements, the
/// lanes then the blocks added in order. Blocked summation also keeps the rounding error to
/// O(block + blocks) ulps instead of O(n) for one running sum over a 200 M-element model.
fn sum_of_squares<T: FloatElement>(row: &[T]) -> T {
    let block_sum = |block: &[T]| {
        let mut lanes = [T::zero(); SQUARES_LANES];
        let mut chunks = block.chunks_exact(SQUARES_LANES);
        for chunk in &mut chunks {
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane += x * x;
            }
        }
        for (lane, &x) in lanes.iter_mut().zip(chunks.remainder()) {
            *lane += x * x;
        }
        lanes.into_iter().fold(T::zero(), |s, lane| s + lane)
    };
    let blocks: Vec<T> = if row.len() < PARALLEL_THRESHOLD {
        row.chunks(SQUARES_BLOCK).map(block_sum).collect()
    } else {
        pool().install(|| row.par_chunks(SQUARES_BLOCK).map(block_sum).collect())
    };
    blocks.into_iter().fold(T::zero(), |s, block| s + block)
}

/// Applies `f` to each of the `outer` rows of `inner` elements, one output value per row.
fn map_rows<T: FloatElement, U: Default + Clone + Send>(
    values: &[T],
    outer: usize,
    inner: usize,
    f: impl Fn(&[T]) -> U + Sync + Send,
) -> Vec<U> {
    let mut out = vec![U::default(); outer];
    let chunk = rows_per_chunk(outer, 1);
    for_each_chunk_mut(&mut out, chunk, values.len(), |c, o| {
        for (j, o) in o.iter_mut().enumerate() {
            let row = (c * chunk + j) * inner;
            *o = f(&values[row..row + inner]);
        }
    });
    out
}

/// Writes `f(row_index, row, out_row)` for every `inner`-long row of `values` into a new buffer.
fn map_rows_to_rows<T: FloatElement>(
    values: &[T],
    inner: usize,
    f: impl Fn(usize, &[T], &mut [T]) + Sync + Send,
) -> Vec<T> {
    if inner == 0 {
        return vec![T::zero(); values.len()];
    }
    let chunk = rows_per_chunk(values.len(), inner);
    filled_by_chunks(values.len(), chunk, values.len(), |c, o| {
        let start = c * chunk;
        for (r, out_row) in o.chunks_mut(inner).enumerate() {
            let row = start + r * inner;
            f(row / inner, &values[row..row + inner], out_row);
        }
    })
}

pub(super) fn reduce(x: &Operand, op: ReduceOp, dims: &[usize]) -> Result<Storage> {
    let leading =
        !dims.is_empty() && dims.len() < x.rank() && dims.iter().enumerate().all(|(i, &d)| i == d);
    if op == ReduceOp::Sum && leading && x.is_contiguous() {
        let columns: usize = x.shape()[dims.len()..].iter().product();
        return with_float_type!(x.dtype(), op.name(), T => {
            Ok(T::into_storage(column_sums(&x.values::<T>()?, columns)))
        });
    }
    let (rows, outer, inner) = reduced_dims_last(x, dims)?;
    with_float_type!(x.dtype(), op.name(), T => {
        let values = rows.values::<T>()?;
        Ok(T::into_storage(map_rows(&values, outer, inner, |row| op.reduce_row(row))))
    })
}

/// Σ over the rows of a row-major matrix of `columns` columns, per column — a bias gradient, dy summed over
/// the tokens. One pass adding each row into the running sums, which the compiler vectorises
/// across the columns, where reducing a transposed view would first copy every column out
/// element by element. Each column is summed in row order, as the row fold of `reduce_row`.
fn column_sums<T: FloatElement>(values: &[T], columns: usize) -> Vec<T> {
    let mut sums = vec![T::zero(); columns];
    if columns == 0 {
        return sums;
    }
    let mut rows = values.chunks_exact(columns);
    if let Some(first) = rows.next() {
        sums.copy_from_slice(first);
    }
    for row in rows {
        for (sum, &v) in sums.iter_mut().zip(row) {
            *sum += v;
        }
    }
    sums
}

pub(super) fn argmax(x: &Operand, dim: usize) -> Result<Storage> {
    let (rows, outer, inner) = reduced_dims_last(x, &[dim])?;
    with_float_type!(x.dtype(), "argmax", T => {
        let values = rows.values::<T>()?;
        let out: Vec<i64> = map_rows(&values, outer, inner, |row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as i64
        });
        Ok(i64::into_storage(out))
    })
}

/// Applies a row function along `dim` and restores the original dimension order.
fn along_dim<T: FloatElement>(
    x: &Operand,
    dim: usize,
    f: impl Fn(&[T], &mut [T]) + Sync + Send,
) -> Result<Storage> {
    let (rows, _, inner) = reduced_dims_last(x, &[dim])?;
    let values = rows.values::<T>()?;
    let out = T::into_storage(map_rows_to_rows(&values, inner, |_, row, out| f(row, out)));
    // `dim` was moved last; move it back.
    let mut inverse: Vec<usize> = (0..x.rank() - 1).collect();
    inverse.insert(dim, x.rank() - 1);
    let layout = Layout::contiguous(rows.shape()).permute(&inverse)?;
    Ok(contiguous_storage(out, layout))
}

fn softmax_row<T: FloatElement>(row: &[T], out: &mut [T]) {
    let max = row.iter().copied().fold(T::neg_infinity(), T::max);
    let mut total = T::zero();
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v - max).exp();
        total += *o;
    }
    out.iter_mut().for_each(|o| *o /= total);
}

fn log_softmax_row<T: FloatElement>(row: &[T], out: &mut [T]) {
    let max = row.iter().copied().fold(T::neg_infinity(), T::max);
    let log_total = row.iter().map(|&v| (v - max).exp()).sum::<T>().ln() + max;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = v - log_total;
    }
}

pub(super) fn softmax(x: &Operand, dim: usize) -> Result<Storage> {
    with_float_type!(x.dtype(), "softmax", T => along_dim::<T>(x, dim, softmax_row))
}

pub(super) fn log_softmax(x: &Operand, dim: usize) -> Result<Storage> {
    with_float_type!(x.dtype(), "log_softmax", T => along_dim::<T>(x, dim, log_softmax_row))
}

fn row_stats<T: FloatElement>(row: &[T], eps: f64) -> (T, T) {
    let n = T::from_f64(row.len() as f64);
    let mean = row.iter().copied().sum::<T>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
    (mean, (var + T::from_f64(eps)).sqrt().recip())
}

fn layer_norm_typed<T: FloatElement>(
    x: &Operand,
    weight: Option<&Operand>,
    bias: Option<&Operand>,
    eps: f64,
) -> Result<[Storage; 3]> {
    let d = *x.shape().last().expect("rank checked");
    let rows: usize = x.shape()[..x.rank() - 1].iter().product();
    let values = x.values::<T>()?;
    let w = weight.map(|w| w.values::<T>()).transpose()?;
    let b = bias.map(|b| b.values::<T>()).transpose()?;
    let stats: Vec<(T, T)> = map_rows(&values, rows, d, |row| row_stats(row, eps));
    let y = map_rows_to_rows(&values, d, |r, row, out| {
        let (mean, rstd) = stats[r];
        for (j, (o, &v)) in out.iter_mut().zip(row).enumerate() {
            let scaled = (v - mean) * rstd * w.as_ref().map_or(T::one(), |w| w[j]);
            *o = scaled + b.as_ref().map_or(T::zero(), |b| b[j]);
        }
    });
    let (mean, rstd): (Vec<T>, Vec<T>) = stats.into_iter().unzip();
    Ok([
        T::into_storage(y),
        T::into_storage(mean),
        T::into_storage(rstd),
    ])
}

/// The storage of the layer-norm gradients: dx, dweight, dbias.
type LayerNormGradStorage = (Storage, Option<Storage>, Option<Storage>);

fn layer_norm_backward_typed<T: FloatElement>(
    x: &Operand,
    (mean, rstd): (&Operand, &Operand),
    weight: Option<&Operand>,
    has_bias: bool,
    grad: &Operand,
) -> Result<LayerNormGradStorage> {
    let d = *x.shape().last().expect("rank checked");
    let values = x.values::<T>()?;
    let dy = grad.values::<T>()?;
    let mean = mean.values::<T>()?;
    let rstd = rstd.values::<T>()?;
    let w = weight.map(|w| w.values::<T>()).transpose()?;
    let n = T::from_f64(d as f64);
    let dx = map_rows_to_rows(&values, d, |r, row, out| {
        let dy_row = &dy[r * d..(r + 1) * d];
        let g = |j: usize| dy_row[j] * w.as_ref().map_or(T::one(), |w| w[j]);
        let xhat = |j: usize| (row[j] - mean[r]) * rstd[r];
        let mean_g = (0..d).map(g).sum::<T>() / n;
        let mean_gx = (0..d).map(|j| g(j) * xhat(j)).sum::<T>() / n;
        for (j, o) in out.iter_mut().enumerate() {
            *o = rstd[r] * (g(j) - mean_g - xhat(j) * mean_gx);
        }
    });
    let mut dweight = vec![T::zero(); d];
    let mut dbias = vec![T::zero(); d];
    for (r, (x_row, dy_row)) in values.chunks(d.max(1)).zip(dy.chunks(d.max(1))).enumerate() {
        for j in 0..d {
            dweight[j] += dy_row[j] * (x_row[j] - mean[r]) * rstd[r];
            dbias[j] += dy_row[j];
        }
    }
    Ok((
        T::into_storage(dx),
        weight.map(|_| T::into_storage(dweight)),
        has_bias.then(|| T::into_storage(dbias)),
    ))
}

pub(super) fn layer_norm(
    x: &Operand,
    weight: Option<&Operand>,
    bias: Option<&Operand>,
    eps: f64,
) -> Result<[Storage; 3]> {
    with_float_type!(x.dtype(), "layer_norm", T => layer_norm_typed::<T>(x, weight, bias, eps))
}

pub(super) fn layer_norm_backward(
    x: &Operand,
    stats: (&Operand, &Operand),
    weight: Option<&Operand>,
    has_bias: bool,
    grad: &Operand,
) -> Result<LayerNormGradStorage> {
    with_float_type!(x.dtype(), "layer_norm_backward", T => layer_norm_backward_typed::<T>(x, stats, weight, has_bias, grad))
}
