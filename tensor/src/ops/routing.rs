//! MoE dispatch on tensors: from the router's top-k picks to routed pairs, and from routed
//! pairs to the expert-sorted order the grouped expert GEMM needs (MegaBlocks, Gale et al.,
//! 2022). A routed pair (token t, expert e) is its position `t·E + e` in the `[N, E]` score
//! grid. CPU loops here; on a GPU the routing kernels (`ditmoe_cuda::ops::routing`), so
//! nothing leaves the device: even the group sizes stay there, and the grouped GEMM builds its
//! tile schedule from them on the device.

use crate::error::{Result, TensorError};
use crate::ops::grouped::GroupSizes;
use crate::{DType, Tensor};

/// The routed pairs sorted by expert (stably: pairs of one expert keep their order).
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// `[P]` i64: the index, among the unsorted pairs, of each sorted pair.
    pub order: Tensor,
    /// `[P]` i64: its token.
    pub token_of: Tensor,
    /// `[P]` i64: its expert.
    pub expert_of: Tensor,
    /// Pairs per expert: the row groups of the grouped GEMM (on the device on a GPU).
    pub group_sizes: GroupSizes,
}

fn index_tensor(values: Vec<usize>) -> Result<Tensor> {
    let n = values.len();
    Tensor::from_vec(values.into_iter().map(|v| v as i64).collect(), &[n])
}

impl Tensor {
    /// Token choice's picks `[N, k]` (expert indices, i64) as `[N·k]` positions, in slot
    /// order (token by token).
    pub fn token_choice_positions(picks: &Tensor, num_experts: usize) -> Result<Tensor> {
        let op = "token_choice_positions";
        picks.check_dtype(op, DType::I64)?;
        let &[_, k] = picks.shape() else {
            return Err(TensorError::shape(op, "picks [tokens, k]", picks.shape()));
        };
        if picks.is_cuda() {
            return crate::ops::cuda::token_choice_positions(picks, num_experts);
        }
        let positions = picks
            .to_vec::<i64>()?
            .into_iter()
            .enumerate()
            .map(|(slot, e)| slot / k * num_experts + e as usize)
            .collect();
        index_tensor(positions)
    }

    /// Expert choice's picks `[G, C, E]` (each expert's C best token ranks within each group
    /// of `group_tokens` tokens, i64) as `[G·E·C]` positions in (group, expert, rank) order.
    pub fn expert_choice_positions(picks: &Tensor, group_tokens: usize) -> Result<Tensor> {
        let op = "expert_choice_positions";
        picks.check_dtype(op, DType::I64)?;
        let &[groups, capacity, experts] = picks.shape() else {
            return Err(TensorError::shape(
                op,
                "picks [groups, capacity, experts]",
                picks.shape(),
            ));
        };
        if picks.is_cuda() {
            return crate::ops::cuda::expert_choice_positions(picks, group_tokens);
        }
        let ranks = picks.to_vec::<i64>()?;
        let mut positions = Vec::with_capacity(ranks.len());
        for g in 0..groups {
            for e in 0..experts {
                for r in 0..capacity {
                    let token = g * group_tokens + ranks[(g * capacity + r) * experts + e] as usize;
                    positions.push(token * experts + e);
                }
            }
        }
        index_tensor(positions)
    }

    /// Expert race's picks (Race-DiT, Yuan et al., 2025): the positions of the `picks` highest
    /// of the `[N, E]` scores over the whole grid, ties to the lower position, as `[picks]`
    /// positions in grid order. On a GPU one block selects them (a radix select of the
    /// `picks`-th largest score, then a pass that keeps what ranks above it).
    pub fn expert_race_positions(scores: &Tensor, picks: usize) -> Result<Tensor> {
        let op = "expert_race_positions";
        if scores.rank() != 2 {
            return Err(TensorError::shape(
                op,
                "scores [tokens, experts]",
                scores.shape(),
            ));
        }
        if picks > scores.numel() {
            return Err(TensorError::invalid(
                op,
                format!(
                    "expected at most {} picks (the size of the score grid), found {picks}",
                    scores.numel()
                ),
            ));
        }
        if scores.is_cuda() {
            return crate::ops::cuda::expert_race_positions(scores, picks);
        }
        let (_, best) = scores.flatten()?.topk(picks, 0, true)?;
        let mut positions = best.to_vec::<i64>()?;
        positions.sort_unstable();
        Tensor::from_vec(positions, &[picks])
    }

