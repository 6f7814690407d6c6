//! Training configuration, read from TOML. Every preset is a file in `experiments/configs/`
//! (compiled in, so `--preset NAME` works from anywhere); copy one to start your own.

use ditmoe_diffusion::{BetaSchedule, SamplerKind};
use ditmoe_nn::optim::{AdamWConfig, LrDecay};
use ditmoe_nn::presets::preset;
use ditmoe_nn::DitConfig;
use serde::{Deserialize, Serialize};

/// The model: a preset name or a full configuration table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelSpec {
    Preset(String),
    Config(DitConfig),
}

/// Which diffusion objective trains the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Objective {
    /// DDPM ε-prediction (+ DiT's learned-variance bound when the model has `learn_sigma`).
    Ddpm {
        #[serde(default = "default_diffusion_steps")]
        steps: usize,
        #[serde(default)]
        schedule: BetaSchedule,
    },
    /// Rectified flow with logit-normal t; the model sees t·`time_scale`.
    Flow {
        #[serde(default = "default_time_scale")]
        time_scale: f64,
    },
}

fn default_diffusion_steps() -> usize {
    1000
}
fn default_time_scale() -> f64 {
    1.0
}

/// The training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSpec {
    /// The built-in `shapes10` dataset.
    Shapes {
        #[serde(default = "default_image_size")]
        size: usize,
        #[serde(default = "default_count")]
        count: usize,
    },
    /// MNIST / Fashion-MNIST IDX files (raw or `.gz`).
    Idx { images: String, labels: String },
    /// CIFAR-10 binary batches.
    Cifar10 { files: Vec<String> },
}

fn default_image_size() -> usize {
    32
}
fn default_count() -> usize {
    50_000
}

/// Sampling settings used after training and by `ditmoe sample` by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleSpec {
    pub sampler: SamplerKind,
    pub steps: usize,
    pub cfg_scale: f64,
}

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec {
            sampler: SamplerKind::Ddim { eta: 0.0 },
            steps: 50,
            cfg_scale: 4.0,
        }
    }
}

fn default_one() -> f64 {
    1.0
}
fn default_ema() -> f64 {
    0.999
}
fn default_every() -> u64 {
    500
}
fn default_log_every() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSpec,
    pub data: DataSpec,
    pub objective: Objective,
    #[serde(default)]
    pub seed: u64,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub lr_decay: LrDecay,
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Clip gradients to this global L2 norm (0 = off).
    #[serde(default = "default_one")]
    pub grad_clip: f64,
    #[serde(default = "default_ema")]
    pub ema_decay: f64,
    #[serde(default = "default_every")]
    pub checkpoint_every: u64,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Mirror training images left-right at random.
    #[serde(default)]
    pub flip: bool,
    #[serde(default)]
    pub sample: SampleSpec,
}

/// The preset training configs, by name.
pub const PRESETS: [(&str, &str); 4] = [
    ("tiny-dense", include_str!("../configs/tiny-dense.toml")),
    ("tiny-moe", include_str!("../configs/tiny-moe.toml")),
    ("tiny-ec", include_str!("../configs/tiny-ec.toml")),
    ("tiny-race", include_str!("../configs/tiny-race.toml")),
];

impl TrainConfig {
    /// Parses TOML and validates it (see [`TrainConfig::validate`]).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let config: TrainConfig = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        config.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(config)
    }

    /// A preset training config.
    pub fn preset(name: &str) -> Result<Self, String> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            format!(
                "unknown preset `{name}` (expected one of: {})",
                PRESETS.map(|p| p.0).join(", ")
            )
        })?;
        TrainConfig::from_toml(text, &format!("preset {name}"))
    }

    /// The model configuration this file describes.
    pub fn model_config(&self) -> Result<DitConfig, String> {
        let config = match &self.model {
            ModelSpec::Preset(name) => preset(name, 256)?,
            ModelSpec::Config(config) => config.clone(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Every check that can fail before work starts, with the bad value named.
    pub fn validate(&self) -> Result<(), String> {
        let model = self.model_config()?;
        let positive = [
            ("steps", self.steps as f64),
            ("batch_size", self.batch_size as f64),
            ("lr", self.lr),
            ("sample.steps", self.sample.steps as f64),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
            return Err(format!("expected {name} > 0, found {value}"));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(format!(
                "expected 0 <= ema_decay < 1, found {}",
                self.ema_decay
            ));
        }
        if self.checkpoint_every == 0 || self.log_every == 0 {
            return Err("expected checkpoint_every and log_every > 0".to_string());
        }
        if let DataSpec::Shapes { size, .. } = self.data {
            if size != model.input_size || model.in_channels != 3 {
                return Err(format!("the shapes dataset gives 3×{size}×{size} images but the model expects {}×{}×{}", model.in_channels, model.input_size, model.input_size));
            }
        }
        if let (Objective::Flow { .. }, SamplerKind::Ddpm | SamplerKind::Ddim { .. }) =
            (self.objective, self.sample.sampler)
        {
            return Err("a flow model samples with the euler sampler".to_string());
        }
        if let (Objective::Ddpm { .. }, SamplerKind::Euler) = (self.objective, self.sample.sampler)
        {
            return Err("a DDPM model samples with ddpm or ddim, not euler".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_validates() {
        for (name, _) in PRESETS {
            TrainConfig::preset(name).unwrap();
        }
        assert!(TrainConfig::preset("tiny-nope")
            .unwrap_err()
            .contains("unknown preset `tiny-nope`"));
    }

    #[test]
    fn bad_values_are_reported_before_work_starts() {
        let base = PRESETS[1].1;
        let bad = |from: &str, to: &str| {
            TrainConfig::from_toml(&base.replace(from, to), "test").unwrap_err()
        };
        assert!(bad("lr = ", "lr = -").contains("expected lr > 0"));
        assert!(bad("batch_size = 32", "batch_size = 0").contains("batch_size > 0"));
        assert!(bad("model = \"tiny-moe\"", "model = \"tiny-huge\"")
            .contains("unknown preset `tiny-huge`"));
        assert!(bad("seed = 0", "seed = 0\nbogus = 1").contains("unknown field `bogus`"));
        let custom = r#"
            steps = 10
            batch_size = 2
            lr = 1e-3
            objective = { kind = "ddpm" }
            data = { kind = "shapes", size = 32 }
            [model]
            input_size = 32
            patch_size = 5
            in_channels = 3
            hidden_size = 64
            depth = 2
            num_heads = 3
            num_classes = 10
        "#;
        let err = TrainConfig::from_toml(custom, "custom").unwrap_err();
        assert!(err.contains("not divisible by the patch size 5"), "{err}");
        let err = TrainConfig::from_toml(
            &custom.replace("patch_size = 5", "patch_size = 4"),
            "custom",
        )
        .unwrap_err();
        assert!(
            err.contains("3 heads do not divide the hidden size 64"),
            "{err}"
        );
        let moe = custom.replace("patch_size = 5", "patch_size = 4").replace("num_heads = 3", "num_heads = 4")
            + "moe = { num_experts = 4, expert_hidden = 32, routing = { kind = \"token_choice\", top_k = 5 } }\n";
        assert!(TrainConfig::from_toml(&moe, "custom")
            .unwrap_err()
            .contains("top_k = 5"));
        let ec = moe.replace(
            "kind = \"token_choice\", top_k = 5",
            "kind = \"expert_choice\", capacity_factor = 0.0",
        );
        assert!(TrainConfig::from_toml(&ec, "custom")
            .unwrap_err()
            .contains("capacity factor > 0"));
    }
}
