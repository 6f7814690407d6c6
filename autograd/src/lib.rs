//! # ditmoe-autograd
//!
//! Define-by-run reverse-mode automatic differentiation over [`ditmoe_tensor`]. A [`Var`] wraps
//! a tensor; each operation on `Var`s computes its value at once and, if an input requires a
//! gradient, records a backward closure. [`Var::backward`] walks that record in reverse
//! topological order. Start reading at [`var`], then [`ops`], then [`gradcheck`].

pub mod grad_mode;
pub mod gradcheck;
pub mod ops;
pub mod var;

pub use ditmoe_tensor as tensor;
pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};
pub use gradcheck::{check_gradients, GradCheck, GradCheckFailure, GradCheckReport};
pub use var::Var;
