//! Expert race (Race-DiT, Yuan et al., 2025, "Expert Race: A Flexible Routing Strategy for
//! Scaling Diffusion Transformer with Mixture of Experts"): tokens and experts race together —
//! the top K = N·k (token, expert) scores of the whole batch's grid are chosen. A token may get
//! 0..E experts and the load is not enforced.

use crate::moe::config::RaceGate;
use crate::moe::rule::{check_top_k, grid, RoutingRule};
use crate::validate::Field;
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, Tensor};

pub struct ExpertRace {
    /// k: the pairs chosen per token on average.
    pub top_k: usize,
    pub gate: RaceGate,
}

impl RoutingRule for ExpertRace {
    fn validate(&self, num_experts: usize, at: &Field) -> std::result::Result<(), String> {
        check_top_k(at, self.top_k, num_experts)
    }

    fn experts_per_token(&self, _num_experts: usize) -> f64 {
        self.top_k as f64
    }

    fn gate(&self, logits: &Var) -> Result<Var> {
        match self.gate {
            RaceGate::Softmax => logits.softmax(1),
            RaceGate::Identity => Ok(logits.clone()),
            RaceGate::Sigmoid => logits.sigmoid(),
        }
    }

    /// The N·k highest scores of the grid, in grid order.
    fn pick(&self, scores: &Tensor, _images: usize) -> Result<Tensor> {
        let (n, _) = grid(scores)?;
        Tensor::expert_race_positions(scores, n * self.top_k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::decision::RoutingRecord;
    use crate::moe::rule::tests::scores;

    #[test]
    fn expert_race_takes_the_best_pairs_of_the_batch() {
        let rule = ExpertRace {
            top_k: 1,
            gate: RaceGate::Softmax,
        };
        let d = rule.decide(&scores(), 2).unwrap();
        assert_eq!(d.positions, vec![0, 4, 6, 11]);
        let record = RoutingRecord {
            decision: d,
            weights: vec![],
            scores: scores(),
        };
        assert_eq!(record.experts_per_token_histogram(), vec![0, 4, 0, 0]);
        assert_eq!(record.dropped_fraction(), 0.0);
    }
}
