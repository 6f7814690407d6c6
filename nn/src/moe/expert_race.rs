//! Expert race (Race-DiT, Yuan et al., 2025, "Expert Race: A Flexible Routing Strategy for
//! Scaling Diffusion Transformer with Mixture of Experts"): tokens and experts race together —
//! the top (token, expert) scores of a pool are chosen, k per token on average. The pool is the
//! whole batch's grid by default (Expert Race itself), or one race per image, per token
//! position or per expert ([`RacePool`], the paper's Table 6). A token may get 0..E experts and
//! the load is not enforced (but for the per-expert pool).

use crate::moe::config::{Gate, RaceInference, RacePool};
use crate::moe::rule::{check_top_k, grid, positions_where, selection_mask, Routed, RoutingRule};
use crate::validate::Field;
use ditmoe_autograd::Var;
use ditmoe_tensor::{Device, Result, Tensor, TensorError};

pub struct ExpertRace {
    /// k: the pairs chosen per token on average.
    pub top_k: usize,
    pub gate: Gate,
    pub pool: RacePool,
    pub inference: RaceInference,
    /// Coefficient of the router-similarity loss (0 disables it).
    pub similarity_loss_weight: f64,
}

impl RoutingRule for ExpertRace {
    fn validate(&self, num_experts: usize, at: &Field) -> std::result::Result<(), String> {
        check_top_k(at, self.top_k, num_experts)?;
        at.at("similarity_loss_weight")
            .non_negative(self.similarity_loss_weight)?;
        if let RaceInference::Threshold { decay } = self.inference {
            at.at("inference").at("decay").fraction(decay)?;
            at.at("inference").require(
                self.pool == RacePool::Batch,
                "the learned threshold of the batch pool (pool = \"batch\"), one τ for its one race",
                format!("pool = {:?}", self.pool),
            )?;
        }
        Ok(())
    }

    fn experts_per_token(&self, _num_experts: usize) -> f64 {
        self.top_k as f64
    }

    /// Under the learned threshold, each token's experts at sampling depend on its scores.
    fn compute_varies(&self) -> bool {
        matches!(self.inference, RaceInference::Threshold { .. })
    }

    fn gate(&self, logits: &Var) -> Result<Var> {
        self.gate.apply(logits)
    }

    fn aux_loss(&self, routed: &Routed) -> Result<Option<Var>> {
        if self.similarity_loss_weight <= 0.0 {
            return Ok(None);
        }
        let loss = router_similarity_loss(routed.logits, routed.positions)?;
        Ok(Some(loss.mul_scalar(self.similarity_loss_weight)?))
    }

    /// The batch pool: the N·k highest scores of the grid, in grid order. The per-image and
    /// per-position pools: each race's winners, race by race, best first; the per-expert pool:
    /// expert by expert, best first.
    fn pick(&self, scores: &Tensor, images: usize) -> Result<Tensor> {
        let (n, e) = grid(scores)?;
        if self.pool == RacePool::Batch {
            return Tensor::expert_race_positions(scores, n * self.top_k);
        }
        if images == 0 || n % images != 0 {
            return Err(TensorError::invalid(
                "expert race",
                format!("expected {n} tokens to split into {images} equal images"),
            ));
        }
        let (b, l, k) = (images, n / images, self.top_k);
        match self.pool {
            RacePool::Batch => unreachable!("handled above"),
            // An image's pairs are one contiguous run of L·E grid positions: each race's
            // winner m of image b is position b·L·E + m, the token-choice mapping.
            RacePool::Image => {
                let (_, winners) = scores.reshape(&[b, l * e])?.topk(l * k, 1, true)?;
                Tensor::token_choice_positions(&winners, l * e)
            }
            // One race per expert over the batch: expert choice with the whole batch as the
            // group (DiffMoE's training rule).
            RacePool::Expert => {
                let picks = (n * k / e).clamp(1, n);
                let (_, winners) = scores.reshape(&[1, n, e])?.topk(picks, 1, true)?;
                Tensor::expert_choice_positions(&winners, n)
            }
            // A position's pairs are strided through the grid: they are raced through a table
            // of their positions, on the host (a read-back from a GPU).
            RacePool::Position => {
                let table = race_table(l, b * e, |g, m| ((m / e) * l + g) * e + m % e);
                let on_host = scores.to_device(Device::Cpu)?;
                pooled_race_positions(&on_host, &table, b * k)?.to_device(scores.device())
            }
        }
    }
}

