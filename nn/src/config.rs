//! `DitConfig`: every shape decision of a DiT / DiT-MoE / EC-DiT model, serialisable as JSON
//! (stored in checkpoint metadata) and TOML.

use crate::moe::{ExpertKind, Gate, MoeConfig, PoolInference, RouterConfig, RoutingConfig};
use crate::validate::Field;
use serde::{Deserialize, Serialize};

/// Which blocks get the MoE FFN (the others keep the dense MLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MoePlacement {
    #[default]
    EveryBlock,
    /// Blocks 1, 3, 5, … (EC-DiT, GShard).
    EveryOther,
    /// The deeper half of the blocks.
    DeepHalf,
}

impl MoePlacement {
    /// The name a config file gives it.
    pub fn name(self) -> &'static str {
        match self {
            MoePlacement::EveryBlock => "every_block",
            MoePlacement::EveryOther => "every_other",
            MoePlacement::DeepHalf => "deep_half",
        }
    }
}

/// The FFN a block uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FfnKind {
    Dense,
    Moe(MoeConfig),
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_dropout() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Side of the (latent) image.
    pub input_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    pub num_classes: usize,
    #[serde(default = "default_dropout")]
    pub class_dropout_prob: f64,
    /// Predict the variance too (doubles the output channels).
    #[serde(default = "default_true")]
    pub learn_sigma: bool,
    /// The MoE FFN, for the blocks `moe_placement` picks; `None` = dense DiT.
    #[serde(default)]
    pub moe: Option<MoeConfig>,
    #[serde(default)]
    pub moe_placement: MoePlacement,
    /// DiT-MoE reference checkpoints describe their MoE with these two keys instead of `moe`;
    /// [`DitConfig::from_json`] turns them into `moe`, anywhere else they are refused.
    #[serde(default, skip_serializing)]
    num_experts: Option<usize>,
    #[serde(default, skip_serializing)]
    num_experts_per_tok: Option<usize>,
}

impl DitConfig {
    /// A dense DiT.
    #[allow(clippy::too_many_arguments)]
    pub fn dense(
        input_size: usize,
        patch_size: usize,
        in_channels: usize,
        hidden_size: usize,
        depth: usize,
        num_heads: usize,
        num_classes: usize,
    ) -> Self {
        DitConfig {
            input_size,
            patch_size,
            in_channels,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            num_classes,
            class_dropout_prob: 0.1,
            learn_sigma: true,
            moe: None,
            moe_placement: MoePlacement::EveryBlock,
            num_experts: None,
            num_experts_per_tok: None,
        }
    }

    /// The same model with `moe` in the blocks `placement` picks.
    pub fn with_moe(mut self, moe: MoeConfig, placement: MoePlacement) -> Self {
        self.moe = Some(moe);
        self.moe_placement = placement;
        self
    }

    /// DiT-MoE's FFN for this width: `experts` SwiGLU experts of width mlp_ratio·D, top-k
    /// token choice without renormalisation, balance loss α = 0.01, one shared expert of 2·D.
    pub fn ditmoe_ffn(&self, experts: usize, top_k: usize) -> MoeConfig {
        MoeConfig {
            num_experts: experts,
            expert_hidden: self.mlp_hidden(),
            expert_kind: ExpertKind::SwiGlu,
            shared_expert_hidden: Some(2 * self.hidden_size),
            routing: RoutingConfig::TokenChoice {
                top_k,
                renormalize: false,
                balance_loss_alpha: 0.01,
                gate: Gate::Softmax,
            },
            router: RouterConfig::Linear,
        }
    }

