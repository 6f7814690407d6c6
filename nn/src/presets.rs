//! Named model configurations: the DiT family (Peebles & Xie), DiT-MoE (token choice, Fei et
//! al.), EC-DiT-style expert choice, and small presets that train on a CPU.
//!
//! Latent-diffusion presets take the image size: the input is the 8× downsampled 4-channel
//! latent (256 px → 32×32×4), 1000 classes. The `tiny-*` presets are pixel-space 16×16 RGB
//! models with 10 classes for the built-in dataset, whatever the image size.

use crate::config::{DitConfig, MoePlacement};
use crate::moe::{
    ExpertKind, Gate, MoeConfig, RaceInference, RacePool, RouterConfig, RoutingConfig, RoutingGroup,
};

/// (name, depth, hidden, heads) of the backbone sizes.
const SIZES: [(&str, usize, usize, usize); 5] = [
    ("S", 12, 384, 6),
    ("B", 12, 768, 12),
    ("L", 24, 1024, 16),
    ("XL", 28, 1152, 16),
    ("G", 40, 1408, 16),
];
const PATCHES: [usize; 3] = [2, 4, 8];

/// Every preset name, in a stable order.
pub fn preset_names() -> Vec<String> {
    let mut names = Vec::new();
    for (size, ..) in SIZES {
        for p in PATCHES {
            names.push(format!("DiT-{size}/{p}"));
        }
    }
    for (size, ..) in SIZES {
        for p in PATCHES {
            names.extend(["8E2A", "16E2A"].map(|e| format!("DiT-MoE-{size}/{p}-{e}")));
        }
    }
    for (size, ..) in SIZES.iter().filter(|s| s.0 != "G") {
        for p in PATCHES {
            names.extend(["8E-cf2", "8E-cf1", "16E-cf2"].map(|e| format!("EC-DiT-{size}/{p}-{e}")));
        }
    }
    names.extend(TINY.iter().map(|s| s.to_string()));
    names
}

const TINY: [&str; 4] = ["tiny-dense", "tiny-moe", "tiny-ec", "tiny-race"];

fn backbone(size: &str, patch: &str, image_size: usize) -> Result<DitConfig, String> {
    let (_, depth, hidden, heads) = SIZES
        .iter()
        .copied()
        .find(|s| s.0 == size)
        .ok_or_else(|| format!("unknown model size `{size}` (expected S, B, L, XL or G)"))?;
    let patch: usize = patch
        .parse()
        .map_err(|_| format!("bad patch size `{patch}`"))?;
    if image_size % 8 != 0 {
        return Err(format!(
            "image size {image_size} is not divisible by 8 (the latent downsampling)"
        ));
    }
    Ok(DitConfig::dense(
        image_size / 8,
        patch,
        4,
        hidden,
        depth,
        heads,
        1000,
    ))
}

fn tiny(name: &str) -> DitConfig {
    // 16×16 RGB, patch 2 → 64 tokens of width 96, 4 blocks: sized for a 2-core CPU.
    let mut base = DitConfig::dense(16, 2, 3, 96, 4, 4, 10);
    base.learn_sigma = false;
    let experts = |routing| MoeConfig {
        num_experts: 8,
        expert_hidden: base.hidden_size,
        expert_kind: ExpertKind::SwiGlu,
        shared_expert_hidden: None,
        routing,
        router: RouterConfig::Linear,
    };
    match name {
        "tiny-moe" => base.clone().with_moe(
            experts(RoutingConfig::TokenChoice {
                top_k: 2,
                renormalize: false,
                balance_loss_alpha: 0.01,
                gate: Gate::Softmax,
            }),
            MoePlacement::EveryBlock,
        ),
        "tiny-ec" => base.clone().with_moe(
            experts(RoutingConfig::ExpertChoice {
                capacity_factor: 2.0,
                group: RoutingGroup::PerImage,
                gate: Gate::Softmax,
            }),
            MoePlacement::EveryBlock,
        ),
        "tiny-race" => base.clone().with_moe(
            experts(RoutingConfig::ExpertRace {
                top_k: 2,
                gate: Gate::Softmax,
                pool: RacePool::Batch,
                inference: RaceInference::Static,
                similarity_loss_weight: 0.0,
            }),
            MoePlacement::EveryBlock,
        ),
        _ => base,
    }
}

/// The config of preset `name` at `image_size` pixels (latent-diffusion presets only).
pub fn preset(name: &str, image_size: usize) -> Result<DitConfig, String> {
    if TINY.contains(&name) {
        return Ok(tiny(name));
    }
    let unknown = || format!("unknown preset `{name}`; `ditmoe zoo` lists them all");
    if !preset_names().iter().any(|n| n == name) {
        return Err(unknown());
    }
    // Names read `{family}-{size}/{patch}[-{suffix}]`.
    let (family, rest) = [("DiT-MoE-", "moe"), ("EC-DiT-", "ec"), ("DiT-", "dense")]
        .iter()
        .find_map(|(prefix, family)| name.strip_prefix(prefix).map(|rest| (*family, rest)))
        .ok_or_else(unknown)?;
    let (size, rest) = rest.split_once('/').ok_or_else(unknown)?;
    let (patch, suffix) = rest.split_once('-').unwrap_or((rest, ""));
    let base = backbone(size, patch, image_size)?;
    match family {
        "moe" => {
            let experts: usize = suffix
                .trim_end_matches("E2A")
                .parse()
                .map_err(|_| unknown())?;
            let moe = base.ditmoe_ffn(experts, 2);
            Ok(base.with_moe(moe, MoePlacement::EveryBlock))
        }
        "ec" => {
            let (experts, capacity) = suffix.split_once("E-cf").ok_or_else(unknown)?;
            let moe = MoeConfig {
                num_experts: experts.parse().map_err(|_| unknown())?,
                expert_hidden: base.mlp_hidden(),
                expert_kind: ExpertKind::GeluMlp,
                shared_expert_hidden: None,
                routing: RoutingConfig::ExpertChoice {
                    capacity_factor: capacity.parse().map_err(|_| unknown())?,
                    group: RoutingGroup::PerImage,
                    gate: Gate::Softmax,
                },
                router: RouterConfig::Linear,
            };
            Ok(base.with_moe(moe, MoePlacement::EveryOther))
        }
        _ => Ok(base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_builds_a_valid_config() {
        for name in preset_names() {
            let config = preset(&name, 256).unwrap_or_else(|e| panic!("{name}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(preset("DiT-Q/2", 256).is_err());
        assert!(preset("DiT-S/2", 100).is_err());
    }

    #[test]
    fn moe_presets_have_the_named_experts() {
        let c = preset("DiT-MoE-S/2-16E2A", 256).unwrap();
        let moe = c.moe.unwrap();
        assert_eq!(
            (moe.num_experts, moe.expert_hidden, moe.shared_expert_hidden),
            (16, 1536, Some(768))
        );
        let ec = preset("EC-DiT-B/4-8E-cf1", 256).unwrap();
        assert!(
            matches!(ec.moe.unwrap().routing, RoutingConfig::ExpertChoice { capacity_factor, .. } if capacity_factor == 1.0)
        );
        assert_eq!(ec.moe_placement, MoePlacement::EveryOther);
    }
}
