//! ReLU routing (ReMoE, Wang, Zhu & Chen, 2025, "ReMoE: Fully Differentiable Mixture-of-Experts
//! with ReLU Routing"): gate values ReLU(x·W_r), and a token goes to every expert whose gate is
//! positive — no softmax, no top-k, so a token gets 0..E experts and its routing depends on the
//! token alone (batch-independent at sampling time).
//!
//! Sparsity is steered by an L1 penalty on the gates weighted by each expert's load,
//! λ·E·Σᵢ ḡᵢ·cᵢ/(N·k) (the balance loss's form with ReLU gates), whose coefficient adapts once
//! per training pass: λ ×= α while the share of inactive pairs is below the target 1 − k/E,
//! λ /= α once above (λ₀ = 1e-8, α = 1.2, the official defaults). The layer holds λ
//! ([`crate::moe::MoeLayer`]'s `l1_coefficient` buffer), here one per layer where the official
//! Megatron code keeps one for the model, steered by the sparsity averaged over its layers.

use crate::moe::rule::{check_top_k, positions_where, RoutingRule};
use crate::moe::token_choice::load_weighted_gate_loss;
use crate::validate::Field;
use ditmoe_autograd::Var;
use ditmoe_tensor::{DType, Result, Tensor};

pub struct ReluRouting {
    /// k: the experts per token the penalty steers toward (target sparsity 1 − k/E).
    pub top_k: usize,
    /// λ₀, the penalty's starting coefficient.
    pub l1_init: f64,
    /// α, the factor λ moves by per training pass.
    pub l1_multiplier: f64,
}

impl RoutingRule for ReluRouting {
    fn validate(&self, num_experts: usize, at: &Field) -> std::result::Result<(), String> {
        check_top_k(at, self.top_k, num_experts)?;
        at.at("l1_init").non_negative(self.l1_init)?;
        let multiplier = at.at("l1_multiplier");
        multiplier.require(
            self.l1_multiplier >= 1.0 && self.l1_multiplier.is_finite(),
            "l1_multiplier >= 1 and finite",
            self.l1_multiplier,
        )
    }

    /// The steered average; the actual number varies per token (the record says how many).
    fn experts_per_token(&self, _num_experts: usize) -> f64 {
        self.top_k as f64
    }

    fn compute_varies(&self) -> bool {
        true
    }

    fn gate(&self, logits: &Var) -> Result<Var> {
        logits.relu()
    }

    /// Every pair with a positive gate, in grid order (sized on the host).
    fn pick(&self, scores: &Tensor, _images: usize) -> Result<Tensor> {
        positions_where(scores, |gate| gate > 0.0)
    }
}

impl ReluRouting {
    /// The penalty without λ: E·Σᵢ ḡᵢ·cᵢ/(N·k), with ḡᵢ the mean gate of expert i and cᵢ its
    /// pairs (`expert_of`).
    pub fn unscaled_l1(&self, scores: &Var, expert_of: &Tensor) -> Result<Var> {
        load_weighted_gate_loss(scores, expert_of, self.top_k)
    }

    /// λ after a training pass that activated `active` of the `pairs` (token, expert) pairs.
    pub fn next_coefficient(
        &self,
        lambda: f64,
        active: usize,
        pairs: usize,
        num_experts: usize,
    ) -> f64 {
        let sparsity = 1.0 - active as f64 / pairs.max(1) as f64;
        let target = 1.0 - self.top_k as f64 / num_experts as f64;
        if sparsity < target {
            lambda * self.l1_multiplier
        } else {
            lambda / self.l1_multiplier
        }
    }

    /// The layer's λ buffer at its starting value.
    pub fn initial_coefficient(&self) -> Result<Var> {
        Ok(Var::constant(Tensor::full(&[1], self.l1_init, DType::F32)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> ReluRouting {
        ReluRouting {
            top_k: 1,
            l1_init: 1e-8,
            l1_multiplier: 1.2,
        }
    }

    #[test]
    fn every_positive_gate_is_taken() {
        let logits = Tensor::from_vec(vec![0.5f32, -1.0, 0.0, 2.0, 3.0, 0.1], &[2, 3]).unwrap();
        let gates = rule().gate(&Var::constant(logits)).unwrap().value();
        let d = rule().decide(&gates, 1).unwrap();
        // Token 0: expert 0 only (a gate of exactly 0 is off); token 1: all three.
        assert_eq!(d.positions, vec![0, 3, 4, 5]);
        assert_eq!(d.token_counts(), vec![1, 3]);
    }

    #[test]
    fn lambda_moves_toward_the_target_sparsity() {
        // 8 experts, k = 1: target sparsity 7/8. Half the pairs active: too dense, λ grows.
        let r = rule();
        assert!((r.next_coefficient(1e-8, 50, 100, 8) - 1.2e-8).abs() < 1e-20);
        // 10% active: sparse enough, λ shrinks.
        assert!((r.next_coefficient(1.2e-8, 10, 100, 8) - 1e-8).abs() < 1e-20);
        let at = Field::root("routing");
        let bad = ReluRouting {
            l1_multiplier: 0.5,
            ..rule()
        };
        assert!(bad
            .validate(8, &at)
            .unwrap_err()
            .contains("routing.l1_multiplier"));
    }
}
