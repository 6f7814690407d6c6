//! Expert choice (Zhou et al., 2022; EC-DiT, Sun et al., 2024, "EC-DIT: Scaling Diffusion
//! Transformers with Adaptive Expert-Choice Routing"): in each group of S tokens (one image, or
//! the whole batch) every expert takes the C = round(S·f_c/E) tokens that score it highest.
//! The load is balanced by construction; a token may be taken by 0..E experts.

use crate::moe::config::{Gate, RoutingGroup};
use crate::moe::rule::{grid, RoutingRule};
use crate::validate::Field;
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, Tensor, TensorError};

pub struct ExpertChoice {
    /// f_c: the average number of experts per token.
    pub capacity_factor: f64,
    pub group: RoutingGroup,
    pub gate: Gate,
}

/// Expert capacity C = round(S · f_c / E), at least 1 and at most S.
pub fn capacity(group_tokens: usize, capacity_factor: f64, num_experts: usize) -> usize {
    ((group_tokens as f64 * capacity_factor / num_experts as f64).round() as usize)
        .clamp(1, group_tokens.max(1))
}

impl RoutingRule for ExpertChoice {
    /// A capacity factor above E would have each expert take more tokens than the group has.
    fn validate(&self, num_experts: usize, at: &Field) -> std::result::Result<(), String> {
        let (f, at) = (self.capacity_factor, at.at("capacity_factor"));
        at.require(
            f > 0.0 && f.is_finite(),
            "a capacity factor > 0 and finite",
            f,
        )?;
        at.require(
            f <= num_experts as f64,
            format!("capacity_factor <= {num_experts} (the number of experts)"),
            f,
        )
    }

    fn experts_per_token(&self, num_experts: usize) -> f64 {
        self.capacity_factor.min(num_experts as f64)
    }

    fn gate(&self, logits: &Var) -> Result<Var> {
        self.gate.apply(logits)
    }

    /// Pairs ordered by group, expert, rank: E equal runs of C per group.
    fn pick(&self, scores: &Tensor, images: usize) -> Result<Tensor> {
        let (n, e) = grid(scores)?;
        let groups = match self.group {
            RoutingGroup::PerImage => images,
            RoutingGroup::Batch => 1,
        };
        if groups == 0 || n % groups != 0 {
            return Err(TensorError::invalid(
                "expert choice",
                format!("expected {n} tokens to split into {groups} equal groups"),
            ));
        }
        let s = n / groups;
        let c = capacity(s, self.capacity_factor, e);
        let (_, picks) = scores.reshape(&[groups, s, e])?.topk(c, 1, true)?; // [groups, C, E]
        Tensor::expert_choice_positions(&picks, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::rule::tests::scores;

    #[test]
    fn expert_choice_takes_the_best_tokens_of_each_expert_per_group() {
        let rule = |group| ExpertChoice {
            capacity_factor: 1.5,
            group,
            gate: Gate::Softmax,
        };
        let d = rule(RoutingGroup::PerImage).decide(&scores(), 2).unwrap();
        // C = round(2·1.5/3) = 1 per expert per image.
        assert_eq!(d.positions, vec![0, 4, 5, 6, 7, 11]);
        assert_eq!(d.expert_counts(), vec![2, 2, 2]);
        let whole = rule(RoutingGroup::Batch).decide(&scores(), 2).unwrap();
        assert_eq!(whole.expert_counts(), vec![2, 2, 2]);
        assert_eq!(capacity(10, 2.0, 8), 3);
        assert_eq!(capacity(2, 0.01, 8), 1);
    }
}
