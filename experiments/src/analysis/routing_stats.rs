//! Balance and information measures of expert routing.

use ditmoe_nn::moe::{RoutingDecision, RoutingRecord};
use serde::{Deserialize, Serialize};

/// How uneven a load distribution is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Imbalance {
    /// Largest load over the mean load (1 = perfectly balanced).
    pub max_over_mean: f64,
    /// Standard deviation over mean (coefficient of variation; 0 = balanced).
    pub coefficient_of_variation: f64,
}

/// Imbalance of per-expert loads (any non-negative scale: counts or fractions).
pub fn imbalance(load: &[f64]) -> Imbalance {
    let n = load.len().max(1) as f64;
    let mean = load.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        return Imbalance {
            max_over_mean: 1.0,
            coefficient_of_variation: 0.0,
        };
    }
    let max = load.iter().cloned().fold(f64::MIN, f64::max);
    let variance = load.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
    Imbalance {
        max_over_mean: max / mean,
        coefficient_of_variation: variance.sqrt() / mean,
    }
}

/// Shannon entropy in nats of a distribution given by non-negative weights (normalised here).
pub fn entropy(weights: &[f64]) -> f64 {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    -weights
        .iter()
        .filter(|&&w| w > 0.0)
        .map(|&w| (w / total) * (w / total).ln())
        .sum::<f64>()
}

/// I(X; E) / H(E) from a contingency table `counts[x][e]` (x: timestep bin, position or
/// class; e: expert): the fraction of the uncertainty about the chosen expert that the
/// variable explains, 0 (independent) to 1 (determined). 0 when H(E) = 0.
pub fn normalized_mutual_information(counts: &[Vec<f64>]) -> f64 {
    let total: f64 = counts.iter().flatten().sum();
    let experts = counts.first().map_or(0, Vec::len);
    if total <= 0.0 || experts == 0 {
        return 0.0;
    }
    let row_sums: Vec<f64> = counts.iter().map(|r| r.iter().sum()).collect();
    let col_sums: Vec<f64> = (0..experts)
        .map(|e| counts.iter().map(|r| r[e]).sum())
        .collect();
    let mut mi = 0.0;
    for (row, &rs) in counts.iter().zip(&row_sums) {
        for (&c, &cs) in row.iter().zip(&col_sums) {
            if c > 0.0 {
                mi += (c / total) * ((c * total) / (rs * cs)).ln();
            }
        }
    }
    let h = entropy(&col_sums);
    if h <= 0.0 {
        0.0
    } else {
        (mi / h).clamp(0.0, 1.0)
    }
}

/// Share of the E(E − 1)/2 expert pairs needed to cover 95% of the co-activations: every token
/// routed to a set S of experts co-activates its |S|(|S| − 1)/2 pairs; the pairs are sorted by
/// how often they fire together and counted until they cover 95% (Race-DiT's "combination
/// usage", Fig. 13). Low: experts fire in fixed pairs, so a k-of-E MoE acts like fewer,
/// larger experts. `None` when no token has two experts.
pub fn pair_coverage(decision: &RoutingDecision) -> Option<f64> {
    let e = decision.num_experts;
    let mut experts_of = vec![Vec::new(); decision.num_tokens];
    decision
        .positions
        .iter()
        .for_each(|&p| experts_of[p / e].push(p % e));
    let mut together = vec![0usize; e * e];
    for experts in &experts_of {
        for (i, &a) in experts.iter().enumerate() {
            for &b in &experts[i + 1..] {
                together[a.min(b) * e + a.max(b)] += 1;
            }
        }
    }
    let total: usize = together.iter().sum();
    if total == 0 {
        return None;
    }
    together.sort_unstable_by(|a, b| b.cmp(a));
    let needed = together
        .iter()
        .scan(0, |covered, &c| {
            *covered += c;
            Some(*covered)
        })
        .position(|covered| covered as f64 >= 0.95 * total as f64)
        .expect("the counts add up to the total")
        + 1;
    Some(needed as f64 / (e * (e - 1) / 2) as f64)
}

/// Mean over tokens of the entropy (nats) of each token's router distribution. Rows of a
/// softmax router are used as they are; gates that are not a distribution (expert race with
/// identity or sigmoid gates) are put through a softmax first.
pub fn router_entropy(scores: &[f64], experts: usize) -> f64 {
    let rows: Vec<&[f64]> = scores.chunks(experts.max(1)).collect();
    let total: f64 = rows
        .iter()
        .map(|row| {
            let sum: f64 = row.iter().sum();
            let is_distribution = row.iter().all(|&s| s >= 0.0) && (sum - 1.0).abs() < 1e-3;
            let weights: Vec<f64> = if is_distribution {
                row.to_vec()
            } else {
                let max = row.iter().fold(f64::MIN, |m, &s| m.max(s));
                row.iter().map(|&s| (s - max).exp()).collect()
            };
            entropy(&weights)
        })
        .sum();
    total / rows.len().max(1) as f64
}

