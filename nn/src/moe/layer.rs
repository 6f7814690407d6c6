//! The MoE layer: router → routing rule (gate, pick) → dispatch (pairs sorted by expert) →
//! grouped expert GEMMs → combine (weighted scatter-add back to token order) + shared expert.

use crate::init;
use crate::module::{Module, Visitor};
use crate::moe::config::MoeConfig;
use crate::moe::decision::{RoutingDecision, RoutingRecord};
use crate::moe::experts::{Experts, FeedForward};
use crate::moe::rule::RoutingRule;
use ditmoe_autograd::Var;
use ditmoe_tensor::{profile, DType, Device, Result, SeededRng, Tensor, TensorError};

/// What one MoE forward pass produces.
pub struct MoeOutput {
    pub y: Var,
    /// The rule's auxiliary loss, already scaled (token choice's balance loss with α > 0).
    pub aux_loss: Option<Var>,
    /// The routing of this pass, when asked for.
    pub record: Option<RoutingRecord>,
}

/// A Mixture-of-Experts FFN with parameters `gate.weight [E, D]`, `experts.{i}.*` (stacked,
/// see [`Experts`]) and optionally `shared_experts.*` (DiT-MoE's names).
pub struct MoeLayer {
    pub config: MoeConfig,
    /// The router: `gate.weight [E, D]`.
    pub gate: Var,
    pub rule: Box<dyn RoutingRule>,
    pub experts: Experts,
    pub shared: Option<FeedForward>,
}

impl MoeLayer {
    /// Router U(±1/√D) (PyTorch's default for the DiT-MoE gate), experts xavier-uniform.
    pub fn new(dim: usize, config: MoeConfig, rng: &mut SeededRng) -> Result<Self> {
        config
            .validate()
            .map_err(|m| TensorError::invalid("MoE config", m))?;
        let gate = Var::parameter(init::uniform(
            &[config.num_experts, dim],
            1.0 / (dim as f64).sqrt(),
            rng,
        )?);
        let experts = Experts::new(
            config.expert_kind,
            dim,
            config.expert_hidden,
            config.num_experts,
            rng,
        )?;
        let shared = config
            .shared_expert_hidden
            .map(|h| FeedForward::new(config.expert_kind, dim, h, rng))
            .transpose()?;
        Ok(MoeLayer {
            config,
            gate,
            rule: config.routing.rule(),
            experts,
            shared,
        })
    }

    /// Router gate values `[N, E]` for flattened tokens `[N, D]`.
    pub fn scores(&self, tokens: &Var) -> Result<Var> {
        self.rule.gate(&tokens.matmul(&self.gate.t()?)?)
    }

    /// The routing rule of this layer applied to gate values of `images` images (downloaded
    /// when the scores are on a GPU; the forward pass keeps the picks where the scores are).
    pub fn route(&self, scores: &Tensor, images: usize) -> Result<RoutingDecision> {
        self.rule.decide(scores, images)
    }

    /// `[B, T, D] → [B, T, D]`, routing by this layer's rule.
    pub fn forward(&self, x: &Var, record: bool) -> Result<MoeOutput> {
        self.forward_routed(x, None, record)
    }

    /// Like [`MoeLayer::forward`] but with the discrete routing given (held fixed, e.g. for a
    /// gradient check); the gate weights are still computed from the router.
    pub fn forward_with_decision(
        &self,
        x: &Var,
        decision: &RoutingDecision,
        record: bool,
    ) -> Result<MoeOutput> {
        self.forward_routed(x, Some(decision), record)
    }

    fn forward_routed(
        &self,
        x: &Var,
        fixed: Option<&RoutingDecision>,
        record: bool,
    ) -> Result<MoeOutput> {
        // Everything here but the experts' FFNs is routing: gate, pick, permutation, weighted
        // un-permutation, aux loss.
        let _section = profile::section("routing");
        let &[b, t, d] = x.shape() else {
            return Err(TensorError::shape("MoE", "[batch, tokens, dim]", x.shape()));
        };
        let (n, e) = (b * t, self.config.num_experts);
        let device = x.value().device();
        let tokens = x.reshape(&[n, d])?;
        let scores = self.scores(&tokens)?;
        let positions = match fixed {
            Some(dec) if dec.num_tokens != n || dec.num_experts != e => {
                return Err(TensorError::invalid("MoE", format!("expected a routing decision for {n} tokens and {e} experts, found {} and {}", dec.num_tokens, dec.num_experts)));
            }
            Some(dec) => dec.positions_on(device)?,
            None => self.rule.pick(&scores.value(), b)?,
        };
        let weights = self
            .rule
            .combine_weights(scores.flatten()?.index_select(0, &positions)?)?;

        // Dispatch: the pairs sorted by expert (stably), so each expert's tokens are one
        // contiguous group.
        let dispatch = Tensor::dispatch_order(&positions, e)?;
        let sorted_tokens = tokens.index_select(0, &dispatch.token_of)?;
        let expert_out = {
            let _section = profile::section("experts");
            self.experts
                .forward(&sorted_tokens, &dispatch.group_sizes, &dispatch.expert_of)?
        };
        // Combine: each output scaled by its pair's weight, summed back in token order.
        let sorted_weights = weights.index_select(0, &dispatch.order)?;
        let weighted = expert_out.mul(&sorted_weights.unsqueeze(1)?)?;
        let mut y = Var::constant(Tensor::zeros_on(&[n, d], x.value().dtype(), device)?)
            .index_add(0, &dispatch.token_of, &weighted)?;
        if let Some(shared) = &self.shared {
            let _section = profile::section("shared expert");
            y = y.add(&shared.forward(&tokens)?)?;
        }

        let aux_loss = self.rule.aux_loss(&scores, &dispatch.expert_of)?;
        let record = if record {
            let decision = match fixed {
                Some(dec) => dec.clone(),
                None => RoutingDecision::from_positions(&positions, n, e)?,
            };
            let weights = weights.value().to_device(Device::Cpu)?;
            Some(RoutingRecord {
                decision,
                weights: weights.to_dtype(DType::F32)?.to_vec::<f32>()?,
                scores: scores.value().to_device(Device::Cpu)?,
            })
        } else {
            None
        };
        Ok(MoeOutput {
            y: y.reshape(&[b, t, d])?,
            aux_loss,
            record,
        })
    }
}

impl Module for MoeLayer {
    fn visit(&self, v: &mut Visitor) {
        v.param("gate.weight", &self.gate);
        v.stacked("experts", &self.experts.named_stacks());
        if let Some(shared) = &self.shared {
            v.child("shared_experts", shared);
        }
    }
}
