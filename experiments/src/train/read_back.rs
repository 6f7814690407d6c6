//! The step's losses, and the one read-back that brings what the host needs of them — with
//! the gradient norm — from the device.

use anyhow::Result;
use ditmoe_autograd::Var;
use ditmoe_diffusion::LossTerms;
use ditmoe_nn::optim::{global_norm, gradient_sums_of_squares};
use ditmoe_tensor::Tensor;

/// The losses of one step, on the model's device.
pub struct StepLosses {
    /// The objective's loss (with its VB term when it has one).
    pub objective: Var,
    /// The VB term of DDPM with a learned σ.
    pub vb: Option<Var>,
    /// The MoE balance loss, when the model has one.
    pub aux: Option<Var>,
    /// objective + aux: what backward starts from.
    pub total: Var,
}

impl StepLosses {
    /// The objective's terms plus the model's balance loss.
    pub fn new(terms: LossTerms, aux: Option<Var>) -> Result<Self> {
        let total = match &aux {
            Some(aux) => terms.total.add(aux)?,
            None => terms.total.clone(),
        };
        Ok(StepLosses {
            objective: terms.total,
            vb: terms.vb,
            aux,
            total,
        })
    }
}

/// What the host needs of one step, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct StepScalars {
    /// [`StepLosses::objective`].
    pub loss: f64,
    /// [`StepLosses::total`].
    pub total: f64,
    pub vb: Option<f64>,
    pub aux_loss: Option<f64>,
    /// The global L2 norm of the gradients, before clipping.
    pub grad_norm: f64,
}

impl StepScalars {
    /// The first of the step's quantities that is NaN or infinite, by its metrics name, with
    /// its value: an update from it would poison the weights.
    pub fn first_non_finite(&self) -> Option<(&'static str, f64)> {
        let named = [
            ("loss", Some(self.loss)),
            ("total loss", Some(self.total)),
            ("vb", self.vb),
            ("aux_loss", self.aux_loss),
            ("grad_norm", Some(self.grad_norm)),
        ];
        named
            .into_iter()
            .find_map(|(name, value)| value.filter(|v| !v.is_finite()).map(|v| (name, v)))
    }
}

/// Brings the losses and every gradient's sum of squares to the host in one download — on a
/// GPU, the step's one wait for the device — and adds the squares into the gradient norm.
pub fn read_back_step_scalars(
    losses: &StepLosses,
    gradients: &[(String, Tensor)],
) -> Result<StepScalars> {
    let losses_present = [
        Some(&losses.objective),
        Some(&losses.total),
        losses.aux.as_ref(),
        losses.vb.as_ref(),
    ];
    let mut parts: Vec<Tensor> = losses_present
        .into_iter()
        .flatten()
        .map(|loss| loss.value().reshape(&[1]))
        .collect::<ditmoe_tensor::Result<_>>()?;
    parts.extend(gradient_sums_of_squares(gradients)?);
    let mut values = Tensor::concat(&parts.iter().collect::<Vec<_>>(), 0)?
        .to_vec_f64()
        .into_iter();
    // In the order of `losses_present`, then the squares.
    let mut next = || values.next().expect("one value per part");
    let (loss, total) = (next(), next());
    let aux_loss = losses.aux.as_ref().map(|_| next());
    let vb = losses.vb.as_ref().map(|_| next());
    Ok(StepScalars {
        loss,
        total,
        vb,
        aux_loss,
        grad_norm: global_norm(&values.collect::<Vec<_>>()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_losses_come_back_by_name_with_the_gradient_norm() {
        let p = Var::parameter(Tensor::from_vec(vec![0.0f64; 2], &[2]).unwrap());
        let gradient = Var::constant(Tensor::from_vec(vec![3.0, 4.0], &[2]).unwrap());
        p.mul(&gradient)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let scalar = |v: f64| Var::constant(Tensor::from_vec(vec![v], &[]).unwrap());
        let terms = LossTerms {
            mse: scalar(7.0),
            vb: Some(scalar(0.5)),
            total: scalar(7.5),
        };
        let losses = StepLosses::new(terms, Some(scalar(0.25))).unwrap();
        let scalars = read_back_step_scalars(&losses, &[("p".into(), p.grad().unwrap())]).unwrap();
        let expected = StepScalars {
            loss: 7.5,
            total: 7.75,
            vb: Some(0.5),
            aux_loss: Some(0.25),
            grad_norm: 5.0,
        };
        assert_eq!(scalars, expected);
        let without = StepLosses::new(LossTerms::mse_only(scalar(7.5)), None).unwrap();
        let scalars = read_back_step_scalars(&without, &[]).unwrap();
        assert_eq!(
            (scalars.loss, scalars.vb, scalars.aux_loss),
            (7.5, None, None)
        );
    }

    #[test]
    fn the_first_non_finite_quantity_is_named() {
        let finite = StepScalars {
            loss: 1.0,
            total: 1.5,
            vb: Some(0.5),
            aux_loss: Some(0.5),
            grad_norm: 2.0,
        };
        assert_eq!(finite.first_non_finite(), None);
        let nan_gradient = StepScalars {
            grad_norm: f64::NAN,
            ..finite.clone()
        };
        let (name, value) = nan_gradient.first_non_finite().unwrap();
        assert!(name == "grad_norm" && value.is_nan());
        let infinite_vb = StepScalars {
            vb: Some(f64::INFINITY),
            ..nan_gradient
        };
        assert_eq!(infinite_vb.first_non_finite(), Some(("vb", f64::INFINITY)));
    }
}
