//! `Tensor`: an `Arc`-shared [`Storage`] seen through a [`Layout`]. Cloning a tensor and
//! taking views never copies elements; kernels always produce a new contiguous tensor.

use crate::backend::on_device;
use crate::dtype::{DType, Element};
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::Device;
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
    device: Device,
}

impl Tensor {
    /// A contiguous tensor of `shape` holding `values` (row-major).
    pub fn from_vec<T: Element>(values: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if values.len() != numel {
            return Err(TensorError::invalid(
                "from_vec",
                format!(
                    "shape {shape:?} needs {numel} elements, found {}",
                    values.len()
                ),
            ));
        }
        Ok(Tensor::from_storage(
            T::into_storage(values),
            Layout::contiguous(shape),
        ))
    }

    /// Like [`Tensor::from_vec`] but copies from a slice.
    pub fn from_slice<T: Element>(values: &[T], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(values.to_vec(), shape)
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(value: T) -> Tensor {
        Tensor::from_storage(T::into_storage(vec![value]), Layout::contiguous(&[]))
    }

    pub(crate) fn from_storage(storage: Storage, layout: Layout) -> Tensor {
        Tensor {
            storage: Arc::new(storage),
            layout,
            device: Device::Cpu,
        }
    }

    /// A tensor on `device` holding storage its backend computed.
    pub(crate) fn from_backend(storage: Storage, layout: Layout, device: Device) -> Tensor {
        Tensor {
            storage: Arc::new(storage),
            layout,
            device,
        }
    }

    /// True when the tensor lives on a GPU (its ops take the CUDA path).
    pub fn is_cuda(&self) -> bool {
        matches!(self.device, Device::Cuda(_))
    }

    /// Same storage, new layout.
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor {
            storage: Arc::clone(&self.storage),
            layout,
            device: self.device,
        }
    }

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    /// Size of dimension `dim`.
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.layout.check_dim("dim", dim)?;
        Ok(self.shape()[dim])
    }
    /// True when both tensors view the same storage buffer.
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Copies the tensor to `device` (itself when it is already there): the destination's
    /// backend uploads from the host, the source's downloads to it, and a copy between two
    /// devices goes through the host. A GPU holds `f32` and `i64` tensors; without a GPU the
    /// error says "no NVIDIA driver found …".
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        let moved =
            |storage| Tensor::from_backend(storage, Layout::contiguous(self.shape()), device);
        if self.device == device {
            Ok(self.clone())
        } else if self.device == Device::Cpu {
            on_device(device, |backend| backend.upload(&self.operand())).map(moved)
        } else if device == Device::Cpu {
            on_device(self.device, |backend| backend.download(&self.operand())).map(moved)
        } else {
            self.to_device(Device::Cpu)?.to_device(device)
        }
    }

    /// Fails unless this tensor's dtype is `expected`.
    pub fn check_dtype(&self, op: &'static str, expected: DType) -> Result<()> {
        if self.dtype() == expected {
            Ok(())
        } else {
            Err(TensorError::DType {
                op,
                expected,
                found: self.dtype(),
            })
        }
    }

    /// Fails unless this tensor's shape is `expected`.
    pub fn check_shape(&self, op: &'static str, expected: &[usize]) -> Result<()> {
        if self.shape() == expected {
            Ok(())
        } else {
            Err(TensorError::shape(
                op,
                format!("{expected:?}"),
                self.shape(),
            ))
        }
    }

    /// The elements in row-major logical order, borrowed when the layout is contiguous (host
    /// tensors only: move a device tensor with `to_device(Device::Cpu)` first).
    pub fn values<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        self.ensure_cpu("values")?;
        self.operand().values()
    }

    /// The elements in row-major logical order as a new vector.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.values::<T>()?.into_owned())
    }

    /// The elements converted to `f64`, whatever the dtype (for tests, printing, reports).
    pub fn to_vec_f64(&self) -> Vec<f64> {
        if self.device != Device::Cpu {
            return self.on_cpu().to_vec_f64();
        }
        self.layout
            .offsets()
            .map(|i| self.storage.get_f64(i))
            .collect()
    }

    /// The value of a one-element tensor, as `f64`.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(TensorError::shape(
                "item",
                "exactly one element",
                self.shape(),
            ));
        }
        if self.device != Device::Cpu {
            return self.to_device(Device::Cpu)?.item();
        }
        Ok(self.storage.get_f64(self.layout.offset()))
    }

    /// This tensor copied to the CPU, for the readers that cannot fail (`to_vec_f64`,
    /// `contiguous`); a failing GPU copy here is a driver fault and panics with its reason.
    fn on_cpu(&self) -> Tensor {
        self.to_device(Device::Cpu)
            .unwrap_or_else(|e| panic!("copying a tensor from {} failed: {e}", self.device))
    }

    /// A contiguous copy, or `self` (shared) when already contiguous. On a GPU the copy is a
    /// kernel; a failing launch there is a driver fault and panics with its reason.
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        let storage = on_device(self.device, |backend| backend.contiguous(&self.operand()))
            .unwrap_or_else(|e| panic!("contiguous copy on {} failed: {e}", self.device));
        Tensor::from_backend(storage, Layout::contiguous(self.shape()), self.device)
    }

    /// This tensor's own buffer, writable, for the in-place kernels (the optimizer step). A
    /// view, or a buffer another tensor also holds, is first copied into a fresh contiguous
    /// one (copy on write), so no other tensor ever sees the write.
    pub(crate) fn storage_mut(&mut self) -> Result<&mut Storage> {
        let whole_buffer =
            self.is_contiguous() && self.layout.offset() == 0 && self.storage.len() == self.numel();
        if !whole_buffer {
            let copy = on_device(self.device, |backend| backend.contiguous(&self.operand()))?;
            *self = Tensor::from_backend(copy, Layout::contiguous(self.shape()), self.device);
        }
        Ok(Arc::make_mut(&mut self.storage))
    }

    /// Converts every element to `dtype` (rounding to nearest for bf16/f16, truncating
    /// toward zero for i64).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        Tensor::compute("to_dtype", &[self], self.shape(), |backend, x| {
            backend.to_dtype(&x[0], dtype)
        })
    }

    // ---- views: new layouts over the same storage ----

    /// Same elements, new shape; a view when the layout allows, a copy otherwise.
    /// One dimension may be given as `usize::MAX` to be inferred.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let shape = infer_shape(shape, self.numel(), self.shape())?;
        match self.layout.reshape(&shape) {
            Some(layout) => Ok(self.with_layout(layout)),
            None => Ok(self.contiguous().with_layout(Layout::contiguous(&shape))),
        }
    }

    /// Collapses all dimensions into one.
    pub fn flatten(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }

    /// Reorders dimensions: output dim `i` is input dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.permute(perm)?))
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, dim0: usize, dim1: usize) -> Result<Tensor> {
        self.layout.check_dim("transpose", dim0)?;
        self.layout.check_dim("transpose", dim1)?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(dim0, dim1);
        self.permute(&perm)
    }

    /// Swaps the last two dimensions (the matrix transpose of each batch entry).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(TensorError::shape("t", "rank >= 2", self.shape()));
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// Elements `start..start + len` along `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.narrow(dim, start, len)?))
    }

    /// Repeats size-1 dimensions (and adds leading ones) to reach `shape`, without copying.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.broadcast_to(shape)?))
    }

    /// Inserts a size-1 dimension at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.unsqueeze(dim)?))
    }

    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.squeeze(dim)?))
    }

    /// Fails with a device error unless the tensor lives on the CPU.
    pub(crate) fn ensure_cpu(&self, op: &'static str) -> Result<()> {
        if self.device == Device::Cpu {
            Ok(())
        } else {
            Err(TensorError::NoCudaKernel {
                op,
                device: self.device,
            })
        }
    }
}

