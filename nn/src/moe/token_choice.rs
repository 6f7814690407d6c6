//! Token choice (DiT-MoE, Fei et al., 2024, "Scaling Diffusion Transformers Efficiently via
//! Mixture-of-Experts"): every token takes the k experts of highest softmax gate value; an
//! expert-level balance loss α·Σ_i P̄_i·f_i keeps the load even.

use crate::moe::config::Gate;
use crate::moe::rule::{check_top_k, grid, Routed, RoutingRule};
use crate::validate::Field;
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, Tensor};

pub struct TokenChoice {
    pub top_k: usize,
    /// Renormalise the k weights of a token to sum to 1 (DiT-MoE does not).
    pub renormalize: bool,
    /// Coefficient α of the balance loss (0 disables it).
    pub balance_loss_alpha: f64,
    pub gate: Gate,
}

impl RoutingRule for TokenChoice {
    fn validate(&self, num_experts: usize, at: &Field) -> std::result::Result<(), String> {
        check_top_k(at, self.top_k, num_experts)?;
        if self.renormalize {
            at.at("renormalize").require(
                self.gate.is_positive(),
                "renormalize = false with a gate that may sum to zero (identity, relu)",
                format!("gate = {:?}", self.gate),
            )?;
        }
        at.at("balance_loss_alpha")
            .in_range(self.balance_loss_alpha, 0.0, 1.0)
    }

    fn gate(&self, logits: &Var) -> Result<Var> {
        self.gate.apply(logits)
    }

    fn experts_per_token(&self, _num_experts: usize) -> f64 {
        self.top_k as f64
    }

    /// Each token's k best experts, best first: `[N·k]` positions, token by token.
    fn pick(&self, scores: &Tensor, _images: usize) -> Result<Tensor> {
        let (_, e) = grid(scores)?;
        let (_, picks) = scores.topk(self.top_k, 1, true)?;
        Tensor::token_choice_positions(&picks, e)
    }

    fn combine_weights(&self, gathered: Var) -> Result<Var> {
        if !self.renormalize {
            return Ok(gathered);
        }
        let per_token = gathered.reshape(&[usize::MAX, self.top_k])?;
        per_token.div(&per_token.sum(&[1], true)?)?.flatten()
    }

    /// L = α Σ_i P̄_i f_i (see [`load_weighted_gate_loss`]), P̄ from the softmax of the logits
    /// whatever the gate (DiT-MoE's router probabilities; raw logits would make the loss
    /// unbounded below).
    fn aux_loss(&self, routed: &Routed) -> Result<Option<Var>> {
        if self.balance_loss_alpha <= 0.0 {
            return Ok(None);
        }
        let probabilities = match self.gate {
            Gate::Softmax => routed.scores.clone(),
            _ => routed.logits.softmax(1)?,
        };
        let loss = load_weighted_gate_loss(&probabilities, routed.expert_of, self.top_k)?;
        Ok(Some(loss.mul_scalar(self.balance_loss_alpha)?))
    }
}

/// Σ_i P̄_i f_i with P̄_i the mean gate value of expert i over the N tokens and
/// f_i = E·count_i/(N·k) its share of the pairs (`expert_of`, a constant) relative to an even
/// split of N·k: DiT-MoE's expert-level balance loss without α, and ReMoE's L1 penalty without
/// λ. The counts are summed where the pairs are (no read-back on a GPU).
pub fn load_weighted_gate_loss(scores: &Var, expert_of: &Tensor, top_k: usize) -> Result<Var> {
    let &[n, e] = scores.shape() else {
        unreachable!("the gate keeps the [tokens, experts] shape");
    };
    let value = scores.value();
    let (dtype, device) = (value.dtype(), value.device());
    let ones = Tensor::zeros_on(&[expert_of.numel(), 1], dtype, device)?.add_scalar(1.0)?;
    let counts = Tensor::zeros_on(&[e, 1], dtype, device)?.index_add(0, expert_of, &ones)?;
    let f = Var::constant(
        counts
            .flatten()?
            .mul_scalar(e as f64 / (n * top_k) as f64)?,
    );
    scores.mean(&[0], false)?.mul(&f)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::rule::tests::scores;

    #[test]
    fn token_choice_takes_the_best_experts_of_each_token() {
        let rule = TokenChoice {
            top_k: 2,
            renormalize: false,
            balance_loss_alpha: 0.0,
            gate: Gate::Softmax,
        };
        let d = rule.decide(&scores(), 2).unwrap();
        assert_eq!(d.positions, vec![0, 1, 4, 5, 6, 7, 11, 9]);
        assert_eq!(d.token_counts(), vec![2; 4]);
    }

    #[test]
    fn the_balance_loss_uses_router_probabilities_whatever_the_gate() {
        let logits = Var::constant(scores().to_dtype(ditmoe_tensor::DType::F64).unwrap());
        let expert_of = Tensor::from_vec(vec![0i64, 1, 1, 2], &[4]).unwrap();
        let loss = |gate: Gate| {
            let rule = TokenChoice {
                top_k: 1,
                renormalize: false,
                balance_loss_alpha: 0.5,
                gate,
            };
            let gated = rule.gate(&logits).unwrap();
            let routed = Routed {
                logits: &logits,
                scores: &gated,
                positions: &expert_of,
                expert_of: &expert_of,
            };
            let loss = rule.aux_loss(&routed).unwrap().unwrap();
            loss.value().item().unwrap()
        };
        // By hand: P̄ = the column means of softmax(logits); f = E·count/(N·k) = (3/4)·[1, 2, 1].
        let p = logits.softmax(1).unwrap().value().to_vec_f64();
        let mean = |j: usize| (0..4).map(|i| p[i * 3 + j]).sum::<f64>() / 4.0;
        let expect = 0.5 * 0.75 * (mean(0) + 2.0 * mean(1) + mean(2));
        for gate in [Gate::Softmax, Gate::Identity, Gate::Sigmoid, Gate::Relu] {
            assert!((loss(gate) - expect).abs() < 1e-12, "{gate:?}");
        }
    }

    #[test]
    fn renormalising_is_refused_for_gates_that_may_sum_to_zero() {
        let at = Field::root("routing");
        for (gate, allowed) in [
            (Gate::Softmax, true),
            (Gate::Sigmoid, true),
            (Gate::Identity, false),
            (Gate::Relu, false),
        ] {
            let rule = TokenChoice {
                top_k: 2,
                renormalize: true,
                balance_loss_alpha: 0.0,
                gate,
            };
            let verdict = rule.validate(3, &at);
            assert_eq!(verdict.is_ok(), allowed, "{gate:?}: {verdict:?}");
            if let Err(message) = verdict {
                assert!(message.starts_with("routing.renormalize"), "{message}");
            }
        }
    }
}