impl ExpertRace {
    /// The sampling rule under a learned threshold τ: every pair scoring at least τ, in grid
    /// order (sized on the host).
    pub fn threshold_positions(scores: &Tensor, threshold: f64) -> Result<Tensor> {
        positions_where(scores, |score| score >= threshold)
    }
}

/// Race-DiT's router-similarity loss (§3.3, as its re-implementations write it): with
/// P = softmax(logits) `[N, E]` and M the selection mask, L = Σ_ij W_ij·(PᵀP)_ij / N, where
/// W is the co-selection count M' = MᵀM normalised on its diagonal to E·M'_ii / Σ_j M'_jj and
/// off it to (E² − E)·M'_ij / Σ_{i≠j} M'_ij. Expert pairs chosen together often weigh most, so
/// the loss pushes them to score tokens differently — balance over pairs, which a per-expert
/// balance cannot see (two experts always firing together are one expert).
pub fn router_similarity_loss(logits: &Var, positions: &Tensor) -> Result<Var> {
    let &[n, e] = logits.shape() else {
        return Err(TensorError::shape(
            "router similarity",
            "logits [tokens, experts]",
            logits.shape(),
        ));
    };
    let value = logits.value();
    let mask = selection_mask(positions, (n, e), &value)?;
    let co_selected = mask.t()?.matmul(&mask)?;
    let identity: Vec<f32> = (0..e * e)
        .map(|i| f32::from(u8::from(i % (e + 1) == 0)))
        .collect();
    let identity = Tensor::from_vec(identity, &[e, e])?
        .to_dtype(value.dtype())?
        .to_device(value.device())?;
    let diagonal = co_selected.mul(&identity)?;
    let off_diagonal = co_selected.sub(&diagonal)?;
    // Counts are whole numbers: a part that sums to 0 is all zeros, so dividing by at least 1
    // leaves it zero and changes no other value.
    let normalised = |part: &Tensor, total: f64| {
        part.mul_scalar(total)?
            .div(&part.sum_all()?.maximum_scalar(1.0)?)
    };
    let weights =
        normalised(&diagonal, e as f64)?.add(&normalised(&off_diagonal, (e * e - e) as f64)?)?;
    let probabilities = logits.softmax(1)?;
    probabilities
        .t()?
        .matmul(&probabilities)?
        .mul(&Var::constant(weights))?
        .sum_all()?
        .div_scalar(n as f64)
}

/// A `[races, members]` i64 table of each race member's position `token·E + expert` in the
/// score grid, from `position(race, member)`.
fn race_table(races: usize, members: usize, position: impl Fn(usize, usize) -> usize) -> Tensor {
    let values = (0..races)
        .flat_map(|g| (0..members).map(move |m| (g, m)))
        .map(|(g, m)| position(g, m) as i64)
        .collect();
    Tensor::from_vec(values, &[races, members]).expect("races × members values")
}

