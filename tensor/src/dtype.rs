//! Element types: `f32` for compute, `f64` for references and gradient checks, `bf16`/`f16`
//! for storage (converted with [`Tensor::to_dtype`](crate::Tensor::to_dtype)), and `i64` for
//! indices (the outputs of `argmax`/`topk`, the inputs of `gather`/`index_select`).

use crate::storage::Storage;
use half::{bf16, f16};
use std::fmt::Debug;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// True for the types the CPU kernels compute in (`f32`, `f64`).
    pub fn is_compute_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

/// A Rust type that can be stored in a tensor.
pub trait Element: Copy + Send + Sync + Debug + PartialOrd + 'static {
    const DTYPE: DType;
    /// The storage's elements if it holds this type.
    fn slice(storage: &Storage) -> Option<&[Self]>;
    /// The same, writable (the in-place kernels).
    fn slice_mut(storage: &mut Storage) -> Option<&mut [Self]>;
    fn into_storage(values: Vec<Self>) -> Storage;
    fn to_f64(self) -> f64;
    fn from_f64(value: f64) -> Self;
}

/// A type the CPU kernels compute in: `f32` or `f64`.
pub trait FloatElement:
    Element + num_traits::Float + num_traits::NumAssign + std::iter::Sum + Default
{
}
impl FloatElement for f32 {}
impl FloatElement for f64 {}

macro_rules! impl_element {
    ($t:ty, $variant:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(storage: &Storage) -> Option<&[Self]> {
                match storage {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(storage: &mut Storage) -> Option<&mut [Self]> {
                match storage {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(values: Vec<Self>) -> Storage {
                Storage::$variant(values)
            }
            fn to_f64(self) -> f64 {
                let to: fn($t) -> f64 = $to;
                to(self)
            }
            fn from_f64(value: f64) -> Self {
                let from: fn(f64) -> $t = $from;
                from(value)
            }
        }
    };
}

impl_element!(f32, F32, |v| v as f64, |v| v as f32);
impl_element!(f64, F64, |v| v, |v| v);
impl_element!(bf16, BF16, |v| v.to_f64(), bf16::from_f64);
impl_element!(f16, F16, |v| v.to_f64(), f16::from_f64);
impl_element!(i64, I64, |v| v as f64, |v| v as i64);

/// The element traits, imported anonymously into the bodies of [`with_float_type!`] and
/// [`with_element_type!`] so `T::zero()`, `T::from_f64(…)` and friends resolve there.
#[doc(hidden)]
pub mod traits_in_scope {
    pub use super::Element as _;
    pub use num_traits::{Float as _, One as _, Zero as _};
}

/// Runs `$body` with `$T` bound to the Rust float type of `$dtype` (`f32` or `f64`);
/// any other dtype gives an [`UnsupportedDType`](crate::TensorError::UnsupportedDType) error.
#[macro_export]
#[doc(hidden)]
macro_rules! with_float_type {
    ($dtype:expr, $op:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                #[allow(unused_imports)]
                use $crate::dtype::traits_in_scope::*;
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                #[allow(unused_imports)]
                use $crate::dtype::traits_in_scope::*;
                type $T = f64;
                $body
            }
            other => Err($crate::TensorError::UnsupportedDType {
                op: $op,
                found: other,
                supported: "f32 or f64",
            }),
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust element type of `$dtype`, for any dtype.
#[macro_export]
#[doc(hidden)]
macro_rules! with_element_type {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::BF16 => {
                type $T = $crate::half::bf16;
                $body
            }
            $crate::DType::F16 => {
                type $T = $crate::half::f16;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
        }
    };
}
