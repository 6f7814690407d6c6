//! Configuration of a Mixture-of-Experts FFN: the experts and the routing strategy.

use crate::config::limits;
use crate::moe::expert_choice::ExpertChoice;
use crate::moe::expert_race::ExpertRace;
use crate::moe::global_pool::GlobalPool;
use crate::moe::relu_routing::ReluRouting;
use crate::moe::rule::RoutingRule;
use crate::moe::token_choice::TokenChoice;
use crate::validate::Field;
use ditmoe_autograd::Var;
use serde::{Deserialize, Serialize};

/// The expert network, the same for every routing so an ablation compares routings only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExpertKind {
    /// down(SiLU(gate(x)) ⊙ up(x)), no biases (DiT-MoE).
    #[default]
    SwiGlu,
    /// fc2(GELU(fc1(x))) with biases (EC-DiT, dense DiT).
    GeluMlp,
}

/// Which tokens an expert-choice expert chooses among.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoutingGroup {
    /// The tokens of one image (no information crosses images).
    #[default]
    PerImage,
    /// All tokens of the batch (as EC-DiT's large groups; selection then depends on the other
    /// images of the batch, a leak at sampling time worth knowing about).
    Batch,
}

/// How router logits `[N, E]` become gate values: the scores a rule ranks and the weights the
/// chosen experts' outputs are summed with. Race-DiT's Table 1 compares the first three under
/// token choice, expert choice and the race (identity and sigmoid beat softmax in all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Softmax over experts (DiT-MoE, EC-DiT, DiffMoE).
    #[default]
    Softmax,
    /// The raw logits (what Race-DiT found best for its race).
    Identity,
    /// σ(logit), each expert on its own.
    Sigmoid,
    /// max(0, logit): ReMoE's gate, here under another rule's selection.
    Relu,
}

impl Gate {
    /// The gate values of `logits [N, E]`.
    pub fn apply(self, logits: &Var) -> ditmoe_tensor::Result<Var> {
        match self {
            Gate::Softmax => logits.softmax(1),
            Gate::Identity => Ok(logits.clone()),
            Gate::Sigmoid => logits.sigmoid(),
            Gate::Relu => logits.relu(),
        }
    }

    /// Whether every gate value is positive, so that a token's weights can be renormalised to
    /// sum to 1 (raw logits and ReLU gates may sum to zero or less).
    pub fn is_positive(self) -> bool {
        matches!(self, Gate::Softmax | Gate::Sigmoid)
    }
}

/// How a global-pool layer decides at sampling time how many tokens each expert takes (the
/// router's scores always decide which).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PoolInference {
    /// DiffMoE's dynamic rule: as many as the capacity predictor gives a probability above the
    /// expert's moving-average threshold. Each image's compute then depends on the image.
    #[default]
    Predictor,
    /// The training rule over the sampling batch (top-⌊S/E·C⌋ of the batch): an image's
    /// routing depends on the images sampled with it.
    Static,
    /// One threshold γ for every expert instead of the moving averages (DiffMoE's "interval
    /// search", swept to trade compute for quality).
    Threshold { gamma: f64 },
}

/// Which pairs of the `[B images, L tokens, E experts]` score grid compete in one expert race
/// (Race-DiT's Table 6: the top-𝒦 ranges over these dimensions, one race per index of the
/// others). Each picks k pairs per token on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RacePool {
    /// Every (token, expert) pair of the batch: B·L·E, one race of B·L·k (Expert Race).
    #[default]
    Batch,
    /// Per image over its (token, expert) pairs: L·E, races of L·k ("LE choice"). An image's
    /// routing does not depend on the others.
    Image,
    /// Per token position over the (image, expert) pairs: B·E, races of B·k ("BE choice").
    Position,
    /// Per expert over the batch's tokens: B·L, races of ⌊B·L·k/E⌋ ("BL choice", DiffMoE's
    /// global pool without its predictor).
    Expert,
}

/// How an expert race picks at sampling time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RaceInference {
    /// The training rule over the sampling batch: an image's routing depends on the others.
    #[default]
    Static,
    /// Race-DiT's learned threshold (as its re-implementations do it): every training pass
    /// moves τ ← d·τ + (1 − d)·(the K-th largest score of the race); at sampling each pair is
    /// taken when its score is at least τ, token by token (batch-independent).
    Threshold {
        #[serde(default = "default_threshold_decay")]
        decay: f64,
    },
}