    /// Parses our JSON, or a reference DiT / DiT-MoE / DiffMoE `config.json`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("model config: {e}"))?;
        if value.get("capacity_pred_loss_weight").is_some() {
            let reference: DiffMoeReference =
                serde_json::from_value(value).map_err(|e| format!("DiffMoE model config: {e}"))?;
            let config = reference.into_config(&Field::root("model"))?;
            config.validate()?;
            return Ok(config);
        }
        let mut config: DitConfig =
            serde_json::from_value(value).map_err(|e| format!("model config: {e}"))?;
        config.resolve_reference_moe(&Field::root("model"))?;
        config.validate()?;
        Ok(config)
    }

    /// Replaces the reference keys `num_experts` / `num_experts_per_tok` (top-k, 2 when left
    /// out) by the `moe` they describe, whose validation checks their values (as
    /// `moe.num_experts` and `moe.routing.top_k`).
    fn resolve_reference_moe(&mut self, at: &Field) -> Result<(), String> {
        let top_k = self.num_experts_per_tok.take();
        let Some(experts) = self.num_experts.take() else {
            return match top_k {
                Some(_) => Err(at
                    .at("num_experts_per_tok")
                    .invalid("given without num_experts")),
                None => Ok(()),
            };
        };
        if self.moe.is_some() {
            return Err(at
                .at("num_experts")
                .invalid("give the MoE either as `moe` or as num_experts, not both"));
        }
        self.moe = Some(self.ditmoe_ffn(experts, top_k.unwrap_or(2)));
        Ok(())
    }

    /// An error for a reference key left unresolved: a config file gives the MoE as `moe`.
    fn refuse_reference_moe(&self, at: &Field) -> Result<(), String> {
        let keys = [
            ("num_experts", self.num_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
        ];
        match keys.into_iter().find(|(_, value)| value.is_some()) {
            Some((key, _)) => Err(at.at(key).invalid(
                "only reference config.json files use this key; give the MoE as \
                 moe = { num_experts = …, expert_hidden = …, routing = { kind = \"token_choice\", top_k = … } }",
            )),
            None => Ok(()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    /// Hidden width of the dense MLP.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio).round() as usize
    }
    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The FFN of block `index`.
    pub fn ffn(&self, index: usize) -> FfnKind {
        let picked = match self.moe_placement {
            MoePlacement::EveryBlock => true,
            MoePlacement::EveryOther => index % 2 == 1,
            MoePlacement::DeepHalf => index >= self.depth / 2,
        };
        match self.moe {
            Some(moe) if picked => FfnKind::Moe(moe),
            _ => FfnKind::Dense,
        }
    }

    /// Checks every field; the message names the bad field as `model.…` (see
    /// [`DitConfig::validate_at`]).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_at(&Field::root("model"))
    }

    /// Checks every field, sizes within the caps of [`limits`] first so that nothing derived
    /// from them (tokens, widths) can overflow; messages name the field under `at`.
    pub fn validate_at(&self, at: &Field) -> Result<(), String> {
        self.refuse_reference_moe(at)?;
        let input = self.input_size;
        at.at("input_size")
            .positive_count(input, limits::IMAGE_SIZE)?;
        let patch = at.at("patch_size");
        patch.positive_count(self.patch_size, input)?;
        if input % self.patch_size != 0 {
            return Err(patch.invalid(format!(
                "image size {input} is not divisible by the patch size {}",
                self.patch_size
            )));
        }
        at.at("in_channels")
            .positive_count(self.in_channels, limits::CHANNELS)?;
        let hidden = at.at("hidden_size");
        hidden.positive_count(self.hidden_size, limits::HIDDEN_SIZE)?;
        if self.hidden_size % 4 != 0 {
            return Err(hidden.invalid(format!(
                "the 2-D sin-cos position embedding needs a hidden size divisible by 4, found {}",
                self.hidden_size
            )));
        }
        at.at("depth").positive_count(self.depth, limits::DEPTH)?;
        let heads = at.at("num_heads");
        heads.positive_count(self.num_heads, self.hidden_size)?;
        if self.hidden_size % self.num_heads != 0 {
            return Err(heads.invalid(format!(
                "{} heads do not divide the hidden size {}",
                self.num_heads, self.hidden_size
            )));
        }
        at.at("num_classes")
            .positive_count(self.num_classes, limits::CLASSES)?;
        let ratio = at.at("mlp_ratio");
        ratio.positive(self.mlp_ratio)?;
        ratio.at_most(self.mlp_ratio, limits::MLP_RATIO)?;
        ratio.require(
            self.mlp_hidden() > 0,
            format!(
                "mlp_ratio · hidden_size ({}) to round to a width >= 1",
                self.hidden_size
            ),
            self.mlp_ratio,
        )?;
        at.at("class_dropout_prob")
            .fraction(self.class_dropout_prob)?;
        if let Some(moe) = &self.moe {
            moe.validate_at(&at.at("moe"))?;
            self.check_some_block_is_moe(&at.at("moe_placement"))?;
        }
        Ok(())
    }

    /// Refuses a placement that leaves every block dense (`every_other` with depth 1): a
    /// model with a `moe` table would train as a dense one.
    fn check_some_block_is_moe(&self, at: &Field) -> Result<(), String> {
        let moe_blocks = (0..self.depth)
            .filter(|&i| matches!(self.ffn(i), FfnKind::Moe(_)))
            .count();
        at.require(
            moe_blocks > 0,
            "a placement that puts the MoE FFN in at least one block",
            format!(
                "{} with depth {}, which leaves every block dense",
                self.moe_placement.name(),
                self.depth
            ),
        )
    }
}

/// DiffMoE's model config as its reference files carry it (the constructor arguments of
/// `models_DiffMoE.py`, flattened): a DiT whose odd blocks (`interleave`) or every block hold a
/// global-pool MoE of GELU(tanh) MLP experts with a capacity predictor.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffMoeReference {
    input_size: usize,
    patch_size: usize,
    in_channels: usize,
    hidden_size: usize,
    depth: usize,
    num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
    num_classes: usize,
    #[serde(default = "default_dropout")]
    class_dropout_prob: f64,
    #[serde(default = "default_true")]
    learn_sigma: bool,
    num_experts: usize,
    capacity: f64,
    #[serde(default)]
    n_shared_experts: usize,
    interleave: bool,
    /// The MoE blocks, when given: must be the ones `interleave` picks.
    #[serde(default)]
    moe_layers: Option<Vec<usize>>,
    expert: String,
    #[serde(default)]
    expert_hidden: Option<usize>,
    /// The thresholds' moving-average decay.
    ema_decay: f64,
    capacity_pred_loss_weight: f64,
}

