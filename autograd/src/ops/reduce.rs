//! Reductions. The output gradient is re-expanded over the reduced dimensions: evenly for sum
//! and mean, to the arg-max/min elements for max/min, by 2(x − mean)/(n − c) for var, by 2x for a sum
//! of squares.

use crate::Var;
use ditmoe_tensor::{ReduceOp, Result};

/// `shape` with `dims` (empty = all) set to 1.
fn kept_shape(shape: &[usize], dims: &[usize]) -> Vec<usize> {
    (0..shape.len())
        .map(|d| {
            if dims.is_empty() || dims.contains(&d) {
                1
            } else {
                shape[d]
            }
        })
        .collect()
}

impl Var {
    /// Reduces `dims` (empty = all) with `op`.
    pub fn reduce(&self, op: ReduceOp, dims: &[usize], keepdim: bool) -> Result<Var> {
        let value = self.value().reduce(op, dims, keepdim)?;
        let x = self.value();
        let kept = kept_shape(x.shape(), dims);
        let count = (x.numel() / kept.iter().product::<usize>().max(1)) as f64;
        let dims = dims.to_vec();
        let saved_out = matches!(op, ReduceOp::Max | ReduceOp::Min).then(|| value.clone());
        Ok(Var::from_op("reduce", value, &[self], move |g| {
            let g = g.reshape(&kept)?;
            let grad = match op {
                ReduceOp::Sum => g.broadcast_to(x.shape())?.contiguous(),
                ReduceOp::Mean => g
                    .mul_scalar(1.0 / count)?
                    .broadcast_to(x.shape())?
                    .contiguous(),
                ReduceOp::Max | ReduceOp::Min => {
                    let extreme = saved_out.expect("saved for max/min").reshape(&kept)?;
                    let hits = x.eq_elementwise(&extreme)?;
                    let ties = hits.sum(&dims, true)?;
                    hits.mul(&g.div(&ties)?)?
                }
                ReduceOp::Var { correction } => {
                    let centered = x.sub(&x.mean(&dims, true)?)?;
                    centered
                        .mul(&g)?
                        .mul_scalar(2.0 / (count - correction as f64))?
                }
                ReduceOp::SumOfSquares => x.mul(&g)?.mul_scalar(2.0)?,
            };
            Ok(vec![Some(grad)])
        }))
    }

    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce(ReduceOp::Sum, dims, keepdim)
    }
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce(ReduceOp::Mean, dims, keepdim)
    }
    pub fn max(&self, dims: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce(ReduceOp::Max, dims, keepdim)
    }
    pub fn min(&self, dims: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce(ReduceOp::Min, dims, keepdim)
    }
    pub fn var(&self, dims: &[usize], keepdim: bool, unbiased: bool) -> Result<Var> {
        self.reduce(
            ReduceOp::Var {
                correction: usize::from(unbiased),
            },
            dims,
            keepdim,
        )
    }
    /// Sum of all elements (rank 0).
    pub fn sum_all(&self) -> Result<Var> {
        self.sum(&[], false)
    }
    /// Mean of all elements (rank 0).
    pub fn mean_all(&self) -> Result<Var> {
        self.mean(&[], false)
    }
}
