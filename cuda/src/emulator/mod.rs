//! A PTX interpreter: runs our kernels on the CPU, thread by thread, so that every kernel is
//! executed and checked against its CPU reference on machines without a GPU — and checked more
//! strictly than the hardware does: out-of-bounds global accesses, shared-memory data races
//! between barriers, barriers some threads never reach, and warp-wide instructions reached by
//! part of a warp are all errors here.
//!
//! It implements the subset of PTX our kernels use (see `exec.rs`), not the whole ISA, and
//! it is slow (a few million instructions a second): tests use small shapes. What it cannot
//! show is speed, the asynchrony of `cp.async`, or hardware rounding of `.approx` functions
//! (it computes them exactly); the same tests run on a real GPU through the driver.

mod exec;
mod memory;
mod parse;
pub mod runtime;

pub use exec::{f32_to_bf16_bits, launch, LaunchDims};
pub use memory::GlobalMemory;
pub use parse::{parse_module, Kernel, Module, Ty};
