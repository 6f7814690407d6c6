//! The public tensor ops, one family per module. Each adds methods to
//! [`Tensor`](crate::Tensor) that check shapes and dtypes, prepare views, and hand the
//! operands to the backend of their device ([`crate::backend`]); none names a device. Each
//! module ends with tests against a naive loop on random, strided and broadcast inputs.

pub mod attention;
pub mod binary;
pub mod create;
pub mod grouped;
pub mod index;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod routing;
pub mod shape;
pub mod softmax;
pub mod swiglu;
pub mod unary;

#[cfg(test)]
mod cuda_tests;
#[cfg(test)]
pub(crate) mod testing;

use crate::backend::{on_device, Backend, Operand};
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::{Device, Tensor};

impl Tensor {
    /// This tensor as a backend operand.
    pub(crate) fn operand(&self) -> Operand<'_> {
        Operand::new(self.storage(), self.layout())
    }

    /// The device every one of `inputs` is on (the first's); a `DeviceMismatch` naming `op`
    /// when they differ.
    pub(crate) fn common_device(op: &'static str, inputs: &[&Tensor]) -> Result<Device> {
        let device = inputs.first().map_or(Device::Cpu, |t| t.device());
        match inputs.iter().find(|t| t.device() != device) {
            Some(other) => Err(TensorError::DeviceMismatch {
                op,
                expected: device,
                found: other.device(),
            }),
            None => Ok(device),
        }
    }

    /// Runs `f` on the backend of the device all `inputs` share, with their operands.
    pub(crate) fn run_on_backend<R>(
        op: &'static str,
        inputs: &[&Tensor],
        f: impl FnOnce(&dyn Backend, &[Operand]) -> Result<R>,
    ) -> Result<(R, Device)> {
        let device = Tensor::common_device(op, inputs)?;
        let operands: Vec<Operand> = inputs.iter().map(|t| t.operand()).collect();
        Ok((on_device(device, |backend| f(backend, &operands))?, device))
    }

    /// [`Tensor::run_on_backend`] for an op with one contiguous result of `shape`.
    pub(crate) fn compute(
        op: &'static str,
        inputs: &[&Tensor],
        shape: &[usize],
        f: impl FnOnce(&dyn Backend, &[Operand]) -> Result<Storage>,
    ) -> Result<Tensor> {
        let (storage, device) = Tensor::run_on_backend(op, inputs, f)?;
        Ok(Tensor::from_backend(
            storage,
            Layout::contiguous(shape),
            device,
        ))
    }

    /// One-element CPU tensors among `inputs` (scalar constants) copied to the device of the
    /// others, as PyTorch lets CPU scalars meet GPU tensors.
    pub(crate) fn scalars_to_common_device(inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let device = inputs
            .iter()
            .map(|t| t.device())
            .find(|d| *d != Device::Cpu)
            .unwrap_or(Device::Cpu);
        inputs
            .iter()
            .map(|t| {
                if t.device() == Device::Cpu && t.numel() == 1 {
                    t.to_device(device)
                } else {
                    Ok((*t).clone())
                }
            })
            .collect()
    }
}
