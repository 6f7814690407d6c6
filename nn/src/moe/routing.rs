//! The three routing rules, side by side. Each reads the router's gate values `scores [N, E]`
//! (N tokens, E experts) and returns a [`RoutingDecision`]: which (token, expert) pairs run.
//!
//! | rule | who chooses | guaranteed | may happen |
//! |---|---|---|---|
//! | token choice | each token its top-k experts | k experts per token | uneven expert load |
//! | expert choice | each expert its top-C tokens of a group | C tokens per expert | tokens chosen by 0..E experts |
//! | expert race | the batch's top N·k (token, expert) pairs | N·k pairs in all | both of the above |
//!
//! The decision is discrete (no gradient); the layer gathers the chosen gate values from the
//! differentiable scores, so the router learns through the weights of the pairs it picked.

use crate::moe::config::RoutingGroup;
use ditmoe_tensor::{Device, Result, Tensor, TensorError};

/// The chosen (token, expert) pairs, each stored as its position `token·E + expert` in the
/// `[N, E]` score grid, in the order their weights are gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingDecision {
    pub num_tokens: usize,
    pub num_experts: usize,
    pub positions: Vec<usize>,
}

impl RoutingDecision {
    pub fn token(&self, slot: usize) -> usize {
        self.positions[slot] / self.num_experts
    }
    pub fn expert(&self, slot: usize) -> usize {
        self.positions[slot] % self.num_experts
    }
    /// Number of (token, expert) pairs.
    pub fn len(&self) -> usize {
        self.positions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
    /// The decision of a `[P]` tensor of positions (downloaded if on a GPU).
    pub fn from_positions(
        positions: &Tensor,
        num_tokens: usize,
        num_experts: usize,
    ) -> Result<RoutingDecision> {
        let positions = positions
            .to_device(Device::Cpu)?
            .to_vec::<i64>()?
            .into_iter()
            .map(|p| p as usize)
            .collect();
        Ok(RoutingDecision {
            num_tokens,
            num_experts,
            positions,
        })
    }

    /// The positions as an i64 tensor on `device`.
    pub fn positions_on(&self, device: Device) -> Result<Tensor> {
        let n = self.positions.len();
        let values = self.positions.iter().map(|&p| p as i64).collect();
        Tensor::from_vec(values, &[n])?.to_device(device)
    }

    /// Pairs per expert.
    pub fn expert_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_experts];
        self.positions
            .iter()
            .for_each(|p| counts[p % self.num_experts] += 1);
        counts
    }
    /// Experts per token.
    pub fn token_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_tokens];
        self.positions
            .iter()
            .for_each(|p| counts[p / self.num_experts] += 1);
        counts
    }
}

fn grid(scores: &Tensor) -> Result<(usize, usize)> {
    match scores.shape() {
        &[n, e] => Ok((n, e)),
        other => Err(TensorError::shape(
            "routing",
            "scores [tokens, experts]",
            other,
        )),
    }
}

/// Token choice: every token takes its `k` highest-scoring experts (best first).
pub fn token_choice(scores: &Tensor, k: usize) -> Result<RoutingDecision> {
    let (n, e) = grid(scores)?;
    RoutingDecision::from_positions(&token_choice_positions(scores, k)?, n, e)
}

/// [`token_choice`]'s pairs as a `[N·k]` tensor of positions where the scores are (on a GPU
/// the picks never leave it).
pub fn token_choice_positions(scores: &Tensor, k: usize) -> Result<Tensor> {
    let (_, e) = grid(scores)?;
    let (_, picks) = scores.topk(k, 1, true)?;
    Tensor::token_choice_positions(&picks, e)
}

/// Expert capacity C = round(S · f_c / E), at least 1 and at most S.
pub fn capacity(group_tokens: usize, capacity_factor: f64, num_experts: usize) -> usize {
    ((group_tokens as f64 * capacity_factor / num_experts as f64).round() as usize)
        .clamp(1, group_tokens.max(1))
}

/// Expert choice: in each group of tokens (one image, or the whole batch), every expert takes
/// the `C` tokens that score it highest. Pairs are ordered by group, expert, rank.
pub fn expert_choice(
    scores: &Tensor,
    capacity_factor: f64,
    group: RoutingGroup,
    images: usize,
) -> Result<RoutingDecision> {
    let (n, e) = grid(scores)?;
    let positions = expert_choice_positions(scores, capacity_factor, group, images)?;
    RoutingDecision::from_positions(&positions, n, e)
}

