//! An ablation preset (TOML): the training setup every variant shares — data, seed, steps,
//! batch size, optimiser and the dense backbone — the evaluation settings, and the variants,
//! each the backbone plus its FFN. `quick` and `full` are compiled in; any file works too.

use super::classifier::ClassifierConfig;
use crate::config::{ModelSpec, TrainConfig};
use ditmoe_nn::accounting::{check_memory, memory_estimate, model_cost, Workload};
use ditmoe_nn::moe::{MoeConfig, RoutingConfig};
use ditmoe_nn::{DitConfig, Field, MoePlacement};
use serde::{Deserialize, Serialize};

/// The compiled-in presets, by name.
pub const ABLATION_PRESETS: [(&str, &str); 3] = [
    ("quick", include_str!("../../ablations/quick.toml")),
    ("full", include_str!("../../ablations/full.toml")),
    ("routing", include_str!("../../ablations/routing.toml")),
];

/// How each trained variant is evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Generated images per class for the quality score and the sample grid.
    pub samples_per_class: usize,
    /// Sampler steps (the training config's `[sample]` gives the sampler and CFG scale).
    pub sample_steps: usize,
    /// Real images held out of the classifier's training: the reference of the quality score.
    pub real_images: usize,
    /// Images routed at every timestep bin for the specialisation tables.
    pub specialization_images: usize,
    pub timestep_bins: usize,
    pub classifier: ClassifierConfig,
    /// Top-k values tried at sampling time on token-choice and expert-race variants.
    pub top_k_sweep: Vec<usize>,
    /// Capacity factors tried at sampling time on expert-choice variants.
    pub capacity_sweep: Vec<f64>,
    /// One threshold γ for every expert, tried at sampling time on global-pool (DiffMoE)
    /// variants besides their predictor's thresholds and the static top-k (DiffMoE's
    /// "interval search", its Table 10).
    #[serde(default = "default_threshold_sweep")]
    pub threshold_sweep: Vec<f64>,
    /// Seeds of the batch-size gap (each samples one image alone and in a batch of 16, on MoE
    /// variants); 0 skips it.
    #[serde(default = "default_batch_gap_seeds")]
    pub batch_gap_seeds: u64,
}

fn default_threshold_sweep() -> Vec<f64> {
    vec![0.9, 0.5, 0.1, 0.01]
}

fn default_batch_gap_seeds() -> u64 {
    2
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig {
            samples_per_class: 10,
            sample_steps: 25,
            real_images: 1000,
            specialization_images: 64,
            timestep_bins: 5,
            classifier: ClassifierConfig::default(),
            top_k_sweep: vec![1, 2, 4],
            capacity_sweep: vec![1.0, 2.0, 4.0],
            threshold_sweep: default_threshold_sweep(),
            batch_gap_seeds: default_batch_gap_seeds(),
        }
    }
}

/// Bounds of the evaluation settings.
pub mod limits {
    pub const SAMPLES_PER_CLASS: usize = 1000;
    pub const REAL_IMAGES: usize = 1_000_000;
    pub const SPECIALIZATION_IMAGES: usize = 10_000;
    /// Each bin is one forward pass of the specialisation images.
    pub const TIMESTEP_BINS: usize = 100;
    pub const SWEEP_POINTS: usize = 16;
    pub const BATCH_GAP_SEEDS: u64 = 64;
}

