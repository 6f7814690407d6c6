//! MoE dispatch on the CPU: routed (token, expert) pairs as positions `t·E + e` of the `[N, E]`
//! score grid, and their stable expert-sorted order (MegaBlocks, Gale et al., 2022).

use crate::backend::{DispatchStorage, GroupCounts, Operand};
use crate::dtype::Element;
use crate::error::Result;
use crate::layout::Layout;
use crate::storage::Storage;

fn index_storage(values: impl IntoIterator<Item = usize>) -> Storage {
    i64::into_storage(values.into_iter().map(|v| v as i64).collect())
}

fn indices(x: &Operand) -> Result<Vec<usize>> {
    Ok(x.values::<i64>()?.iter().map(|&i| i as usize).collect())
}

pub(super) fn token_choice_positions(picks: &Operand, num_experts: usize) -> Result<Storage> {
    let k = picks.shape()[1];
    let experts = indices(picks)?;
    Ok(index_storage(
        experts
            .into_iter()
            .enumerate()
            .map(|(slot, e)| slot / k * num_experts + e),
    ))
}

pub(super) fn expert_choice_positions(picks: &Operand, group_tokens: usize) -> Result<Storage> {
    let &[groups, capacity, experts] = picks.shape() else {
        unreachable!("checked by the caller")
    };
    let ranks = indices(picks)?;
    let mut positions = Vec::with_capacity(ranks.len());
    for g in 0..groups {
        for e in 0..experts {
            for r in 0..capacity {
                let token = g * group_tokens + ranks[(g * capacity + r) * experts + e];
                positions.push(token * experts + e);
            }
        }
    }
    Ok(index_storage(positions))
}

pub(super) fn dispatch_order(positions: &Operand, num_experts: usize) -> Result<DispatchStorage> {
    let positions = indices(positions)?;
    let mut order: Vec<usize> = (0..positions.len()).collect();
    order.sort_by_key(|&slot| positions[slot] % num_experts);
    let mut group_sizes = vec![0; num_experts];
    positions
        .iter()
        .for_each(|p| group_sizes[p % num_experts] += 1);
    Ok(DispatchStorage {
        token_of: index_storage(order.iter().map(|&s| positions[s] / num_experts)),
        expert_of: index_storage(order.iter().map(|&s| positions[s] % num_experts)),
        order: index_storage(order),
        group_sizes: GroupCounts::Host(group_sizes),
    })
}

/// Expert race's picks: the `picks` best of the flattened scores (a view when the layout
/// allows) (the CPU top-k, ties to the
/// lower position), in grid order.
pub(super) fn expert_race_positions(scores: &Operand, picks: usize) -> Result<Storage> {
    let n = scores.numel();
    let copy;
    let flat = match scores.layout().reshape(&[n]) {
        Some(layout) => scores.with_layout(layout),
        None => {
            copy = scores.gathered();
            Operand::owned(&copy, Layout::contiguous(&[n]))
        }
    };
    let (_, (best, _)) = super::index::topk(&flat, picks, 0, true)?;
    let mut positions = Operand::owned(&best, Layout::contiguous(&[picks]))
        .values::<i64>()?
        .into_owned();
    positions.sort_unstable();
    Ok(i64::into_storage(positions))
}
