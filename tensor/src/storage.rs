//! The flat, immutable buffer behind one or more tensors.

use crate::dtype::{DType, Element};
use half::{bf16, f16};

/// A contiguous buffer of one element type. Tensors share it through an `Arc`; views never
/// copy it and kernels always write a fresh one.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I64(Vec<i64>),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` converted to `f64` (for printing and conversions, not for kernels).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Storage::F32(v) => v[i].to_f64(),
            Storage::F64(v) => v[i],
            Storage::BF16(v) => v[i].to_f64(),
            Storage::F16(v) => v[i].to_f64(),
            Storage::I64(v) => v[i] as f64,
        }
    }
}
