//! Device memory: a runtime's allocations, typed buffers over them, and views (windows of a
//! buffer passed to kernels without a copy).

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver as cu;

use crate::driver::DriverAllocation;
use crate::element::Element;
use crate::error::{CudaError, Result};

/// One allocation made by a [`Runtime`](crate::runtime::Runtime): bytes on a GPU or in the
/// emulator's memory. Each runtime recognises its own kind (`as_any`) and refuses others.
pub trait Allocation: std::fmt::Debug + Send + Sync {
    /// The allocated size.
    fn bytes(&self) -> usize;
    /// The concrete allocation, for the runtime that made it.
    fn as_any(&self) -> &dyn Any;
}

/// A byte range of one allocation: what a buffer or a view resolves to.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    pub allocation: &'a dyn Allocation,
    pub offset: usize,
    pub bytes: usize,
}

impl<'a> Region<'a> {
    /// The allocation as the runtime type `A`, or the error of a buffer used on another GPU.
    pub fn allocation_of<A: 'static>(&self) -> Result<&'a A> {
        self.allocation.as_any().downcast_ref::<A>().ok_or_else(|| {
            CudaError::InvalidArgument("a buffer of one GPU was used on another".into())
        })
    }
}

/// Device memory without an element type.
#[derive(Debug)]
pub enum RawBuffer {
    /// A whole allocation, freed when the buffer drops.
    Allocation(Box<dyn Allocation>),
    /// `bytes` bytes from `byte_offset` of another buffer, which the view keeps alive: a
    /// contiguous slice of a tensor passed to a kernel without copying it.
    View {
        parent: Arc<dyn ViewedBuffer>,
        byte_offset: usize,
        bytes: usize,
    },
}

/// What a [`RawBuffer::View`] looks into: any typed buffer.
pub trait ViewedBuffer: std::fmt::Debug + Send + Sync {
    fn raw(&self) -> &RawBuffer;
}

impl<T: std::fmt::Debug + Send + Sync> ViewedBuffer for Buffer<T> {
    fn raw(&self) -> &RawBuffer {
        &self.raw
    }
}

impl RawBuffer {
    /// The allocation this memory lives in (never a view), and the byte range within it.
    pub fn region(&self) -> Region<'_> {
        match self {
            RawBuffer::Allocation(allocation) => Region {
                allocation: allocation.as_ref(),
                offset: 0,
                bytes: allocation.bytes(),
            },
            RawBuffer::View {
                parent,
                byte_offset,
                bytes,
            } => {
                let parent = parent.raw().region();
                Region {
                    offset: parent.offset + byte_offset,
                    bytes: *bytes,
                    ..parent
                }
            }
        }
    }
}

/// A device buffer of `len` elements of `T`.
#[derive(Debug)]
pub struct Buffer<T> {
    pub(crate) raw: RawBuffer,
    len: usize,
    element: PhantomData<T>,
}

impl<T> Buffer<T> {
    /// `len` elements in a runtime's allocation.
    pub(crate) fn new(allocation: Box<dyn Allocation>, len: usize) -> Buffer<T> {
        Buffer {
            raw: RawBuffer::Allocation(allocation),
            len,
            element: PhantomData,
        }
    }

    /// The driver allocation behind this buffer (bytes), for calling other CUDA libraries
    /// (cuBLAS in the benchmarks) on it; `None` on the emulator and for views.
    pub fn cuda_slice(&self) -> Option<&cu::CudaSlice<u8>> {
        match &self.raw {
            RawBuffer::Allocation(allocation) => allocation
                .as_any()
                .downcast_ref::<DriverAllocation>()
                .map(DriverAllocation::slice),
            RawBuffer::View { .. } => None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Element + std::fmt::Debug> Buffer<T> {
    /// Elements `offset..offset + len` of `parent` as a buffer of their own, without a copy
    /// (kernels read and write them in place; the view keeps `parent` alive).
    pub fn view(parent: &Arc<Buffer<T>>, offset: usize, len: usize) -> Result<Buffer<T>> {
        if offset + len > parent.len {
            return Err(CudaError::InvalidArgument(format!(
                "a view of elements {offset}..{} of a {}-element buffer",
                offset + len,
                parent.len
            )));
        }
        Ok(Buffer {
            raw: RawBuffer::View {
                parent: Arc::clone(parent) as Arc<dyn ViewedBuffer>,
                byte_offset: offset * T::BYTES,
                bytes: len * T::BYTES,
            },
            len,
            element: PhantomData,
        })
    }
}
