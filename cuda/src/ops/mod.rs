//! Typed launch wrappers: one function per kernel, which checks its arguments, sizes the grid
//! and passes exactly the parameters the PTX declares. Each module pairs with a file in
//! `cuda/kernels/` of the same name.

pub mod attention;
pub mod elementwise;
pub mod gemm;
pub mod index;
pub mod norm;
pub mod optim;
pub mod routing;
pub mod rows;
pub mod swiglu;

use crate::error::{CudaError, Result};
use crate::Buffer;

/// Threads per block of the one-thread-per-element kernels.
pub(crate) const ELEMENTWISE_BLOCK: u32 = 256;

/// Kernels index with 32-bit integers; larger buffers are refused with a clear error.
pub(crate) fn check_u32(what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        CudaError::InvalidArgument(format!(
            "{what} = {value} does not fit the kernels' 32-bit indexing"
        ))
    })
}

/// Checks that `buffer` holds exactly `expected` elements.
pub(crate) fn check_len<T>(what: &str, buffer: &Buffer<T>, expected: usize) -> Result<()> {
    if buffer.len() != expected {
        return Err(CudaError::InvalidArgument(format!(
            "{what}: expected {expected} elements, found {}",
            buffer.len()
        )));
    }
    Ok(())
}
