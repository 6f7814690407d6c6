//! The fused AdamW step on the CPU (Loshchilov & Hutter 2019, decoupled weight decay).

use crate::backend::Operand;
use crate::descriptors::AdamWHyper;
use crate::error::Result;
use crate::storage::Storage;
use crate::with_float_type;

/// Each step rounds to the dtype exactly as the same formula written with the elementwise ops
/// would (scalars converted from f64 first), so both give the same bits.
pub(super) fn adamw(
    param: &Operand,
    grad: &Operand,
    m: &Operand,
    v: &Operand,
    hyper: &AdamWHyper,
) -> Result<[Storage; 3]> {
    let (c1, c2) = hyper.corrections();
    with_float_type!(param.dtype(), "adamw_update", T => {
        let c = |x: f64| <T as num_traits::NumCast>::from(x).expect("f64 converts");
        let (b1, one_minus_b1) = (c(hyper.beta1), c(1.0 - hyper.beta1));
        let (b2, one_minus_b2) = (c(hyper.beta2), c(1.0 - hyper.beta2));
        let (inv_c1, inv_c2, eps) = (c(1.0 / c1), c(1.0 / c2), c(hyper.eps));
        let (decay, lr, scale) = (c(1.0 - hyper.lr * hyper.weight_decay), c(hyper.lr), c(hyper.grad_scale));
        let (p, g, m, v) = (param.values::<T>()?, grad.values::<T>()?, m.values::<T>()?, v.values::<T>()?);
        let n = p.len();
        let (mut p_out, mut m_out, mut v_out) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let g = g[i] * scale;
            let m = m[i] * b1 + g * one_minus_b1;
            let v = v[i] * b2 + g * g * one_minus_b2;
            let update = (m * inv_c1) / ((v * inv_c2).sqrt() + eps);
            p_out.push(p[i] * decay - update * lr);
            m_out.push(m);
            v_out.push(v);
        }
        Ok([T::into_storage(p_out), T::into_storage(m_out), T::into_storage(v_out)])
    })
}
