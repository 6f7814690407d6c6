//! Expert specialisation (the analysis of the DiT-MoE paper): how often each expert is chosen
//! per timestep bin, per patch position and per class, accumulated from routing records, and
//! summarised as normalised mutual information — so "timestep and position, not class" can be
//! checked with numbers.

use crate::analysis::normalized_mutual_information;
use ditmoe_nn::moe::RoutingRecord;

/// Contingency tables `[variable value][expert]` of one MoE layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Specialization {
    pub by_timestep: Vec<Vec<f64>>,
    pub by_position: Vec<Vec<f64>>,
    pub by_class: Vec<Vec<f64>>,
}

/// NMI of the expert choice with each variable (0 = independent, 1 = determined).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecializationScores {
    pub timestep: f64,
    pub position: f64,
    pub class: f64,
}

impl Specialization {
    pub fn new(timestep_bins: usize, positions: usize, classes: usize, experts: usize) -> Self {
        let table = |rows: usize| vec![vec![0.0; experts]; rows];
        Specialization {
            by_timestep: table(timestep_bins),
            by_position: table(positions),
            by_class: table(classes),
        }
    }

    /// Adds one forward pass's routing: images of `tokens_per_image` tokens, all at timestep bin
    /// `timestep_bin`, with `labels[image]`.
    pub fn add(
        &mut self,
        record: &RoutingRecord,
        tokens_per_image: usize,
        timestep_bin: usize,
        labels: &[usize],
    ) {
        let decision = &record.decision;
        for slot in 0..decision.len() {
            let (token, expert) = (decision.token(slot), decision.expert(slot));
            let (image, position) = (token / tokens_per_image, token % tokens_per_image);
            self.by_timestep[timestep_bin][expert] += 1.0;
            self.by_position[position][expert] += 1.0;
            self.by_class[labels[image]][expert] += 1.0;
        }
    }

    pub fn scores(&self) -> SpecializationScores {
        SpecializationScores {
            timestep: normalized_mutual_information(&self.by_timestep),
            position: normalized_mutual_information(&self.by_position),
            class: normalized_mutual_information(&self.by_class),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ditmoe_nn::moe::RoutingDecision;
    use ditmoe_tensor::{DType, Tensor};

    /// A record of 2 images × 4 tokens where token position p goes to expert p % 2.
    fn record() -> RoutingRecord {
        let positions = (0..8).map(|token| token * 2 + (token % 4) % 2).collect();
        let decision = RoutingDecision {
            num_tokens: 8,
            num_experts: 2,
            positions,
        };
        RoutingRecord {
            decision,
            weights: vec![1.0; 8],
            scores: Tensor::zeros(&[8, 2], DType::F32).unwrap(),
        }
    }

    #[test]
    fn position_determined_routing_scores_one_for_position_and_zero_for_class() {
        let mut s = Specialization::new(2, 4, 3, 2);
        s.add(&record(), 4, 0, &[0, 2]);
        s.add(&record(), 4, 1, &[1, 0]);
        let scores = s.scores();
        assert!((scores.position - 1.0).abs() < 1e-12);
        assert!(scores.timestep.abs() < 1e-12);
        assert!(scores.class.abs() < 1e-12);
        assert_eq!(s.by_position[1], vec![0.0, 4.0]);
        assert_eq!(s.by_class[0], vec![4.0, 4.0]);
    }
}
