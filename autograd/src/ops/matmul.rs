//! Batched matrix product: dA = G·Bᵀ and dB = Aᵀ·G, each summed over the batch dimensions that
//! broadcasting added. The transposes are views; the GEMM reads them through their strides.

use crate::Var;
use ditmoe_tensor::Result;

impl Var {
    /// `[.., m, k] · [.., k, n] → [.., m, n]` with broadcast batch dimensions.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let value = self.value().matmul(&rhs.value())?;
        let (a, b) = (self.value(), rhs.value());
        Ok(Var::from_op("matmul", value, &[self, rhs], move |g| {
            let ga = g.matmul(&b.t()?)?.sum_to_shape(a.shape())?;
            let gb = a.t()?.matmul(g)?.sum_to_shape(b.shape())?;
            Ok(vec![Some(ga), Some(gb)])
        }))
    }
}
