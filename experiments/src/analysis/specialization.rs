//! Expert specialisation (the analysis of the DiT-MoE paper): how often each expert is chosen
//! per timestep bin, per patch position and per class, accumulated from routing records, and
//! summarised as normalised mutual information — so "timestep and position, not class" can be
//! checked with numbers.

use crate::analysis::normalized_mutual_information;
use ditmoe_nn::moe::RoutingRecord;

/// Contingency tables `[variable value][expert]` of one MoE layer, and the tokens counted in
/// each timestep bin and class (so that pairs per token — the routed experts a token gets, the
/// compute a dynamic rule spends — can be read per bin and class).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Specialization {
    pub by_timestep: Vec<Vec<f64>>,
    pub by_position: Vec<Vec<f64>>,
    pub by_class: Vec<Vec<f64>>,
    /// Empty in evaluations written before the counts were kept.
    #[serde(default)]
    pub tokens_by_timestep: Vec<f64>,
    #[serde(default)]
    pub tokens_by_class: Vec<f64>,
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
            tokens_by_timestep: vec![0.0; timestep_bins],
            tokens_by_class: vec![0.0; classes],
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
        let images = decision.num_tokens / tokens_per_image.max(1);
        for &label in &labels[..images] {
            self.tokens_by_timestep[timestep_bin] += tokens_per_image as f64;
            self.tokens_by_class[label] += tokens_per_image as f64;
        }
    }

    /// Routed experts per token in each timestep bin and in each class: (by bin, by class),
    /// NaN where no token was counted (and both empty for tables without token counts).
    pub fn experts_per_token(&self) -> (Vec<f64>, Vec<f64>) {
        let per_token = |table: &[Vec<f64>], tokens: &[f64]| -> Vec<f64> {
            table
                .iter()
                .zip(tokens)
                .map(|(row, &n)| match n > 0.0 {
                    true => row.iter().sum::<f64>() / n,
                    false => f64::NAN,
                })
                .collect()
        };
        (
            per_token(&self.by_timestep, &self.tokens_by_timestep),
            per_token(&self.by_class, &self.tokens_by_class),
        )
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
        // One expert per token everywhere; class 2 appears once (4 tokens).
        let (by_bin, by_class) = s.experts_per_token();
        assert_eq!(by_bin, vec![1.0, 1.0]);
        assert_eq!(by_class, vec![1.0, 1.0, 1.0]);
        assert_eq!(s.tokens_by_class, vec![8.0, 4.0, 4.0]);
    }

    #[test]
    fn experts_per_token_follow_a_dynamic_selection() {
        // Image 0 (class 1) gets 2 experts on each of its 4 tokens, image 1 (class 0) none.
        let decision = RoutingDecision {
            num_tokens: 8,
            num_experts: 2,
            positions: (0..8).collect(),
        };
        let record = RoutingRecord {
            decision,
            weights: vec![1.0; 8],
            scores: Tensor::zeros(&[8, 2], DType::F32).unwrap(),
        };
        let mut s = Specialization::new(1, 4, 2, 2);
        s.add(&record, 4, 0, &[1, 0]);
        let (by_bin, by_class) = s.experts_per_token();
        assert_eq!(by_bin, vec![1.0]);
        assert_eq!(by_class, vec![0.0, 2.0]);
        let old = Specialization {
            tokens_by_timestep: vec![],
            tokens_by_class: vec![],
            ..s
        };
        assert_eq!(old.experts_per_token(), (vec![], vec![]));
    }
}
