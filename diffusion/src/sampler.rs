//! Samplers: DDPM ancestral sampling with timestep respacing, DDIM (Song et al., 2021), and
//! Euler integration of a rectified flow. The model is any [`Denoiser`]; classifier-free
//! guidance is applied inside it (see `Dit::forward_with_cfg`).

use crate::gaussian::{per_sample, GaussianDiffusion};
use crate::schedule::Schedule;
use ditmoe_tensor::{DType, Result, SeededRng, Tensor};
use serde::{Deserialize, Serialize};

/// A model prediction: `x` `[N, C, H, W]` and model-time `t` `[N]` → output `[N, C_out, H, W]`
/// (ε, plus variance channels when learned; or a velocity for flow).
pub trait Denoiser {
    fn predict(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
}

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> Denoiser for F {
    fn predict(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self(x, t)
    }
}

/// Which sampler to run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", from = "SamplerTable")]
pub enum SamplerKind {
    /// Ancestral DDPM on a respaced schedule; learned variance when the model has it,
    /// the posterior variance β̃ otherwise.
    Ddpm,
    /// DDIM with stochasticity η (0 = deterministic).
    Ddim { eta: f64 },
    /// Euler steps of dz/dt = v from t = 1 to 0 (rectified flow models).
    Euler,
}

/// [`SamplerKind`] as a config writes it, the knob-less samplers as empty tables so that an
/// unknown key (`{ kind = "euler", eta = 0.0 }`) is refused: serde lets any key through on a
/// unit variant of an internally tagged enum.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum SamplerTable {
    Ddpm {},
    Ddim { eta: f64 },
    Euler {},
}

impl From<SamplerTable> for SamplerKind {
    fn from(table: SamplerTable) -> Self {
        match table {
            SamplerTable::Ddpm {} => SamplerKind::Ddpm,
            SamplerTable::Ddim { eta } => SamplerKind::Ddim { eta },
            SamplerTable::Euler {} => SamplerKind::Euler,
        }
    }
}

/// Options shared by the samplers.
#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    pub steps: usize,
    /// Clip the predicted x̂_0 to [−1, 1] (pixel-space data).
    pub clip_denoised: bool,
    /// Flow models see t·`flow_time_scale` as their timestep.
    pub flow_time_scale: f64,
}

fn timesteps(values: impl IntoIterator<Item = f64>, n: usize) -> Result<Tensor> {
    let v: Vec<f32> = values.into_iter().map(|t| t as f32).collect();
    Tensor::from_vec(v.into_iter().cycle().take(n).collect(), &[n])
}

/// Splits a model output into its data channels and (if present) variance channels.
fn split_output(out: &Tensor, channels: usize) -> Result<(Tensor, Option<Tensor>)> {
    let eps = out.narrow(1, 0, channels)?.contiguous();
    let v = (out.shape()[1] > channels)
        .then(|| out.narrow(1, channels, channels).map(|v| v.contiguous()))
        .transpose()?;
    Ok((eps, v))
}

/// Draws samples of `shape` starting from N(0, I) noise.
pub fn sample(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser,
    shape: &[usize],
    kind: SamplerKind,
    options: SampleOptions,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    let start = Tensor::randn(shape, 0.0, 1.0, DType::F32, rng)?;
    sample_from(diffusion, model, start, kind, options, rng)
}

/// Runs the sampler from the given starting noise; `rng` supplies any later noise.
pub fn sample_from(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser,
    start: Tensor,
    kind: SamplerKind,
    options: SampleOptions,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    let shape = start.shape().to_vec();
    let noise = |rng: &mut SeededRng| Tensor::randn(&shape, 0.0, 1.0, DType::F32, rng);
    let mut x = start;
    let n = shape[0];
    let channels = shape[1];
    if kind == SamplerKind::Euler {
        let steps = options.steps.max(1);
        for k in 0..steps {
            let (t, t_next) = (
                1.0 - k as f64 / steps as f64,
                1.0 - (k + 1) as f64 / steps as f64,
            );
            let (v, _) = split_output(
                &model.predict(&x, &timesteps([t * options.flow_time_scale], n)?)?,
                channels,
            )?;
            x = x.sub(&v.mul_scalar(t - t_next)?)?;
        }
        return Ok(x);
    }
    let (kept, r): (Vec<usize>, Schedule) = diffusion.schedule.respaced(options.steps);
    let spaced = GaussianDiffusion::new(r, diffusion.learn_sigma);
    for i in (0..kept.len()).rev() {
        let at = vec![i; n];
        let out = model.predict(&x, &timesteps([kept[i] as f64], n)?)?;
        let (eps, v) = split_output(&out, channels)?;
        let mut x0 = spaced.predict_x0(&x, &at, &eps)?;
        if options.clip_denoised {
            x0 = x0.maximum_scalar(-1.0)?.minimum_scalar(1.0)?;
        }
        let s = &spaced.schedule;
        x = match kind {
            SamplerKind::Ddpm => {
                let mean = spaced.posterior_mean(&x0, &x, &at)?;
                if i == 0 {
                    mean
                } else {
                    let log_var = match &v {
                        Some(v) => spaced
                            .model_log_variance(&ditmoe_autograd::Var::constant(v.clone()), &at)?
                            .value(),
                        None => per_sample([s.posterior_log_variance_clipped[i]], DType::F32)?,
                    };
                    mean.add(&noise(rng)?.mul(&log_var.mul_scalar(0.5)?.exp()?)?)?
                }
            }
            SamplerKind::Ddim { eta } => {
                let (a, a_prev) = (s.alphas_cumprod[i], s.alphas_cumprod_prev[i]);
                // ε consistent with the (possibly clipped) x̂_0.
                let eps = x
                    .mul_scalar((1.0 / a).sqrt())?
                    .sub(&x0)?
                    .mul_scalar(1.0 / (1.0 / a - 1.0).sqrt())?;
                let sigma = eta * ((1.0 - a_prev) / (1.0 - a)).sqrt() * (1.0 - a / a_prev).sqrt();
                let mean = x0
                    .mul_scalar(a_prev.sqrt())?
                    .add(&eps.mul_scalar((1.0 - a_prev - sigma * sigma).max(0.0).sqrt())?)?;
                if i == 0 || sigma == 0.0 {
                    mean
                } else {
                    mean.add(&noise(rng)?.mul_scalar(sigma)?)?
                }
            }
            SamplerKind::Euler => unreachable!("handled above"),
        };
    }
    Ok(x)
}
