//! Training configuration, read from TOML. Every preset is a file in `experiments/configs/`
//! (compiled in, so `--preset NAME` works from anywhere); copy one to start your own.

use ditmoe_diffusion::{BetaSchedule, SamplerKind};
use ditmoe_nn::accounting::{check_memory, memory_estimate, Workload};
use ditmoe_nn::optim::{AdamWConfig, LrDecay};
use ditmoe_nn::presets::preset;
use ditmoe_nn::{DitConfig, Field};
use serde::{Deserialize, Deserializer, Serialize};

/// The model: a preset name or a full configuration table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ModelSpec {
    Preset(String),
    Config(DitConfig),
}

/// A string is a preset name, a table is read as a `DitConfig` directly, so that its errors
/// (an unknown or missing field, a bad routing `kind`) name the field — an untagged enum would
/// only say that no variant matched.
impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> serde::de::Visitor<'de> for SpecVisitor {
            type Value = ModelSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a model preset name or a [model] table")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<ModelSpec, E> {
                Ok(ModelSpec::Preset(name.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ModelSpec, A::Error> {
                DitConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ModelSpec::Config)
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// Which diffusion objective trains the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
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

impl Objective {
    /// Checks the objective's knobs; messages name the field under `at`.
    pub fn validate_at(&self, at: &Field) -> Result<(), String> {
        match *self {
            // The linear schedule's last β is 0.02·1000/steps, which must stay below 1. Any
            // schedule needs 2 steps: the learned variance interpolates towards the posterior
            // variance of step 1 (that of step 0 is 0), so one step trains on ln 0.
            Objective::Ddpm { steps, schedule } => {
                let fewest = match schedule {
                    BetaSchedule::Linear => 21,
                    BetaSchedule::Cosine => 2,
                };
                at.at("steps")
                    .count_in(steps, fewest, limits::DIFFUSION_STEPS)
            }
            Objective::Flow { time_scale } => {
                let at = at.at("time_scale");
                at.positive(time_scale)?;
                at.at_most(time_scale, limits::TIME_SCALE)
            }
        }
    }

    /// The most sampler steps that mean something: the diffusion steps of DDPM (respacing
    /// cannot go finer), [`limits::FLOW_SAMPLE_STEPS`] Euler steps of a flow.
    pub fn max_sample_steps(&self) -> usize {
        match *self {
            Objective::Ddpm { steps, .. } => steps,
            Objective::Flow { .. } => limits::FLOW_SAMPLE_STEPS,
        }
    }
}

/// The training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
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

impl DataSpec {
    /// The number of classes the data has, when the config alone says it (`shapes`).
    pub fn known_classes(&self) -> Option<usize> {
        match self {
            DataSpec::Shapes { .. } => Some(crate::data::shapes::CLASS_NAMES.len()),
            DataSpec::Idx { .. } | DataSpec::Cifar10 { .. } => None,
        }
    }

    /// Refuses a model whose class count (at `at`) differs from what the data is known to have.
    pub fn check_classes(&self, model: &DitConfig, at: &Field) -> Result<(), String> {
        match self.known_classes() {
            Some(classes) => at.require(
                model.num_classes == classes,
                format!("num_classes = {classes}, the classes of the shapes dataset"),
                model.num_classes,
            ),
            None => Ok(()),
        }
    }

    /// Checks sizes and paths and that `shapes` images fit `model`; messages name the field
    /// under `at`.
    pub fn validate_at(&self, at: &Field, model: &DitConfig) -> Result<(), String> {
        let named = |field: &str, path: &str| {
            at.at(field)
                .require(!path.is_empty(), "a file path", "an empty string")
        };
        match self {
            DataSpec::Shapes { size, count } => {
                at.at("size").count_in(*size, 4, limits::SHAPES_SIZE)?;
                at.at("count")
                    .positive_count(*count, limits::SHAPES_COUNT)?;
                if *size != model.input_size || model.in_channels != 3 {
                    return Err(at.at("size").invalid(format!("the shapes dataset gives 3×{size}×{size} images but the model expects {}×{}×{}", model.in_channels, model.input_size, model.input_size)));
                }
                Ok(())
            }
            DataSpec::Idx { images, labels } => {
                named("images", images)?;
                named("labels", labels)
            }
            DataSpec::Cifar10 { files } => {
                at.at("files")
                    .require(!files.is_empty(), "at least one file", "none")?;
                files
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, f)| named(&format!("files[{i}]"), f))
            }
        }
    }
}

