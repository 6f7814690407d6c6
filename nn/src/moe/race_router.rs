//! Race-DiT's two-layer router and its per-layer regularisation (Yuan et al., 2025, "Expert
//! Race", §3.2 "PLR"): in a pre-norm / adaLN DiT the blocks' output norms grow with depth, so
//! the shallow routers see weak, noisy features and learn slowly. The router becomes a small
//! MLP, h' = GELU(Linear_{D→D}(h)), whose features feed two heads: the gating head
//! (`gate.weight [E, D]`, the MoE layer's, producing the routing logits) and a target head
//! Linear_{D→p²·C}(h') that predicts each token's patch of the final training target (ε or the
//! flow velocity). The regularisation is the target head's mean squared error, one term per MoE
//! layer, summed over the layers with its coefficient (Race-DiT gives neither the coefficient
//! nor whether the terms are averaged; its re-implementations sum per-layer MSEs).
//!
//! Names: `router.0` (the hidden Linear) and `router.target_head`.

use crate::layers::Linear;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, SeededRng, Tensor, TensorError};

pub struct TargetRouter {
    pub hidden: Linear,
    pub target_head: Linear,
}

impl TargetRouter {
    /// Xavier-uniform weights, zero biases (DiT's initialisation of its Linear layers).
    pub fn new(dim: usize, target_width: usize, rng: &mut SeededRng) -> Result<Self> {
        Ok(TargetRouter {
            hidden: Linear::new(dim, dim, true, rng)?,
            target_head: Linear::new(dim, target_width, true, rng)?,
        })
    }

    /// The router features h' = GELU(Linear(h)) of tokens `[N, D]`, which the gating head reads.
    pub fn features(&self, tokens: &Var) -> Result<Var> {
        self.hidden.forward(tokens)?.gelu_tanh()
    }

    /// mean((H(h') − y)²) over the tokens' target patches `target [N, p²·C]` (a constant).
    pub fn regularization(&self, features: &Var, target: &Tensor) -> Result<Var> {
        let predicted = self.target_head.forward(features)?;
        if target.shape() != predicted.shape() {
            return Err(TensorError::shape(
                "per-layer regularisation",
                format!("a target of one patch per token, {:?}", predicted.shape()),
                target.shape(),
            ));
        }
        let error = predicted.sub(&Var::constant(target.clone()))?;
        error.mul(&error)?.mean_all()
    }
}

impl Module for TargetRouter {
    fn visit(&self, v: &mut Visitor) {
        v.child("0", &self.hidden);
        v.child("target_head", &self.target_head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ditmoe_autograd::gradcheck::check_gradients;
    use ditmoe_tensor::{seeded_rng, DType};

    #[test]
    fn the_regularization_is_the_target_heads_mean_squared_error() {
        let router = TargetRouter::new(3, 2, &mut seeded_rng(1)).unwrap();
        let features = Tensor::rand_uniform(&[4, 3], -1.0, 1.0, DType::F32, &mut seeded_rng(2));
        let target = Tensor::rand_uniform(&[4, 2], -1.0, 1.0, DType::F32, &mut seeded_rng(3));
        let (features, target) = (features.unwrap(), target.unwrap());
        let loss = router
            .regularization(&Var::constant(features.clone()), &target)
            .unwrap()
            .value()
            .item()
            .unwrap();
        let (w, h, y) = (
            router.target_head.weight.value().to_vec_f64(),
            features.to_vec_f64(),
            target.to_vec_f64(),
        );
        let mut expect = 0.0;
        for i in 0..4 {
            for o in 0..2 {
                let predicted: f64 = (0..3).map(|j| w[o * 3 + j] * h[i * 3 + j]).sum();
                expect += (predicted - y[i * 2 + o]).powi(2) / 8.0;
            }
        }
        assert!((loss - expect).abs() < 1e-6, "{loss} vs {expect}");
        let wrong = Tensor::zeros(&[4, 3], DType::F32).unwrap();
        assert!(router
            .regularization(&Var::constant(features), &wrong)
            .is_err());
    }

    #[test]
    fn the_regularization_has_the_gradients_of_its_formula() {
        let router = TargetRouter::new(3, 2, &mut seeded_rng(4)).unwrap();
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let target = Tensor::rand_uniform(&[5, 2], -1.0, 1.0, DType::F64, &mut seeded_rng(5));
        let target = target.unwrap();
        let inputs = [
            Tensor::rand_uniform(&[5, 3], -1.0, 1.0, DType::F64, &mut seeded_rng(6)).unwrap(),
            f64_of(&router.hidden.weight.value()),
            f64_of(&router.target_head.weight.value()),
        ];
        check_gradients(
            |v| {
                let routed = TargetRouter {
                    hidden: Linear {
                        weight: v[1].clone(),
                        bias: None,
                    },
                    target_head: Linear {
                        weight: v[2].clone(),
                        bias: None,
                    },
                };
                routed.regularization(&routed.features(&v[0])?, &target)
            },
            &inputs,
        )
        .unwrap();
    }
}
