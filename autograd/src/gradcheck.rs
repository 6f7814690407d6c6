//! Gradient checking: the analytic gradient from [`Var::backward`] against central finite
//! differences, ∂L/∂x_j ≈ (L(x + h·e_j) − L(x − h·e_j)) / 2h, all in f64.
//!
//! A non-scalar output `y` is reduced to the scalar L = Σ y ⊙ w with fixed random weights `w`,
//! so every output element (and any mix-up of their order) affects the check.

use crate::{no_grad, Var};
use ditmoe_tensor::{seeded_rng, DType, Result, Tensor, TensorError};

/// Settings of a gradient check. An element passes when
/// |analytic − numeric| ≤ `atol` + `rtol` · max(|analytic|, |numeric|).
#[derive(Debug, Clone, Copy)]
pub struct GradCheck {
    /// Finite-difference step h.
    pub eps: f64,
    pub rtol: f64,
    pub atol: f64,
    /// Seed of the random output weights.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-6,
            rtol: 1e-5,
            atol: 1e-7,
            seed: 0,
        }
    }
}

/// What a passing check measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheckReport {
    /// Elements compared, over all inputs.
    pub elements: usize,
    pub max_abs_error: f64,
    /// Largest |analytic − numeric| / max(|analytic|, |numeric|, 1e-12).
    pub max_rel_error: f64,
}

/// Why a check failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GradCheckFailure {
    #[error("gradient check: the function failed: {0}")]
    Op(#[from] TensorError),
    #[error("gradient check: input {input} must be f64, found {found:?}")]
    NotF64 { input: usize, found: DType },
    #[error(
        "gradient check failed at input {input}, element {element:?}: analytic {analytic:.10e}, \
         numeric {numeric:.10e}, relative error {rel_error:.3e}"
    )]
    Mismatch {
        input: usize,
        element: Vec<usize>,
        analytic: f64,
        numeric: f64,
        rel_error: f64,
    },
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        index[d] = i % shape[d];
        i /= shape[d];
    }
    index
}

impl GradCheck {
    /// Checks the gradients of `f` with respect to every input (all f64).
    pub fn check(
        &self,
        f: impl Fn(&[Var]) -> Result<Var>,
        inputs: &[Tensor],
    ) -> std::result::Result<GradCheckReport, GradCheckFailure> {
        let leaves: Vec<Var> = inputs.iter().map(|t| Var::parameter(t.clone())).collect();
        self.check_leaves(|| f(&leaves), &leaves)
    }

    /// Checks the gradients of `f` — which reads `leaves` (inputs, a layer's parameters) — with
    /// respect to every leaf. Each leaf is perturbed in place with `set_value` and restored.
    pub fn check_leaves(
        &self,
        f: impl Fn() -> Result<Var>,
        leaves: &[Var],
    ) -> std::result::Result<GradCheckReport, GradCheckFailure> {
        for (input, leaf) in leaves.iter().enumerate() {
            let found = leaf.value().dtype();
            if found != DType::F64 {
                return Err(GradCheckFailure::NotF64 { input, found });
            }
            leaf.zero_grad();
        }
        let out = f()?;
        let weights = Tensor::randn(
            out.shape(),
            0.0,
            1.0,
            DType::F64,
            &mut seeded_rng(self.seed),
        )?;
        let scalar_loss = |y: &Tensor| -> Result<f64> { y.mul(&weights)?.sum_all()?.item() };
        if out.requires_grad() {
            out.mul(&Var::constant(weights.clone()))?
                .sum_all()?
                .backward()?;
        }

        let mut report = GradCheckReport {
            elements: 0,
            max_abs_error: 0.0,
            max_rel_error: 0.0,
        };
        for (input, leaf) in leaves.iter().enumerate() {
            let original = leaf.value();
            let analytic = match leaf.grad() {
                Some(g) => g.to_vec::<f64>()?,
                None => vec![0.0; original.numel()],
            };
            let base = original.to_vec::<f64>()?;
            for (j, &a) in analytic.iter().enumerate() {
                let loss_at = |delta: f64| -> Result<f64> {
                    let mut shifted = base.clone();
                    shifted[j] += delta;
                    leaf.set_value(Tensor::from_vec(shifted, original.shape())?)?;
                    let loss = no_grad(|| scalar_loss(&f()?.value()));
                    leaf.set_value(original.clone())?;
                    loss
                };
                let numeric = (loss_at(self.eps)? - loss_at(-self.eps)?) / (2.0 * self.eps);
                let abs_error = (a - numeric).abs();
                let scale = a.abs().max(numeric.abs());
                let rel_error = abs_error / scale.max(1e-12);
                report.elements += 1;
                report.max_abs_error = report.max_abs_error.max(abs_error);
                report.max_rel_error = report.max_rel_error.max(rel_error);
                // A NaN on either side fails (`>` alone would let it pass).
                if abs_error.is_nan() || abs_error > self.atol + self.rtol * scale {
                    return Err(GradCheckFailure::Mismatch {
                        input,
                        element: unravel(j, original.shape()),
                        analytic: a,
                        numeric,
                        rel_error,
                    });
                }
            }
        }
        Ok(report)
    }
}

/// [`GradCheck::check`] with the default settings.
pub fn check_gradients(
    f: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
) -> std::result::Result<GradCheckReport, GradCheckFailure> {
    GradCheck::default().check(f, inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_backward_rule_is_caught_and_located() {
        // y = x² but with the gradient of x³ bolted on through a custom op.
        let wrong_square = |v: &[Var]| -> Result<Var> {
            let x = v[0].value().clone();
            let y = x.mul(&x)?;
            Ok(Var::from_op("wrong_square", y, &[&v[0]], move |g| {
                Ok(vec![Some(g.mul(&x.mul(&x)?.mul_scalar(3.0)?)?)])
            }))
        };
        let x = Tensor::from_vec(vec![0.5, 2.0, -1.5], &[3]).unwrap();
        let err = check_gradients(wrong_square, std::slice::from_ref(&x)).unwrap_err();
        assert!(
            matches!(err, GradCheckFailure::Mismatch { input: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("element [0]"), "{err}");
        let right = check_gradients(|v| v[0].mul(&v[0]), &[x]).unwrap();
        assert_eq!(right.elements, 3);
        assert!(right.max_rel_error < 1e-6);
    }

    #[test]
    fn a_nan_gradient_is_caught() {
        let nan_gradient = |v: &[Var]| -> Result<Var> {
            let y = v[0].value().mul_scalar(2.0)?;
            Ok(Var::from_op("nan_gradient", y, &[&v[0]], |g| {
                Ok(vec![Some(g.mul_scalar(f64::NAN)?)])
            }))
        };
        let x = Tensor::from_vec(vec![0.5, 2.0], &[2]).unwrap();
        let err = check_gradients(nan_gradient, &[x]).unwrap_err();
        assert!(
            matches!(err, GradCheckFailure::Mismatch { input: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn f32_inputs_are_refused() {
        let x = Tensor::zeros(&[2], DType::F32).unwrap();
        assert!(matches!(
            check_gradients(|v| v[0].exp(), &[x]),
            Err(GradCheckFailure::NotF64 { input: 0, .. })
        ));
    }
}
