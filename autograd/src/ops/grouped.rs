//! Grouped matrix multiply: rows of `x` are split into consecutive groups and group `g` is
//! multiplied by its own weight, `y[rows_g] = x[rows_g] · W_gᵀ` (weights `[out, in]`, PyTorch
//! layout). This is the expert computation of a Mixture-of-Experts layer once tokens are
//! sorted by expert (MegaBlocks, Gale et al., 2022): one GEMM per expert group. It is the entry
//! point a GPU grouped-GEMM kernel replaces. Backward: dX_g = dY_g · W_g, dW_g = dY_gᵀ · X_g.

use crate::Var;
use ditmoe_tensor::{Result, Tensor, TensorError};

/// Rows of each group, checked against `x`.
fn group_rows(x: &Tensor, group_sizes: &[usize], weights: usize) -> Result<()> {
    if group_sizes.len() != weights {
        return Err(TensorError::invalid(
            "grouped_matmul",
            format!(
                "expected one weight per group ({}), found {weights}",
                group_sizes.len()
            ),
        ));
    }
    if x.rank() != 2 || group_sizes.iter().sum::<usize>() != x.shape()[0] {
        return Err(TensorError::shape(
            "grouped_matmul",
            format!(
                "x of shape [{}, in] (the sum of the group sizes)",
                group_sizes.iter().sum::<usize>()
            ),
            x.shape(),
        ));
    }
    Ok(())
}

/// Applies `f(group, rows_of_x)` to each group and stacks the results by rows.
fn per_group(
    x: &Tensor,
    group_sizes: &[usize],
    cols: usize,
    f: impl Fn(usize, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let pieces = x.split(group_sizes, 0)?;
    let outs = pieces
        .iter()
        .enumerate()
        .map(|(g, rows)| f(g, rows))
        .collect::<Result<Vec<_>>>()?;
    if outs.is_empty() {
        return Tensor::zeros_on(&[0, cols], x.dtype(), x.device());
    }
    Tensor::concat(&outs.iter().collect::<Vec<_>>(), 0)
}

impl Var {
    /// `y[rows_g] = x[rows_g] · weights[g]ᵀ` for consecutive row groups of sizes `group_sizes`.
    pub fn grouped_matmul(x: &Var, group_sizes: &[usize], weights: &[&Var]) -> Result<Var> {
        let xv = x.value();
        group_rows(&xv, group_sizes, weights.len())?;
        let ws: Vec<Tensor> = weights.iter().map(|w| w.value()).collect();
        let out_features = ws.first().map_or(0, |w| w.shape()[0]);
        for w in &ws {
            w.check_shape("grouped_matmul (weight)", &[out_features, xv.shape()[1]])?;
        }
        let y = per_group(&xv, group_sizes, out_features, |g, rows| {
            rows.matmul(&ws[g].t()?)
        })?;
        let sizes = group_sizes.to_vec();
        let mut parents = vec![x];
        parents.extend(weights.iter().copied());
        Ok(Var::from_op("grouped_matmul", y, &parents, move |g| {
            let dx = per_group(g, &sizes, xv.shape()[1], |i, dy| dy.matmul(&ws[i]))?;
            let x_groups = xv.split(&sizes, 0)?;
            let mut grads = vec![Some(dx)];
            for ((dy, x_rows), w) in g.split(&sizes, 0)?.iter().zip(&x_groups).zip(&ws) {
                grads.push(Some(if x_rows.shape()[0] == 0 {
                    w.zeros_like()?
                } else {
                    dy.t()?.matmul(x_rows)?
                }));
            }
            Ok(grads)
        }))
    }
}
