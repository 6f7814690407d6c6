//! The fused AdamW update (Loshchilov & Hutter 2019, decoupled weight decay): one pass over a
//! parameter, its gradient and its two moments instead of a dozen elementwise ops. On a GPU it
//! is one kernel (`ditmoe-cuda`'s `adamw_f32`).

pub use crate::descriptors::{AdamWHyper, AdamWUpdate};

use crate::error::Result;
use crate::layout::Layout;
use crate::{Tensor, TensorError};

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
        let ([param, m, v], device) =
            Tensor::run_on_backend("adamw_update", &[self, grad, m, v], |backend, x| {
                backend.adamw(&x[0], &x[1], &x[2], &x[3], hyper)
            })?;
        let layout = Layout::contiguous(self.shape());
        Ok(AdamWUpdate {
            param: Tensor::from_backend(param, layout.clone(), device),
            m: Tensor::from_backend(m, layout.clone(), device),
            v: Tensor::from_backend(v, layout, device),
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
