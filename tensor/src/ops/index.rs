//! Index operations: select, gather and scatter along a dimension, top-k and sorting, one-hot,
//! and elementwise selection (`where_cond`, `masked_fill`).
//!
//! Index tensors are `i64`. A gather reads `self[…, index[i], …]`; its gradient is the matching
//! scatter-add, and `index_select` pairs with `index_add` the same way.

use crate::dtype::{DType, Element, FloatElement};
use crate::error::{Result, TensorError};
use crate::layout::{broadcast_shapes, contiguous_strides, Layout};
use crate::ops::reduce::rows_over;
use crate::{with_element_type, with_float_type, Tensor};
use std::cmp::Ordering;

/// Reads an index tensor, checking dtype and that each entry is in `0..size`.
fn read_indices(op: &'static str, index: &Tensor, size: usize) -> Result<Vec<usize>> {
    index.check_dtype(op, DType::I64)?;
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

/// Checks that `index` has `self`'s rank and, for gather/scatter, no dimension larger than
/// `self`'s except `dim`.
fn check_gather_shape(op: &'static str, t: &Tensor, dim: usize, index: &Tensor) -> Result<()> {
    t.layout().check_dim(op, dim)?;
    let fits = index.rank() == t.rank()
        && (0..t.rank()).all(|d| d == dim || index.shape()[d] <= t.shape()[d]);
    if fits {
        Ok(())
    } else {
        Err(TensorError::shape(
            op,
            format!(
                "an index of rank {} no larger than {:?} outside dim {dim}",
                t.rank(),
                t.shape()
            ),
            index.shape(),
        ))
    }
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

impl Tensor {
    /// Slices `index[i]` of dimension `dim` for every entry of the 1-D `index`.
    pub fn index_select(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        self.layout().check_dim("index_select", dim)?;
        if index.rank() != 1 {
            return Err(TensorError::shape(
                "index_select",
                "a 1-D index",
                index.shape(),
            ));
        }
        if self.is_cuda() && dim == 0 {
            // Out-of-range indices give NaN rows on the GPU (no host round trip to check).
            return crate::ops::cuda::index_select_rows(self, index);
        }
        let idx = read_indices("index_select", index, self.shape()[dim])?;
        let (outer, size, inner) = split_at_dim(self.shape(), dim);
        let mut shape = self.shape().to_vec();
        shape[dim] = idx.len();
        with_element_type!(self.dtype(), T => {
            let x = self.values::<T>()?;
            let mut out = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &i in &idx {
                    let start = (o * size + i) * inner;
                    out.extend_from_slice(&x[start..start + inner]);
                }
            }
            Ok(Tensor::from_storage(T::into_storage(out), Layout::contiguous(&shape)))
        })
    }

    /// Adds slice `i` of `source` (along `dim`) into slice `index[i]` of a copy of `self`.
    pub fn index_add(&self, dim: usize, index: &Tensor, source: &Tensor) -> Result<Tensor> {
        if self.is_cuda() && dim == 0 {
            return crate::ops::cuda::index_add_rows(self, index, source);
        }
        self.layout().check_dim("index_add", dim)?;
        source.check_dtype("index_add", self.dtype())?;
        let idx = read_indices("index_add", index, self.shape()[dim])?;
        let mut expected = self.shape().to_vec();
        expected[dim] = idx.len();
        if index.rank() != 1 {
            return Err(TensorError::shape(
                "index_add",
                "a 1-D index",
                index.shape(),
            ));
        }
        source.check_shape("index_add", &expected)?;
        let (outer, size, inner) = split_at_dim(self.shape(), dim);
        with_float_type!(self.dtype(), "index_add", T => {
            let mut out = self.to_vec::<T>()?;
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
            Tensor::from_vec(out, self.shape())
        })
    }

    /// out[i] = self[i with i_dim replaced by index[i]]; the output has `index`'s shape.
    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        check_gather_shape("gather", self, dim, index)?;
        if self.is_cuda() && crate::ops::cuda::gathers_last_dim(self, dim, index) {
            return crate::ops::cuda::gather_last(self, index);
        }
        let idx = read_indices("gather", index, self.shape()[dim])?;
        let strides = contiguous_strides(self.shape());
        with_element_type!(self.dtype(), T => {
            let x = self.values::<T>()?;
            let mut out = Vec::with_capacity(idx.len());
            for_each_index(index.shape(), |p, i| out.push(x[offset_with(i, &strides, dim, idx[p])]));
            Ok(Tensor::from_storage(T::into_storage(out), Layout::contiguous(index.shape())))
        })
    }

    /// A copy of `self` with source[i] added at self[i with i_dim replaced by index[i]];
    /// `source` has `index`'s shape.
    pub fn scatter_add(&self, dim: usize, index: &Tensor, source: &Tensor) -> Result<Tensor> {
        check_gather_shape("scatter_add", self, dim, index)?;
        source.check_shape("scatter_add", index.shape())?;
        source.check_dtype("scatter_add", self.dtype())?;
        if self.is_cuda() && crate::ops::cuda::gathers_last_dim(self, dim, index) {
            return crate::ops::cuda::scatter_add_last(self, index, source);
        }
        let idx = read_indices("scatter_add", index, self.shape()[dim])?;
        let strides = contiguous_strides(self.shape());
        with_float_type!(self.dtype(), "scatter_add", T => {
            let mut out = self.to_vec::<T>()?;
            let src = source.values::<T>()?;
            for_each_index(index.shape(), |p, i| out[offset_with(i, &strides, dim, idx[p])] += src[p]);
            Tensor::from_vec(out, self.shape())
        })
    }

    /// The `k` largest (or smallest) entries along `dim`, sorted, with their i64 indices.
    /// Ties keep the lower index first.
    pub fn topk(&self, k: usize, dim: usize, largest: bool) -> Result<(Tensor, Tensor)> {
        self.layout().check_dim("topk", dim)?;
        if k > self.shape()[dim] {
            return Err(TensorError::invalid(
                "topk",
                format!(
                    "expected k <= {} (size of dim {dim}), found k = {k}",
                    self.shape()[dim]
                ),
            ));
        }
        if self.is_cuda() && largest {
            return crate::ops::cuda::topk(self, k, dim);
        }
        let rows = rows_over(self, "topk", &[dim])?;
        let mut shape = rows.permuted.shape().to_vec();
        *shape.last_mut().unwrap() = k;
        let mut inverse: Vec<usize> = (0..self.rank() - 1).collect();
        inverse.insert(dim, self.rank() - 1);
        with_float_type!(self.dtype(), "topk", T => {
            let x = rows.permuted.values::<T>()?;
            let (mut values, mut indices) = (Vec::new(), Vec::new());
            for r in 0..rows.outer() {
                let row = &x[r * rows.inner..(r + 1) * rows.inner];
                for &i in sort_row(row, largest).iter().take(k) {
                    values.push(row[i]);
                    indices.push(i as i64);
                }
            }
            let values = Tensor::from_vec(values, &shape)?.permute(&inverse)?.contiguous();
            let indices = Tensor::from_vec(indices, &shape)?.permute(&inverse)?.contiguous();
            Ok((values, indices))
        })
    }

    /// The i64 indices that sort `dim` (stable).
    pub fn argsort(&self, dim: usize, descending: bool) -> Result<Tensor> {
        let size = self.dim(dim)?;
        Ok(self.topk(size, dim, descending)?.1)
    }

    /// One-hot encoding of an i64 tensor: shape `[.., num_classes]`, 1 at each class.
    pub fn one_hot(&self, num_classes: usize, dtype: DType) -> Result<Tensor> {
        let classes = read_indices("one_hot", self, num_classes)?;
        let mut out = vec![0.0; classes.len() * num_classes];
        for (i, &c) in classes.iter().enumerate() {
            out[i * num_classes + c] = 1.0;
        }
        let mut shape = self.shape().to_vec();
        shape.push(num_classes);
        Tensor::from_vec(out, &shape)?.to_dtype(dtype)
    }

    /// Elementwise `condition != 0 ? on_true : on_false`, all three broadcast together.
    pub fn where_cond(condition: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        on_false.check_dtype("where_cond", on_true.dtype())?;
        if condition.is_cuda() || on_true.is_cuda() || on_false.is_cuda() {
            return crate::ops::cuda::where_cond(condition, on_true, on_false);
        }
        let shape = broadcast_shapes("where_cond", condition.shape(), on_true.shape())?;
        let shape = broadcast_shapes("where_cond", &shape, on_false.shape())?;
        let mask: Vec<bool> = condition
            .broadcast_to(&shape)?
            .to_vec_f64()
            .iter()
            .map(|&c| c != 0.0)
            .collect();
        with_element_type!(on_true.dtype(), T => {
            let (a, b) = (on_true.broadcast_to(&shape)?, on_false.broadcast_to(&shape)?);
            let (a, b) = (a.values::<T>()?, b.values::<T>()?);
            let out: Vec<T> = mask.iter().zip(a.iter().zip(b.iter())).map(|(&m, (&x, &y))| if m { x } else { y }).collect();
            Ok(Tensor::from_storage(T::into_storage(out), Layout::contiguous(&shape)))
        })
    }

    /// `self` with `value` wherever `mask` (broadcast to `self`'s shape) is non-zero.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let mask = mask.broadcast_to(self.shape())?;
        Tensor::where_cond(&mask, &Tensor::full(&[], value, self.dtype())?, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided, ravel, unravel};

    fn ints(values: &[i64], shape: &[usize]) -> Tensor {
        Tensor::from_slice(values, shape).unwrap()
    }

    #[test]
    fn index_select_and_index_add_match_loops() {
        let x = random_strided(&[3, 4, 2], -1.0, 1.0, 1);
        let idx = ints(&[3, 0, 3], &[3]);
        let y = x.index_select(1, &idx).unwrap();
        assert_eq!(y.shape(), &[3, 3, 2]);
        let xv = x.to_vec_f64();
        let expected: Vec<f64> = (0..18)
            .map(|p| {
                let i = unravel(p, &[3, 3, 2]);
                xv[ravel(&[i[0], [3, 0, 3][i[1]], i[2]], &[3, 4, 2])]
            })
            .collect();
        assert_close(&y.to_vec_f64(), &expected, 0.0, "index_select");

        let src = random_strided(&[3, 3, 2], -1.0, 1.0, 2);
        let added = x.index_add(1, &idx, &src).unwrap();
        let mut expected = xv.clone();
        let sv = src.to_vec_f64();
        for (p, s) in sv.iter().enumerate() {
            let i = unravel(p, &[3, 3, 2]);
            expected[ravel(&[i[0], [3, 0, 3][i[1]], i[2]], &[3, 4, 2])] += s;
        }
        assert_close(&added.to_vec_f64(), &expected, 1e-12, "index_add");
        assert!(matches!(
            x.index_select(1, &ints(&[4], &[1])),
            Err(TensorError::IndexOutOfRange {
                index: 4,
                size: 4,
                ..
            })
        ));
    }

    #[test]
    fn gather_and_scatter_add_match_loops() {
        let x = random_strided(&[3, 5], -1.0, 1.0, 3);
        let idx = ints(&[4, 0, 1, 1, 2, 3], &[3, 2]);
        let g = x.gather(1, &idx).unwrap();
        let xv = x.to_vec_f64();
        let expected: Vec<f64> = (0..6)
            .map(|p| xv[(p / 2) * 5 + [4, 0, 1, 1, 2, 3][p] as usize])
            .collect();
        assert_close(&g.to_vec_f64(), &expected, 0.0, "gather");

        let src = random_strided(&[3, 2], -1.0, 1.0, 4);
        let s = x.scatter_add(1, &idx, &src).unwrap();
        let mut expected = xv.clone();
        for (p, v) in src.to_vec_f64().into_iter().enumerate() {
            expected[(p / 2) * 5 + [4, 0, 1, 1, 2, 3][p] as usize] += v;
        }
        assert_close(&s.to_vec_f64(), &expected, 1e-12, "scatter_add");
        assert!(x.gather(1, &ints(&[0, 1], &[2])).is_err());
    }

    #[test]
    fn topk_and_argsort() {
        let x = Tensor::from_vec(vec![0.1f64, 0.9, 0.5, 0.9, 0.3, 0.2], &[2, 3]).unwrap();
        let (v, i) = x.topk(2, 1, true).unwrap();
        assert_eq!(v.to_vec::<f64>().unwrap(), vec![0.9, 0.5, 0.9, 0.3]);
        assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, 2, 0, 1]);
        let (v, i) = x.topk(1, 0, false).unwrap();
        assert_eq!(v.to_vec::<f64>().unwrap(), vec![0.1, 0.3, 0.2]);
        assert_eq!(i.to_vec::<i64>().unwrap(), vec![0, 1, 1]);
        assert_eq!(
            x.argsort(1, false).unwrap().to_vec::<i64>().unwrap(),
            vec![0, 2, 1, 2, 1, 0]
        );
        assert!(x.topk(4, 1, true).is_err());
    }

    #[test]
    fn topk_matches_repeated_argmax_on_random_rows() {
        let x = random_strided(&[4, 9, 3], -1.0, 1.0, 7);
        let (values, picks) = x.topk(4, 1, true).unwrap();
        let (xv, vv, iv) = (
            x.to_vec_f64(),
            values.to_vec_f64(),
            picks.to_vec::<i64>().unwrap(),
        );
        for a in 0..4 {
            for c in 0..3 {
                // Naive: take the maximum k times, striking out each winner.
                let mut column: Vec<f64> =
                    (0..9).map(|j| xv[ravel(&[a, j, c], &[4, 9, 3])]).collect();
                for slot in 0..4 {
                    let best = (0..9).fold(0, |b, j| if column[j] > column[b] { j } else { b });
                    let at = ravel(&[a, slot, c], &[4, 4, 3]);
                    assert_eq!((iv[at], vv[at]), (best as i64, column[best]));
                    column[best] = f64::NEG_INFINITY;
                }
            }
        }
    }

    #[test]
    fn one_hot_where_and_masked_fill() {
        let y = ints(&[2, 0], &[2]).one_hot(3, DType::F32).unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![0., 0., 1., 1., 0., 0.]);
        assert!(ints(&[3], &[1]).one_hot(3, DType::F32).is_err());
        let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let mask = Tensor::from_vec(vec![1.0f32, 0.0], &[2]).unwrap();
        assert_eq!(
            a.masked_fill(&mask, -1.0).unwrap().to_vec::<f32>().unwrap(),
            vec![-1., 2., -1., 4.]
        );
        let b = a.neg().unwrap();
        let cond = Tensor::from_vec(vec![0.0f32, 1.0], &[2, 1]).unwrap();
        assert_eq!(
            Tensor::where_cond(&cond, &a, &b)
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            vec![-1., -2., 3., 4.]
        );
    }
}
