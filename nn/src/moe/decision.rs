//! What a routing rule decided: the chosen (token, expert) pairs of one forward pass
//! ([`RoutingDecision`]) and, when asked for, the statistics the experiments analyse
//! ([`RoutingRecord`]).
//!
//! The decision is discrete (no gradient); the layer gathers the chosen gate values from the
//! differentiable scores, so the router learns through the weights of the pairs it picked.

use ditmoe_tensor::{Device, Result, Tensor};

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
