//! The fused AdamW update (Loshchilov & Hutter 2019, decoupled weight decay): one pass over a
//! parameter, its gradient and its two moments instead of a dozen elementwise ops. On a GPU it
//! is one kernel (`ditmoe-cuda`'s `adamw_f32`).
//!
//! [`Tensor::optimizer_step`] is the training loop's form: every parameter's AdamW update and
//! EMA update in place, in one pass over all parameters together (on the CPU no buffer is
//! allocated and no thread waits for a small tensor).

pub use crate::descriptors::{AdamWHyper, AdamWUpdate};

use crate::backend::{on_device, AdamState, ParamStep};
use crate::error::Result;
use crate::layout::Layout;
use crate::{DType, Device, Tensor, TensorError};

/// One parameter's part of [`Tensor::optimizer_step`].
pub struct ParamUpdate<'a> {
    /// The parameter, updated in place.
    pub param: &'a mut Tensor,
    /// This step's gradient and the two moments (updated in place); `None` leaves the
    /// parameter as it is (it got no gradient).
    pub adam: Option<AdamWMoments<'a>>,
    /// The EMA shadow of the parameter, moved toward its new value; `None` for no EMA.
    pub ema: Option<&'a mut Tensor>,
}

/// A gradient and the AdamW moments it updates.
pub struct AdamWMoments<'a> {
    pub grad: &'a Tensor,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
}

