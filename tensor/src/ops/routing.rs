//! MoE dispatch on tensors: from the router's top-k picks to routed pairs, and from routed
//! pairs to the expert-sorted order the grouped expert GEMM needs (MegaBlocks, Gale et al.,
//! 2022). A routed pair (token t, expert e) is its position `t·E + e` in the `[N, E]` score
//! grid. CPU loops (`backend/cpu/routing.rs`); on a GPU the routing kernels (`ditmoe_cuda::ops::routing`), so
//! nothing leaves the device: even the group sizes stay there, and the grouped GEMM builds its
//! tile schedule from them on the device.

pub use crate::descriptors::Dispatch;

use crate::backend::GroupCounts;
use crate::descriptors::GroupSizes;
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::{DType, Tensor};

impl Tensor {
    /// Token choice's picks `[N, k]` (expert indices, i64) as `[N·k]` positions, in slot
    /// order (token by token).
    pub fn token_choice_positions(picks: &Tensor, num_experts: usize) -> Result<Tensor> {
        let op = "token_choice_positions";
        picks.check_dtype(op, DType::I64)?;
        if picks.rank() != 2 {
            return Err(TensorError::shape(op, "picks [tokens, k]", picks.shape()));
        }
        Tensor::compute(op, &[picks], &[picks.numel()], |backend, x| {
            backend.token_choice_positions(&x[0], num_experts)
        })
    }

    /// Expert choice's picks `[G, C, E]` (each expert's C best token ranks within each group
    /// of `group_tokens` tokens, i64) as `[G·E·C]` positions in (group, expert, rank) order.
    pub fn expert_choice_positions(picks: &Tensor, group_tokens: usize) -> Result<Tensor> {
        let op = "expert_choice_positions";
        picks.check_dtype(op, DType::I64)?;
        if picks.rank() != 3 {
            return Err(TensorError::shape(
                op,
                "picks [groups, capacity, experts]",
                picks.shape(),
            ));
        }
        Tensor::compute(op, &[picks], &[picks.numel()], |backend, x| {
            backend.expert_choice_positions(&x[0], group_tokens)
        })
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
        Tensor::compute(op, &[scores], &[picks], |backend, x| {
            backend.expert_race_positions(&x[0], picks)
        })
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
        let (sorted, device) = Tensor::run_on_backend(op, &[positions], |backend, x| {
            backend.dispatch_order(&x[0], num_experts)
        })?;
        let pairs = Layout::contiguous(&[positions.numel()]);
        let index = |storage| Tensor::from_backend(storage, pairs.clone(), device);
        let group_sizes = match sorted.group_sizes {
            GroupCounts::Host(sizes) => GroupSizes::host(&sizes),
            GroupCounts::Device(counts) => GroupSizes::on_device(
                Tensor::from_backend(counts, Layout::contiguous(&[num_experts]), device),
                positions.numel(),
            ),
        };
        Ok(Dispatch {
            order: index(sorted.order),
            token_of: index(sorted.token_of),
            expert_of: index(sorted.expert_of),
            group_sizes,
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
