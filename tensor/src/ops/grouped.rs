//! Grouped matrix multiply: the rows of `x` fall into consecutive groups and group g is
//! multiplied by its own weight — the expert computation of a Mixture-of-Experts layer once
//! tokens are sorted by expert (MegaBlocks, Gale et al., 2022). On the CPU it is one GEMM per
//! group; on a GPU one grouped tensor-core launch for all groups (when mixed precision is on
//! and the shapes fit), else the same per-group loop.

pub use crate::descriptors::GroupSizes;

use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::Tensor;

impl Tensor {
    /// `y[rows_g] = x[rows_g] · op(W_g)` for consecutive row groups of `group_sizes`, with the
    /// group weights stacked in `weights`: `[groups, out, in]` with op(W) = Wᵀ when
    /// `transpose_weights` (a linear layer's layout), else `[groups, in, out]` and op(W) = W.
    /// `x` is `[Σ sizes, in]`; the result `[Σ sizes, out]`. (Stacked once, the weights serve
    /// the forward product and the backward one without a second copy.)
    pub fn grouped_matmul(
        x: &Tensor,
        group_sizes: &GroupSizes,
        weights: &Tensor,
        transpose_weights: bool,
    ) -> Result<Tensor> {
        let op = "grouped_matmul";
        let &[groups, a, b] = weights.shape() else {
            return Err(TensorError::shape(
                op,
                "weights stacked as [groups, out, in] or [groups, in, out]",
                weights.shape(),
            ));
        };
        if group_sizes.len() != groups {
            return Err(TensorError::invalid(
                op,
                format!(
                    "expected one weight per group ({}), found {groups}",
                    group_sizes.len()
                ),
            ));
        }
        let rows = group_sizes.rows();
        let (inner, out) = if transpose_weights { (b, a) } else { (a, b) };
        if x.rank() != 2 || x.shape()[0] != rows || x.shape()[1] != inner {
            return Err(TensorError::shape(
                op,
                format!(
                    "x of shape [{rows}, {inner}] (the sum of the group sizes, the weights' input)"
                ),
                x.shape(),
            ));
        }
        let (fused, device) = Tensor::run_on_backend(op, &[x, weights], |backend, operands| {
            backend.grouped_matmul(&operands[0], group_sizes, &operands[1], transpose_weights)
        })?;
        if let Some(y) = fused {
            return Ok(Tensor::from_backend(
                y,
                Layout::contiguous(&[rows, out]),
                device,
            ));
        }
        let pieces = x.split(group_sizes.to_host()?, 0)?;
        let outs = pieces
            .iter()
            .enumerate()
            .map(|(g, rows)| {
                let w = weights.narrow(0, g, 1)?.squeeze(0)?;
                if transpose_weights {
                    rows.matmul(&w.t()?)
                } else {
                    rows.matmul(&w)
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
    /// The weight gradients of [`Tensor::grouped_matmul`] with transposed weights, stacked as
    /// the weights are: `dW[g] = dy_gᵀ · x_g` (`[groups, out, in]`) for the consecutive row
    /// groups of `dy: [rows, out]` and `x: [rows, in]`; an empty group's gradient is zero. On a
    /// mixed-precision GPU one launch computes them all.
    pub fn grouped_weight_grads(
        dy: &Tensor,
        x: &Tensor,
        group_sizes: &GroupSizes,
    ) -> Result<Tensor> {
        let (op, rows) = ("grouped_weight_grads", group_sizes.rows());
        for (what, t) in [("dy", dy), ("x", x)] {
            if t.rank() != 2 || t.shape()[0] != rows {
                return Err(TensorError::shape(
                    op,
                    format!("{what} of shape [{rows}, _] (the sum of the group sizes)"),
                    t.shape(),
                ));
            }
        }
        let (out, inner) = (dy.shape()[1], x.shape()[1]);
        let (fused, device) = Tensor::run_on_backend(op, &[dy, x], |backend, operands| {
            backend.grouped_weight_grads(&operands[0], &operands[1], group_sizes)
        })?;
        if let Some(stacked) = fused {
            let shape = [group_sizes.len(), out, inner];
            return Ok(Tensor::from_backend(
                stacked,
                Layout::contiguous(&shape),
                device,
            ));
        }
        let sizes = group_sizes.to_host()?;
        let per_group = dy
            .split(sizes, 0)?
            .iter()
            .zip(x.split(sizes, 0)?)
            .map(|(dy_g, x_g)| {
                if x_g.shape()[0] == 0 {
                    Tensor::zeros_on(&[out, inner], x.dtype(), x.device())
                } else {
                    dy_g.t()?.matmul(&x_g)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&per_group.iter().collect::<Vec<_>>(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, per_group, random_strided};
    use crate::{seeded_rng, DType};
    use rand::Rng;

    /// `Σ_p a[i, p]·b[p, j]` in f64 for row-major `a` (m × k) and `b` (k × n).
    fn naive(a: &[f64], b: &[f64], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    /// The one-job grouped kernels against a naive loop and — bit for bit — against one
    /// `matmul` per group, on random f32 shapes across the tile sizes (depth past one packed
    /// block, rows past one task), with empty groups, one group holding most rows, and
    /// contiguous or column-major weights.
    #[test]
    fn one_job_over_all_groups_matches_one_product_per_group() {
        let mut rng = seeded_rng(7);
        for case in 0..6u64 {
            let groups = rng.random_range(1..6);
            let mut sizes: Vec<usize> = (0..groups).map(|_| rng.random_range(0..20)).collect();
            sizes[rng.random_range(0..groups)] = 0;
            sizes[rng.random_range(0..groups)] += 150; // a skewed load
            let (d_in, d_out) = (rng.random_range(1..300), rng.random_range(1..80));
            let rows: usize = sizes.iter().sum();
            let f32_random = |shape: &[usize], seed| {
                random_strided(shape, -1.0, 1.0, seed)
                    .to_dtype(DType::F32)
                    .unwrap()
            };
            let x = f32_random(&[rows, d_in], 100 + case);
            // Odd cases: a column-major weight; even: contiguous (the transposed pack).
            let mut w = f32_random(&[groups, d_out, d_in], 200 + case);
            if case % 2 == 1 {
                w = w
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .transpose(1, 2)
                    .unwrap();
            }
            let dy = f32_random(&[rows, d_out], 300 + case);
            let group_sizes = GroupSizes::host(&sizes);
            let y = Tensor::grouped_matmul(&x, &group_sizes, &w, true).unwrap();
            let dx = Tensor::grouped_matmul(&dy, &group_sizes, &w, false).unwrap();
            let dw = Tensor::grouped_weight_grads(&dy, &x, &group_sizes).unwrap();
            let (xs, dys) = (x.split(&sizes, 0).unwrap(), dy.split(&sizes, 0).unwrap());
            let mut start = 0;
            for (g, &size) in sizes.iter().enumerate() {
                let w_g = per_group(&w)[g].clone();
                let (y_g, dx_g) = (
                    y.narrow(0, start, size).unwrap(),
                    dx.narrow(0, start, size).unwrap(),
                );
                let what = format!("case {case} group {g} of {sizes:?}, in {d_in}, out {d_out}");
                let wt = w_g.t().unwrap();
                let expect = naive(&xs[g].to_vec_f64(), &wt.to_vec_f64(), (size, d_in, d_out));
                assert_close(&y_g.to_vec_f64(), &expect, 1e-4, &what);
                assert_eq!(
                    y_g.to_vec_f64(),
                    xs[g].matmul(&wt).unwrap().to_vec_f64(),
                    "{what}"
                );
                assert_eq!(
                    dx_g.to_vec_f64(),
                    dys[g].matmul(&w_g).unwrap().to_vec_f64(),
                    "{what}"
                );
                let dw_g = dys[g].t().unwrap().matmul(&xs[g]).unwrap();
                let expect = naive(
                    &dys[g].t().unwrap().to_vec_f64(),
                    &xs[g].to_vec_f64(),
                    (d_out, size, d_in),
                );
                assert_close(&per_group(&dw)[g].to_vec_f64(), &expect, 1e-4, &what);
                assert_eq!(per_group(&dw)[g].to_vec_f64(), dw_g.to_vec_f64(), "{what}");
                start += size;
            }
        }
    }

    #[test]
    fn each_group_meets_its_own_weight() {
        let x = random_strided(&[7, 3], -1.0, 1.0, 1);
        let w: Vec<Tensor> = (0..3)
            .map(|s| random_strided(&[4, 3], -1.0, 1.0, 10 + s))
            .collect();
        let refs: Vec<&Tensor> = w.iter().collect();
        let stacked = Tensor::stack(&refs, 0).unwrap(); // [3, 4, 3]
        let sizes = GroupSizes::host(&[2, 0, 5]);
        let y = Tensor::grouped_matmul(&x, &sizes, &stacked, true).unwrap();
        let yt =
            Tensor::grouped_matmul(&x, &sizes, &stacked.transpose(1, 2).unwrap(), false).unwrap();
        let (xv, yv) = (x.to_vec_f64(), y.to_vec_f64());
        let mut start = 0;
        for (g, &size) in sizes.to_host().unwrap().iter().enumerate() {
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
        let two = GroupSizes::host(&[3, 3]);
        assert!(Tensor::grouped_matmul(&x, &two, &stacked, true).is_err());
        assert!(Tensor::grouped_matmul(&x, &sizes, &w[0], true).is_err());
        assert!(Tensor::grouped_matmul(&x, &sizes, &stacked, false).is_err());
        // Weight gradients: each group's dyᵀ·x, zero for the empty group.
        let dy = random_strided(&[7, 4], -1.0, 1.0, 20);
        let stacked = Tensor::grouped_weight_grads(&dy, &x, &sizes).unwrap();
        let grads = per_group(&stacked);
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
    }
}
