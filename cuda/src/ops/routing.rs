//! Wrappers for `kernels/routing.ptx`: MoE routing from the top-k picks to the dispatch order
//! of the expert GEMMs, on the device. A routed pair (token t, expert e) is its position
//! `t·E + e` in the `[N, E]` score grid.

use super::{check_len, check_u32, ELEMENTWISE_BLOCK};
use crate::error::{CudaError, Result};
use crate::{Buffer, Gpu, LaunchConfig};

/// Token choice's `[N, k]` picked experts as positions, in slot order (`s = token·k + j`).
pub fn token_choice_positions(
    gpu: &Gpu,
    picks: &Buffer<u32>,
    k: usize,
    experts: usize,
) -> Result<Buffer<u32>> {
    if k == 0 || picks.len() % k != 0 {
        return Err(CudaError::InvalidArgument(format!(
            "token choice: {} picks do not form rows of k = {k}",
            picks.len()
        )));
    }
    let out = gpu.zeros::<u32>(picks.len())?;
    if picks.is_empty() {
        return Ok(out);
    }
    gpu.launch(
        "routing",
        "token_choice_positions_u32",
        LaunchConfig::linear(picks.len(), ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            picks.into(),
            check_u32("slots", picks.len())?.into(),
            check_u32("k", k)?.into(),
            check_u32("experts", experts)?.into(),
        ],
    )?;
    Ok(out)
}

/// The shape of expert choice's picks: `groups` groups of `group_tokens` tokens, each of the
/// `experts` experts taking `capacity` tokens per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertChoiceShape {
    pub groups: usize,
    pub group_tokens: usize,
    pub capacity: usize,
    pub experts: usize,
}

/// Expert choice's `[G, C, E]` picks (token ranks within each group) as positions in
/// (group, expert, rank) order.
pub fn expert_choice_positions(
    gpu: &Gpu,
    picks: &Buffer<u32>,
    shape: ExpertChoiceShape,
) -> Result<Buffer<u32>> {
    let ExpertChoiceShape {
        groups,
        group_tokens,
        capacity,
        experts,
    } = shape;
    let n = groups * capacity * experts;
    check_len("expert choice picks", picks, n)?;
    let out = gpu.zeros::<u32>(n)?;
    if n == 0 {
        return Ok(out);
    }
    gpu.launch(
        "routing",
        "expert_choice_positions_u32",
        LaunchConfig::linear(n, ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            picks.into(),
            check_u32("groups", groups)?.into(),
            check_u32("group tokens", group_tokens)?.into(),
            check_u32("capacity", capacity)?.into(),
            check_u32("experts", experts)?.into(),
        ],
    )?;
    Ok(out)
}

/// The routed pairs sorted by expert, stably: for the pair at sorted index i, its slot in
/// `positions` (`order`), token and expert; and the number of pairs of each expert.
pub struct DispatchOrder {
    pub order: Buffer<u32>,
    pub token_of: Buffer<u32>,
    pub expert_of: Buffer<u32>,
    pub counts: Buffer<u32>,
}

/// Sorts the pairs of `positions` by expert (a counting sort, one block per expert).
pub fn dispatch_order(gpu: &Gpu, positions: &Buffer<u32>, experts: usize) -> Result<DispatchOrder> {
    if experts == 0 {
        return Err(CudaError::InvalidArgument(
            "dispatch order: expected at least one expert".into(),
        ));
    }
    let n = positions.len();
    let dispatch = DispatchOrder {
        order: gpu.zeros(n)?,
        token_of: gpu.zeros(n)?,
        expert_of: gpu.zeros(n)?,
        counts: gpu.zeros(experts)?,
    };
    gpu.launch(
        "routing",
        "dispatch_order_u32",
        LaunchConfig {
            grid: (check_u32("experts", experts)?, 1, 1),
            block: (256, 1, 1),
            shared_bytes: 0,
        },
        &[
            (&dispatch.order).into(),
            (&dispatch.token_of).into(),
            (&dispatch.expert_of).into(),
            (&dispatch.counts).into(),
            positions.into(),
            check_u32("pairs", n)?.into(),
            check_u32("experts", experts)?.into(),
        ],
    )?;
    Ok(dispatch)
}

/// Expert race's picks: the positions of the `picks` highest of the `scores` (an `[N, E]`
/// grid, row-major), ties to the lower position, in grid order. One block: a radix select of
/// the `picks`-th largest score, then a pass that keeps what ranks above it.
pub fn expert_race_positions(gpu: &Gpu, scores: &Buffer<f32>, picks: usize) -> Result<Buffer<u32>> {
    if picks > scores.len() {
        return Err(CudaError::InvalidArgument(format!(
            "expert race: expected at most {} picks (the size of the score grid), found {picks}",
            scores.len()
        )));
    }
    let out = gpu.zeros::<u32>(picks)?;
    if picks == 0 {
        return Ok(out);
    }
    gpu.launch(
        "routing",
        "expert_race_positions_f32",
        LaunchConfig::single_block(1024),
        &[
            (&out).into(),
            scores.into(),
            check_u32("scores", scores.len())?.into(),
            check_u32("picks", picks)?.into(),
        ],
    )?;
    Ok(out)
}
