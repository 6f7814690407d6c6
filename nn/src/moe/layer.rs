//! The MoE layer: router → routing decision → tokens sorted by expert → one GEMM per expert
//! group → weighted scatter-add back to token order (+ the shared expert).

use crate::init;
use crate::layers::{Mlp, SwiGlu};
use crate::module::{Module, Visitor};
use crate::moe::config::{ExpertKind, MoeConfig, RaceGate, RoutingConfig};
use crate::moe::routing::{
    expert_choice_positions, expert_race_positions, token_choice_positions, RoutingDecision,
    RoutingRecord,
};
use ditmoe_autograd::Var;
use ditmoe_tensor::{profile, DType, Device, GroupSizes, Result, SeededRng, Tensor, TensorError};

/// One expert (or the shared expert): a SwiGLU or GELU MLP.
pub enum FeedForward {
    SwiGlu(SwiGlu),
    Gelu(Mlp),
}

impl FeedForward {
    pub fn new(kind: ExpertKind, dim: usize, hidden: usize, rng: &mut SeededRng) -> Result<Self> {
        Ok(match kind {
            ExpertKind::SwiGlu => FeedForward::SwiGlu(SwiGlu::new(dim, hidden, rng)?),
            ExpertKind::GeluMlp => FeedForward::Gelu(Mlp::new(dim, hidden, rng)?),
        })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        match self {
            FeedForward::SwiGlu(m) => m.forward(x),
            FeedForward::Gelu(m) => m.forward(x),
        }
    }
}

impl Module for FeedForward {
    fn visit(&self, v: &mut Visitor) {
        match self {
            FeedForward::SwiGlu(m) => m.visit(v),
            FeedForward::Gelu(m) => m.visit(v),
        }
    }
}

/// What one MoE forward pass produces.
pub struct MoeOutput {
    pub y: Var,
    /// The balance loss, already scaled by α (token choice with α > 0 only).
    pub aux_loss: Option<Var>,
    /// The routing of this pass, when asked for.
    pub record: Option<RoutingRecord>,
}

