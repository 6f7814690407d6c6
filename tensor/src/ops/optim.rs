//! The fused AdamW update (Loshchilov & Hutter 2019, decoupled weight decay): one pass over a
//! parameter, its gradient and its two moments instead of a dozen elementwise ops. On a GPU it
//! is one kernel (`ditmoe-cuda`'s `adamw_f32`).

use crate::error::Result;
use crate::layout::Layout;
use crate::{with_float_type, Tensor, TensorError};

/// The hyper-parameters of one step; `step` is 1-based (for the bias corrections 1 − βᵗ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Multiplies the gradient first (the clipping factor).
    pub grad_scale: f64,
    pub step: u64,
}

/// A parameter and its moments after one step.
pub struct AdamWUpdate {
    pub param: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

impl AdamWHyper {
    /// 1 − β₁ᵗ and 1 − β₂ᵗ.
    pub fn corrections(&self) -> (f64, f64) {
        let t = self.step.max(1) as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }
}

impl Tensor {
    /// One AdamW step of the parameter `self`:
    /// g = grad·s; m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²;
    /// p = p(1 − lr·wd) − lr·(m/c₁)/(√(v/c₂) + eps).
    /// On the CPU each step rounds to the dtype exactly as the same formula written with the
    /// elementwise ops would (scalars converted from f64 first), so both give the same bits.
    pub fn adamw_update(
        &self,
        grad: &Tensor,
        m: &Tensor,
        v: &Tensor,
        hyper: &AdamWHyper,
    ) -> Result<AdamWUpdate> {
        for (what, t) in [
            ("gradient", grad),
            ("first moment", m),
            ("second moment", v),
        ] {
            t.check_shape("adamw_update", self.shape())?;
            t.check_dtype("adamw_update", self.dtype())?;
            if t.device() != self.device() {
                return Err(TensorError::invalid(
                    "adamw_update",
                    format!(
                        "the {what} is on {}, the parameter on {}",
                        t.device(),
                        self.device()
                    ),
                ));
            }
        }
        if self.is_cuda() {
            return crate::ops::cuda::adamw(self, grad, m, v, hyper);
        }
        let (c1, c2) = hyper.corrections();
        with_float_type!(self.dtype(), "adamw_update", T => {
            let c = |x: f64| <T as num_traits::NumCast>::from(x).expect("f64 converts");
            let (b1, one_minus_b1) = (c(hyper.beta1), c(1.0 - hyper.beta1));
            let (b2, one_minus_b2) = (c(hyper.beta2), c(1.0 - hyper.beta2));
            let (inv_c1, inv_c2, eps) = (c(1.0 / c1), c(1.0 / c2), c(hyper.eps));
            let (decay, lr, scale) = (c(1.0 - hyper.lr * hyper.weight_decay), c(hyper.lr), c(hyper.grad_scale));
            let (p, g, m, v) = (self.values::<T>()?, grad.values::<T>()?, m.values::<T>()?, v.values::<T>()?);
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
            let shape = Layout::contiguous(self.shape());
            Ok(AdamWUpdate {
                param: Tensor::from_storage(T::into_storage(p_out), shape.clone()),
                m: Tensor::from_storage(T::into_storage(m_out), shape.clone()),
                v: Tensor::from_storage(T::into_storage(v_out), shape),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::random_strided;
    use crate::DType;

    /// The same step written with the elementwise ops (what `ditmoe-nn`'s AdamW did before).
    fn composed(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &AdamWHyper) -> AdamWUpdate {
        let (c1, c2) = h.corrections();
        let g = g.mul_scalar(h.grad_scale).unwrap();
        let m = m
            .mul_scalar(h.beta1)
            .unwrap()
            .add(&g.mul_scalar(1.0 - h.beta1).unwrap())
            .unwrap();
        let gg = g.mul(&g).unwrap().mul_scalar(1.0 - h.beta2).unwrap();
        let v = v.mul_scalar(h.beta2).unwrap().add(&gg).unwrap();
        let denom = v
            .mul_scalar(1.0 / c2)
            .unwrap()
            .sqrt()
            .unwrap()
            .add_scalar(h.eps)
            .unwrap();
        let update = m.mul_scalar(1.0 / c1).unwrap().div(&denom).unwrap();
        let param = p
            .mul_scalar(1.0 - h.lr * h.weight_decay)
            .unwrap()
            .sub(&update.mul_scalar(h.lr).unwrap())
            .unwrap();
        AdamWUpdate { param, m, v }
    }

    #[test]
    fn the_fused_step_gives_the_bits_of_the_composed_ops() {
        let hyper = AdamWHyper {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            grad_scale: 0.7,
            step: 3,
        };
        for dtype in [DType::F32, DType::F64] {
            let t = |seed, lo, hi| {
                random_strided(&[5, 7], lo, hi, seed)
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (p, g, m, v) = (
                t(1, -1.0, 1.0),
                t(2, -1.0, 1.0),
                t(3, -0.1, 0.1),
                t(4, 0.0, 0.01),
            );
            let fused = p.adamw_update(&g, &m, &v, &hyper).unwrap();
            let reference = composed(&p, &g, &m, &v, &hyper);
            assert_eq!(
                fused.param.to_vec_f64(),
                reference.param.to_vec_f64(),
                "{dtype:?}"
            );
            assert_eq!(fused.m.to_vec_f64(), reference.m.to_vec_f64(), "{dtype:?}");
            assert_eq!(fused.v.to_vec_f64(), reference.v.to_vec_f64(), "{dtype:?}");
        }
        let p = Tensor::zeros(&[3], DType::F32).unwrap();
        let short = Tensor::zeros(&[2], DType::F32).unwrap();
        assert!(p.adamw_update(&short, &p, &p, &hyper).is_err());
    }
}
