//! Layer normalisation over the last dimension; the backward pass is the fused kernel
//! `Tensor::layer_norm_backward`, fed the per-row mean and 1/σ saved by the forward pass.

use crate::Var;
use ditmoe_tensor::Result;

impl Var {
    /// (x − mean)/√(var + eps) · weight + bias over the last dimension; weight and bias optional.
    pub fn layer_norm(&self, weight: Option<&Var>, bias: Option<&Var>, eps: f64) -> Result<Var> {
        let (x, w, b) = (self.value(), weight.map(Var::value), bias.map(Var::value));
        let (y, stats) = x.layer_norm_with_stats(w.as_ref(), b.as_ref(), eps)?;
        let has_bias = bias.is_some();
        let mut parents = vec![self];
        parents.extend(weight);
        parents.extend(bias);
        Ok(Var::from_op("layer_norm", y, &parents, move |g| {
            let grads = x.layer_norm_backward(&stats, w.as_ref(), has_bias, g)?;
            let mut out = vec![Some(grads.input)];
            if w.is_some() {
                out.push(grads.weight);
            }
            if has_bias {
                out.push(grads.bias);
            }
            Ok(out)
        }))
    }
}
