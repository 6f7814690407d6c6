//! Reductions over any set of dimensions: sum, mean, max, min, var, and argmax along one.
//!
//! Every reduction first moves the reduced dimensions to the end, so each output element is the
//! reduction of one contiguous row.

pub use crate::descriptors::ReduceOp;

use crate::error::{Result, TensorError};
use crate::Tensor;

/// The result shapes of reducing `dims` of a tensor.
struct Reduced {
    /// With the reduced dimensions kept as size 1.
    kept_shape: Vec<usize>,
    /// With the reduced dimensions removed.
    dropped_shape: Vec<usize>,
    /// Elements reduced into each result.
    inner: usize,
}

/// Checks `dims` (empty = all dimensions): in range and distinct.
fn reduced(t: &Tensor, op: &'static str, dims: &[usize]) -> Result<Reduced> {
    let all: Vec<usize> = (0..t.rank()).collect();
    let dims = if dims.is_empty() { &all[..] } else { dims };
    let mut is_reduced = vec![false; t.rank()];
    for &d in dims {
        t.layout().check_dim(op, d)?;
        if std::mem::replace(&mut is_reduced[d], true) {
            return Err(TensorError::invalid(
                op,
                format!("expected distinct dims, found {dims:?}"),
            ));
        }
    }
    let shape = t.shape();
    Ok(Reduced {
        kept_shape: (0..t.rank())
            .map(|d| if is_reduced[d] { 1 } else { shape[d] })
            .collect(),
        dropped_shape: (0..t.rank())
            .filter(|&d| !is_reduced[d])
            .map(|d| shape[d])
            .collect(),
        inner: dims.iter().map(|&d| shape[d]).product(),
    })
}