impl Tensor {
    /// One training step's parameter updates, in place: for each parameter with a gradient
    /// the AdamW step of [`Tensor::adamw_update`], then for each with a shadow the EMA update
    /// `ema ← ema + (1 − ema_decay)·(param − ema)` of [`Tensor::lerp`] — the same bits as
    /// those two ops. Every tensor has its parameter's shape; all share one dtype and device.
    /// A tensor whose buffer is shared or a view is copied first (copy on write), so no other
    /// tensor changes.
    pub fn optimizer_step(
        updates: &mut [ParamUpdate],
        hyper: &AdamWHyper,
        ema_decay: f64,
    ) -> Result<()> {
        let op = "optimizer_step";
        let Some(first) = updates.first() else {
            return Ok(());
        };
        let (dtype, device) = (first.param.dtype(), first.param.device());
        for update in updates.iter() {
            let shape = update.param.shape();
            let mut others: Vec<(&str, &Tensor)> = vec![("parameter", &*update.param)];
            if let Some(adam) = &update.adam {
                others.extend([
                    ("gradient", adam.grad),
                    ("first moment", &*adam.m),
                    ("second moment", &*adam.v),
                ]);
            }
            if let Some(ema) = &update.ema {
                others.push(("EMA shadow", &**ema));
            }
            for (what, t) in others {
                check_alike(op, what, t, shape, dtype, device)?;
            }
        }
        // Gradients flattened to one dimension (a view, copied only when strided).
        let grads: Vec<Option<Tensor>> = updates
            .iter()
            .map(|u| {
                u.adam
                    .as_ref()
                    .map(|a| a.grad.reshape(&[a.grad.numel()]))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let mut steps = Vec::with_capacity(updates.len());
        for (update, grad) in updates.iter_mut().zip(&grads) {
            let adam = match (&mut update.adam, grad) {
                (Some(adam), Some(grad)) => Some(AdamState {
                    grad: grad.operand(),
                    m: adam.m.storage_mut()?,
                    v: adam.v.storage_mut()?,
                }),
                _ => None,
            };
            steps.push(ParamStep {
                param: update.param.storage_mut()?,
                adam,
                ema: update.ema.as_mut().map(|e| e.storage_mut()).transpose()?,
            });
        }
        on_device(device, |backend| {
            backend.optimizer_step(&mut steps, hyper, 1.0 - ema_decay)
        })
    }
}

/// Fails unless `t` (the `what` of a parameter) has the parameter's shape, dtype and device.
fn check_alike(
    op: &'static str,
    what: &str,
    t: &Tensor,
    shape: &[usize],
    dtype: DType,
    device: Device,
) -> Result<()> {
    if t.shape() != shape {
        return Err(TensorError::invalid(
            op,
            format!(
                "the {what} has shape {:?}, its parameter {shape:?}",
                t.shape()
            ),
        ));
    }
    if t.dtype() != dtype || t.device() != device {
        return Err(TensorError::invalid(
            op,
            format!(
                "expected every tensor in {dtype:?} on {device} (the first parameter's), found the {what} in {:?} on {}",
                t.dtype(),
                t.device()
            ),
        ));
    }
    Ok(())
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

    /// The in-place step over many parameters against `adamw_update` then `lerp` per
    /// parameter: the same bits, for parameters with and without a gradient or a shadow, a
    /// strided gradient, sizes across the piece boundaries and the parallel threshold; tensors
    /// sharing a buffer with the ones updated keep their values.
    #[test]
    fn the_in_place_step_gives_the_bits_of_adamw_then_lerp() {
        let hyper = AdamWHyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.05,
            grad_scale: 0.4,
            step: 7,
        };
        let decay = 0.99;
        for dtype in [DType::F32, DType::F64] {
            let t = |shape: &[usize], seed, lo, hi| {
                random_strided(shape, lo, hi, seed).to_dtype(dtype).unwrap()
            };
            // (shape, has a gradient, has a shadow)
            let cases: [(&[usize], bool, bool); 5] = [
                (&[3, 5], true, true),
                (&[50_000], true, true),
                (&[7], false, true),
                (&[130, 130], true, false),
                (&[1], true, true),
            ];
            let mut params = Vec::new();
            let mut expected = Vec::new();
            for (i, &(shape, has_grad, has_ema)) in cases.iter().enumerate() {
                let seed = 10 * i as u64;
                let p = t(shape, seed, -1.0, 1.0);
                // A transposed view: the step reads it in logical order.
                let g = t(&[shape.iter().product()], seed + 1, -1.0, 1.0)
                    .reshape(&[1, shape.iter().product()])
                    .unwrap()
                    .t()
                    .unwrap()
                    .reshape(shape)
                    .unwrap();
                let (m, v) = (t(shape, seed + 2, -0.1, 0.1), t(shape, seed + 3, 0.0, 0.01));
                let e = t(shape, seed + 4, -1.0, 1.0);
                let next = if has_grad {
                    p.adamw_update(&g, &m, &v, &hyper).unwrap()
                } else {
                    AdamWUpdate {
                        param: p.clone(),
                        m: m.clone(),
                        v: v.clone(),
                    }
                };
                let ema = has_ema.then(|| e.lerp(&next.param, 1.0 - decay).unwrap());
                expected.push((next, ema));
                params.push((p, g, m, v, e, has_grad, has_ema));
            }
            // Handles sharing every buffer: they must not see the in-place writes.
            let before: Vec<Vec<f64>> = params.iter().map(|p| p.0.to_vec_f64()).collect();
            let aliases: Vec<Tensor> = params.iter().map(|p| p.0.clone()).collect();
            let mut updates: Vec<ParamUpdate> = params
                .iter_mut()
                .map(|(p, g, m, v, e, has_grad, has_ema)| ParamUpdate {
                    param: p,
                    adam: has_grad.then_some(AdamWMoments { grad: g, m, v }),
                    ema: has_ema.then_some(e),
                })
                .collect();
            Tensor::optimizer_step(&mut updates, &hyper, decay).unwrap();
            for (i, ((p, _, m, v, e, has_grad, _), (next, ema))) in
                params.iter().zip(&expected).enumerate()
            {
                assert_eq!(
                    p.to_vec_f64(),
                    next.param.to_vec_f64(),
                    "{dtype:?} param {i}"
                );
                if *has_grad {
                    assert_eq!(m.to_vec_f64(), next.m.to_vec_f64(), "{dtype:?} m {i}");
                    assert_eq!(v.to_vec_f64(), next.v.to_vec_f64(), "{dtype:?} v {i}");
                }
                if let Some(ema) = ema {
                    assert_eq!(e.to_vec_f64(), ema.to_vec_f64(), "{dtype:?} ema {i}");
                }
                assert_eq!(aliases[i].to_vec_f64(), before[i], "{dtype:?} alias {i}");
            }
        }
    }

    #[test]
    fn the_in_place_step_refuses_mismatched_state() {
        let hyper = AdamWHyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_scale: 1.0,
            step: 1,
        };
        let zeros = |shape: &[usize], dtype| Tensor::zeros(shape, dtype).unwrap();
        let (mut p, g) = (zeros(&[3], DType::F32), zeros(&[3], DType::F32));
        let (mut m, mut v) = (zeros(&[2], DType::F32), zeros(&[3], DType::F32));
        let mut update = [ParamUpdate {
            param: &mut p,
            adam: Some(AdamWMoments {
                grad: &g,
                m: &mut m,
                v: &mut v,
            }),
            ema: None,
        }];
        let err = Tensor::optimizer_step(&mut update, &hyper, 0.9).unwrap_err();
        assert!(
            err.to_string()
                .contains("the first moment has shape [2], its parameter [3]"),
            "{err}"
        );
        let mut q = zeros(&[3], DType::F32);
        let mut shadow = zeros(&[3], DType::F64);
        let mut update = [ParamUpdate {
            param: &mut q,
            adam: None,
            ema: Some(&mut shadow),
        }];
        let err = Tensor::optimizer_step(&mut update, &hyper, 0.9).unwrap_err();
        assert!(
            err.to_string().contains("found the EMA shadow in F64"),
            "{err}"
        );
    }
}