/// The `picks` best members of every race of `table` by `scores [N, E]`: `[races·picks]`
/// positions, race by race, best first (ties to the earlier member).
fn pooled_race_positions(scores: &Tensor, table: &Tensor, picks: usize) -> Result<Tensor> {
    let shape = table.shape().to_vec();
    let raced = scores
        .flatten()?
        .index_select(0, &table.flatten()?)?
        .reshape(&shape)?;
    let (_, winners) = raced.topk(picks, 1, true)?;
    table.gather(1, &winners)?.flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::decision::RoutingRecord;
    use crate::moe::rule::tests::scores;

    fn rule(pool: RacePool) -> ExpertRace {
        ExpertRace {
            top_k: 1,
            gate: Gate::Softmax,
            pool,
            inference: RaceInference::Static,
            similarity_loss_weight: 0.0,
        }
    }

    #[test]
    fn expert_race_takes_the_best_pairs_of_the_batch() {
        let d = rule(RacePool::Batch).decide(&scores(), 2).unwrap();
        assert_eq!(d.positions, vec![0, 4, 6, 11]);
        let record = RoutingRecord {
            decision: d,
            weights: vec![],
            scores: scores(),
        };
        assert_eq!(record.experts_per_token_histogram(), vec![0, 4, 0, 0]);
        assert_eq!(record.dropped_fraction(), 0.0);
    }

    #[test]
    fn each_pool_races_its_own_pairs() {
        // Tokens 0, 1 are image 0 and tokens 2, 3 image 1 (positions 0, 1 of each); scores
        // [0.7 0.2 0.1 | 0.1 0.5 0.4 | 0.6 0.3 0.1 | 0.2 0.2 0.6].
        let picks = |pool| rule(pool).decide(&scores(), 2).unwrap().positions;
        // Per image, 2 pairs each: image 0 → 0.7 (0), 0.5 (4); image 1 → 0.6 (6), 0.6 (11).
        assert_eq!(picks(RacePool::Image), vec![0, 4, 6, 11]);
        // Per position, 2 pairs each: position 0 = tokens 0, 2 → 0.7 (0), 0.6 (6); position 1
        // = tokens 1, 3 → 0.6 (11), 0.5 (4).
        assert_eq!(picks(RacePool::Position), vec![0, 6, 11, 4]);
        // Per expert, ⌊4·1/3⌋ = 1 token each: 0.7 (0), 0.5 (4), 0.6 (11).
        assert_eq!(picks(RacePool::Expert), vec![0, 4, 11]);
        assert!(rule(RacePool::Image).pick(&scores(), 3).is_err());
    }

    /// The router-similarity loss from its formula, element by element in f64.
    fn similarity_by_hand(
        logits: &[f64],
        chosen: &[(usize, usize)],
        (n, e): (usize, usize),
    ) -> f64 {
        let mut mask = vec![0.0; n * e];
        for &(token, expert) in chosen {
            mask[token * e + expert] = 1.0;
        }
        let co = |i: usize, j: usize| {
            (0..n)
                .map(|t| mask[t * e + i] * mask[t * e + j])
                .sum::<f64>()
        };
        let diagonal_total: f64 = (0..e).map(|i| co(i, i)).sum();
        let off_total: f64 = (0..e)
            .flat_map(|i| (0..e).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| co(i, j))
            .sum();
        let p: Vec<f64> = (0..n * e)
            .map(|x| {
                let row = &logits[x / e * e..x / e * e + e];
                logits[x].exp() / row.iter().map(|v| v.exp()).sum::<f64>()
            })
            .collect();
        let mut loss = 0.0;
        for i in 0..e {
            for j in 0..e {
                let weight = if i == j {
                    e as f64 * co(i, i) / diagonal_total.max(1.0)
                } else {
                    (e * e - e) as f64 * co(i, j) / off_total.max(1.0)
                };
                let pp: f64 = (0..n).map(|t| p[t * e + i] * p[t * e + j]).sum();
                loss += weight * pp;
            }
        }
        loss / n as f64
    }

    #[test]
    fn the_router_similarity_loss_follows_its_formula() {
        let (n, e) = (4, 3);
        let logits: Vec<f64> = vec![
            0.3, -1.0, 2.0, 0.5, 0.5, -0.2, 1.5, 0.1, -0.7, -0.4, 0.9, 0.2,
        ];
        let var = Var::constant(Tensor::from_vec(logits.clone(), &[n, e]).unwrap());
        // Pairs chosen together (tokens 0 and 2 take experts 0 and 2), and a selection with no
        // co-selection at all (every token one expert: the off-diagonal part is empty).
        for chosen in [
            vec![(0, 0), (0, 2), (1, 1), (2, 0), (2, 2), (3, 1)],
            vec![(0, 1), (1, 0), (2, 2), (3, 1)],
        ] {
            let positions: Vec<i64> = chosen.iter().map(|&(t, x)| (t * e + x) as i64).collect();
            let positions = Tensor::from_vec(positions, &[chosen.len()]).unwrap();
            let loss = router_similarity_loss(&var, &positions).unwrap();
            let expect = similarity_by_hand(&logits, &chosen, (n, e));
            assert!((loss.value().item().unwrap() - expect).abs() < 1e-12);
            ditmoe_autograd::check_gradients(
                |v| router_similarity_loss(&v[0], &positions),
                &[var.value()],
            )
            .unwrap();
        }
        let rule = ExpertRace {
            similarity_loss_weight: -1.0,
            ..rule(RacePool::Batch)
        };
        let at = Field::root("routing");
        assert!(rule
            .validate(3, &at)
            .unwrap_err()
            .starts_with("routing.similarity_loss_weight"));
    }

    #[test]
    fn a_threshold_takes_every_pair_at_or_above_it() {
        let positions = ExpertRace::threshold_positions(&scores(), 0.5).unwrap();
        assert_eq!(positions.to_vec::<i64>().unwrap(), vec![0, 4, 6, 11]);
        let at = Field::root("routing");
        let refused = ExpertRace {
            inference: RaceInference::Threshold { decay: 0.95 },
            ..rule(RacePool::Image)
        };
        assert!(refused
            .validate(3, &at)
            .unwrap_err()
            .starts_with("routing.inference"));
    }
}
