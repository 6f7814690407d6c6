//! Losses with a backward rule of their own: binary cross-entropy on logits, as PyTorch's
//! `BCEWithLogitsLoss` (mean over the elements).

use crate::Var;
use ditmoe_tensor::{Result, Tensor, TensorError};

impl Var {
    /// mean(BCE(σ(x), target)) from the logits x (`self`), in the stable form
    /// max(x, 0) + log(1 + e^−|x|) − x·target; the gradient is (σ(x) − target)/n, smooth
    /// everywhere (composing max and |x| would give a wrong subgradient at x = 0). `target`
    /// holds probabilities (0/1 labels, or soft ones) of the same shape, and gets no gradient.
    pub fn bce_with_logits(&self, target: &Tensor) -> Result<Var> {
        let x = self.value();
        if target.shape() != x.shape() {
            return Err(TensorError::shape(
                "bce_with_logits",
                format!("a target of the logits' shape {:?}", x.shape()),
                target.shape(),
            ));
        }
        let softplus = x
            .relu()?
            .add(&x.abs()?.neg()?.exp()?.add_scalar(1.0)?.log()?)?;
        let value = softplus.sub(&x.mul(target)?)?.mean(&[], false)?;
        let count = x.numel().max(1) as f64;
        let target = target.clone();
        Ok(Var::from_op("bce_with_logits", value, &[self], move |g| {
            let grad = x.sigmoid()?.sub(&target)?.mul_scalar(1.0 / count)?;
            Ok(vec![Some(grad.mul(g)?)])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ditmoe_tensor::DType;

    #[test]
    fn the_value_is_the_mean_binary_cross_entropy_and_stable() {
        let logits = [1.0f32, -2.0, -1.0, 3.0, 2.0, 0.0, 0.0, 0.5];
        let target = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.3];
        let x = Var::constant(Tensor::from_vec(logits.to_vec(), &[4, 2]).unwrap());
        let t = Tensor::from_vec(target.to_vec(), &[4, 2]).unwrap();
        let got = x.bce_with_logits(&t).unwrap().item().unwrap();
        let expected: f64 = logits
            .iter()
            .zip(target)
            .map(|(&x, m)| {
                let (p, m) = (1.0 / (1.0 + (-x as f64).exp()), m as f64);
                -(m * p.ln() + (1.0 - m) * (1.0 - p).ln())
            })
            .sum::<f64>()
            / 8.0;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        // Where σ rounds to 0 or 1 the naive form is infinite; this one is the logit's size.
        let extreme = Var::constant(Tensor::from_vec(vec![-200.0f32, 200.0], &[1, 2]).unwrap());
        let hard = Tensor::from_vec(vec![1.0f32, 0.0], &[1, 2]).unwrap();
        let loss = extreme.bce_with_logits(&hard).unwrap().item().unwrap();
        assert!((loss - 200.0).abs() < 1e-3, "{loss}");
        let wrong = Tensor::zeros(&[2, 4], DType::F32).unwrap();
        assert!(x.bce_with_logits(&wrong).is_err());
    }
}
