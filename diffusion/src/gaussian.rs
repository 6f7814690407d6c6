//! DDPM training objective (Ho et al., 2020) with DiT's learned variance (Nichol & Dhariwal,
//! 2021; Peebles & Xie, 2023): ε-prediction MSE plus the variational bound that trains σ.

use crate::objective::{draw_noise, model_time, Draw, LossTerms, Objective};
use crate::schedule::Schedule;
use ditmoe_autograd::Var;
use ditmoe_tensor::{DType, Device, Result, SeededRng, Tensor, TensorError};
use rand::Rng;

/// Per-sample coefficients `[N]` broadcast over an image batch `[N, C, H, W]` → `[N, 1, 1, 1]`.
pub fn per_sample(values: impl IntoIterator<Item = f64>, dtype: DType) -> Result<Tensor> {
    let v: Vec<f64> = values.into_iter().collect();
    let n = v.len();
    Tensor::from_vec(v, &[n, 1, 1, 1])?.to_dtype(dtype)
}

/// Gaussian diffusion with ε-prediction and optionally a learned variance.
#[derive(Debug, Clone)]
pub struct GaussianDiffusion {
    pub schedule: Schedule,
    pub learn_sigma: bool,
}

/// KL(N(m1, e^lv1) ‖ N(m2, e^lv2)) elementwise, with the second distribution's log variance
/// a `Var` (the only input that carries gradient here).
fn normal_kl(mean1: &Tensor, log_var1: &Tensor, mean2: &Tensor, log_var2: &Var) -> Result<Var> {
    let lv1 = Var::constant(log_var1.clone());
    let squared = Var::constant(mean1.sub(mean2)?.powf(2.0)?);
    let terms = log_var2
        .sub(&lv1)?
        .add(&lv1.sub(log_var2)?.exp()?)?
        .add(&squared.mul(&log_var2.neg()?.exp()?)?)?;
    terms.add_scalar(-1.0)?.mul_scalar(0.5)
}

/// Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), the reference's approximation.
fn approx_standard_normal_cdf(x: &Var) -> Result<Var> {
    let cubic = x.powf(3.0)?.mul_scalar(0.044715)?;
    x.add(&cubic)?
        .mul_scalar((2.0 / std::f64::consts::PI).sqrt())?
        .tanh()?
        .add_scalar(1.0)?
        .mul_scalar(0.5)
}

/// log-likelihood of data `x` in [−1, 1], discretised to 256 bins, under N(mean, e^{2·log_scale})
/// (the decoder term L_0 of DDPM).
fn discretized_gaussian_log_likelihood(x: &Tensor, mean: &Tensor, log_scale: &Var) -> Result<Var> {
    let centered = Var::constant(x.sub(mean)?);
    let inv_std = log_scale.neg()?.exp()?;
    let cdf_plus = approx_standard_normal_cdf(&inv_std.mul(&centered.add_scalar(1.0 / 255.0)?)?)?;
    let cdf_min = approx_standard_normal_cdf(&inv_std.mul(&centered.add_scalar(-1.0 / 255.0)?)?)?;
    let floor = Var::constant(Tensor::full(&[], 1e-12, x.dtype())?);
    let log_cdf_plus = cdf_plus.maximum(&floor)?.log()?;
    let log_one_minus_cdf_min = cdf_min.neg()?.add_scalar(1.0)?.maximum(&floor)?.log()?;
    let log_delta = cdf_plus.sub(&cdf_min)?.maximum(&floor)?.log()?;
    let below = x.lt(&Tensor::full(&[], -0.999, x.dtype())?)?;
    let above = x.gt(&Tensor::full(&[], 0.999, x.dtype())?)?;
    Var::where_cond(
        &below,
        &log_cdf_plus,
        &Var::where_cond(&above, &log_one_minus_cdf_min, &log_delta)?,
    )
}

/// Mean over every dimension but the first: `[N, …] → [N]`.
fn mean_per_sample(x: &Var) -> Result<Var> {
    let dims: Vec<usize> = (1..x.shape().len()).collect();
    x.mean(&dims, false)
}

impl GaussianDiffusion {
    pub fn new(schedule: Schedule, learn_sigma: bool) -> Self {
        GaussianDiffusion {
            schedule,
            learn_sigma,
        }
    }

    /// Per-sample schedule values `f(t)` as `[N, 1, 1, 1]`, in `like`'s dtype and on its device.
    fn coefficient(&self, t: &[usize], like: &Tensor, f: impl Fn(usize) -> f64) -> Result<Tensor> {
        per_sample(t.iter().map(|&t| f(t)), like.dtype())?.to_device(like.device())
    }

