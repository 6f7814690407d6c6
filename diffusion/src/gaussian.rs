//! DDPM training objective (Ho et al., 2020) with DiT's learned variance (Nichol & Dhariwal,
//! 2021), and the rectified-flow objective (Liu et al., 2022; Esser et al., 2024).

use crate::schedule::Schedule;
use ditmoe_autograd::Var;
use ditmoe_tensor::{DType, Result, Tensor, TensorError};

/// Per-sample coefficients `[N]` broadcast over an image batch `[N, C, H, W]` → `[N, 1, 1, 1]`.
pub fn per_sample(values: impl IntoIterator<Item = f64>, dtype: DType) -> Result<Tensor> {
    let v: Vec<f64> = values.into_iter().collect();
    let n = v.len();
    Tensor::from_vec(v, &[n, 1, 1, 1])?.to_dtype(dtype)
}

/// The loss terms of one batch.
pub struct LossTerms {
    /// Mean squared error of the prediction (ε for DDPM, velocity for flow).
    pub mse: Var,
    /// The variational-bound term that trains the learned variance (DDPM with learn_sigma).
    pub vb: Option<Var>,
    /// mse + vb.
    pub total: Var,
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
            return Ok(LossTerms {
                total: mse.clone(),
                mse,
                vb: None,
            });
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

/// Rectified flow: z_t = (1 − t)·x + t·ε, target velocity v = ε − x; t = sigmoid(n), n ~ N(0, 1)
/// (logit-normal). Returns z_t and the target.
pub fn flow_interpolate(x0: &Tensor, noise: &Tensor, t: &[f64]) -> Result<(Tensor, Tensor)> {
    let tt = per_sample(t.iter().copied(), x0.dtype())?.to_device(x0.device())?;
    let z = x0.mul(&tt.neg()?.add_scalar(1.0)?)?.add(&noise.mul(&tt)?)?;
    Ok((z, noise.sub(x0)?))
}

/// MSE between the data channels of the model output and the flow target.
pub fn flow_loss(out: &Var, target: &Tensor) -> Result<Var> {
    let c = target.shape()[1];
    out.narrow(1, 0, c)?
        .sub(&Var::constant(target.clone()))?
        .powf(2.0)?
        .mean_all()
}
