//! Index operations: select, gather and scatter along a dimension, top-k and sorting, one-hot,
//! and elementwise selection (`where_cond`, `masked_fill`).
//!
//! Index tensors are `i64`. A gather reads `self[…, index[i], …]`; its gradient is the matching
//! scatter-add, and `index_select` pairs with `index_add` the same way.

use crate::dtype::DType;
use crate::error::{Result, TensorError};
use crate::layout::broadcast_shapes;
use crate::Tensor;

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

/// Fails unless `index` holds i64 indices.
fn check_index(op: &'static str, index: &Tensor) -> Result<()> {
    index.check_dtype(op, DType::I64)
}

impl Tensor {
    /// Slices `index[i]` of dimension `dim` for every entry of the 1-D `index` (out-of-range
    /// indices are an error on the CPU and give NaN rows on a GPU, which does not wait to
    /// check them).
    pub fn index_select(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        self.layout().check_dim("index_select", dim)?;
        if index.rank() != 1 {
            return Err(TensorError::shape(
                "index_select",
                "a 1-D index",
                index.shape(),
            ));
        }
        check_index("index_select", index)?;
        let mut shape = self.shape().to_vec();
        shape[dim] = index.numel();
        Tensor::compute("index_select", &[self, index], &shape, |backend, x| {
            backend.index_select(&x[0], dim, &x[1])
        })
    }

    /// Adds slice `i` of `source` (along `dim`) into slice `index[i]` of a copy of `self`.
    pub fn index_add(&self, dim: usize, index: &Tensor, source: &Tensor) -> Result<Tensor> {
        self.layout().check_dim("index_add", dim)?;
        source.check_dtype("index_add", self.dtype())?;
        check_index("index_add", index)?;
        if index.rank() != 1 {
            return Err(TensorError::shape(
                "index_add",
                "a 1-D index",
                index.shape(),
            ));
        }
        let mut expected = self.shape().to_vec();
        expected[dim] = index.numel();
        source.check_shape("index_add", &expected)?;
        Tensor::compute(
            "index_add",
            &[self, index, source],
            self.shape(),
            |backend, x| backend.index_add(&x[0], dim, &x[1], &x[2]),
        )
    }

    /// out[i] = self[i with i_dim replaced by index[i]]; the output has `index`'s shape.
    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        check_gather_shape("gather", self, dim, index)?;
        check_index("gather", index)?;
        Tensor::compute("gather", &[self, index], index.shape(), |backend, x| {
            backend.gather(&x[0], dim, &x[1])
        })
    }

    /// A copy of `self` with source[i] added at self[i with i_dim replaced by index[i]];
    /// `source` has `index`'s shape.
    pub fn scatter_add(&self, dim: usize, index: &Tensor, source: &Tensor) -> Result<Tensor> {
        check_gather_shape("scatter_add", self, dim, index)?;
        source.check_shape("scatter_add", index.shape())?;
        source.check_dtype("scatter_add", self.dtype())?;
        check_index("scatter_add", index)?;
        Tensor::compute(
            "scatter_add",
            &[self, index, source],
            self.shape(),
            |backend, x| backend.scatter_add(&x[0], dim, &x[1], &x[2]),
        )
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
        let (((values, values_layout), (indices, indices_layout)), device) =
            Tensor::run_on_backend("topk", &[self], |backend, x| {
                backend.topk(&x[0], k, dim, largest)
            })?;
        Ok((
            Tensor::from_backend(values, values_layout, device),
            Tensor::from_backend(indices, indices_layout, device),
        ))
    }

    /// The i64 indices that sort `dim` (stable).
    pub fn argsort(&self, dim: usize, descending: bool) -> Result<Tensor> {
        let size = self.dim(dim)?;
        Ok(self.topk(size, dim, descending)?.1)
    }

    /// One-hot encoding of an i64 tensor: shape `[.., num_classes]`, 1 at each class.
    pub fn one_hot(&self, num_classes: usize, dtype: DType) -> Result<Tensor> {
        let mut shape = self.shape().to_vec();
        shape.push(num_classes);
        Tensor::compute("one_hot", &[self], &shape, |backend, x| {
            backend.one_hot(&x[0], num_classes)
        })?
        .to_dtype(dtype)
    }

    /// Elementwise `condition != 0 ? on_true : on_false`, all three broadcast together. A CPU
    /// scalar may meet device tensors (it is copied there).
    pub fn where_cond(condition: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        on_false.check_dtype("where_cond", on_true.dtype())?;
        let shape = broadcast_shapes("where_cond", condition.shape(), on_true.shape())?;
        let shape = broadcast_shapes("where_cond", &shape, on_false.shape())?;
        let operands = Tensor::scalars_to_common_device(&[condition, on_true, on_false])?;
        let wide = operands
            .iter()
            .map(|t| t.broadcast_to(&shape))
            .collect::<Result<Vec<_>>>()?;
        Tensor::compute(
            "where_cond",
            &[&wide[0], &wide[1], &wide[2]],
            &shape,
            |backend, x| backend.where_cond(&x[0], &x[1], &x[2]),
        )
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
