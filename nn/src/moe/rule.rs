//! The routing rule of a MoE layer as a trait: what differs between token choice, expert choice
//! and expert race. The layer runs the same steps for every rule:
//!
//! 1. **gate**: router logits `[N, E]` → gate values `scores` (N tokens, E experts);
//! 2. **pick**: the chosen (token, expert) pairs, as positions `token·E + expert` of the grid;
//! 3. the layer gathers each pair's gate value, dispatches the pairs by expert and runs the
//!    experts; **combine weights** turn the gathered gate values into the weights the expert
//!    outputs are summed with;
//! 4. **aux loss**: an optional auxiliary loss on the gate values.
//!
//! | rule | who chooses | guaranteed | may happen |
//! |---|---|---|---|
//! | token choice | each token its top-k experts | k experts per token | uneven expert load |
//! | expert choice | each expert its top-C tokens of a group | C tokens per expert | tokens chosen by 0..E experts |
//! | expert race | the batch's top N·k (token, expert) pairs | N·k pairs in all | both of the above |

use crate::moe::decision::RoutingDecision;
use crate::validate::Field;
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, Tensor, TensorError};

/// One routing rule (built from its `RoutingConfig` by `RoutingConfig::rule`).
pub trait RoutingRule: Send + Sync {
    /// Checks the rule's knobs against the number of experts; the message names the bad
    /// field under `at` (the `routing` table).
    fn validate(&self, num_experts: usize, at: &Field) -> std::result::Result<(), String>;

    /// Average number of routed experts applied to each token (what compute accounting uses).
    fn experts_per_token(&self, num_experts: usize) -> f64;

    /// Whether the experts per token at sampling time depend on the inputs, so that compute
    /// must be measured rather than taken from [`RoutingRule::experts_per_token`].
    fn compute_varies(&self) -> bool {
        false
    }

    /// Gate values `[N, E]` from router logits `[N, E]` (the rule's [`Gate`](crate::moe::Gate)).
    fn gate(&self, logits: &Var) -> Result<Var>;

    /// The chosen pairs of gate values `scores [N, E]` of `images` images, as a `[P]` i64
    /// tensor of positions `token·E + expert` where the scores are (on a GPU the picks never
    /// leave it), in the order their weights are gathered.
    fn pick(&self, scores: &Tensor, images: usize) -> Result<Tensor>;

    /// The weight of each pair's expert output from its gathered gate value `[P]`: the gate
    /// value itself unless the rule says otherwise.
    fn combine_weights(&self, gathered: Var) -> Result<Var> {
        Ok(gathered)
    }

    /// The auxiliary loss (already scaled) of a routed pass; none unless the rule has one.
    fn aux_loss(&self, _routed: &Routed) -> Result<Option<Var>> {
        Ok(None)
    }

    /// [`RoutingRule::pick`] as a host-side [`RoutingDecision`] (downloaded from a GPU).
    fn decide(&self, scores: &Tensor, images: usize) -> Result<RoutingDecision> {
        let (n, e) = grid(scores)?;
        RoutingDecision::from_positions(&self.pick(scores, images)?, n, e)
    }
}

/// What a rule's auxiliary loss may look at: the router logits and gate values `[N, E]`, and
/// the chosen pairs as grid positions `token·E + expert` and as each pair's expert in dispatch
/// order (both `[P]` i64, where the scores are).
pub struct Routed<'a> {
    pub logits: &'a Var,
    pub scores: &'a Var,
    pub positions: &'a Tensor,
    pub expert_of: &'a Tensor,
}

/// The chosen pairs as a 0/1 mask `[N, E]` in `like`'s dtype and device, built where the
/// positions are.
pub(crate) fn selection_mask(
    positions: &Tensor,
    (n, e): (usize, usize),
    like: &Tensor,
) -> Result<Tensor> {
    let (dtype, device) = (like.dtype(), like.device());
    let ones = Tensor::zeros_on(&[positions.numel()], dtype, device)?.add_scalar(1.0)?;
    Tensor::zeros_on(&[n * e], dtype, device)?
        .scatter_add(0, positions, &ones)?
        .reshape(&[n, e])
}

/// (tokens N, experts E) of a `[N, E]` score grid.
pub(crate) fn grid(scores: &Tensor) -> Result<(usize, usize)> {
    match scores.shape() {
        &[n, e] => Ok((n, e)),
        other => Err(TensorError::shape(
            "routing",
            "scores [tokens, experts]",
            other,
        )),
    }
}

/// The positions of the pairs of `scores [N, E]` that `keep` accepts, in grid order: a
/// selection whose size is known only after looking, so it is made on the host (the scores
/// are read back from a GPU) and the positions put back where the scores are.
pub(crate) fn positions_where(scores: &Tensor, keep: impl Fn(f64) -> bool) -> Result<Tensor> {
    grid(scores)?;
    let positions: Vec<i64> = scores
        .to_vec_f64()
        .iter()
        .enumerate()
        .filter(|&(_, &score)| keep(score))
        .map(|(p, _)| p as i64)
        .collect();
    let len = positions.len();
    Tensor::from_vec(positions, &[len])?.to_device(scores.device())
}

/// Refuses a `top_k` (field `at.top_k`) outside `1..=num_experts`.
pub(crate) fn check_top_k(
    at: &Field,
    top_k: usize,
    num_experts: usize,
) -> std::result::Result<(), String> {
    at.at("top_k").require(
        (1..=num_experts).contains(&top_k),
        format!("1 <= top_k <= {num_experts} (the number of experts)"),
        format!("top_k = {top_k}"),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// 4 tokens (2 images of 2), 3 experts.
    pub(crate) fn scores() -> Tensor {
        Tensor::from_vec(
            vec![
                0.7f32, 0.2, 0.1, 0.1, 0.5, 0.4, 0.6, 0.3, 0.1, 0.2, 0.2, 0.6,
            ],
            &[4, 3],
        )
        .unwrap()
    }
}
