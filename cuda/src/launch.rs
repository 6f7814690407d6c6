//! What a launch is given: the grid and block shape, and the kernel's arguments.

use crate::buffer::{Buffer, RawBuffer};

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// One thread per element in 1-D blocks of `block` threads.
    pub fn linear(elements: usize, block: u32) -> Self {
        Self {
            grid: ((elements as u32).div_ceil(block).max(1), 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }

    /// One block of `threads` threads (a job one block does alone: a selection, a schedule).
    pub fn single_block(threads: u32) -> Self {
        Self {
            grid: (1, 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }

    /// `rows` blocks of `block` threads: one block per row.
    pub fn per_row(rows: usize, block: u32) -> Self {
        Self {
            grid: (rows.max(1) as u32, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }
}

/// One kernel argument.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Buffer(&'a RawBuffer),
    U32(u32),
    U64(u64),
    F32(f32),
}

impl<'a, T> From<&'a Buffer<T>> for Arg<'a> {
    fn from(buffer: &'a Buffer<T>) -> Self {
        Arg::Buffer(&buffer.raw)
    }
}

impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::U32(v)
    }
}

impl From<f32> for Arg<'_> {
    fn from(v: f32) -> Self {
        Arg::F32(v)
    }
}

impl From<u64> for Arg<'_> {
    fn from(v: u64) -> Self {
        Arg::U64(v)
    }
}
