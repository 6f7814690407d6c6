//! CPU kernels, one family per module. Each adds methods to [`Tensor`](crate::Tensor) and is
//! tested against a naive loop implementation on random, strided and broadcast inputs.

pub mod attention;
pub mod binary;
pub mod create;
pub(crate) mod cuda;
pub mod grouped;
pub mod index;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod routing;
pub mod shape;
pub mod softmax;
pub mod swiglu;
pub mod unary;

#[cfg(test)]
mod cuda_tests;
#[cfg(test)]
pub(crate) mod testing;
