//! Index kernels on the CPU: select, gather and scatter along a dimension, top-k, one-hot.
//! Indices are checked here (a GPU kernel gives NaN or skips instead).

use std::cmp::Ordering;

use crate::backend::{contiguous_storage, reduced_dims_last, Operand, Strided};
use crate::dtype::{DType, Element, FloatElement};
use crate::error::{Result, TensorError};
use crate::layout::{contiguous_strides, Layout};
use crate::storage::Storage;
use crate::{with_element_type, with_float_type};

/// Reads an index operand, checking dtype and that each entry is in `0..size`.
fn read_indices(op: &'static str, index: &Operand, size: usize) -> Result<Vec<usize>> {
    if index.dtype() != DType::I64 {
        return Err(TensorError::DType {
            op,
            expected: DType::I64,
            found: index.dtype(),
        });
    }
    index
        .values::<i64>()?
        .iter()
        .map(|&i| {
            if i >= 0 && (i as usize) < size {
                Ok(i as usize)
            } else {
                Err(TensorError::IndexOutOfRange { op, index: i, size })
            }
        })
        .collect()
}

/// Calls `f(position, multi_index)` for every element of `shape` in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let numel: usize = shape.iter().product();
    let mut index = vec![0; shape.len()];
    for position in 0..numel {
        f(position, &index);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

/// (outer, size, inner) of a contiguous tensor split around `dim`.
fn split_at_dim(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (
        shape[..dim].iter().product(),
        shape[dim],
        shape[dim + 1..].iter().product(),
    )
}

/// Offset of `index` with `index[dim]` replaced by `at`, in a contiguous tensor with `strides`.
fn offset_with(index: &[usize], strides: &[usize], dim: usize, at: usize) -> usize {
    index
        .iter()
        .zip(strides)
        .enumerate()
        .map(|(d, (&i, &s))| if d == dim { at * s } else { i * s })
        .sum()
}

fn sort_row<T: FloatElement>(row: &[T], descending: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    // Stable sort: equal values keep index order. NaN compares equal to everything.
    order.sort_by(|&i, &j| {
        let ord = row[i].partial_cmp(&row[j]).unwrap_or(Ordering::Equal);
        if descending {
            ord.reverse()
        } else {
            ord
        }
    });
    order
}

pub(super) fn index_select(x: &Operand, dim: usize, index: &Operand) -> Result<Storage> {
    let idx = read_indices("index_select", index, x.shape()[dim])?;
    let (outer, size, inner) = split_at_dim(x.shape(), dim);
    with_element_type!(x.dtype(), T => {
        let x = x.values::<T>()?;
        let mut out = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in &idx {
                let start = (o * size + i) * inner;
                out.extend_from_slice(&x[start..start + inner]);
            }
        }
        Ok(T::into_storage(out))
    })
}

pub(super) fn index_add(
    x: &Operand,
    dim: usize,
    index: &Operand,
    source: &Operand,
) -> Result<Storage> {
    let idx = read_indices("index_add", index, x.shape()[dim])?;
    let (outer, size, inner) = split_at_dim(x.shape(), dim);
    with_float_type!(x.dtype(), "index_add", T => {
        let mut out = x.values::<T>()?.into_owned();
        let src = source.values::<T>()?;
        for o in 0..outer {
            for (l, &i) in idx.iter().enumerate() {
                let to = (o * size + i) * inner;
                let from = (o * idx.len() + l) * inner;
                for (dst, &s) in out[to..to + inner].iter_mut().zip(&src[from..from + inner]) {
                    *dst += s;
                }
            }
        }
        Ok(T::into_storage(out))
    })
}

pub(super) fn gather(x: &Operand, dim: usize, index: &Operand) -> Result<Storage> {
    let idx = read_indices("gather", index, x.shape()[dim])?;
    let strides = contiguous_strides(x.shape());
    with_element_type!(x.dtype(), T => {
        let x = x.values::<T>()?;
        let mut out = Vec::with_capacity(idx.len());
        for_each_index(index.shape(), |p, i| out.push(x[offset_with(i, &strides, dim, idx[p])]));
        Ok(T::into_storage(out))
    })
}

pub(super) fn scatter_add(
    x: &Operand,
    dim: usize,
    index: &Operand,
    source: &Operand,
) -> Result<Storage> {
    let idx = read_indices("scatter_add", index, x.shape()[dim])?;
    let strides = contiguous_strides(x.shape());
    with_float_type!(x.dtype(), "scatter_add", T => {
        let mut out = x.values::<T>()?.into_owned();
        let src = source.values::<T>()?;
        for_each_index(index.shape(), |p, i| out[offset_with(i, &strides, dim, idx[p])] += src[p]);
        Ok(T::into_storage(out))
    })
}

pub(super) fn topk(x: &Operand, k: usize, dim: usize, largest: bool) -> Result<(Strided, Strided)> {
    let (rows, outer, inner) = reduced_dims_last(x, &[dim])?;
    let mut shape = rows.shape().to_vec();
    *shape.last_mut().unwrap() = k;
    let mut inverse: Vec<usize> = (0..x.rank() - 1).collect();
    inverse.insert(dim, x.rank() - 1);
    let back = Layout::contiguous(&shape).permute(&inverse)?;
    let contiguous = Layout::contiguous(back.shape());
    with_float_type!(x.dtype(), "topk", T => {
        let values = rows.values::<T>()?;
        let (mut top, mut indices) = (Vec::new(), Vec::new());
        for r in 0..outer {
            let row = &values[r * inner..(r + 1) * inner];
            for &i in sort_row(row, largest).iter().take(k) {
                top.push(row[i]);
                indices.push(i as i64);
            }
        }
        let (top, indices) = (T::into_storage(top), i64::into_storage(indices));
        Ok((
            (contiguous_storage(top, back.clone()), contiguous.clone()),
            (contiguous_storage(indices, back), contiguous),
        ))
    })
}

pub(super) fn one_hot(x: &Operand, num_classes: usize) -> Result<Storage> {
    let classes = read_indices("one_hot", x, num_classes)?;
    let mut out = vec![0.0f64; classes.len() * num_classes];
    for (i, &c) in classes.iter().enumerate() {
        out[i * num_classes + c] = 1.0;
    }
    Ok(f64::into_storage(out))
}
