//! Fused attention as one differentiable op: the forward saves q, k, v, the output and the
//! per-row log-sum-exp; the backward is the tiled recomputation of
//! `Tensor::flash_attention_backward` (FlashAttention-2).

use crate::Var;
use ditmoe_tensor::Result;

impl Var {
    /// softmax(q·kᵀ·scale)·v for `[.., T, d]` inputs, never materialising the T×T scores.
    pub fn flash_attention(q: &Var, k: &Var, v: &Var, scale: f64) -> Result<Var> {
        let (qv, kv, vv) = (q.value(), k.value(), v.value());
        let (out, lse) = qv.flash_attention(&kv, &vv, scale)?;
        let saved_out = out.clone();
        Ok(Var::from_op("flash_attention", out, &[q, k, v], move |g| {
            let grads = qv.flash_attention_backward(&kv, &vv, &saved_out, &lse, g, scale)?;
            Ok(vec![Some(grads.q), Some(grads.k), Some(grads.v)])
        }))
    }
}
