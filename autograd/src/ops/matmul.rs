//! Batched matrix product: dA = G·Bᵀ and dB = Aᵀ·G, each summed over the batch dimensions that
//! broadcasting added. The transposes are views; the GEMM reads them through their strides.
//!
//! A gradient comes out in its input's layout: when an input is a transposed view (a linear
//! layer's `W.t()`), its gradient is computed transposed — dBᵀ = Gᵀ·A — and returned as a view,
//! so that the weight's own gradient is contiguous and the optimizer reads it without a copy.

use crate::Var;
use ditmoe_tensor::{Result, Tensor};

/// Whether `t` is a transposed view of a contiguous tensor (its last two dims swapped).
fn is_transposed_view(t: &Tensor) -> bool {
    t.rank() >= 2 && !t.is_contiguous() && t.t().is_ok_and(|u| u.is_contiguous())
}

/// `x · y` summed to `shape`; when `like` is a transposed view, computed as `(yᵀ · xᵀ)ᵀ` so the
/// result is a transposed view too.
fn product_like(x: &Tensor, y: &Tensor, like: &Tensor) -> Result<Tensor> {
    if is_transposed_view(like) {
        let mut swapped = like.shape().to_vec();
        let r = swapped.len();
        swapped.swap(r - 2, r - 1);
        y.t()?.matmul(&x.t()?)?.sum_to_shape(&swapped)?.t()
    } else {
        x.matmul(y)?.sum_to_shape(like.shape())
    }
}

impl Var {
    /// `[.., m, k] · [.., k, n] → [.., m, n]` with broadcast batch dimensions.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let value = self.value().matmul(&rhs.value())?;
        let (a, b) = (self.value(), rhs.value());
        Ok(Var::from_op("matmul", value, &[self, rhs], move |g| {
            let ga = product_like(g, &b.t()?, &a)?;
            let gb = product_like(&a.t()?, g, &b)?;
            Ok(vec![Some(ga), Some(gb)])
        }))
    }
}
