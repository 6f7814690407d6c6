//! The MoE layer: router → routing rule (gate, pick) → dispatch (pairs sorted by expert) →
//! grouped expert GEMMs → combine (weighted scatter-add back to token order) + shared expert.
//! A global-pool layer (DiffMoE) also owns a [`CapacityPredictor`]: trained on each training
//! pass's selection, it sets how many tokens each expert takes at sampling time.

use crate::init;
use crate::module::{Module, Visitor};
use crate::moe::capacity_predictor::CapacityPredictor;
use crate::moe::config::{MoeConfig, PoolInference, RouterConfig};
use crate::moe::decision::{RoutingDecision, RoutingRecord};
use crate::moe::expert_race::ExpertRace;
use crate::moe::experts::{Experts, FeedForward};
use crate::moe::global_pool::counted_pool_positions;
use crate::moe::race_router::TargetRouter;
use crate::moe::rule::{selection_mask, Routed, RoutingRule};
use ditmoe_autograd::Var;
use ditmoe_tensor::{profile, DType, Device, Result, SeededRng, Tensor, TensorError};

/// What one MoE forward pass produces.
pub struct MoeOutput {
    pub y: Var,
    /// The rule's auxiliary loss, already scaled: token choice's balance loss with α > 0, the
    /// race's router-similarity loss, the capacity predictor's weighted BCE in a global-pool
    /// layer's training pass, ReLU routing's L1; plus a two-layer router's regularisation in
    /// a training pass.
    pub aux_loss: Option<Var>,
    /// The routing of this pass, when asked for.
    pub record: Option<RoutingRecord>,
}

/// A Mixture-of-Experts FFN with parameters `gate.weight [E, D]`, `experts.{i}.*` (stacked,
/// see [`Experts`]) and optionally `shared_experts.*` (DiT-MoE's names); a global-pool layer
/// uses DiffMoE's names (`gate_weight`, `experts.{i}.*`, `capacity_predictor.*` and the buffers
/// `expert_threshold`, `ema_decay`) and sits in its block as `mlp`, as the official code has it.
pub struct MoeLayer {
    pub config: MoeConfig,
    /// The router: `gate.weight [E, D]`.
    pub gate: Var,
    pub rule: Box<dyn RoutingRule>,
    pub experts: Experts,
    pub shared: Option<FeedForward>,
    /// DiffMoE's capacity predictor (global-pool routing only).
    pub predictor: Option<Box<CapacityPredictor>>,
    /// ReMoE's adaptive L1 coefficient λ `[1]` (ReLU routing only), a buffer that each
    /// training pass moves.
    pub l1_coefficient: Option<Var>,
    /// An expert race's learned threshold τ `[1]` (threshold inference only), a buffer that
    /// each training pass moves.
    pub race_threshold: Option<Var>,
    /// Race-DiT's two-layer router: its hidden layer and target head (`router.*`), in front
    /// of the gating head `gate.weight`.
    pub router: Option<TargetRouter>,
}

impl MoeLayer {
    /// Router U(±1/√D) (PyTorch's default for the DiT-MoE gate; DiffMoE's N(0, 0.006²)),
    /// experts xavier-uniform. A two-layer router needs [`MoeLayer::with_target_width`].
    pub fn new(dim: usize, config: MoeConfig, rng: &mut SeededRng) -> Result<Self> {
        Self::with_target_width(dim, config, None, rng)
    }