/// What computes the router logits from a token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouterConfig {
    /// logits = x·W_gᵀ (DiT-MoE, EC-DiT, DiffMoE).
    #[default]
    Linear,
    /// Race-DiT's router: h' = GELU(Linear_{D→D}(x)), logits = h'·W_gᵀ, and a target head on
    /// h' whose mean squared error against the training target, times `regularization_weight`,
    /// joins the aux loss in training passes (the per-layer regularisation, one term per MoE
    /// layer; see `moe::race_router`).
    TwoLayer {
        #[serde(default = "default_one")]
        regularization_weight: f64,
    },
}

/// The routing strategy and its knobs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RoutingConfig {
    /// DiT-MoE (Fei et al., 2024): each token takes the top-k experts of a softmax router.
    TokenChoice {
        top_k: usize,
        /// Renormalise the k weights to sum to 1 (DiT-MoE does not).
        #[serde(default)]
        renormalize: bool,
        /// Coefficient α of the expert-level balance loss (0 disables it).
        #[serde(default = "default_alpha")]
        balance_loss_alpha: f64,
        #[serde(default)]
        gate: Gate,
    },
    /// Expert Choice (Zhou et al., 2022; EC-DiT, Sun et al., 2024): each expert takes its top-C
    /// tokens, C = S·f_c/E for a group of S tokens.
    ExpertChoice {
        capacity_factor: f64,
        #[serde(default)]
        group: RoutingGroup,
        #[serde(default)]
        gate: Gate,
    },
    /// Expert Race (Race-DiT, Yuan et al., 2025): the top K = N·k (token, expert) pairs of the
    /// whole batch's score grid.
    ExpertRace {
        top_k: usize,
        #[serde(default)]
        gate: Gate,
        #[serde(default)]
        pool: RacePool,
        #[serde(default)]
        inference: RaceInference,
        /// Coefficient of Race-DiT's router-similarity loss (0 disables it).
        #[serde(default)]
        similarity_loss_weight: f64,
    },
    /// DiffMoE (Shi et al., 2025): every expert takes its top ⌊S/E·C⌋ tokens of the whole
    /// batch in training; a capacity predictor, trained alongside, sets the counts at sampling.
    GlobalPool {
        #[serde(default = "default_one")]
        capacity: f64,
        /// Weight of the capacity predictor's BCE (DiffMoE's released config: 1).
        #[serde(default = "default_one")]
        predictor_loss_weight: f64,
        /// Decay of the thresholds' moving average (DiffMoE: 0.95).
        #[serde(default = "default_threshold_decay")]
        threshold_decay: f64,
        #[serde(default)]
        inference: PoolInference,
        #[serde(default)]
        gate: Gate,
    },
    /// ReMoE (Wang et al., 2025): every expert whose ReLU gate is positive, an L1 penalty with
    /// an adaptive coefficient steering the sparsity toward k experts per token.
    Relu {
        top_k: usize,
        #[serde(default = "default_l1_init")]
        l1_init: f64,
        #[serde(default = "default_l1_multiplier")]
        l1_multiplier: f64,
    },
}

impl RoutingConfig {
    /// The rule these knobs configure: the one place a routing's config meets its code.
    pub fn rule(&self) -> Box<dyn RoutingRule> {
        match *self {
            RoutingConfig::TokenChoice {
                top_k,
                renormalize,
                balance_loss_alpha,
                gate,
            } => Box::new(TokenChoice {
                top_k,
                renormalize,
                balance_loss_alpha,
                gate,
            }),
            RoutingConfig::ExpertChoice {
                capacity_factor,
                group,
                gate,
            } => Box::new(ExpertChoice {
                capacity_factor,
                group,
                gate,
            }),
            RoutingConfig::ExpertRace {
                top_k,
                gate,
                pool,
                inference,
                similarity_loss_weight,
            } => Box::new(ExpertRace {
                top_k,
                gate,
                pool,
                inference,
                similarity_loss_weight,
            }),
            RoutingConfig::GlobalPool { .. } => {
                Box::new(self.global_pool().expect("a global-pool config"))
            }
            RoutingConfig::Relu { .. } => Box::new(self.relu().expect("a ReLU-routing config")),
        }
    }

    /// The decay of an expert race's learned threshold, when it samples by one.
    pub fn race_threshold_decay(&self) -> Option<f64> {
        match *self {
            RoutingConfig::ExpertRace {
                inference: RaceInference::Threshold { decay },
                ..
            } => Some(decay),
            _ => None,
        }
    }

