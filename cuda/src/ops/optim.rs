//! Wrapper for `kernels/optim.ptx`: the fused AdamW step.

use super::{check_len, check_u32, ELEMENTWISE_BLOCK};
use crate::error::Result;
use crate::{Buffer, Gpu, LaunchConfig};

/// The hyper-parameters of one AdamW step (`ditmoe_nn::optim::AdamW` semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Multiplies the gradient first (gradient clipping or loss scaling).
    pub grad_scale: f32,
    /// The 1-based step number, for the bias corrections 1 − βᵗ.
    pub step: u32,
}

/// The parameter and moments after one step.
pub struct AdamWState {
    pub param: Buffer<f32>,
    pub m: Buffer<f32>,
    pub v: Buffer<f32>,
}

/// One step from `param`, `grad` and the moments `m`, `v`, into new buffers.
pub fn adamw(
    gpu: &Gpu,
    hyper: &AdamWStep,
    param: &Buffer<f32>,
    grad: &Buffer<f32>,
    m: &Buffer<f32>,
    v: &Buffer<f32>,
) -> Result<AdamWState> {
    let n = param.len();
    check_len("adamw gradient", grad, n)?;
    check_len("adamw first moment", m, n)?;
    check_len("adamw second moment", v, n)?;
    let next = AdamWState {
        param: gpu.zeros(n)?,
        m: gpu.zeros(n)?,
        v: gpu.zeros(n)?,
    };
    let step = hyper.step.max(1) as i32;
    let correction1 = 1.0 - (hyper.beta1 as f64).powi(step);
    let correction2 = 1.0 - (hyper.beta2 as f64).powi(step);
    gpu.launch(
        "optim",
        "adamw_f32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            (&next.param).into(),
            (&next.m).into(),
            (&next.v).into(),
            param.into(),
            grad.into(),
            m.into(),
            v.into(),
            check_u32("parameters", n)?.into(),
            hyper.lr.into(),
            hyper.beta1.into(),
            hyper.beta2.into(),
            hyper.eps.into(),
            hyper.weight_decay.into(),
            hyper.grad_scale.into(),
            ((1.0 / correction1) as f32).into(),
            ((1.0 / correction2) as f32).into(),
        ],
    )?;
    Ok(next)
}