/// The routing health of one MoE layer in one forward pass, as the metrics log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRouting {
    /// Fraction of the (token, expert) slots that went to each expert.
    pub load: Vec<f64>,
    pub max_over_mean: f64,
    pub coefficient_of_variation: f64,
    /// Mean per-token router entropy (nats); ln E is a uniform router.
    pub router_entropy: f64,
    /// Fraction of tokens no expert processed.
    pub dropped: f64,
    /// `experts_per_token[j]`: fraction of tokens processed by exactly j experts.
    pub experts_per_token: Vec<f64>,
    /// [`pair_coverage`]; absent in logs written before it existed.
    #[serde(default)]
    pub pair_coverage: Option<f64>,
}

impl LayerRouting {
    pub fn of(record: &RoutingRecord) -> Self {
        let load = record.expert_load();
        let balance = imbalance(&load);
        let histogram = record.experts_per_token_histogram();
        let tokens = histogram.iter().sum::<usize>().max(1) as f64;
        LayerRouting {
            max_over_mean: balance.max_over_mean,
            coefficient_of_variation: balance.coefficient_of_variation,
            router_entropy: router_entropy(&record.scores.to_vec_f64(), load.len()),
            dropped: record.dropped_fraction(),
            experts_per_token: histogram.iter().map(|&c| c as f64 / tokens).collect(),
            pair_coverage: pair_coverage(&record.decision),
            load,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_entropy_of_hand_made_gates() {
        // A uniform and a one-hot row: (ln 2 + 0) / 2.
        let h = router_entropy(&[0.5, 0.5, 1.0, 0.0], 2);
        assert!((h - 2f64.ln() / 2.0).abs() < 1e-9, "{h}");
        // Logits are softmaxed first: equal logits are a uniform distribution.
        let h = router_entropy(&[-3.0, -3.0, -3.0], 3);
        assert!((h - 3f64.ln()).abs() < 1e-6, "{h}");
    }

    #[test]
    fn pair_coverage_of_hand_made_routings() {
        let decision = |positions: Vec<usize>| RoutingDecision {
            num_tokens: 4,
            num_experts: 4,
            positions,
        };
        // Every token takes experts 0 and 1: one pair of six covers everything.
        let fixed = decision(vec![0, 1, 4, 5, 8, 9, 12, 13]);
        assert_eq!(pair_coverage(&fixed), Some(1.0 / 6.0));
        // Four different pairs, once each: 95% of 4 needs all four.
        let varied = decision(vec![0, 1, 6, 7, 8, 10, 13, 15]);
        assert_eq!(pair_coverage(&varied), Some(4.0 / 6.0));
        // One expert per token: no pairs.
        assert_eq!(pair_coverage(&decision(vec![0, 5, 10, 15])), None);
    }

    #[test]
    fn imbalance_of_hand_made_loads() {
        let even = imbalance(&[0.25; 4]);
        assert_eq!(
            (even.max_over_mean, even.coefficient_of_variation),
            (1.0, 0.0)
        );
        // mean 1/3, max 1/2 → 1.5; deviations (1/6, −1/12, −1/12): var = (1/36 + 2/144)/3 = 1/72.
        let skew = imbalance(&[0.5, 0.25, 0.25]);
        assert!((skew.max_over_mean - 1.5).abs() < 1e-12);
        assert!((skew.coefficient_of_variation - (1.0f64 / 72.0).sqrt() * 3.0).abs() < 1e-12);
    }

    #[test]
    fn entropy_and_mutual_information() {
        assert!((entropy(&[1.0, 1.0, 1.0, 1.0]) - 4f64.ln()).abs() < 1e-12);
        assert_eq!(entropy(&[0.0, 5.0]), 0.0);
        // Independent: every row has the same expert distribution.
        assert!(normalized_mutual_information(&[vec![2.0, 2.0], vec![1.0, 1.0]]).abs() < 1e-12);
        // Determined: each row picks one expert.
        assert!(
            (normalized_mutual_information(&[vec![3.0, 0.0], vec![0.0, 3.0]]) - 1.0).abs() < 1e-12
        );
        // Half-informative by hand: p = [[.375,.125],[.125,.375]]; I = Σ p ln(p/(.5·.5)).
        let expected =
            2.0 * (0.375 * (0.375f64 / 0.25).ln() + 0.125 * (0.125f64 / 0.25).ln()) / 2f64.ln();
        assert!(
            (normalized_mutual_information(&[vec![3.0, 1.0], vec![1.0, 3.0]]) - expected).abs()
                < 1e-12
        );
    }
}
