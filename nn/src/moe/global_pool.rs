//! DiffMoE's batch-level global token pool (Shi et al., 2025, "DiffMoE: Dynamic Token Selection
//! for Scalable Diffusion Transformers"): in training every expert takes the
//! k = ⌊S/E · C⌋ tokens of the whole batch (S tokens, all images and timesteps together) that
//! score it highest, with softmax gate values that are not renormalised. A token may be taken
//! by 0..E experts; the load is exactly k per expert, so no balance loss is needed.
//!
//! At sampling time a batch-global top-k would make an image depend on the others sampled with
//! it, so the layer asks its [`CapacityPredictor`](crate::moe::capacity_predictor) how many
//! tokens each expert takes ([`PoolInference`]); this rule's scores still decide which.

use crate::moe::config::{Gate, PoolInference};
use crate::moe::rule::{grid, RoutingRule};
use crate::validate::Field;
use ditmoe_autograd::Var;
use ditmoe_tensor::{Device, Result, Tensor};

pub struct GlobalPool {
    /// C: the average number of experts per token (C_train; DiffMoE trains with 1).
    pub capacity: f64,
    /// Weight of the capacity predictor's BCE in the training loss.
    pub predictor_loss_weight: f64,
    /// Decay of the per-expert thresholds' moving average.
    pub threshold_decay: f64,
    pub inference: PoolInference,
    pub gate: Gate,
}

/// Tokens each expert takes from a pool of `tokens`: ⌊tokens / E · C⌋ as the official code's
/// `int(S / E * capacity)`, at least 1 and at most the pool.
pub fn pool_capacity(tokens: usize, capacity: f64, num_experts: usize) -> usize {
    ((tokens as f64 / num_experts as f64 * capacity).floor() as usize).clamp(1, tokens.max(1))
}

impl RoutingRule for GlobalPool {
    fn validate(&self, num_experts: usize, at: &Field) -> std::result::Result<(), String> {
        let capacity = at.at("capacity");
        capacity.positive(self.capacity)?;
        capacity.at_most(self.capacity, num_experts as f64)?;
        at.at("predictor_loss_weight")
            .non_negative(self.predictor_loss_weight)?;
        at.at("threshold_decay").fraction(self.threshold_decay)?;
        if let PoolInference::Threshold { gamma } = self.inference {
            at.at("inference").at("gamma").fraction(gamma)?;
        }
        Ok(())
    }

    fn experts_per_token(&self, num_experts: usize) -> f64 {
        self.capacity.min(num_experts as f64)
    }

    fn gate(&self, logits: &Var) -> Result<Var> {
        self.gate.apply(logits)
    }

    /// The predictor's or a threshold's counts depend on the sampled images.
    fn compute_varies(&self) -> bool {
        self.inference != PoolInference::Static
    }

    /// Each expert's k best tokens of the whole batch: `[E·k]` positions, expert by expert,
    /// best first.
    fn pick(&self, scores: &Tensor, _images: usize) -> Result<Tensor> {
        let (n, e) = grid(scores)?;
        let k = pool_capacity(n, self.capacity, e);
        let (_, picks) = scores.reshape(&[1, n, e])?.topk(k, 1, true)?; // [1, k, E]
        Tensor::expert_choice_positions(&picks, n)
    }
}

/// Expert i's `counts[i]` best tokens by `scores [N, E]` for every expert: positions expert by
/// expert, best first (DiffMoE's sampling rule once the counts are known). The selection runs
/// on the host: the counts vary per expert, so the picks' size is only known there.
pub fn counted_pool_positions(scores: &Tensor, counts: &[usize]) -> Result<Tensor> {
    let (n, e) = grid(scores)?;
    let order = scores
        .argsort(0, true)?
        .to_device(Device::Cpu)?
        .to_vec::<i64>()?; // [N, E]
    let positions: Vec<i64> = counts
        .iter()
        .enumerate()
        .flat_map(|(expert, &count)| {
            let order = &order;
            (0..count.min(n)).map(move |rank| order[rank * e + expert] * e as i64 + expert as i64)
        })
        .collect();
    let len = positions.len();
    Tensor::from_vec(positions, &[len])?.to_device(scores.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::rule::tests::scores;

    fn rule(capacity: f64) -> GlobalPool {
        GlobalPool {
            capacity,
            predictor_loss_weight: 1.0,
            threshold_decay: 0.95,
            inference: PoolInference::Predictor,
            gate: Gate::Softmax,
        }
    }

    #[test]
    fn every_expert_takes_its_best_tokens_of_the_whole_batch() {
        // 4 tokens, 3 experts, C = 1.5: k = ⌊4/3 · 1.5⌋ = 2 per expert, across both images.
        let d = rule(1.5).decide(&scores(), 2).unwrap();
        // Expert 0: tokens 0 (0.7), 2 (0.6); expert 1: 1 (0.5), 2 (0.3); expert 2: 3 (0.6), 1 (0.4).
        assert_eq!(d.positions, vec![0, 6, 4, 7, 11, 5]);
        assert_eq!(d.expert_counts(), vec![2, 2, 2]);
        // Token 2 is taken twice, token 3 once: no token-level guarantee.
        assert_eq!(d.token_counts(), vec![1, 2, 2, 1]);
        assert_eq!(pool_capacity(64, 1.0, 4), 16);
        assert_eq!(
            pool_capacity(10, 1.0, 4),
            2,
            "floor, as int() in the official code"
        );
        assert_eq!(pool_capacity(2, 0.1, 8), 1);
    }

    #[test]
    fn counted_selection_takes_each_experts_count_by_score() {
        let positions = counted_pool_positions(&scores(), &[1, 0, 3]).unwrap();
        // Expert 0's best token is 0; expert 1 takes none; expert 2: tokens 3, 1, 0/2 tie → 0.
        assert_eq!(positions.to_vec::<i64>().unwrap(), vec![0, 11, 5, 2]);
    }

    #[test]
    fn bad_knobs_are_refused_by_name() {
        let at = Field::root("routing");
        let mut r = rule(5.0);
        assert!(r.validate(4, &at).unwrap_err().contains("routing.capacity"));
        r.capacity = 1.0;
        r.threshold_decay = 1.0;
        assert!(r
            .validate(4, &at)
            .unwrap_err()
            .contains("routing.threshold_decay"));
        r.threshold_decay = 0.95;
        r.inference = PoolInference::Threshold { gamma: 1.5 };
        assert!(r
            .validate(4, &at)
            .unwrap_err()
            .contains("routing.inference.gamma"));
    }
}
