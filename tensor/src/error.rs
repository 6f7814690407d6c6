//! The error type of every fallible tensor operation.

use crate::{DType, Device};

/// What went wrong, stated as "expected … found …" wherever that applies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("{op}: shape mismatch: expected {expected}, found {found:?}")]
    Shape {
        op: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    #[error("{op}: dtype mismatch: expected {expected:?}, found {found:?}")]
    DType {
        op: &'static str,
        expected: DType,
        found: DType,
    },
    #[error("{op}: dtype {found:?} is not supported (expected {supported})")]
    UnsupportedDType {
        op: &'static str,
        found: DType,
        supported: &'static str,
    },
    #[error("{op}: device mismatch: expected {expected}, found {found}")]
    DeviceMismatch {
        op: &'static str,
        expected: Device,
        found: Device,
    },
    #[error("{op} has no CUDA kernel yet; found a tensor on {device} (move it with to_device(Device::Cpu))")]
    NoCudaKernel { op: &'static str, device: Device },
    #[error("{op} on the GPU: {message}")]
    Cuda { op: &'static str, message: String },
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable { device: Device, reason: String },
    #[error("{op}: dimension {dim} out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        op: &'static str,
        dim: usize,
        rank: usize,
    },
    #[error("{op}: index {index} out of range for a dimension of size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: i64,
        size: usize,
    },
    #[error("{op}: {message}")]
    InvalidArgument { op: &'static str, message: String },
}

/// Result of a tensor operation.
pub type Result<T> = std::result::Result<T, TensorError>;

impl TensorError {
    /// A shape error for `op`: `expected` describes the requirement, `found` the offending shape.
    pub fn shape(op: &'static str, expected: impl Into<String>, found: &[usize]) -> Self {
        TensorError::Shape {
            op,
            expected: expected.into(),
            found: found.to_vec(),
        }
    }

    /// An invalid-argument error for `op`.
    pub fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        TensorError::InvalidArgument {
            op,
            message: message.into(),
        }
    }
}