/// Resolves one `usize::MAX` entry of `shape` so that the element count is `numel`.
fn infer_shape(shape: &[usize], numel: usize, from: &[usize]) -> Result<Vec<usize>> {
    let unknown = shape.iter().filter(|&&s| s == usize::MAX).count();
    let known: usize = shape.iter().filter(|&&s| s != usize::MAX).product();
    let mut out = shape.to_vec();
    match unknown {
        0 if known == numel => Ok(out),
        1 if known > 0 && numel.is_multiple_of(known) => {
            let pos = shape.iter().position(|&s| s == usize::MAX).unwrap();
            out[pos] = numel / known;
            Ok(out)
        }
        _ => Err(TensorError::shape(
            "reshape",
            format!("a shape with {numel} elements to replace {shape:?}"),
            from,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_share_storage_and_reshape_copies_only_when_needed() {
        let t = Tensor::from_vec((0..6).map(|v| v as f32).collect(), &[2, 3]).unwrap();
        let tt = t.t().unwrap();
        assert!(tt.shares_storage_with(&t));
        assert_eq!(tt.to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        let flat = tt.reshape(&[6]).unwrap();
        assert!(!flat.shares_storage_with(&t));
        assert_eq!(flat.to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        assert!(t.reshape(&[3, usize::MAX]).unwrap().shares_storage_with(&t));
        assert!(t.reshape(&[4, 2]).is_err());
    }

    #[test]
    fn dtype_round_trips() {
        let t = Tensor::from_vec(vec![1.5f32, -2.25, 3.0], &[3]).unwrap();
        for dtype in [DType::F64, DType::BF16, DType::F16] {
            let back = t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(back.to_vec::<f32>().unwrap(), vec![1.5, -2.25, 3.0]);
        }
        assert_eq!(
            t.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(),
            vec![1, -2, 3]
        );
        assert!(matches!(t.to_vec::<f64>(), Err(TensorError::DType { .. })));
    }

    #[test]
    fn cuda_device_without_a_driver_is_a_clear_error() {
        // cuda:7: an ordinal no other test of this process registers as the emulator.
        let t = Tensor::scalar(1.0f32);
        match (ditmoe_cuda::driver_status(), t.to_device(Device::Cuda(7))) {
            (ditmoe_cuda::DriverStatus::Missing(_), Err(err)) => {
                let err = err.to_string();
                assert!(
                    err.contains("cuda:7") && err.contains("NVIDIA driver"),
                    "{err}"
                );
            }
            (ditmoe_cuda::DriverStatus::Missing(_), Ok(_)) => {
                // Only the emulator switch makes a cuda device exist without a driver.
                assert!(std::env::var(ditmoe_cuda::registry::EMULATOR_ENV).is_ok());
            }
            (ditmoe_cuda::DriverStatus::Present { devices }, result) => {
                // cuda:7 exists only on a machine with eight GPUs (or as the emulator).
                match result {
                    Ok(on_gpu) => {
                        assert_eq!(on_gpu.device(), Device::Cuda(7));
                        assert_eq!(on_gpu.to_vec_f64(), vec![1.0]);
                    }
                    Err(err) => {
                        let err = err.to_string();
                        let expected = format!("sees {devices} device(s)");
                        assert!(
                            devices <= 7 && err.contains("cuda:7") && err.contains(&expected),
                            "{err}"
                        );
                    }
                }
                // A GPU that exists opens and holds what it is given.
                ditmoe_cuda::registry::device_or_emulator(0);
                let on_gpu = t.to_device(Device::Cuda(0)).unwrap();
                assert_eq!(on_gpu.to_vec_f64(), vec![1.0]);
            }
        }
    }

    #[test]
    fn from_vec_checks_the_element_count() {
        let err = Tensor::from_vec(vec![1.0f32; 5], &[2, 3])
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 6 elements, found 5"), "{err}");
    }
}
