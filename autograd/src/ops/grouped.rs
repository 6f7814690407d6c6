//! Grouped matrix multiply: rows of `x` are split into consecutive groups and group `g` is
//! multiplied by its own weight, `y[rows_g] = x[rows_g] · W_gᵀ` (weights stacked `[groups, out,
//! in]`, PyTorch's layout per group) — the expert computation of a Mixture-of-Experts layer once
//! tokens are sorted by expert (`Tensor::grouped_matmul`: a GEMM per group on the CPU, one
//! grouped launch on a GPU).
//! Backward: dX_g = dY_g · W_g (grouped again), dW_g = dY_gᵀ · X_g (`grouped_weight_grads`).

use crate::Var;
use ditmoe_tensor::{GroupSizes, Result, Tensor};

impl Var {
    /// `y[rows_g] = x[rows_g] · weights[g]ᵀ` for consecutive row groups of sizes `group_sizes`
    /// (on the host, or left on the GPU by the MoE dispatch); `weights` is `[groups, out, in]`.
    pub fn grouped_matmul(x: &Var, group_sizes: &GroupSizes, weights: &Var) -> Result<Var> {
        let (xv, wv) = (x.value(), weights.value());
        let y = Tensor::grouped_matmul(&xv, group_sizes, &wv, true)?;
        let sizes = group_sizes.clone();
        Ok(Var::from_op("grouped_matmul", y, &[x, weights], move |g| {
            let dx = Tensor::grouped_matmul(g, &sizes, &wv, false)?;
            let dw = Tensor::grouped_weight_grads(g, &xv, &sizes)?;
            Ok(vec![Some(dx), Some(dw)])
        }))
    }
}