impl Tensor {
    /// Reduces `dims` (empty = every dimension) with `op`; `keepdim` keeps them as size 1.
    /// The reduced dimensions are moved last, so each result is the reduction of one row.
    pub fn reduce(&self, op: ReduceOp, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let rows = reduced(self, op.name(), dims)?;
        let shape = if keepdim {
            &rows.kept_shape
        } else {
            &rows.dropped_shape
        };
        if rows.inner == 0 && !matches!(op, ReduceOp::Sum | ReduceOp::SumOfSquares) {
            return Err(TensorError::shape(
                op.name(),
                "a non-empty reduced extent",
                self.shape(),
            ));
        }
        Tensor::compute(op.name(), &[self], shape, |backend, x| {
            backend.reduce(&x[0], op, dims)
        })
    }

    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, dims, keepdim)
    }
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, dims, keepdim)
    }
    pub fn max(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, dims, keepdim)
    }
    pub fn min(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Min, dims, keepdim)
    }
    /// Variance; `unbiased` divides by n − 1 (Bessel's correction), otherwise by n.
    pub fn var(&self, dims: &[usize], keepdim: bool, unbiased: bool) -> Result<Tensor> {
        let correction = usize::from(unbiased);
        self.reduce(ReduceOp::Var { correction }, dims, keepdim)
    }
    /// Sum of every element, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&[], false)
    }

    /// Σ x² over every element, as a scalar: a gradient's squared norm in one pass (one
    /// launch, or two for a long tensor, on a GPU) instead of a product and a sum.
    pub fn sum_of_squares(&self) -> Result<Tensor> {
        self.reduce(ReduceOp::SumOfSquares, &[], false)
    }

    /// Index of the largest element along `dim` (the first one on ties), as i64.
    pub fn argmax(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        let rows = reduced(self, "argmax", &[dim])?;
        if rows.inner == 0 {
            return Err(TensorError::shape(
                "argmax",
                "a non-empty dimension",
                self.shape(),
            ));
        }
        let shape = if keepdim {
            &rows.kept_shape
        } else {
            &rows.dropped_shape
        };
        Tensor::compute("argmax", &[self], shape, |backend, x| {
            backend.argmax(&x[0], dim)
        })
    }

    /// Sums away the dimensions that broadcasting added, so the result has `shape`
    /// (the gradient of `broadcast_to(shape)`).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let error = || {
            TensorError::shape(
                "sum_to_shape",
                format!("a shape that {shape:?} broadcasts to"),
                self.shape(),
            )
        };
        if shape.len() > self.rank() {
            return Err(error());
        }
        let lead = self.rank() - shape.len();
        let mut dims: Vec<usize> = (0..lead).collect();
        for (d, &s) in shape.iter().enumerate() {
            match (s, self.shape()[lead + d]) {
                (a, b) if a == b => {}
                (1, _) => dims.push(lead + d),
                _ => return Err(error()),
            }
        }
        self.sum(&dims, true)?.reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided, ravel, unravel};
    use crate::{seeded_rng, DType};

    /// Naive reference: visit every input element and fold it into its output slot.
    fn reference(t: &Tensor, dims: &[usize], op: ReduceOp) -> Vec<f64> {
        let shape = t.shape();
        let out_shape: Vec<usize> = (0..t.rank())
            .map(|d| if dims.contains(&d) { 1 } else { shape[d] })
            .collect();
        let n_out: usize = out_shape.iter().product();
        let mut groups = vec![Vec::new(); n_out];
        for (i, v) in t.to_vec_f64().into_iter().enumerate() {
            let mut index = unravel(i, shape);
            for &d in dims {
                index[d] = 0;
            }
            groups[ravel(&index, &out_shape)].push(v);
        }
        groups
            .iter()
            .map(|g| {
                let n = g.len() as f64;
                let mean = g.iter().sum::<f64>() / n;
                match op {
                    ReduceOp::Sum => g.iter().sum(),
                    ReduceOp::Mean => mean,
                    ReduceOp::Max => g.iter().cloned().fold(f64::MIN, f64::max),
                    ReduceOp::Min => g.iter().cloned().fold(f64::MAX, f64::min),
                    ReduceOp::Var { correction } => {
                        g.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - correction as f64)
                    }
                    ReduceOp::SumOfSquares => g.iter().map(|v| v * v).sum(),
                }
            })
            .collect()
    }

    #[test]
    fn sum_of_squares_is_the_squared_norm() {
        let x = random_strided(&[3, 5], -2.0, 2.0, 9);
        let expected: f64 = x.to_vec_f64().iter().map(|v| v * v).sum();
        let got = x.sum_of_squares().unwrap();
        assert_eq!(got.shape(), &[] as &[usize]);
        assert!((got.item().unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn a_long_sum_of_squares_is_accurate_in_f32() {
        // Past the parallel threshold, many blocks, a ragged last block and lane remainder.
        let shape = [3 * (1 << 14) + 17, 5];
        let x = Tensor::rand_uniform(&shape, -1.0, 1.0, DType::F32, &mut seeded_rng(4)).unwrap();
        let expected: f64 = x.to_vec_f64().iter().map(|v| v * v).sum();
        let got = x.sum_of_squares().unwrap().item().unwrap();
        assert!(
            ((got - expected) / expected).abs() < 1e-6,
            "{got} vs {expected}"
        );
        assert_eq!(
            got,
            x.sum_of_squares().unwrap().item().unwrap(),
            "deterministic"
        );
    }

    #[test]
    fn reductions_match_reference_over_dim_sets() {
        let t = random_strided(&[3, 4, 5], -2.0, 2.0, 3);
        let dim_sets: [&[usize]; 5] = [&[0], &[2], &[0, 2], &[1, 0], &[0, 1, 2]];
        for op in [
            ReduceOp::Sum,
            ReduceOp::Mean,
            ReduceOp::Max,
            ReduceOp::Min,
            ReduceOp::Var { correction: 1 },
            ReduceOp::Var { correction: 0 },
        ] {
            for dims in dim_sets {
                let kept = t.reduce(op, dims, true).unwrap();
                assert_close(
                    &kept.to_vec_f64(),
                    &reference(&t, dims, op),
                    1e-12,
                    &format!("{op:?} {dims:?}"),
                );
                let dropped = t.reduce(op, dims, false).unwrap();
                assert_eq!(dropped.rank(), 3 - dims.len());
            }
        }
    }

    #[test]
    fn argmax_picks_the_first_maximum() {
        let t = Tensor::from_vec(vec![1.0f32, 3.0, 3.0, 0.0, -1.0, -2.0], &[2, 3]).unwrap();
        assert_eq!(
            t.argmax(1, false).unwrap().to_vec::<i64>().unwrap(),
            vec![1, 0]
        );
        assert_eq!(t.argmax(0, true).unwrap().shape(), &[1, 3]);
    }

    #[test]
    fn sums_over_leading_dims_of_a_contiguous_tensor_are_the_general_path_bit_for_bit() {
        // The column-sum kernel (contiguous input) against the row fold over a permuted view.
        let x = random_strided(&[4, 5, 6], -2.0, 2.0, 11)
            .to_dtype(DType::F32)
            .unwrap()
            .contiguous();
        let strided = x
            .transpose(0, 2)
            .unwrap()
            .contiguous()
            .transpose(0, 2)
            .unwrap();
        assert!(x.is_contiguous() && !strided.is_contiguous());
        for dims in [&[0][..], &[0, 1]] {
            let (fast, general) = (
                x.sum(dims, false).unwrap(),
                strided.sum(dims, false).unwrap(),
            );
            assert_eq!(fast.shape(), general.shape());
            assert_eq!(fast.to_vec_f64(), general.to_vec_f64(), "dims {dims:?}");
        }
        let empty = Tensor::zeros(&[0, 3], DType::F32).unwrap();
        assert_eq!(empty.sum(&[0], false).unwrap().to_vec_f64(), vec![0.0; 3]);
    }

    #[test]
    fn sum_to_shape_undoes_broadcasting() {
        let t = Tensor::ones(&[2, 3, 4], DType::F64).unwrap();
        let s = t.sum_to_shape(&[3, 1]).unwrap();
        assert_eq!(s.shape(), &[3, 1]);
        assert_eq!(s.to_vec_f64(), vec![8.0; 3]);
        assert!(t.sum_to_shape(&[2, 4]).is_err());
    }

    #[test]
    fn bad_dims_are_reported() {
        let t = Tensor::ones(&[2, 3], DType::F32).unwrap();
        assert!(matches!(
            t.sum(&[2], false),
            Err(TensorError::DimOutOfRange {
                dim: 2,
                rank: 2,
                ..
            })
        ));
        assert!(t.sum(&[1, 1], false).is_err());
    }
}