impl EvaluationConfig {
    /// Checks every size (timestep bins also against the diffusion steps of `train`, sampler
    /// steps as `train`'s `[sample]` steps) and the sweeps: each value must fit the largest
    /// variant it can apply to (a point that fits no variant is a typo; one that fits some is
    /// skipped on the others). Messages name the field under `at`.
    pub fn validate_at(
        &self,
        at: &Field,
        train: &TrainConfig,
        variants: &[VariantSpec],
    ) -> Result<(), String> {
        at.at("samples_per_class")
            .positive_count(self.samples_per_class, limits::SAMPLES_PER_CLASS)?;
        train.check_sample_steps(self.sample_steps, &at.at("sample_steps"))?;
        at.at("real_images")
            .count_in(self.real_images, 2, limits::REAL_IMAGES)?;
        at.at("specialization_images")
            .positive_count(self.specialization_images, limits::SPECIALIZATION_IMAGES)?;
        let bins = limits::TIMESTEP_BINS.min(train.objective.max_sample_steps());
        at.at("timestep_bins")
            .positive_count(self.timestep_bins, bins)?;
        self.classifier.validate_at(&at.at("classifier"))?;
        at.at("batch_gap_seeds").require(
            self.batch_gap_seeds <= limits::BATCH_GAP_SEEDS,
            format!("at most {} seeds", limits::BATCH_GAP_SEEDS),
            self.batch_gap_seeds,
        )?;
        let most_experts = |takes: fn(&RoutingConfig) -> bool| {
            variants
                .iter()
                .filter_map(|v| v.moe)
                .filter(|moe| takes(&moe.routing))
                .map(|moe| moe.num_experts)
                .max()
                .unwrap_or(ditmoe_nn::config::limits::EXPERTS)
        };
        let top_k = at.at("top_k_sweep");
        top_k.at_most(self.top_k_sweep.len(), limits::SWEEP_POINTS)?;
        let experts = most_experts(|r| {
            matches!(
                r,
                RoutingConfig::TokenChoice { .. } | RoutingConfig::ExpertRace { .. }
            )
        });
        for (i, &k) in self.top_k_sweep.iter().enumerate() {
            top_k.index(i).positive_count(k, experts)?;
        }
        let capacity = at.at("capacity_sweep");
        capacity.at_most(self.capacity_sweep.len(), limits::SWEEP_POINTS)?;
        let experts = most_experts(|r| matches!(r, RoutingConfig::ExpertChoice { .. }));
        for (i, &f) in self.capacity_sweep.iter().enumerate() {
            capacity.index(i).positive(f)?;
            capacity.index(i).at_most(f, experts as f64)?;
        }
        let thresholds = at.at("threshold_sweep");
        thresholds.at_most(self.threshold_sweep.len(), limits::SWEEP_POINTS)?;
        for (i, &gamma) in self.threshold_sweep.iter().enumerate() {
            thresholds.index(i).fraction(gamma)?;
        }
        Ok(())
    }
}

/// The longest variant name: with the prefixes and suffixes of the files named after a
/// variant (`specialization-NAME.svg`, …) it stays far below the 255-byte file-name limit.
pub const MAX_VARIANT_NAME: usize = 64;

/// One variant as the preset writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// A short name (ASCII letters, digits, `-`, `_`; at most [`MAX_VARIANT_NAME`] characters):
    /// file names and table rows use it.
    pub name: String,
    /// One line saying what the variant is.
    pub about: String,
    /// The MoE FFN; without one the variant is a dense DiT.
    #[serde(default)]
    pub moe: Option<MoeConfig>,
    #[serde(default)]
    pub moe_placement: MoePlacement,
    /// A dense variant whose MLP width is chosen so its GMACs match this variant's activated
    /// GMACs (the iso-FLOP dense baseline).
    #[serde(default)]
    pub iso_flop_with: Option<String>,
}

/// A whole ablation preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationPreset {
    #[serde(default)]
    pub description: String,
    /// The shared training setup; its model is the dense backbone of every variant.
    pub train: TrainConfig,
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    #[serde(rename = "variant")]
    pub variants: Vec<VariantSpec>,
}

/// A variant ready to train: its name, description and full training config.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub about: String,
    pub config: TrainConfig,
}

impl Variant {
    pub fn model(&self) -> DitConfig {
        match &self.config.model {
            ModelSpec::Config(config) => config.clone(),
            ModelSpec::Preset(_) => unreachable!("variants carry a resolved config"),
        }
    }
}

