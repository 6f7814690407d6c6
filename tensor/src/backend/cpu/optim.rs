//! The fused AdamW step on the CPU (Loshchilov & Hutter 2019, decoupled weight decay), and the
//! training loop's in-place step: AdamW and the EMA update of every parameter in one parallel
//! pass over all of them together.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::backend::{Operand, ParamStep};
use crate::descriptors::AdamWHyper;
use crate::dtype::FloatElement;
use crate::error::Result;
use crate::parallel::{pool, PARALLEL_THRESHOLD};
use crate::storage::Storage;
use crate::with_float_type;

/// The AdamW scalars converted to the element type once, so that each step rounds exactly as
/// the same formula written with the elementwise ops would (scalars converted from f64 first):
/// both give the same bits.
struct AdamWScalars<T> {
    beta1: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    inv_correction1: T,
    inv_correction2: T,
    eps: T,
    decay: T,
    lr: T,
    grad_scale: T,
}

impl<T: FloatElement> AdamWScalars<T> {
    fn new(hyper: &AdamWHyper) -> Self {
        let (c1, c2) = hyper.corrections();
        let c = T::from_f64;
        AdamWScalars {
            beta1: c(hyper.beta1),
            one_minus_beta1: c(1.0 - hyper.beta1),
            beta2: c(hyper.beta2),
            one_minus_beta2: c(1.0 - hyper.beta2),
            inv_correction1: c(1.0 / c1),
            inv_correction2: c(1.0 / c2),
            eps: c(hyper.eps),
            decay: c(1.0 - hyper.lr * hyper.weight_decay),
            lr: c(hyper.lr),
            grad_scale: c(hyper.grad_scale),
        }
    }

    /// One element: g = grad·s; m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²;
    /// p = p(1 − lr·wd) − lr·(m/c₁)/(√(v/c₂) + eps). Returns the new (p, m, v).
    #[inline(always)]
    fn step(&self, p: T, grad: T, m: T, v: T) -> (T, T, T) {
        let g = grad * self.grad_scale;
        let m = m * self.beta1 + g * self.one_minus_beta1;
        let v = v * self.beta2 + g * g * self.one_minus_beta2;
        let update = (m * self.inv_correction1) / ((v * self.inv_correction2).sqrt() + self.eps);
        (p * self.decay - update * self.lr, m, v)
    }
}

/// One parameter's AdamW step into new buffers (the public `adamw_update`).
pub(super) fn adamw(
    param: &Operand,
    grad: &Operand,
    m: &Operand,
    v: &Operand,
    hyper: &AdamWHyper,
) -> Result<[Storage; 3]> {
    with_float_type!(param.dtype(), "adamw_update", T => {
        let scalars = AdamWScalars::<T>::new(hyper);
        let (p, g, m, v) = (param.values::<T>()?, grad.values::<T>()?, m.values::<T>()?, v.values::<T>()?);
        let n = p.len();
        let (mut p_out, mut m_out, mut v_out) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let (p, m, v) = scalars.step(p[i], g[i], m[i], v[i]);
            p_out.push(p);
            m_out.push(m);
            v_out.push(v);
        }
        Ok([T::into_storage(p_out), T::into_storage(m_out), T::into_storage(v_out)])
    })
}

/// Elements per piece of work: 64 KiB of f32 per array, so that the EMA loop finds the new
/// parameter values still in the L2 cache.
const PIECE: usize = 1 << 14;

/// Consecutive elements of one parameter and of its state at the same positions.
struct Piece<'a, T> {
    param: &'a mut [T],
    adam: Option<(&'a [T], &'a mut [T], &'a mut [T])>,
    ema: Option<&'a mut [T]>,
}

impl<T: FloatElement> Piece<'_, T> {
    fn update(self, scalars: &AdamWScalars<T>, ema_weight: T) {
        if let Some((grad, m, v)) = self.adam {
            let state = m.iter_mut().zip(v.iter_mut());
            for ((p, &g), (m, v)) in self.param.iter_mut().zip(grad).zip(state) {
                (*p, *m, *v) = scalars.step(*p, g, *m, *v);
            }
        }
        if let Some(ema) = self.ema {
            // `lerp`'s formula: a + w·(b − a).
            for (e, &p) in ema.iter_mut().zip(self.param.iter()) {
                *e = *e + ema_weight * (p - *e);
            }
        }
    }
}

/// Every parameter's AdamW and EMA update in place: the parameters are cut into pieces of
/// [`PIECE`] elements and all pieces of all parameters share the pool, one memory pass each.
pub(super) fn optimizer_step(
    params: &mut [ParamStep],
    hyper: &AdamWHyper,
    ema_weight: f64,
) -> Result<()> {
    let Some(first) = params.first() else {
        return Ok(());
    };
    with_float_type!(first.param.dtype(), "optimizer_step", T => {
        optimizer_step_typed::<T>(params, hyper, ema_weight)
    })
}

/// The elements of a host buffer of `T` (the op checked the dtype).
fn buffer<T: FloatElement>(storage: &mut Storage) -> &mut [T] {
    T::slice_mut(storage).expect("one dtype, checked by the op")
}

fn optimizer_step_typed<T: FloatElement>(
    params: &mut [ParamStep],
    hyper: &AdamWHyper,
    ema_weight: f64,
) -> Result<()> {
    let scalars = AdamWScalars::<T>::new(hyper);
    let ema_weight = T::from_f64(ema_weight);
    let grads: Vec<Option<Cow<[T]>>> = params
        .iter()
        .map(|p| p.adam.as_ref().map(|a| a.grad.values::<T>()).transpose())
        .collect::<Result<_>>()?;
    let mut pieces = Vec::new();
    for (step, grad) in params.iter_mut().zip(&grads) {
        let mut adam = match (&mut step.adam, grad) {
            (Some(state), Some(grad)) => Some((
                grad.chunks(PIECE),
                buffer::<T>(state.m).chunks_mut(PIECE),
                buffer::<T>(state.v).chunks_mut(PIECE),
            )),
            _ => None,
        };
        let mut ema = step.ema.as_mut().map(|e| buffer::<T>(e).chunks_mut(PIECE));
        for param in buffer::<T>(step.param).chunks_mut(PIECE) {
            let adam = adam.as_mut().map(|(g, m, v)| {
                let next = "state as long as its parameter";
                (
                    g.next().expect(next),
                    m.next().expect(next),
                    v.next().expect(next),
                )
            });
            let ema = ema
                .as_mut()
                .map(|e| e.next().expect("shadow as long as its parameter"));
            pieces.push(Piece { param, adam, ema });
        }
    }
    let elements: usize = pieces.iter().map(|p| p.param.len()).sum();
    let update = |piece: Piece<T>| piece.update(&scalars, ema_weight);
    if elements < PARALLEL_THRESHOLD {
        pieces.into_iter().for_each(update);
    } else {
        pool().install(|| pieces.into_par_iter().for_each(update));
    }
    Ok(())
}