    /// x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with one timestep per sample.
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        let a = &self.schedule.alphas_cumprod;
        let signal = self.coefficient(t, x0, |t| a[t].sqrt())?;
        let sigma = self.coefficient(t, x0, |t| (1.0 - a[t]).sqrt())?;
        x0.mul(&signal)?.add(&noise.mul(&sigma)?)
    }

    /// x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε̂.
    pub fn predict_x0(&self, x_t: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
        let a = &self.schedule.alphas_cumprod;
        x_t.mul(&self.coefficient(t, x_t, |t| (1.0 / a[t]).sqrt())?)?
            .sub(&eps.mul(&self.coefficient(t, x_t, |t| (1.0 / a[t] - 1.0).sqrt())?)?)
    }

    /// Mean of q(x_{t−1} | x_t, x_0).
    pub fn posterior_mean(&self, x0: &Tensor, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let s = &self.schedule;
        x0.mul(&self.coefficient(t, x0, |t| s.posterior_mean_coef1[t])?)?
            .add(&x_t.mul(&self.coefficient(t, x0, |t| s.posterior_mean_coef2[t])?)?)
    }

    /// Learned log variance: frac·log β_t + (1 − frac)·log β̃_t with frac = (v + 1)/2.
    pub fn model_log_variance(&self, v: &Var, t: &[usize]) -> Result<Var> {
        let s = &self.schedule;
        let like = v.value();
        let min_log =
            Var::constant(self.coefficient(t, &like, |t| s.posterior_log_variance_clipped[t])?);
        let span = Var::constant(self.coefficient(t, &like, |t| {
            s.betas[t].ln() - s.posterior_log_variance_clipped[t]
        })?);
        v.add_scalar(1.0)?
            .mul_scalar(0.5)?
            .mul(&span)?
            .add(&min_log)
    }

    /// DiT's training loss for model output `out` on x_t = q_sample(x0, t, noise):
    /// MSE(ε, ε̂) plus, with a learned variance, the variational bound in bits per dimension
    /// (KL for t > 0, the discretised decoder NLL at t = 0) computed with ε̂ frozen, so it only
    /// trains the variance channels.
    pub fn training_losses(
        &self,
        out: &Var,
        x0: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<LossTerms> {
        let c = x0.shape()[1];
        let expected = if self.learn_sigma { 2 * c } else { c };
        if out.shape().get(1) != Some(&expected) {
            return Err(TensorError::shape(
                "training loss",
                format!("a model output with {expected} channels"),
                out.shape(),
            ));
        }
        let eps = out.narrow(1, 0, c)?;
        let mse = eps
            .sub(&Var::constant(noise.clone()))?
            .powf(2.0)?
            .mean_all()?;
        if !self.learn_sigma {
            return Ok(LossTerms::mse_only(mse));
        }
        let v = out.narrow(1, c, c)?;
        let log_var = self.model_log_variance(&v, t)?;
        let frozen_eps = eps.value();
        let model_mean = self.posterior_mean(&self.predict_x0(x_t, t, &frozen_eps)?, x_t, t)?;
        let true_mean = self.posterior_mean(x0, x_t, t)?;
        let s = &self.schedule;
        let true_log_var = self
            .coefficient(t, x0, |t| s.posterior_log_variance_clipped[t])?
            .broadcast_to(x0.shape())?;
        let ln2 = std::f64::consts::LN_2;
        let kl = mean_per_sample(&normal_kl(
            &true_mean,
            &true_log_var,
            &model_mean,
            &log_var,
        )?)?
        .mul_scalar(1.0 / ln2)?;
        let nll = mean_per_sample(
            &discretized_gaussian_log_likelihood(x0, &model_mean, &log_var.mul_scalar(0.5)?)?
                .neg()?,
        )?
        .mul_scalar(1.0 / ln2)?;
        let at_zero = Tensor::from_vec(
            t.iter()
                .map(|&t| if t == 0 { 1.0 } else { 0.0 })
                .collect::<Vec<f64>>(),
            &[t.len()],
        )?
        .to_dtype(x0.dtype())?
        .to_device(x0.device())?;
        let vb = Var::where_cond(&at_zero, &nll, &kl)?.mean_all()?;
        Ok(LossTerms {
            total: mse.add(&vb)?,
            mse,
            vb: Some(vb),
        })
    }
}

/// What the DDPM loss needs besides the model's input x_t: the clean images, the noise and the
/// integer timesteps that made x_t.
pub struct DdpmTarget {
    pub x0: Tensor,
    pub noise: Tensor,
    pub t: Vec<usize>,
}

