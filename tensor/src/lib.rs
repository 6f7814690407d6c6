//! # ditmoe-tensor
//!
//! N-dimensional tensors for the ditmoe stack. A [`Tensor`] is an `Arc`-shared flat
//! [`Storage`] plus a [`Layout`] (shape, strides, offset): views such as `permute`, `narrow`
//! and `broadcast_to` only make new layouts, and every kernel reads its inputs through their
//! strides and writes a fresh contiguous result. CPU kernels run on one persistent thread pool
//! ([`parallel`]). Start reading at [`layout`], then [`tensor`], then any module of [`ops`].

mod backend;
pub mod compare;
pub mod descriptors;
pub mod device;
pub mod dtype;
pub mod error;
pub mod layout;
pub mod memory;
pub mod ops;
pub mod parallel;
pub mod profile;
pub mod storage;
pub mod tensor;

pub use backend::cpu::{BinaryMath, ReduceMath, UnaryMath};
pub use descriptors::{
    AdamWHyper, AdamWUpdate, AttentionGrads, BinaryOp, Dispatch, GroupSizes, LayerNormGrads,
    LayerNormStats, ReduceOp, UnaryOp,
};
pub use device::Device;
pub use dtype::{DType, Element, FloatElement};
pub use error::{Result, TensorError};
pub use half;
pub use layout::Layout;
pub use ops::create::{seeded_rng, SeededRng};
pub use storage::Storage;
pub use tensor::Tensor;
