//! The differentiable operations, one family per module. Each method computes the forward value
//! with the `ditmoe-tensor` kernel of the same name and records a backward rule that captures
//! only what the rule needs. Every rule is checked against finite differences in
//! `tests/gradcheck.rs`.

pub mod attention;
pub mod binary;
pub mod grouped;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod shape;
pub mod softmax;
pub mod swiglu;
pub mod unary;
pub mod view;