/// DDPM as DiT trains it: t ~ U{0..T−1} per image, x_t = q_sample(x0, t, ε), the model sees
/// x_t and t, and [`GaussianDiffusion::training_losses`] scores its output.
impl Objective for GaussianDiffusion {
    type Target = DdpmTarget;

    fn draw(&self, x0: &Tensor, rng: &mut SeededRng, device: Device) -> Result<Draw<DdpmTarget>> {
        let noise = draw_noise(x0, rng)?;
        let t: Vec<usize> = (0..x0.shape()[0])
            .map(|_| rng.random_range(0..self.schedule.steps()))
            .collect();
        let x_t = self.q_sample(x0, &t, &noise)?;
        Ok(Draw {
            model_input: x_t.to_device(device)?,
            model_time: model_time(t.iter().map(|&t| t as f64))?.to_device(device)?,
            target: DdpmTarget {
                x0: x0.to_device(device)?,
                noise: noise.to_device(device)?,
                t,
            },
        })
    }

    fn loss(&self, draw: &Draw<DdpmTarget>, out: &Var) -> Result<LossTerms> {
        let DdpmTarget { x0, noise, t } = &draw.target;
        self.training_losses(out, x0, &draw.model_input, t, noise)
    }

    fn prediction_target<'a>(&self, draw: &'a Draw<DdpmTarget>) -> &'a Tensor {
        &draw.target.noise
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::test_support::{close, images, output};
    use crate::schedule::BetaSchedule;
    use ditmoe_tensor::seeded_rng;
    use proptest::prelude::*;
    use rand::Rng;

    fn ddpm(learn_sigma: bool) -> GaussianDiffusion {
        GaussianDiffusion::new(Schedule::new(BetaSchedule::Cosine, 50), learn_sigma)
    }

    #[test]
    fn the_draw_and_loss_are_q_sample_and_training_losses() {
        for learn_sigma in [false, true] {
            let d = ddpm(learn_sigma);
            let x0 = images(1);
            let mut rng = seeded_rng(2);
            let draw = d.draw(&x0, &mut rng, Device::Cpu).unwrap();
            // By hand, from the same seed: the noise first, then one timestep per image.
            let mut by_hand = seeded_rng(2);
            let noise = Tensor::randn(x0.shape(), 0.0, 1.0, DType::F32, &mut by_hand).unwrap();
            let t: Vec<usize> = (0..3).map(|_| by_hand.random_range(0..50)).collect();
            let x_t = d.q_sample(&x0, &t, &noise).unwrap();
            assert_eq!(
                rng.random::<u64>(),
                by_hand.random::<u64>(),
                "as many draws"
            );
            assert_eq!(draw.target.t, t);
            assert_eq!(draw.target.noise.to_vec_f64(), noise.to_vec_f64());
            assert_eq!(draw.target.x0.to_vec_f64(), x0.to_vec_f64());
            assert_eq!(draw.model_input.to_vec_f64(), x_t.to_vec_f64());
            let times: Vec<f64> = t.iter().map(|&t| t as f64).collect();
            assert_eq!(draw.model_time.to_vec_f64(), times);
            let out = Var::constant(output(&noise, 0.1, usize::from(learn_sigma), 3));
            let terms = d.loss(&draw, &out).unwrap();
            let expected = d.training_losses(&out, &x0, &x_t, &t, &noise).unwrap();
            let value = |v: &Var| v.item().unwrap();
            assert_eq!(value(&terms.total), value(&expected.total));
            assert_eq!(value(&terms.mse), value(&expected.mse));
            assert_eq!(terms.vb.is_some(), learn_sigma);
            assert_eq!(terms.vb.map(|v| value(&v)), expected.vb.map(|v| value(&v)));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// ε̂ = ε + c costs c², and the bound adds to the total when σ is learned.
        #[test]
        fn an_offset_prediction_costs_its_square(offset in -2.0f64..2.0, seed in any::<u64>(), learn_sigma in any::<bool>()) {
            let d = ddpm(learn_sigma);
            let draw = d.draw(&images(seed), &mut seeded_rng(seed ^ 1), Device::Cpu).unwrap();
            prop_assert!(draw.target.t.iter().all(|&t| t < 50));
            let out = output(&draw.target.noise, offset, usize::from(learn_sigma), seed);
            let terms = d.loss(&draw, &Var::constant(out)).unwrap();
            let (mse, total) = (terms.mse.item().unwrap(), terms.total.item().unwrap());
            prop_assert!(close(mse, offset * offset, offset * offset), "{mse} vs {}", offset * offset);
            let vb = terms.vb.map_or(0.0, |vb| vb.item().unwrap());
            prop_assert!(close(total, mse + vb, total.abs()));
        }
    }
}