/// [`expert_choice`]'s pairs as a tensor of positions where the scores are.
pub fn expert_choice_positions(
    scores: &Tensor,
    capacity_factor: f64,
    group: RoutingGroup,
    images: usize,
) -> Result<Tensor> {
    let (n, e) = grid(scores)?;
    let groups = match group {
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
    let c = capacity(s, capacity_factor, e);
    let (_, picks) = scores.reshape(&[groups, s, e])?.topk(c, 1, true)?; // [groups, C, E]
    Tensor::expert_choice_positions(&picks, s)
}

/// Expert race: the `N·k` highest (token, expert) scores of the whole grid, in grid order.
pub fn expert_race(scores: &Tensor, k: usize) -> Result<RoutingDecision> {
    let (n, e) = grid(scores)?;
    RoutingDecision::from_positions(&expert_race_positions(scores, k)?, n, e)
}

/// [`expert_race`]'s pairs as a `[N·k]` tensor of positions where the scores are.
pub fn expert_race_positions(scores: &Tensor, k: usize) -> Result<Tensor> {
    let (n, _) = grid(scores)?;
    Tensor::expert_race_positions(scores, n * k)
}

/// What routing did in one forward pass, for analysis: the decision, the weight of each pair
/// and the router's gate values.
#[derive(Debug, Clone)]
pub struct RoutingRecord {
    pub decision: RoutingDecision,
    /// Gate weight of each pair, in decision order.
    pub weights: Vec<f32>,
    /// Router gate values `[N, E]`.
    pub scores: Tensor,
}

impl RoutingRecord {
    /// Fraction of all (token, expert) pairs that went to each expert.
    pub fn expert_load(&self) -> Vec<f64> {
        let total = self.decision.len().max(1) as f64;
        self.decision
            .expert_counts()
            .into_iter()
            .map(|c| c as f64 / total)
            .collect()
    }
    /// Fraction of tokens that no expert processed (they pass through the residual only).
    pub fn dropped_fraction(&self) -> f64 {
        let counts = self.decision.token_counts();
        counts.iter().filter(|&&c| c == 0).count() as f64 / counts.len().max(1) as f64
    }
    /// `histogram[j]` = number of tokens processed by exactly j experts.
    pub fn experts_per_token_histogram(&self) -> Vec<usize> {
        let mut histogram = vec![0; self.decision.num_experts + 1];
        self.decision
            .token_counts()
            .into_iter()
            .for_each(|c| histogram[c] += 1);
        histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores() -> Tensor {
        // 4 tokens (2 images of 2), 3 experts.
        Tensor::from_vec(
            vec![
                0.7f32, 0.2, 0.1, 0.1, 0.5, 0.4, 0.6, 0.3, 0.1, 0.2, 0.2, 0.6,
            ],
            &[4, 3],
        )
        .unwrap()
    }

    #[test]
    fn token_choice_takes_the_best_experts_of_each_token() {
        let d = token_choice(&scores(), 2).unwrap();
        assert_eq!(d.positions, vec![0, 1, 4, 5, 6, 7, 11, 9]);
        assert_eq!(d.token_counts(), vec![2; 4]);
    }

    #[test]
    fn expert_choice_takes_the_best_tokens_of_each_expert_per_group() {
        let d = expert_choice(&scores(), 1.5, RoutingGroup::PerImage, 2).unwrap();
        // C = round(2·1.5/3) = 1 per expert per image.
        assert_eq!(d.positions, vec![0, 4, 5, 6, 7, 11]);
        assert_eq!(d.expert_counts(), vec![2, 2, 2]);
        let whole = expert_choice(&scores(), 1.5, RoutingGroup::Batch, 2).unwrap();
        assert_eq!(whole.expert_counts(), vec![2, 2, 2]);
        assert_eq!(capacity(10, 2.0, 8), 3);
        assert_eq!(capacity(2, 0.01, 8), 1);
    }

    #[test]
    fn expert_race_takes_the_best_pairs_of_the_batch() {
        let d = expert_race(&scores(), 1).unwrap();
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
