//! Softmax and log-softmax. With y the saved output and g the output gradient:
//! softmax: dx = y ⊙ (g − Σ g⊙y); log-softmax: dx = g − exp(y) ⊙ Σ g (sums along `dim`).

use crate::Var;
use ditmoe_tensor::Result;

impl Var {
    pub fn softmax(&self, dim: usize) -> Result<Var> {
        let y = self.value().softmax(dim)?;
        let saved = y.clone();
        Ok(Var::from_op("softmax", y, &[self], move |g| {
            let dot = g.mul(&saved)?.sum(&[dim], true)?;
            Ok(vec![Some(saved.mul(&g.sub(&dot)?)?)])
        }))
    }

    pub fn log_softmax(&self, dim: usize) -> Result<Var> {
        let y = self.value().log_softmax(dim)?;
        let saved = y.clone();
        Ok(Var::from_op("log_softmax", y, &[self], move |g| {
            let total = g.sum(&[dim], true)?;
            Ok(vec![Some(g.sub(&saved.exp()?.mul(&total)?)?)])
        }))
    }
}
