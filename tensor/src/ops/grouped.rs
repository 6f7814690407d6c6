//! Grouped matrix multiply: the rows of `x` fall into consecutive groups and group g is
//! multiplied by its own weight — the expert computation of a Mixture-of-Experts layer once
//! tokens are sorted by expert (MegaBlocks, Gale et al., 2022). On the CPU it is one GEMM per
//! group; on a GPU one grouped tensor-core launch for all groups (when mixed precision is on
//! and the shapes fit), else the same per-group loop.

use crate::error::{Result, TensorError};
use crate::Tensor;

impl Tensor {
    /// `y[rows_g] = x[rows_g] · op(W_g)` for consecutive row groups of `group_sizes`, with
    /// op(W) = Wᵀ when `transpose_weights` (weights `[out, in]`, a linear layer's layout) and W
    /// otherwise (weights `[in, out]`). `x` is `[Σ sizes, in]`; the result `[Σ sizes, out]`.
    pub fn grouped_matmul(
        x: &Tensor,
        group_sizes: &[usize],
        weights: &[&Tensor],
        transpose_weights: bool,
    ) -> Result<Tensor> {
        let op = "grouped_matmul";
        if group_sizes.len() != weights.len() {
            return Err(TensorError::invalid(
                op,
                format!(
                    "expected one weight per group ({}), found {}",
                    group_sizes.len(),
                    weights.len()
                ),
            ));
        }
        let rows: usize = group_sizes.iter().sum();
        if x.rank() != 2 || x.shape()[0] != rows {
            return Err(TensorError::shape(
                op,
                format!("x of shape [{rows}, in] (the sum of the group sizes)"),
                x.shape(),
            ));
        }
        let inner = x.shape()[1];
        let first = weights.first().map(|w| w.shape().to_vec());
        let out = match first.as_deref() {
            Some(&[a, b]) => {
                if transpose_weights {
                    a
                } else {
                    b
                }
            }
            _ => 0,
        };
        let expected = if transpose_weights {
            [out, inner]
        } else {
            [inner, out]
        };
        for w in weights {
            w.check_shape("grouped_matmul (weight)", &expected)?;
        }
        if x.is_cuda() {
            if let Some(y) =
                crate::ops::cuda::grouped_matmul(x, group_sizes, weights, transpose_weights)?
            {
                return Ok(y);
            }
        }
        let pieces = x.split(group_sizes, 0)?;
        let outs = pieces
            .iter()
            .zip(weights)
            .map(|(rows, w)| {
                if transpose_weights {
                    rows.matmul(&w.t()?)
                } else {
                    rows.matmul(w)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if outs.is_empty() {
            return Tensor::zeros_on(&[0, out], x.dtype(), x.device());
        }
        Tensor::concat(&outs.iter().collect::<Vec<_>>(), 0)
    }
}

impl Tensor {
    /// The weight gradients of [`Tensor::grouped_matmul`] with transposed weights:
    /// `dW_g = dy_gᵀ · x_g` (`[out, in]`) for the consecutive row groups of `dy: [rows, out]`
    /// and `x: [rows, in]`; an empty group's gradient is zero. On a mixed-precision GPU one
    /// launch computes them all.
    pub fn grouped_weight_grads(
        dy: &Tensor,
        x: &Tensor,
        group_sizes: &[usize],
    ) -> Result<Vec<Tensor>> {
        let rows: usize = group_sizes.iter().sum();
        for (what, t) in [("dy", dy), ("x", x)] {
            if t.rank() != 2 || t.shape()[0] != rows {
                return Err(TensorError::shape(
                    "grouped_weight_grads",
                    format!("{what} of shape [{rows}, _] (the sum of the group sizes)"),
                    t.shape(),
                ));
            }
        }
        if dy.is_cuda() {
            if let Some(grads) = crate::ops::cuda::grouped_weight_grads(dy, x, group_sizes)? {
                return Ok(grads);
            }
        }
        let (out, inner) = (dy.shape()[1], x.shape()[1]);
        dy.split(group_sizes, 0)?
            .iter()
            .zip(x.split(group_sizes, 0)?)
            .map(|(dy_g, x_g)| {
                if x_g.shape()[0] == 0 {
                    Tensor::zeros_on(&[out, inner], x.dtype(), x.device())
                } else {
                    dy_g.t()?.matmul(&x_g)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided};

    #[test]
    fn each_group_meets_its_own_weight() {
        let x = random_strided(&[7, 3], -1.0, 1.0, 1);
        let w: Vec<Tensor> = (0..3)
            .map(|s| random_strided(&[4, 3], -1.0, 1.0, 10 + s))
            .collect();
        let refs: Vec<&Tensor> = w.iter().collect();
        let sizes = [2, 0, 5];
        let y = Tensor::grouped_matmul(&x, &sizes, &refs, true).unwrap();
        let yt = Tensor::grouped_matmul(
            &x,
            &sizes,
            &[&w[0].t().unwrap(), &w[1].t().unwrap(), &w[2].t().unwrap()],
            false,
        )
        .unwrap();
        let (xv, yv) = (x.to_vec_f64(), y.to_vec_f64());
        let mut start = 0;
        for (g, &size) in sizes.iter().enumerate() {
            let wv = w[g].to_vec_f64();
            for r in start..start + size {
                for o in 0..4 {
                    let dot: f64 = (0..3).map(|i| xv[r * 3 + i] * wv[o * 3 + i]).sum();
                    assert!((yv[r * 4 + o] - dot).abs() < 1e-12);
                }
            }
            start += size;
        }
        assert_close(&yt.to_vec_f64(), &yv, 1e-12, "untransposed weights");
        assert!(Tensor::grouped_matmul(&x, &[3, 3], &refs[..2], true).is_err());
        // Weight gradients: each group's dyᵀ·x, zero for the empty group.
        let dy = random_strided(&[7, 4], -1.0, 1.0, 20);
        let grads = Tensor::grouped_weight_grads(&dy, &x, &sizes).unwrap();
        assert_eq!(grads.len(), 3);
        assert_eq!(grads[1].to_vec_f64(), vec![0.0; 12]);
        let last = dy
            .narrow(0, 2, 5)
            .unwrap()
            .t()
            .unwrap()
            .matmul(&x.narrow(0, 2, 5).unwrap())
            .unwrap();
        assert_close(&grads[2].to_vec_f64(), &last.to_vec_f64(), 1e-12, "group 2");
        assert!(Tensor::grouped_matmul(&x, &sizes, &refs[..2], true).is_err());
    }
}
