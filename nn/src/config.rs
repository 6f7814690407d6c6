//! `DitConfig`: every shape decision of a DiT / DiT-MoE / EC-DiT model, serialisable as JSON
//! (stored in checkpoint metadata) and TOML.

use crate::moe::{ExpertKind, MoeConfig, RoutingConfig};
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
    /// DiT-MoE reference checkpoints describe their MoE with these two keys instead of `moe`.
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
            },
        }
    }

    /// Parses our JSON, or a reference DiT / DiT-MoE `config.json`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut config: DitConfig =
            serde_json::from_str(text).map_err(|e| format!("model config: {e}"))?;
        if config.moe.is_none() {
            if let Some(experts) = config.num_experts {
                config.moe =
                    Some(config.ditmoe_ffn(experts, config.num_experts_per_tok.unwrap_or(2)));
            }
        }
        config.validate()?;
        Ok(config)
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

    /// Checks every field; the message names the bad value and what was expected.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("input_size", self.input_size),
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("hidden_size", self.hidden_size),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("num_classes", self.num_classes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("model config: expected {name} > 0, found 0"));
        }
        if self.input_size % self.patch_size != 0 {
            return Err(format!(
                "model config: image size {} is not divisible by the patch size {}",
                self.input_size, self.patch_size
            ));
        }
        if self.hidden_size % self.num_heads != 0 {
            return Err(format!(
                "model config: {} heads do not divide the hidden size {}",
                self.num_heads, self.hidden_size
            ));
        }
        if self.hidden_size % 4 != 0 {
            return Err(format!("model config: the 2-D sin-cos position embedding needs a hidden size divisible by 4, found {}", self.hidden_size));
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return Err(format!(
                "model config: expected 0 <= class_dropout_prob < 1, found {}",
                self.class_dropout_prob
            ));
        }
        if self.mlp_ratio <= 0.0 {
            return Err(format!(
                "model config: expected mlp_ratio > 0, found {}",
                self.mlp_ratio
            ));
        }
        if let Some(moe) = &self.moe {
            moe.validate().map_err(|e| format!("model config: {e}"))?;
        }
        Ok(())
    }
}