    /// [`MoeLayer::new`] for a layer whose two-layer router predicts the training target:
    /// `target_width` is the width p²·C of one token's patch of it (a DiT passes it).
    pub fn with_target_width(
        dim: usize,
        config: MoeConfig,
        target_width: Option<usize>,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|m| TensorError::invalid("MoE config", m))?;
        let pool = config.routing.global_pool();
        let router_shape = [config.num_experts, dim];
        let gate = Var::parameter(match pool {
            Some(_) => init::normal(&router_shape, 0.006, rng)?,
            None => init::uniform(&router_shape, 1.0 / (dim as f64).sqrt(), rng)?,
        });
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
        let predictor = pool
            .map(|pool| {
                CapacityPredictor::new(dim, config.num_experts, pool.threshold_decay, rng)
                    .map(Box::new)
            })
            .transpose()?;
        let l1_coefficient = config
            .routing
            .relu()
            .map(|relu| relu.initial_coefficient())
            .transpose()?;
        let race_threshold = config
            .routing
            .race_threshold_decay()
            .map(|_| Tensor::zeros(&[1], DType::F32).map(Var::constant))
            .transpose()?;
        let router = match (config.router, target_width) {
            (RouterConfig::Linear, _) => None,
            (RouterConfig::TwoLayer { .. }, Some(width)) => {
                Some(TargetRouter::new(dim, width, rng)?)
            }
            (RouterConfig::TwoLayer { .. }, None) => {
                return Err(TensorError::invalid(
                    "MoE config",
                    "a two-layer router predicts the training target: build the layer with \
                     MoeLayer::with_target_width (a DiT does)",
                ))
            }
        };
        Ok(MoeLayer {
            config,
            gate,
            rule: config.routing.rule(),
            experts,
            shared,
            predictor,
            l1_coefficient,
            race_threshold,
            router,
        })
    }

    /// The layer's name in its block: `mlp` for DiffMoE's layer, `moe` for DiT-MoE's.
    pub fn name_in_block(&self) -> &'static str {
        if self.predictor.is_some() {
            "mlp"
        } else {
            "moe"
        }
    }

    /// Router gate values `[N, E]` for flattened tokens `[N, D]`.
    pub fn scores(&self, tokens: &Var) -> Result<Var> {
        self.rule
            .gate(&self.logits(&self.router_features(tokens)?)?)
    }

    /// What the gating head reads: the tokens `[N, D]` themselves, or a two-layer router's
    /// features h'.
    fn router_features(&self, tokens: &Var) -> Result<Var> {
        match &self.router {
            Some(router) => router.features(tokens),
            None => Ok(tokens.clone()),
        }
    }

    /// Router logits `[N, E]` from the gating head's input `[N, D]`.
    fn logits(&self, features: &Var) -> Result<Var> {
        features.matmul(&self.gate.t()?)
    }

    /// The routing rule of this layer applied to gate values of `images` images (downloaded
    /// when the scores are on a GPU; the forward pass keeps the picks where the scores are).
    pub fn route(&self, scores: &Tensor, images: usize) -> Result<RoutingDecision> {
        self.rule.decide(scores, images)
    }

    /// `[B, T, D] → [B, T, D]`, routing by this layer's rule. `training` matters to the rules
    /// with state: a global pool trains its predictor and moves its thresholds, a thresholded
    /// race moves τ, ReLU routing moves λ; otherwise the first two route by their sampling rule.
    pub fn forward(&self, x: &Var, record: bool, training: bool) -> Result<MoeOutput> {
        self.forward_with_target(x, None, record, training)
    }

    /// [`MoeLayer::forward`] given each token's patch of the training target `[B, T, p²·C]`,
    /// which a two-layer router's training pass needs.
    pub fn forward_with_target(
        &self,
        x: &Var,
        target: Option<&Tensor>,
        record: bool,
        training: bool,
    ) -> Result<MoeOutput> {
        self.forward_routed(x, None, target, record, training)
    }

    /// Like [`MoeLayer::forward`] but with the discrete routing given (held fixed, e.g. for a
    /// gradient check); the gate weights are still computed from the router.
    pub fn forward_with_decision(
        &self,
        x: &Var,
        decision: &RoutingDecision,
        record: bool,
    ) -> Result<MoeOutput> {
        self.forward_routed(x, Some(decision), None, record, false)
    }

    fn forward_routed(
        &self,
        x: &Var,
        fixed: Option<&RoutingDecision>,
        target: Option<&Tensor>,
        record: bool,
        training: bool,
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
        let features = self.router_features(&tokens)?;
        let logits = self.logits(&features)?;
        let scores = self.rule.gate(&logits)?;
        let positions = match fixed {
            Some(dec) if dec.num_tokens != n || dec.num_experts != e => {
                return Err(TensorError::invalid("MoE", format!("expected a routing decision for {n} tokens and {e} experts, found {} and {}", dec.num_tokens, dec.num_experts)));
            }
            Some(dec) => dec.positions_on(device)?,
            None => self.pick(&tokens, &scores, b, training)?,
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

        let mut aux_loss = self.rule.aux_loss(&Routed {
            logits: &logits,
            scores: &scores,
            positions: &positions,
            expert_of: &dispatch.expert_of,
        })?;
        if let (Some(predictor), true, None) = (&self.predictor, training, fixed) {
            aux_loss = Some(self.train_predictor(predictor, &tokens, &positions)?);
        }
        if let (Some(tau), true, None) = (&self.race_threshold, training, fixed) {
            self.move_race_threshold(tau, &scores.value(), &positions)?;
        }
        if let Some(lambda) = &self.l1_coefficient {
            let relu = self
                .config
                .routing
                .relu()
                .expect("λ belongs to ReLU routing");
            let penalty = relu.unscaled_l1(&scores, &dispatch.expert_of)?;
            aux_loss = Some(penalty.mul(&Var::constant(lambda.value()))?);
            if training && fixed.is_none() {
                let next = relu.next_coefficient(read_scalar(lambda)?, positions.numel(), n * e, e);
                let value = lambda.value();
                lambda.set_value(Tensor::full(&[1], next, value.dtype())?.to_device(device)?)?;
            }
        }
        if let (
            Some(router),
            RouterConfig::TwoLayer {
                regularization_weight,
            },
            true,
            None,
        ) = (&self.router, self.config.router, training, fixed)
        {
            let target = target.ok_or_else(|| {
                TensorError::invalid(
                    "MoE",
                    "a two-layer router's training pass needs the training target \
                     (ForwardOptions::prediction_target)",
                )
            })?;
            let per_token = target.reshape(&[n, usize::MAX])?;
            let regularization = router
                .regularization(&features, &per_token)?
                .mul_scalar(regularization_weight)?;
            aux_loss = Some(match aux_loss {
                Some(total) => total.add(&regularization)?,
                None => regularization,
            });
        }
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

impl MoeLayer {
    /// The rule's picks; at sampling time a global pool asks its predictor, a race with a
    /// learned threshold takes every pair at or above it.
    fn pick(&self, tokens: &Var, scores: &Var, images: usize, training: bool) -> Result<Tensor> {
        if !training {
            if let Some(predictor) = &self.predictor {
                return self.sampling_positions(predictor, tokens, scores);
            }
            if let Some(tau) = &self.race_threshold {
                return ExpertRace::threshold_positions(&scores.value(), read_scalar(tau)?);
            }
        }
        self.rule.pick(&scores.value(), images)
    }

    /// τ ← d·τ + (1 − d)·(the lowest score the race took: its K-th largest), on the device.
    fn move_race_threshold(&self, tau: &Var, scores: &Tensor, positions: &Tensor) -> Result<()> {
        let decay = self
            .config
            .routing
            .race_threshold_decay()
            .expect("τ belongs to a thresholded race");
        // min as −max(−x): the GPU reduces with max.
        let kth = scores
            .flatten()?
            .index_select(0, positions)?
            .neg()?
            .max(&[], false)?
            .neg()?
            .reshape(&[1])?;
        tau.set_value(
            tau.value()
                .mul_scalar(decay)?
                .add(&kth.mul_scalar(1.0 - decay)?)?,
        )
    }

    /// DiffMoE's sampling rule: how many tokens per expert from the predictor (or the
    /// configured rule), which ones by the router's scores.
    fn sampling_positions(
        &self,
        predictor: &CapacityPredictor,
        tokens: &Var,
        scores: &Var,
    ) -> Result<Tensor> {
        let pool = self
            .config
            .routing
            .global_pool()
            .expect("a predictor has a pool");
        let thresholds = match pool.inference {
            PoolInference::Static => return self.rule.pick(&scores.value(), 1),
            PoolInference::Predictor => predictor.threshold.value(),
            PoolInference::Threshold { gamma } => {
                let own = predictor.threshold.value();
                Tensor::full(own.shape(), gamma, own.dtype())?.to_device(own.device())?
            }
        };
        let logits = predictor.logits(tokens)?.value();
        let counts = predictor.counts(&logits, &thresholds)?;
        counted_pool_positions(&scores.value(), &counts)
    }

    /// The predictor's weighted BCE against this pass's selection `[N, E]`, and the
    /// thresholds' update toward the k-th largest predicted probability of each expert.
    fn train_predictor(
        &self,
        predictor: &CapacityPredictor,
        tokens: &Var,
        positions: &Tensor,
    ) -> Result<Var> {
        let pool = self
            .config
            .routing
            .global_pool()
            .expect("a predictor has a pool");
        let &[n, _] = tokens.shape() else {
            unreachable!("tokens are flattened to [N, D]")
        };
        let e = self.config.num_experts;
        let logits = predictor.logits(tokens)?;
        let value = logits.value();
        let mask = selection_mask(positions, (n, e), &value)?;
        predictor.update_thresholds(&value, positions.numel() / e)?;
        logits
            .bce_with_logits(&mask)?
            .mul_scalar(pool.predictor_loss_weight)
    }
}

/// The value of a one-element buffer on the host.
fn read_scalar(buffer: &Var) -> Result<f64> {
    buffer.value().to_device(Device::Cpu)?.item()
}

impl Module for MoeLayer {
    fn visit(&self, v: &mut Visitor) {
        let router = match self.predictor {
            Some(_) => "gate_weight",
            None => "gate.weight",
        };
        v.param(router, &self.gate);
        v.stacked("experts", &self.experts.named_stacks());
        if let Some(shared) = &self.shared {
            v.child("shared_experts", shared);
        }
        if let Some(predictor) = &self.predictor {
            predictor.visit(v);
        }
        if let Some(lambda) = &self.l1_coefficient {
            v.buffer("l1_coefficient", lambda);
        }
        if let Some(tau) = &self.race_threshold {
            v.buffer("race_threshold", tau);
        }
        if let Some(router) = &self.router {
            v.child("router", router);
        }
    }
}