impl DiffMoeReference {
    fn into_config(self, at: &Field) -> Result<DitConfig, String> {
        if self.expert != "gelu_tanh_mlp" {
            return Err(at.at("expert").error(
                "\"gelu_tanh_mlp\" (DiffMoE's released experts; its SwiGLU option is not supported)",
                format!("{:?}", self.expert),
            ));
        }
        if self.n_shared_experts != 0 {
            return Err(at.at("n_shared_experts").error(
                "0 (DiffMoE's released configs have no shared expert)",
                self.n_shared_experts,
            ));
        }
        let mut config = DitConfig {
            mlp_ratio: self.mlp_ratio,
            class_dropout_prob: self.class_dropout_prob,
            learn_sigma: self.learn_sigma,
            ..DitConfig::dense(
                self.input_size,
                self.patch_size,
                self.in_channels,
                self.hidden_size,
                self.depth,
                self.num_heads,
                self.num_classes,
            )
        };
        let moe = MoeConfig {
            num_experts: self.num_experts,
            expert_hidden: self.expert_hidden.unwrap_or(config.mlp_hidden()),
            expert_kind: ExpertKind::GeluMlp,
            shared_expert_hidden: None,
            routing: RoutingConfig::GlobalPool {
                capacity: self.capacity,
                predictor_loss_weight: self.capacity_pred_loss_weight,
                threshold_decay: self.ema_decay,
                inference: PoolInference::Predictor,
                gate: Gate::Softmax,
            },
            router: RouterConfig::Linear,
        };
        let placement = match self.interleave {
            true => MoePlacement::EveryOther,
            false => MoePlacement::EveryBlock,
        };
        config = config.with_moe(moe, placement);
        if let Some(layers) = self.moe_layers {
            let picked: Vec<usize> = (0..config.depth)
                .filter(|&i| matches!(config.ffn(i), FfnKind::Moe(_)))
                .collect();
            if layers != picked {
                return Err(at.at("moe_layers").error(
                    format!(
                        "{picked:?} (the blocks interleave = {} picks)",
                        self.interleave
                    ),
                    format!("{layers:?}"),
                ));
            }
        }
        Ok(config)
    }
}

