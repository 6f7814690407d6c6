//! The flat, immutable buffer behind one or more tensors.

use crate::dtype::{DType, Element};
use ditmoe_cuda::{Buffer, Gpu};
use half::{bf16, f16};
use std::sync::Arc;

/// A contiguous buffer of one element type. Tensors share it through an `Arc`; views never
/// copy it and kernels always write a fresh one.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I64(Vec<i64>),
    /// Elements in GPU memory (`ditmoe_cuda`), read through `Tensor::to_device`.
    Cuda(CudaStorage),
}

/// A GPU buffer and the GPU that owns it. Device tensors hold `f32` values, or `i64` indices
/// kept as `u32` on the device (the kernels index with 32-bit integers).
#[derive(Debug, Clone)]
pub struct CudaStorage {
    pub gpu: Arc<Gpu>,
    pub data: CudaData,
}

#[derive(Debug, Clone)]
pub enum CudaData {
    F32(Arc<Buffer<f32>>),
    I64(Arc<Buffer<u32>>),
}

impl PartialEq for CudaStorage {
    /// Two device storages are equal when they are the same buffer.
    fn eq(&self, other: &Self) -> bool {
        match (&self.data, &other.data) {
            (CudaData::F32(a), CudaData::F32(b)) => Arc::ptr_eq(a, b),
            (CudaData::I64(a), CudaData::I64(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Storage {
    /// `n` host elements of `dtype`, element `i` = `value(i)` converted from f64.
    pub fn from_fn(dtype: DType, n: usize, mut value: impl FnMut(usize) -> f64) -> Storage {
        fn build<T: Element>(n: usize, value: &mut impl FnMut(usize) -> f64) -> Storage {
            T::into_storage((0..n).map(|i| T::from_f64(value(i))).collect())
        }
        match dtype {
            DType::F32 => build::<f32>(n, &mut value),
            DType::F64 => build::<f64>(n, &mut value),
            DType::BF16 => build::<bf16>(n, &mut value),
            DType::F16 => build::<f16>(n, &mut value),
            DType::I64 => build::<i64>(n, &mut value),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::I64(_) => DType::I64,
            Storage::Cuda(c) => match c.data {
                CudaData::F32(_) => DType::F32,
                CudaData::I64(_) => DType::I64,
            },
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::I64(v) => v.len(),
            Storage::Cuda(c) => match &c.data {
                CudaData::F32(b) => b.len(),
                CudaData::I64(b) => b.len(),
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` converted to `f64` (for printing and conversions, not for kernels). Device
    /// storage is read by copying the tensor to the CPU first (`Tensor` does that).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Storage::F32(v) => v[i].to_f64(),
            Storage::F64(v) => v[i],
            Storage::BF16(v) => v[i].to_f64(),
            Storage::F16(v) => v[i].to_f64(),
            Storage::I64(v) => v[i] as f64,
            Storage::Cuda(_) => panic!("a GPU tensor's elements are read after to_device(Cpu)"),
        }
    }
}
