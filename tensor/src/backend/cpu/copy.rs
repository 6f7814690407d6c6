//! Copies on the CPU: dtype conversion and concatenation.

use crate::backend::Operand;
use crate::dtype::{DType, Element};
use crate::error::Result;
use crate::storage::Storage;
use crate::with_element_type;
use half::{bf16, f16};

/// Converts every element to `dtype` (rounding to nearest for bf16/f16, truncating toward
/// zero for i64); f32 ↔ bf16/f16 convert directly, the rest through f64.
pub(super) fn to_dtype(x: &Operand, dtype: DType) -> Storage {
    let offsets = || x.layout().offsets();
    fn convert<T: Element>(x: &Operand) -> Storage {
        T::into_storage(
            x.layout()
                .offsets()
                .map(|i| T::from_f64(x.storage().get_f64(i)))
                .collect(),
        )
    }
    match (dtype, x.storage()) {
        (DType::F32, Storage::BF16(v)) => Storage::F32(offsets().map(|i| v[i].to_f32()).collect()),
        (DType::F32, Storage::F16(v)) => Storage::F32(offsets().map(|i| v[i].to_f32()).collect()),
        (DType::F32, _) => convert::<f32>(x),
        (DType::F64, _) => convert::<f64>(x),
        (DType::BF16, Storage::F32(v)) => {
            Storage::BF16(offsets().map(|i| bf16::from_f32(v[i])).collect())
        }
        (DType::BF16, _) => convert::<bf16>(x),
        (DType::F16, Storage::F32(v)) => {
            Storage::F16(offsets().map(|i| f16::from_f32(v[i])).collect())
        }
        (DType::F16, _) => convert::<f16>(x),
        (DType::I64, _) => convert::<i64>(x),
    }
}

/// Joins `pieces` along `dim` into a contiguous tensor of `shape`.
pub(super) fn concat(pieces: &[Operand], dim: usize, shape: &[usize]) -> Result<Storage> {
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    with_element_type!(pieces[0].dtype(), T => {
        let parts = pieces.iter().map(|p| p.values::<T>()).collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for (piece, part) in pieces.iter().zip(&parts) {
                let block = piece.shape()[dim] * inner;
                out.extend_from_slice(&part[o * block..(o + 1) * block]);
            }
        }
        Ok(T::into_storage(out))
    })
}