    /// ReLU routing's knobs, for the layer that owns its adaptive coefficient.
    pub fn relu(&self) -> Option<ReluRouting> {
        match *self {
            RoutingConfig::Relu {
                top_k,
                l1_init,
                l1_multiplier,
            } => Some(ReluRouting {
                top_k,
                l1_init,
                l1_multiplier,
            }),
            _ => None,
        }
    }

    /// The global-pool rule's knobs, for the layer that owns its capacity predictor.
    pub fn global_pool(&self) -> Option<GlobalPool> {
        match *self {
            RoutingConfig::GlobalPool {
                capacity,
                predictor_loss_weight,
                threshold_decay,
                inference,
                gate,
            } => Some(GlobalPool {
                capacity,
                predictor_loss_weight,
                threshold_decay,
                inference,
                gate,
            }),
            _ => None,
        }
    }
}

fn default_alpha() -> f64 {
    0.01
}
fn default_one() -> f64 {
    1.0
}
fn default_threshold_decay() -> f64 {
    0.95
}
fn default_l1_init() -> f64 {
    1e-8
}
fn default_l1_multiplier() -> f64 {
    1.2
}

/// A Mixture-of-Experts FFN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Hidden width of each routed expert.
    pub expert_hidden: usize,
    #[serde(default)]
    pub expert_kind: ExpertKind,
    /// Hidden width of the always-on shared expert (DiT-MoE: 2·D), or none.
    #[serde(default)]
    pub shared_expert_hidden: Option<usize>,
    pub routing: RoutingConfig,
    #[serde(default)]
    pub router: RouterConfig,
}

impl MoeConfig {
    /// Checks the knobs against each other; the message names the bad field as `moe.…`.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_at(&Field::root("moe"))
    }

    /// Checks every field (widths within [`limits`]); messages name the field under `at`.
    pub fn validate_at(&self, at: &Field) -> Result<(), String> {
        at.at("num_experts")
            .positive_count(self.num_experts, limits::EXPERTS)?;
        at.at("expert_hidden")
            .positive_count(self.expert_hidden, limits::EXPERT_HIDDEN)?;
        if let Some(hidden) = self.shared_expert_hidden {
            at.at("shared_expert_hidden")
                .positive_count(hidden, limits::EXPERT_HIDDEN)?;
        }
        if let RouterConfig::TwoLayer {
            regularization_weight,
        } = self.router
        {
            at.at("router")
                .at("regularization_weight")
                .non_negative(regularization_weight)?;
        }
        self.routing
            .rule()
            .validate(self.num_experts, &at.at("routing"))
    }

    /// Average number of routed experts applied to each token (what compute accounting uses):
    /// k for token choice and race, the capacity factor for expert choice.
    pub fn experts_per_token(&self) -> f64 {
        self.routing.rule().experts_per_token(self.num_experts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ditmoe_tensor::Tensor;

    #[test]
    fn each_gate_maps_logits_as_named() {
        let logits = [-1.0f64, 0.0, 2.0, 0.5, -0.5, 1.0];
        let var = Var::constant(Tensor::from_vec(logits.to_vec(), &[2, 3]).unwrap());
        let values = |gate: Gate| gate.apply(&var).unwrap().value().to_vec_f64();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        for (i, &x) in logits.iter().enumerate() {
            let row = &logits[i / 3 * 3..i / 3 * 3 + 3];
            let softmax = x.exp() / row.iter().map(|v| v.exp()).sum::<f64>();
            assert!((values(Gate::Softmax)[i] - softmax).abs() < 1e-12);
            assert_eq!(values(Gate::Identity)[i], x);
            assert!((values(Gate::Sigmoid)[i] - sigmoid(x)).abs() < 1e-12);
            assert_eq!(values(Gate::Relu)[i], x.max(0.0));
        }
    }

    #[test]
    fn every_rule_reads_a_gate_from_its_config() {
        let parsed: RoutingConfig = serde_json::from_str(
            r#"{"kind": "expert_choice", "capacity_factor": 1.0, "gate": "sigmoid"}"#,
        )
        .unwrap();
        assert!(matches!(
            parsed,
            RoutingConfig::ExpertChoice {
                gate: Gate::Sigmoid,
                ..
            }
        ));
        let refused = serde_json::from_str::<RoutingConfig>(
            r#"{"kind": "token_choice", "top_k": 1, "gate": "tanh"}"#,
        );
        assert!(refused.unwrap_err().to_string().contains("softmax"));
    }
}