impl AblationPreset {
    /// `quick`, `full`, or the path of a preset file.
    pub fn load(name_or_path: &str) -> Result<Self, String> {
        match ABLATION_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => Self::from_toml(text, &format!("ablation preset {name}")),
            None => {
                let text = std::fs::read_to_string(name_or_path).map_err(|e| {
                    format!(
                        "--preset {name_or_path}: not a built-in preset ({}) nor a readable file: {e}",
                        ABLATION_PRESETS.map(|p| p.0).join(", ")
                    )
                })?;
                Self::from_toml(&text, name_or_path)
            }
        }
    }

    /// Parses and checks a preset; the message names the bad field by its path.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let preset: AblationPreset = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        preset
            .check()
            .and_then(|()| preset.variants().map(|_| ()))
            .map_err(|e| format!("{origin}: {e}"))?;
        Ok(preset)
    }

    /// Refuses variants whose training, or whose evaluation (sampling every class at once,
    /// with and without the label for guidance; routing the specialisation images), cannot fit
    /// in `memory_bytes` (`None`: only the absolute size caps).
    pub fn check_memory(
        &self,
        variants: &[Variant],
        memory_bytes: Option<f64>,
    ) -> Result<(), String> {
        let e = &self.evaluation;
        for variant in variants {
            let model = variant.model();
            let sampled = 2 * e.samples_per_class * model.num_classes;
            let batch = sampled.max(e.specialization_images);
            let fits = variant
                .config
                .check_training_memory(memory_bytes)
                .and_then(|()| {
                    let estimate = memory_estimate(&model, Workload::Inference { batch });
                    check_memory(
                        &estimate,
                        &format!("model + activations for {batch} images"),
                        memory_bytes,
                    )
                });
            fits.map_err(|err| format!("variant `{}`: {err}", variant.name))?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.train.validate_at(&Field::root("train"))?;
        self.train.check_warmup_fits(&Field::root("train"))?;
        if self.variants.is_empty() {
            return Err("expected at least one [[variant]]".to_string());
        }
        let backbone = self.train.model_config()?;
        if backbone.moe.is_some() {
            return Err(
                "train.model must be the dense backbone; give each variant its `moe`".to_string(),
            );
        }
        for (i, v) in self.variants.iter().enumerate() {
            let good_name = !v.name.is_empty()
                && v.name.len() <= MAX_VARIANT_NAME
                && v.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !good_name {
                return Err(format!(
                    "variant name `{}`: expected 1 to {MAX_VARIANT_NAME} ASCII letters, digits, `-` or `_`",
                    v.name
                ));
            }
            if self.variants[..i].iter().any(|u| u.name == v.name) {
                return Err(format!("variant `{}` appears twice", v.name));
            }
            if v.moe.is_some() && v.iso_flop_with.is_some() {
                return Err(format!(
                    "variant `{}`: `iso_flop_with` makes a dense variant; drop `moe`",
                    v.name
                ));
            }
            if let Some(moe) = &v.moe {
                moe.validate_at(&Field::root(format!("variant[{i}].moe")))
                    .map_err(|e| format!("variant `{}`: {e}", v.name))?;
            }
        }
        self.evaluation
            .validate_at(&Field::root("evaluation"), &self.train, &self.variants)
    }

    /// Every variant with its resolved training config.
    pub fn variants(&self) -> Result<Vec<Variant>, String> {
        let backbone = self.train.model_config()?;
        let with_ffn = |spec: &VariantSpec| {
            let mut model = backbone.clone();
            if let Some(moe) = spec.moe {
                model = model.with_moe(moe, spec.moe_placement);
            }
            model
                .validate()
                .map_err(|e| format!("variant `{}`: {e}", spec.name))?;
            Ok::<_, String>(model)
        };
        self.variants
            .iter()
            .map(|spec| {
                let model = match &spec.iso_flop_with {
                    None => with_ffn(spec)?,
                    Some(target) => {
                        let reference = self
                            .variants
                            .iter()
                            .find(|v| &v.name == target && v.moe.is_some())
                            .ok_or_else(|| {
                                format!("variant `{}`: iso_flop_with = `{target}` must name an MoE variant of this preset", spec.name)
                            })?;
                        iso_flop_dense(&backbone, model_cost(&with_ffn(reference)?).gmacs)
                    }
                };
                let mut config = self.train.clone();
                config.model = ModelSpec::Config(model);
                Ok(Variant {
                    name: spec.name.clone(),
                    about: spec.about.clone(),
                    config,
                })
            })
            .collect()
    }

    /// The variants named in `names` (all when empty), in preset order.
    pub fn select(&self, names: &[String]) -> Result<Vec<Variant>, String> {
        let all = self.variants()?;
        if let Some(unknown) = names.iter().find(|n| !all.iter().any(|v| &v.name == *n)) {
            return Err(format!(
                "--variants: no variant `{unknown}` in this preset (it has: {})",
                all.iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(all
            .into_iter()
            .filter(|v| names.is_empty() || names.contains(&v.name))
            .collect())
    }
}

/// The dense backbone with the MLP width whose GMACs come closest to `target` (GMACs are
/// affine in the MLP width, so two evaluations give the line to solve).
pub fn iso_flop_dense(backbone: &DitConfig, target: f64) -> DitConfig {
    let d = backbone.hidden_size as f64;
    let with_hidden = |hidden: f64| {
        let mut config = backbone.clone();
        config.mlp_ratio = hidden / d;
        config.moe = None;
        config
    };
    let (at_d, at_2d) = (
        model_cost(&with_hidden(d)).gmacs,
        model_cost(&with_hidden(2.0 * d)).gmacs,
    );
    let hidden = (d + (target - at_d) / ((at_2d - at_d) / d))
        .round()
        .max(1.0);
    with_hidden(hidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ditmoe_nn::moe::RouterConfig;

    #[test]
    fn the_builtin_presets_parse_and_match_compute_across_moe_variants() {
        for (name, _) in ABLATION_PRESETS {
            let preset = AblationPreset::load(name).unwrap();
            let variants = preset.variants().unwrap();
            let gmacs = |name: &str| {
                model_cost(&variants.iter().find(|v| v.name == name).unwrap().model()).gmacs
            };
            // Every MoE variant applies two experts' worth of compute per token, except the
            // capacity-factor-1 ablation, which is the half-compute point by design, and DiffMoE's
            // published point, which matches the dense model instead. On every token of a MoE
            // block a global pool adds its capacity predictor (Linear(D, D), Linear(D, E)) and a
            // two-layer router its hidden layer (Linear(D, D)).
            let overhead = |config: &DitConfig, with_router: bool| {
                let moe = config.moe.unwrap();
                let (d, e) = (config.hidden_size, moe.num_experts);
                let mut per_token = if with_router { d * e } else { 0 };
                if moe.routing.global_pool().is_some() {
                    per_token += d * d + d * e;
                }
                if moe.router != RouterConfig::Linear {
                    per_token += d * d;
                }
                let moe_blocks = (0..config.depth)
                    .filter(|&b| matches!(config.ffn(b), ditmoe_nn::FfnKind::Moe(_)))
                    .count();
                (config.tokens() * moe_blocks * per_token) as f64 / 1e9
            };
            let matched: Vec<&Variant> = variants
                .iter()
                .filter(|v| {
                    v.model().moe.is_some() && !["ec-cf1", "diffmoe"].contains(&v.name.as_str())
                })
                .collect();
            assert!(matched.len() >= 6, "{name}");
            for v in &matched {
                let config = v.model();
                let g = model_cost(&config).gmacs;
                assert!(
                    (g - gmacs("tc") - overhead(&config, false)).abs() < 1e-9,
                    "{name}: {} {g}",
                    v.name
                );
            }
            if let Some(diffmoe) = variants.iter().find(|v| v.name == "diffmoe") {
                let config = diffmoe.model();
                let g = model_cost(&config).gmacs;
                assert!(
                    (g - gmacs("dense") - overhead(&config, true)).abs() < 1e-9,
                    "{name}: diffmoe {g} vs dense {}",
                    gmacs("dense")
                );
            }
            if name == "routing" {
                continue;
            }
            assert!(
                (gmacs("dense-iso") / gmacs("tc") - 1.0).abs() < 0.01,
                "{name}: iso-FLOP dense within 1%"
            );
            let moe = |n: &str| {
                variants
                    .iter()
                    .find(|v| v.name == n)
                    .unwrap()
                    .model()
                    .moe
                    .unwrap()
            };
            assert!(moe("tc").shared_expert_hidden.is_some());
            assert!(moe("tc-no-shared").shared_expert_hidden.is_none());
            assert!(matches!(
                moe("tc-no-balance").routing,
                RoutingConfig::TokenChoice {
                    balance_loss_alpha: 0.0,
                    ..
                }
            ));
            assert!(matches!(
                moe("ec-cf2").routing,
                RoutingConfig::ExpertChoice {
                    capacity_factor: 2.0,
                    ..
                }
            ));
        }
    }

    #[test]
    fn iso_flop_dense_solves_for_the_mlp_width() {
        let backbone = AblationPreset::load("quick")
            .unwrap()
            .train
            .model_config()
            .unwrap();
        let mut wider = backbone.clone();
        wider.mlp_ratio = 3.0;
        let target = model_cost(&wider).gmacs;
        let iso = iso_flop_dense(&backbone, target);
        assert_eq!(iso.mlp_hidden(), 3 * backbone.hidden_size);
    }

    #[test]
    fn bad_presets_are_refused_with_the_reason() {
        let quick = ABLATION_PRESETS[0].1;
        let bad = |from: &str, to: &str| {
            assert!(quick.contains(from), "{from}");
            AblationPreset::from_toml(&quick.replacen(from, to, 1), "test").unwrap_err()
        };
        assert!(bad("name = \"tc\"", "name = \"dense\"").contains("appears twice"));
        assert!(bad("name = \"tc\"", "name = \"t c\"").contains("variant name `t c`"));
        let long = format!("name = \"{}\"", "t".repeat(MAX_VARIANT_NAME + 1));
        assert!(bad("name = \"tc\"", &long).contains("expected 1 to 64 ASCII letters"));
        assert!(bad("iso_flop_with = \"tc\"", "iso_flop_with = \"nope\"")
            .contains("iso_flop_with = `nope`"));
        assert!(bad("top_k = 2", "top_k = 9").contains("top_k = 9"));
        assert!(bad("batch_size = ", "batch_size = 0 #").contains("batch_size > 0"));
        assert!(
            bad("[evaluation]\n", "[evaluation]\nbatch_gap_seeds = 65\n")
                .contains("evaluation.batch_gap_seeds: expected at most 64 seeds, found 65")
        );
        let err = bad("warmup_steps = 50", "warmup_steps = 5000");
        assert!(
            err.contains("train.warmup_steps: expected warmup_steps <= steps (900), found 5000"),
            "{err}"
        );
        let preset = AblationPreset::load("quick").unwrap();
        assert!(preset
            .select(&["tc".into(), "bogus".into()])
            .unwrap_err()
            .contains("no variant `bogus`"));
        let picked = preset.select(&["ec-cf2".into(), "dense".into()]).unwrap();
        assert_eq!(
            picked.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            ["dense", "ec-cf2"]
        );
        assert!(AblationPreset::load("/nonexistent/x.toml")
            .unwrap_err()
            .contains("not a built-in preset"));
    }
}