/// Sampling settings used after training and by `ditmoe sample` by default; each may be left
/// out: the sampler then follows the objective (euler for flow, DDIM for DDPM) and the steps
/// are 50 (or the DDPM steps, if fewer).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    pub cfg_scale: f64,
}

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec {
            sampler: None,
            steps: None,
            cfg_scale: 4.0,
        }
    }
}

/// The name `ditmoe sample --sampler` takes.
pub fn sampler_name(sampler: SamplerKind) -> &'static str {
    match sampler {
        SamplerKind::Ddpm => "ddpm",
        SamplerKind::Ddim { .. } => "ddim",
        SamplerKind::Euler => "euler",
    }
}

/// Refuses a classifier-free guidance scale outside [0, [`limits::CFG_SCALE`]] (0 is
/// unconditional, 1 the conditional model; far beyond 10 the images saturate into noise).
pub fn check_cfg_scale(cfg_scale: f64, at: &Field) -> Result<(), String> {
    at.in_range(cfg_scale, 0.0, limits::CFG_SCALE)
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

/// Bounds of the training and sampling settings: beyond them a value is a typo, not a choice.
pub mod limits {
    pub const STEPS: u64 = 1_000_000_000;
    pub const BATCH_SIZE: usize = 65_536;
    pub const LR: f64 = 1.0;
    pub const DIFFUSION_STEPS: usize = 100_000;
    pub const TIME_SCALE: f64 = 1e6;
    pub const FLOW_SAMPLE_STEPS: usize = 10_000;
    pub const CFG_SCALE: f64 = 20.0;
    pub const SHAPES_SIZE: usize = 1024;
    pub const SHAPES_COUNT: usize = 1 << 32;
    /// Images one `ditmoe sample` may draw.
    pub const SAMPLES: usize = 65_536;
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
        config
            .check_warmup_fits(&Field::root(""))
            .map_err(|e| format!("{origin}: {e}"))?;
        Ok(config)
    }

    /// Refuses a warmup longer than the run, which never reaches its `lr`. A check of the
    /// file as written, not of [`TrainConfig::validate`]: `ditmoe train --steps` may shorten
    /// a run below its warmup for a smoke test, and its checkpoint must still load.
    pub fn check_warmup_fits(&self, at: &Field) -> Result<(), String> {
        at.at("warmup_steps").require(
            self.warmup_steps <= self.steps,
            format!("warmup_steps <= steps ({})", self.steps),
            self.warmup_steps,
        )
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

    /// The model configuration this file describes, validated.
    pub fn model_config(&self) -> Result<DitConfig, String> {
        let config = self.resolved_model(&Field::root("model"))?;
        config.validate()?;
        Ok(config)
    }

    /// The model: the preset looked up, or the table as written (not yet validated).
    fn resolved_model(&self, at: &Field) -> Result<DitConfig, String> {
        match &self.model {
            ModelSpec::Preset(name) => preset(name, 256).map_err(|e| at.invalid(e)),
            ModelSpec::Config(config) => Ok(config.clone()),
        }
    }

    /// The sampler of the `[sample]` table, or the objective's own: euler for a flow, DDIM
    /// (η = 0) for DDPM.
    pub fn sampler(&self) -> SamplerKind {
        self.sample.sampler.unwrap_or(match self.objective {
            Objective::Flow { .. } => SamplerKind::Euler,
            Objective::Ddpm { .. } => SamplerKind::Ddim { eta: 0.0 },
        })
    }

    /// The sampler steps of the `[sample]` table, or 50 (at most the DDPM steps).
    pub fn sample_steps(&self) -> usize {
        self.sample
            .steps
            .unwrap_or(50.min(self.objective.max_sample_steps()))
    }

    /// Every check that can fail before work starts, with the bad field named by its path in
    /// a training config file.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_at(&Field::root(""))
    }

    /// [`TrainConfig::validate`] for a config under `at` (an ablation preset's `train`).
    pub fn validate_at(&self, at: &Field) -> Result<(), String> {
        let model = self.resolved_model(&at.at("model"))?;
        model.validate_at(&at.at("model"))?;
        self.objective.validate_at(&at.at("objective"))?;
        self.data.validate_at(&at.at("data"), &model)?;
        self.data
            .check_classes(&model, &at.at("model").at("num_classes"))?;
        at.at("steps").positive_count(self.steps, limits::STEPS)?;
        at.at("batch_size")
            .positive_count(self.batch_size, limits::BATCH_SIZE)?;
        let lr = at.at("lr");
        lr.positive(self.lr)?;
        lr.at_most(self.lr, limits::LR)?;
        at.at("warmup_steps")
            .at_most(self.warmup_steps, limits::STEPS)?;
        self.lr_decay.validate_at(&at.at("lr_decay"), self.lr)?;
        self.adamw.validate_at(&at.at("adamw"))?;
        at.at("grad_clip").non_negative(self.grad_clip)?;
        at.at("ema_decay").fraction(self.ema_decay)?;
        at.at("checkpoint_every")
            .positive_count(self.checkpoint_every, u64::MAX)?;
        at.at("log_every")
            .positive_count(self.log_every, u64::MAX)?;
        let sample = at.at("sample");
        self.check_sampler(self.sampler(), &sample.at("sampler"))?;
        self.check_sample_steps(self.sample_steps(), &sample.at("steps"))?;
        check_cfg_scale(self.sample.cfg_scale, &sample.at("cfg_scale"))
    }

    /// Refuses a sampler of the other objective, and a DDIM η outside [0, 1] (0 deterministic,
    /// 1 as stochastic as DDPM).
    pub fn check_sampler(&self, sampler: SamplerKind, at: &Field) -> Result<(), String> {
        let name = sampler_name(sampler);
        match (self.objective, sampler) {
            (Objective::Flow { .. }, SamplerKind::Ddpm | SamplerKind::Ddim { .. }) => {
                Err(at.invalid(format!("a flow model samples with euler, not {name}")))
            }
            (Objective::Ddpm { .. }, SamplerKind::Euler) => {
                Err(at.invalid("a DDPM model samples with ddpm or ddim, not euler".to_string()))
            }
            (_, SamplerKind::Ddim { eta }) => at.at("eta").in_range(eta, 0.0, 1.0),
            _ => Ok(()),
        }
    }

    /// Refuses 0 sampler steps and more than [`Objective::max_sample_steps`].
    pub fn check_sample_steps(&self, steps: usize, at: &Field) -> Result<(), String> {
        at.positive_count(steps, self.objective.max_sample_steps())
    }

    /// Refuses a config whose model and training state cannot fit in `memory_bytes` (the
    /// machine's memory; `None` checks only the absolute size caps). Run after validation.
    pub fn check_training_memory(&self, memory_bytes: Option<f64>) -> Result<(), String> {
        let model = self.model_config()?;
        let estimate = memory_estimate(
            &model,
            Workload::Training {
                batch: self.batch_size,
            },
        );
        check_memory(
            &estimate,
            &format!("model + training state (batch {})", self.batch_size),
            memory_bytes,
        )
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
        let custom = small_config("ddpm", 32, 5, 64, 2, 3);
        let err = TrainConfig::from_toml(&custom, "custom").unwrap_err();
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

    /// Ten steps of a `objective` model on `size`² shapes with the given patch, width, depth
    /// and heads.
    fn small_config(
        objective: &str,
        size: usize,
        patch_size: usize,
        hidden_size: usize,
        depth: usize,
        num_heads: usize,
    ) -> String {
        format!(
            r#"
            steps = 10
            batch_size = 2
            lr = 1e-3
            objective = {{ kind = "{objective}" }}
            data = {{ kind = "shapes", size = {size} }}
            [model]
            input_size = {size}
            patch_size = {patch_size}
            in_channels = 3
            hidden_size = {hidden_size}
            depth = {depth}
            num_heads = {num_heads}
            num_classes = 10
            "#
        )
    }

    /// A flow model of one block on 8×8 shapes.
    fn mini() -> String {
        small_config("flow", 8, 2, 16, 1, 2)
    }

    #[test]
    fn the_sampler_follows_the_objective_unless_given() {
        let flow = TrainConfig::from_toml(&mini(), "mini").unwrap();
        assert_eq!(flow.sample.sampler, None);
        assert_eq!(flow.sampler(), SamplerKind::Euler);
        let ddpm = mini().replace("kind = \"flow\"", "kind = \"ddpm\"");
        let ddpm = TrainConfig::from_toml(&ddpm, "mini").unwrap();
        assert_eq!(ddpm.sampler(), SamplerKind::Ddim { eta: 0.0 });
        let partial =
            TrainConfig::from_toml(&format!("{}\n[sample]\nsteps = 7", mini()), "mini").unwrap();
        assert_eq!(
            (partial.sampler(), partial.sample_steps()),
            (SamplerKind::Euler, 7)
        );
        assert_eq!(flow.sample_steps(), 50);
        for (name, _) in PRESETS {
            let preset = TrainConfig::preset(name).unwrap();
            assert_eq!(preset.sample.sampler, Some(SamplerKind::Euler), "{name}");
        }
        // A config serialised with a full sample table (as state.json files were) reads back.
        let mut json: serde_json::Value = serde_json::to_value(&flow).unwrap();
        json["sample"]["sampler"] = serde_json::json!({ "kind": "euler" });
        let old: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.sample.sampler, Some(SamplerKind::Euler));
        let round_trip: TrainConfig =
            serde_json::from_str(&serde_json::to_string(&flow).unwrap()).unwrap();
        assert_eq!(round_trip, flow);
    }

    #[test]
    fn every_error_names_the_field_path() {
        let bad = |from: &str, to: &str| {
            assert!(mini().contains(from), "{from}");
            TrainConfig::from_toml(&mini().replacen(from, to, 1), "mini").unwrap_err()
        };
        let cases = [
            (
                "hidden_size = 16",
                "hidden_sise = 16",
                "unknown field `hidden_sise`",
            ),
            ("hidden_size = 16", "", "missing field `hidden_size`"),
            (
                "kind = \"flow\"",
                "kind = \"flow\", time_scale = 0.0",
                "mini: objective.time_scale: expected time_scale > 0 and finite, found 0",
            ),
            (
                "kind = \"flow\"",
                "kind = \"ddpm\", steps = 20",
                "mini: objective.steps: expected 21 <= steps <= 100000, found 20",
            ),
            (
                "lr = 1e-3",
                "lr = nan",
                "mini: lr: expected lr > 0 and finite, found NaN",
            ),
            (
                "steps = 10",
                "steps = 10\nwarmup_steps = 2000000000",
                "mini: warmup_steps: expected warmup_steps <= 1000000000",
            ),
            (
                "steps = 10",
                "steps = 10\ncheckpoint_every = 0",
                "mini: checkpoint_every: expected checkpoint_every > 0, found 0",
            ),
            (
                "size = 8",
                "size = 8, count = 5000000000000",
                "mini: data.count: expected count <= 4294967296",
            ),
            (
                "num_classes = 10",
                "num_classes = 10\nclass_dropout_prob = 1.0",
                "mini: model.class_dropout_prob: expected 0 <= class_dropout_prob < 1, found 1",
            ),
        ];
        for (from, to, expected) in cases {
            let err = bad(from, to);
            assert!(err.contains(expected), "{err}");
        }
        let err = bad("steps = 10", "steps = 10\nwarmup_steps = 11");
        assert!(
            err.contains("mini: warmup_steps: expected warmup_steps <= steps (10), found 11"),
            "{err}"
        );
        let err = bad("num_classes = 10", "num_classes = 7");
        assert!(
            err.contains("mini: model.num_classes: expected num_classes = 10, the classes of the shapes dataset, found 7"),
            "{err}"
        );
        let err = bad("depth = 1", "depth = 1\nmoe_placement = \"every_other\"\nmoe = { num_experts = 2, expert_hidden = 8, routing = { kind = \"token_choice\", top_k = 1 } }");
        assert!(
            err.contains("mini: model.moe_placement: expected a placement"),
            "{err}"
        );
        let err = bad("depth = 1", "depth = 1\nnum_experts = 4");
        assert!(
            err.contains("mini: model.num_experts: only reference config.json"),
            "{err}"
        );
        // The cosine schedule needs 2 steps (the posterior variance of step 1), no more.
        let cosine = |steps: &str| {
            mini().replace(
                "kind = \"flow\"",
                &format!("kind = \"ddpm\", steps = {steps}, schedule = \"cosine\""),
            )
        };
        let err = TrainConfig::from_toml(&cosine("1"), "mini").unwrap_err();
        assert!(
            err.contains("mini: objective.steps: expected 2 <= steps <= 100000, found 1"),
            "{err}"
        );
        assert_eq!(
            TrainConfig::from_toml(&cosine("2"), "mini")
                .unwrap()
                .sample_steps(),
            2
        );
        let err = TrainConfig::from_toml(&format!("{}\n[sample]\nsteps = 3", cosine("2")), "mini")
            .unwrap_err();
        assert!(
            err.contains("mini: sample.steps: expected steps <= 2, found 3"),
            "{err}"
        );
        let cifar = mini().replace(
            "{ kind = \"shapes\", size = 8 }",
            "{ kind = \"cifar10\", files = [] }",
        );
        let err = TrainConfig::from_toml(&cifar, "mini").unwrap_err();
        assert!(
            err.contains("data.files: expected at least one file, found none"),
            "{err}"
        );
        let err = TrainConfig::preset("tiny-moe").map(|mut c| {
            c.batch_size = 1 << 20;
            c.validate().unwrap_err()
        });
        assert!(err
            .unwrap()
            .starts_with("batch_size: expected batch_size <= 65536"));
    }

    #[test]
    fn adam_betas_must_be_two() {
        for betas in ["[0.9, 0.99, 0.5]", "[0.9]"] {
            let text = format!("{}\n[adamw]\nbetas = {betas}", mini());
            let err = TrainConfig::from_toml(&text, "mini").unwrap_err();
            assert!(
                err.contains("expected betas = [β1, β2], two numbers"),
                "{err}"
            );
        }
        let text = format!("{}\n[adamw]\nbetas = [0.8, 0.95]", mini());
        let config = TrainConfig::from_toml(&text, "mini").unwrap();
        assert_eq!(config.adamw.betas, (0.8, 0.95));
    }

    #[test]
    fn training_memory_is_checked_against_the_given_limit() {
        let config = TrainConfig::preset("tiny-moe").unwrap();
        config.check_training_memory(Some(1e12)).unwrap();
        config.check_training_memory(None).unwrap();
        let err = config.check_training_memory(Some(1e6)).unwrap_err();
        assert!(
            err.starts_with("model + training state (batch 32) need an estimated"),
            "{err}"
        );
    }
}
