//! # ditmoe-autograd
//!
//! Define-by-run reverse-mode automatic differentiation over [`ditmoe_tensor`]. A [`Var`] wraps
//! a tensor; each operation on `Var`s computes its value at once and, if an input requires a
//! gradient, records a backward closure. [`Var::backward`] walks that record in reverse
//! topological order. Start reading at [`var`], then [`ops`], then [`gradcheck`].
//!
//! ```
//! use ditmoe_autograd::Var;
//! use ditmoe_tensor::{seeded_rng, DType, Tensor};
//!
//! let mut rng = seeded_rng(0);
//! let x = Var::constant(Tensor::randn(&[8, 16], 0.0, 1.0, DType::F32, &mut rng)?);
//! let w = Var::parameter(Tensor::randn(&[16, 4], 0.0, 0.1, DType::F32, &mut rng)?);
//! let loss = x.matmul(&w)?.softmax(1)?.log()?.mean_all()?.neg()?;
//! loss.backward()?;
//! assert_eq!(w.grad().unwrap().shape(), &[16, 4]);
//! # Ok::<(), ditmoe_tensor::TensorError>(())
//! ```

pub mod grad_mode;
pub mod gradcheck;
pub mod ops;
pub mod var;

pub use ditmoe_tensor as tensor;
pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};
pub use gradcheck::{check_gradients, GradCheck, GradCheckFailure, GradCheckReport};
pub use var::{ValueMut, Var};
