//! Wrappers for `kernels/swiglu.ptx`: SwiGLU's gated product `SiLU(g)·u` and its backward pass,
//! one fused pass each (Shazeer, 2020).

use super::{check_len, check_u32, ELEMENTWISE_BLOCK};
use crate::error::Result;
use crate::{Buffer, Gpu, LaunchConfig};

/// `SiLU(gate)·up` elementwise.
pub fn swiglu(gpu: &Gpu, gate: &Buffer<f32>, up: &Buffer<f32>) -> Result<Buffer<f32>> {
    let n = gate.len();
    check_len("swiglu up", up, n)?;
    let out = gpu.zeros::<f32>(n)?;
    gpu.launch(
        "swiglu",
        "swiglu_f32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            gate.into(),
            up.into(),
            check_u32("elements", n)?.into(),
        ],
    )?;
    Ok(out)
}

/// The gradients of [`swiglu`] with respect to the gate and the up projection, given the
/// gradient of its output.
pub fn swiglu_backward(
    gpu: &Gpu,
    gate: &Buffer<f32>,
    up: &Buffer<f32>,
    grad: &Buffer<f32>,
) -> Result<(Buffer<f32>, Buffer<f32>)> {
    let n = gate.len();
    check_len("swiglu backward up", up, n)?;
    check_len("swiglu backward gradient", grad, n)?;
    let (dgate, dup) = (gpu.zeros::<f32>(n)?, gpu.zeros::<f32>(n)?);
    gpu.launch(
        "swiglu",
        "swiglu_backward_f32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            (&dgate).into(),
            (&dup).into(),
            gate.into(),
            up.into(),
            grad.into(),
            check_u32("elements", n)?.into(),
        ],
    )?;
    Ok((dgate, dup))
}
