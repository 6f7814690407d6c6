//! Class-conditional generation from a trained model: the sampler of its objective with
//! classifier-free guidance (Ho & Salimans, 2022) on the data channels.

use crate::config::{Objective, TrainConfig};
use anyhow::{bail, Result};
use ditmoe_autograd::{no_grad, Var};
use ditmoe_diffusion::{sample, SampleOptions, SamplerKind};
use ditmoe_nn::{Dit, Module};
use ditmoe_tensor::{seeded_rng, Device, Tensor};

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generation {
    pub sampler: SamplerKind,
    pub steps: usize,
    pub cfg_scale: f64,
    /// Seeds the starting noise (and any sampler noise): equal seeds, equal noise.
    pub seed: u64,
    /// Where the model runs. The sampler's own arithmetic (noise, update rule) stays on the
    /// host, so every device draws the same noise; each denoising call moves the batch over.
    pub device: Device,
}

/// Labels for a class-by-class grid: `per_class` of each class, class-major.
pub fn sample_labels(classes: usize, per_class: usize) -> Vec<usize> {
    (0..classes)
        .flat_map(|c| std::iter::repeat_n(c, per_class))
        .collect()
}

/// Images `[N, C, H, W]` in [−1, 1] (on the host), one per label, from `model` trained per
/// `config`. The model is moved to `generation.device` first.
pub fn generate(
    model: &Dit,
    config: &TrainConfig,
    labels: &[usize],
    generation: &Generation,
) -> Result<Tensor> {
    let flow = matches!(config.objective, Objective::Flow { .. });
    if flow != (generation.sampler == SamplerKind::Euler) {
        bail!(
            "a {} model samples with {}",
            if flow { "flow" } else { "DDPM" },
            if flow { "euler" } else { "ddpm or ddim" }
        );
    }
    let device = generation.device;
    model.to_device(device)?;
    let y = Tensor::from_vec(labels.iter().map(|&l| l as i64).collect(), &[labels.len()])?
        .to_device(device)?;
    let denoise = |x: &Tensor, t: &Tensor| {
        no_grad(|| {
            let x = Var::constant(x.to_device(device)?);
            model
                .forward_with_cfg(&x, &t.to_device(device)?, &y, generation.cfg_scale)?
                .value()
                .to_device(Device::Cpu)
        })
    };
    let diffusion = crate::train::diffusion_of(config, model.config.learn_sigma);
    let flow_time_scale = match config.objective {
        Objective::Flow { time_scale } => time_scale,
        Objective::Ddpm { .. } => 1.0,
    };
    let options = SampleOptions {
        steps: generation.steps,
        clip_denoised: true,
        flow_time_scale,
    };
    let shape = [
        labels.len(),
        model.config.in_channels,
        model.config.input_size,
        model.config.input_size,
    ];
    Ok(sample(
        &diffusion,
        &denoise,
        &shape,
        generation.sampler,
        options,
        &mut seeded_rng(generation.seed),
    )?)
}