/// Absolute caps on a model's sizes, whatever the machine: far beyond any DiT, and small
/// enough that every shape derived from them fits comfortably in `usize` and `f64`.
pub mod limits {
    /// Side of the (latent) image.
    pub const IMAGE_SIZE: usize = 4096;
    pub const CHANNELS: usize = 1024;
    pub const HIDDEN_SIZE: usize = 32_768;
    pub const DEPTH: usize = 1024;
    pub const CLASSES: usize = 1_000_000;
    pub const MLP_RATIO: f64 = 256.0;
    pub const EXPERTS: usize = 4096;
    /// Width of one expert (routed or shared).
    pub const EXPERT_HIDDEN: usize = 1 << 20;
}

#[cfg(test)]
mod tests {
    use super::*;

    type Change = fn(&mut DitConfig);

    fn refused(change: Change) -> String {
        let mut config = DitConfig::dense(16, 4, 3, 64, 2, 4, 10).with_moe(
            DitConfig::dense(16, 4, 3, 64, 2, 4, 10).ditmoe_ffn(4, 2),
            MoePlacement::EveryOther,
        );
        config.validate().unwrap();
        change(&mut config);
        config.validate().unwrap_err()
    }

    #[test]
    fn every_bad_field_is_named_with_its_path() {
        let cases: [(Change, &str); 12] = [
            (|c| c.mlp_ratio = f64::INFINITY, "model.mlp_ratio: expected mlp_ratio > 0 and finite, found inf"),
            (|c| c.mlp_ratio = 1e-3, "model.mlp_ratio: expected mlp_ratio · hidden_size (64) to round to a width >= 1"),
            (|c| c.input_size = 1 << 31, "model.input_size: expected input_size <= 4096, found 2147483648"),
            (|c| c.hidden_size = 1_000_000_000, "model.hidden_size: expected hidden_size <= 32768"),
            (|c| c.hidden_size = 100_000, "model.hidden_size: expected hidden_size <= 32768"),
            (|c| c.depth = 1_000_000, "model.depth: expected depth <= 1024"),
            (|c| c.class_dropout_prob = f64::NAN, "model.class_dropout_prob: expected 0 <= class_dropout_prob < 1, found NaN"),
            (|c| c.moe.as_mut().unwrap().num_experts = 1_000_000, "model.moe.num_experts: expected num_experts <= 4096"),
            (|c| c.moe.as_mut().unwrap().expert_hidden = 1_000_000_000, "model.moe.expert_hidden: expected expert_hidden <= 1048576"),
            (|c| c.moe.as_mut().unwrap().expert_hidden = 0, "model.moe.expert_hidden: expected expert_hidden > 0, found 0"),
            (|c| c.moe.as_mut().unwrap().shared_expert_hidden = Some(0), "model.moe.shared_expert_hidden: expected shared_expert_hidden > 0"),
            (|c| c.moe.as_mut().unwrap().routing = RoutingConfig::TokenChoice { top_k: 2, renormalize: false, balance_loss_alpha: f64::NAN, gate: Gate::Softmax, }, "model.moe.routing.balance_loss_alpha: expected 0 <= balance_loss_alpha <= 1, found NaN"),
        ];
        for (change, expected) in cases {
            let err = refused(change);
            assert!(err.starts_with(expected), "{err}");
        }
        let err = refused(|c: &mut DitConfig| {
            c.moe.as_mut().unwrap().routing = RoutingConfig::ExpertChoice {
                capacity_factor: 5.0,
                group: Default::default(),
                gate: Gate::Softmax,
            }
        });
        assert!(
            err.starts_with("model.moe.routing.capacity_factor: expected capacity_factor <= 4"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        let json = DitConfig::dense(16, 4, 3, 64, 2, 4, 10).to_json();
        let typo = json.replace("\"mlp_ratio\"", "\"mlp_ration\"");
        assert!(DitConfig::from_json(&typo)
            .unwrap_err()
            .contains("unknown field `mlp_ration`"));
        let with_moe = DitConfig::dense(16, 4, 3, 64, 2, 4, 10).with_moe(
            DitConfig::dense(16, 4, 3, 64, 2, 4, 10).ditmoe_ffn(4, 2),
            MoePlacement::EveryBlock,
        );
        let json = with_moe.to_json();
        let err =
            DitConfig::from_json(&json.replace("\"top_k\"", "\"top_k\":2,\"group\"")).unwrap_err();
        assert!(err.contains("unknown field `group`"), "{err}");
        let err =
            DitConfig::from_json(&json.replace("\"expert_kind\"", "\"expert_kindd\"")).unwrap_err();
        assert!(err.contains("unknown field `expert_kindd`"), "{err}");
        let err = DitConfig::from_json(&json.replace("token_choice", "token_choise")).unwrap_err();
        assert!(err.contains("unknown variant `token_choise`"), "{err}");
    }

    #[test]
    fn reference_moe_keys_are_checked_and_read_only_from_json() {
        let dense = DitConfig::dense(16, 4, 3, 64, 2, 4, 10).to_json();
        let with = |keys: &str| dense.replacen('{', &format!("{{{keys},"), 1);
        let config =
            DitConfig::from_json(&with("\"num_experts\":4,\"num_experts_per_tok\":1")).unwrap();
        assert_eq!(config.moe, Some(config.ditmoe_ffn(4, 1)));
        let cases = [
            (
                "\"num_experts\":0",
                "model.moe.num_experts: expected num_experts > 0, found 0",
            ),
            (
                "\"num_experts\":4,\"num_experts_per_tok\":9",
                "model.moe.routing.top_k: expected",
            ),
            (
                "\"num_experts_per_tok\":2",
                "model.num_experts_per_tok: given without num_experts",
            ),
        ];
        for (keys, expected) in cases {
            let err = DitConfig::from_json(&with(keys)).unwrap_err();
            assert!(err.starts_with(expected), "{err}");
        }
        let moe = DitConfig::dense(16, 4, 3, 64, 2, 4, 10).ditmoe_ffn(4, 2);
        let both = DitConfig::dense(16, 4, 3, 64, 2, 4, 10).with_moe(moe, MoePlacement::EveryBlock);
        let both = both.to_json().replacen('{', "{\"num_experts\":8,", 1);
        let err = DitConfig::from_json(&both).unwrap_err();
        assert!(
            err.starts_with("model.num_experts: give the MoE either"),
            "{err}"
        );
        // Read any other way (a TOML [model] table), the keys are refused by validation.
        let mut parsed: DitConfig = serde_json::from_str(&with("\"num_experts\":4")).unwrap();
        let err = parsed.validate().unwrap_err();
        assert!(
            err.starts_with("model.num_experts: only reference config.json files"),
            "{err}"
        );
        assert!(err.contains("moe = { num_experts = …"), "{err}");
        parsed.num_experts = None;
        parsed.validate().unwrap();
    }

    #[test]
    fn a_moe_table_must_reach_some_block() {
        let err = refused(|c| c.depth = 1);
        assert_eq!(
            err,
            "model.moe_placement: expected a placement that puts the MoE FFN in at least one \
             block, found every_other with depth 1, which leaves every block dense"
        );
        let mut deep_half = DitConfig::dense(16, 4, 3, 64, 1, 4, 10);
        let moe = deep_half.ditmoe_ffn(4, 2);
        deep_half = deep_half.with_moe(moe, MoePlacement::DeepHalf);
        deep_half.validate().unwrap();
        for placement in [
            MoePlacement::EveryBlock,
            MoePlacement::EveryOther,
            MoePlacement::DeepHalf,
        ] {
            let json = serde_json::to_string(&placement).unwrap();
            assert_eq!(json, format!("\"{}\"", placement.name()));
        }
    }
}