    /// The pairs at `positions` (`[P]` i64) sorted by expert, stably, with the group sizes.
    pub fn dispatch_order(positions: &Tensor, num_experts: usize) -> Result<Dispatch> {
        let op = "dispatch_order";
        if num_experts == 0 {
            return Err(TensorError::invalid(op, "expected at least one expert"));
        }
        positions.check_dtype(op, DType::I64)?;
        if positions.rank() != 1 {
            return Err(TensorError::shape(
                op,
                "positions of rank 1",
                positions.shape(),
            ));
        }
        if positions.is_cuda() {
            return crate::ops::cuda::dispatch_order(positions, num_experts);
        }
        let positions: Vec<usize> = positions
            .to_vec::<i64>()?
            .into_iter()
            .map(|p| p as usize)
            .collect();
        let mut order: Vec<usize> = (0..positions.len()).collect();
        order.sort_by_key(|&slot| positions[slot] % num_experts);
        let mut group_sizes = vec![0; num_experts];
        positions
            .iter()
            .for_each(|p| group_sizes[p % num_experts] += 1);
        Ok(Dispatch {
            token_of: index_tensor(order.iter().map(|&s| positions[s] / num_experts).collect())?,
            expert_of: index_tensor(order.iter().map(|&s| positions[s] % num_experts).collect())?,
            order: index_tensor(order)?,
            group_sizes: GroupSizes::host(&group_sizes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(values: &[i64], shape: &[usize]) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape).unwrap()
    }

    #[test]
    fn picks_become_grid_positions() {
        // 3 tokens, top-2 of 4 experts.
        let tc = Tensor::token_choice_positions(&ints(&[2, 0, 1, 3, 3, 2], &[3, 2]), 4).unwrap();
        assert_eq!(tc.to_vec::<i64>().unwrap(), vec![2, 0, 5, 7, 11, 10]);
        // 2 groups of 3 tokens, 2 experts, capacity 2: picks[g, r, e] = token rank.
        let picks = ints(&[0, 2, 1, 0, 2, 2, 0, 1], &[2, 2, 2]);
        let ec = Tensor::expert_choice_positions(&picks, 3).unwrap();
        // group 0: expert 0 takes tokens 0, 1; expert 1 tokens 2, 0; group 1 likewise + 3.
        assert_eq!(ec.to_vec::<i64>().unwrap(), vec![0, 2, 5, 1, 10, 6, 11, 9]);
        assert!(Tensor::token_choice_positions(&ints(&[1, 2], &[2]), 4).is_err());
    }

    #[test]
    fn dispatch_sorts_pairs_by_expert_stably() {
        // Positions t·3 + e: (0,2) (1,0) (1,2) (2,0) (3,1) (0,0).
        let positions = ints(&[2, 3, 5, 6, 10, 0], &[6]);
        let d = Tensor::dispatch_order(&positions, 3).unwrap();
        assert_eq!(d.order.to_vec::<i64>().unwrap(), vec![1, 3, 5, 4, 0, 2]);
        assert_eq!(d.token_of.to_vec::<i64>().unwrap(), vec![1, 2, 0, 3, 0, 1]);
        assert_eq!(d.expert_of.to_vec::<i64>().unwrap(), vec![0, 0, 0, 1, 2, 2]);
        assert_eq!(d.group_sizes.to_host().unwrap(), &[3, 1, 2]);
        assert!(Tensor::dispatch_order(&positions, 0).is_err());
    }

    #[test]
    fn expert_race_takes_the_best_of_the_grid_in_grid_order() {
        // 3 tokens, 2 experts; the 4th best score (0.5) is tied at positions 1 and 4.
        let scores = Tensor::from_vec(vec![0.9f32, 0.5, 0.1, 0.7, 0.5, 0.8], &[3, 2]).unwrap();
        let race = Tensor::expert_race_positions(&scores, 4).unwrap();
        assert_eq!(race.to_vec::<i64>().unwrap(), vec![0, 1, 3, 5]);
        assert!(Tensor::expert_race_positions(&scores, 7).is_err());
        assert!(Tensor::expert_race_positions(&scores.flatten().unwrap(), 1).is_err());
    }
}