/// A Mixture-of-Experts FFN with parameters `gate.weight [E, D]`, `experts.M.*` and optionally
/// `shared_experts.*` (DiT-MoE's names).
pub struct MoeLayer {
    pub config: MoeConfig,
    pub gate: Var,
    pub experts: Vec<FeedForward>,
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
        let experts = (0..config.num_experts)
            .map(|_| FeedForward::new(config.expert_kind, dim, config.expert_hidden, rng))
            .collect::<Result<_>>()?;
        let shared = config
            .shared_expert_hidden
            .map(|h| FeedForward::new(config.expert_kind, dim, h, rng))
            .transpose()?;
        Ok(MoeLayer {
            config,
            gate,
            experts,
            shared,
        })
    }

    /// Router gate values `[N, E]` for flattened tokens `[N, D]`.
    pub fn scores(&self, tokens: &Var) -> Result<Var> {
        let logits = tokens.matmul(&self.gate.t()?)?;
        match self.config.routing {
            RoutingConfig::ExpertRace {
                gate: RaceGate::Identity,
                ..
            } => Ok(logits),
            RoutingConfig::ExpertRace {
                gate: RaceGate::Sigmoid,
                ..
            } => logits.sigmoid(),
            _ => logits.softmax(1),
        }
    }

    /// The routing rule of this layer applied to gate values of `images` images (downloaded
    /// when the scores are on a GPU; the forward pass uses [`MoeLayer::route_positions`]).
    pub fn route(&self, scores: &Tensor, images: usize) -> Result<RoutingDecision> {
        let &[n, e] = scores.shape() else {
            return Err(TensorError::shape(
                "route",
                "scores [tokens, experts]",
                scores.shape(),
            ));
        };
        RoutingDecision::from_positions(&self.route_positions(scores, images)?, n, e)
    }

    /// [`MoeLayer::route`]'s pairs as positions where the scores are: on a GPU the picks of
    /// every rule are made there and never leave it.
    pub fn route_positions(&self, scores: &Tensor, images: usize) -> Result<Tensor> {
        match self.config.routing {
            RoutingConfig::TokenChoice { top_k, .. } => token_choice_positions(scores, top_k),
            RoutingConfig::ExpertChoice {
                capacity_factor,
                group,
            } => expert_choice_positions(scores, capacity_factor, group, images),
            RoutingConfig::ExpertRace { top_k, .. } => expert_race_positions(scores, top_k),
        }
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
        // Everything here but the experts' FFNs is routing: gate, top-k, permutation,
        // weighted un-permutation, balance loss.
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
            None => self.route_positions(&scores.value(), b)?,
        };
        let mut weights = scores.flatten()?.index_select(0, &positions)?;
        if let RoutingConfig::TokenChoice {
            top_k,
            renormalize: true,
            ..
        } = self.config.routing
        {
            let per_token = weights.reshape(&[n, top_k])?;
            weights = per_token.div(&per_token.sum(&[1], true)?)?.flatten()?;
        }

        // The pairs sorted by expert (stably), so each expert's tokens are one contiguous group.
        let dispatch = Tensor::dispatch_order(&positions, e)?;
        let sorted_tokens = tokens.index_select(0, &dispatch.token_of)?;
        let expert_out = {
            let _section = profile::section("experts");
            self.experts_grouped(&sorted_tokens, &dispatch.group_sizes, &dispatch.expert_of)?
        };
        let sorted_weights = weights.index_select(0, &dispatch.order)?;
        let weighted = expert_out.mul(&sorted_weights.unsqueeze(1)?)?;
        let mut y = Var::constant(Tensor::zeros_on(&[n, d], x.value().dtype(), device)?)
            .index_add(0, &dispatch.token_of, &weighted)?;
        if let Some(shared) = &self.shared {
            let _section = profile::section("shared expert");
            y = y.add(&shared.forward(&tokens)?)?;
        }

        let aux_loss = match self.config.routing {
            RoutingConfig::TokenChoice {
                top_k,
                balance_loss_alpha,
                ..
            } if balance_loss_alpha > 0.0 => {
                // L = α Σ_i P̄_i f_i with f_i = E·count_i/(N·k) (a constant) and P̄_i the mean gate value.
                // The counts are summed where the pairs are (no read-back on a GPU).
                let dtype = x.value().dtype();
                let ones = Tensor::zeros_on(&[n * top_k, 1], dtype, device)?.add_scalar(1.0)?;
                let counts = Tensor::zeros_on(&[e, 1], dtype, device)?.index_add(
                    0,
                    &dispatch.expert_of,
                    &ones,
                )?;
                let f = Var::constant(
                    counts
                        .flatten()?
                        .mul_scalar(e as f64 / (n * top_k) as f64)?,
                );
                Some(
                    scores
                        .mean(&[0], false)?
                        .mul(&f)?
                        .sum_all()?
                        .mul_scalar(balance_loss_alpha)?,
                )
            }
            _ => None,
        };
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

    /// All experts over tokens sorted by expert (`group_sizes` per expert), one grouped GEMM
    /// per projection; `expert_of` gives each row's expert (for per-expert biases).
    fn experts_grouped(
        &self,
        x: &Var,
        group_sizes: &GroupSizes,
        expert_of: &Tensor,
    ) -> Result<Var> {
        let grouped = |x: &Var, weights: Vec<&Var>| Var::grouped_matmul(x, group_sizes, &weights);
        match &self.experts[0] {
            FeedForward::SwiGlu(_) => {
                let pick = |f: fn(&SwiGlu) -> &Var| {
                    self.experts
                        .iter()
                        .map(move |ex| match ex {
                            FeedForward::SwiGlu(m) => f(m),
                            FeedForward::Gelu(_) => unreachable!("all experts share one kind"),
                        })
                        .collect::<Vec<_>>()
                };
                let gate = grouped(x, pick(|m| &m.gate_proj.weight))?;
                let up = grouped(x, pick(|m| &m.up_proj.weight))?;
                grouped(&gate.swiglu(&up)?, pick(|m| &m.down_proj.weight))
            }
            FeedForward::Gelu(_) => {
                let mlps: Vec<&Mlp> = self
                    .experts
                    .iter()
                    .map(|ex| match ex {
                        FeedForward::Gelu(m) => m,
                        FeedForward::SwiGlu(_) => unreachable!("all experts share one kind"),
                    })
                    .collect();
                let bias_rows = |pick: fn(&Mlp) -> &Var| -> Result<Var> {
                    let biases: Vec<&Var> = mlps.iter().map(|m| pick(m)).collect();
                    Var::stack(&biases, 0)?.index_select(0, expert_of)
                };
                let hidden = grouped(x, mlps.iter().map(|m| &m.fc1.weight).collect())?.add(
                    &bias_rows(|m| m.fc1.bias.as_ref().expect("GELU experts have biases"))?,
                )?;
                grouped(
                    &hidden.gelu_tanh()?,
                    mlps.iter().map(|m| &m.fc2.weight).collect(),
                )?
                .add(&bias_rows(|m| {
                    m.fc2.bias.as_ref().expect("GELU experts have biases")
                })?)
            }
        }
    }
}

impl Module for MoeLayer {
    fn visit(&self, v: &mut Visitor) {
        v.param("gate.weight", &self.gate);
        for (i, expert) in self.experts.iter().enumerate() {
            v.child(&format!("experts.{i}"), expert);
        }
        if let Some(shared) = &self.shared {
            v.child("shared_experts", shared);
        }
    }
}
