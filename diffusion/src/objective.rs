//! A training objective in two moves: from clean images x₀ it *draws* what the model sees (a
//! noised batch and its time) together with what the model should predict, then it *scores*
//! the model's output against that draw.
//!
//! Two objectives implement it: DDPM ε-prediction with DiT's learned variance
//! ([`GaussianDiffusion`](crate::GaussianDiffusion), in `gaussian.rs`) and rectified flow
//! ([`RectifiedFlow`](crate::RectifiedFlow), in `flow.rs`). A new objective is a struct with
//! its settings, a `Target` type holding what its loss needs, and these two methods.

use ditmoe_autograd::Var;
use ditmoe_tensor::{Device, Result, SeededRng, Tensor};

/// What an objective trains a model with: draw, then score.
pub trait Objective {
    /// What the loss compares the model output with, besides the model input.
    type Target;

    /// Draws the noise and one time per image of `x0` `[N, C, H, W]` from `rng` — noise
    /// first, then the times — on the host, so that every device trains on the same numbers,
    /// and returns the draw moved to `device`.
    fn draw(&self, x0: &Tensor, rng: &mut SeededRng, device: Device) -> Result<Draw<Self::Target>>;

    /// The loss of the model output `out` (for the input `draw.model_input`).
    fn loss(&self, draw: &Draw<Self::Target>, out: &Var) -> Result<LossTerms>;

    /// What the model's data channels are trained to predict, `[N, C, H, W]` where the draw
    /// is (ε for DDPM, the velocity for flow); Race-DiT's two-layer routers learn it too.
    fn prediction_target<'a>(&self, draw: &'a Draw<Self::Target>) -> &'a Tensor;
}

/// One batch as an objective prepared it.
pub struct Draw<Target> {
    /// The noised images the model denoises (x_t for DDPM, z_t for flow), `[N, C, H, W]`.
    pub model_input: Tensor,
    /// The time the model is told, one per image: `[N]` f32.
    pub model_time: Tensor,
    /// What the loss needs besides the model's input and output.
    pub target: Target,
}

/// The loss terms of one batch.
pub struct LossTerms {
    /// Mean squared error of the prediction (ε for DDPM, velocity for flow).
    pub mse: Var,
    /// The variational-bound term that trains the learned variance (DDPM with learn_sigma).
    pub vb: Option<Var>,
    /// mse + vb: what the objective minimises.
    pub total: Var,
}

impl LossTerms {
    /// The terms of a loss that is its MSE alone.
    pub fn mse_only(mse: Var) -> Self {
        LossTerms {
            total: mse.clone(),
            mse,
            vb: None,
        }
    }
}

/// Standard normal noise shaped like `x0`, in f32: the ε both objectives start from.
pub(crate) fn draw_noise(x0: &Tensor, rng: &mut SeededRng) -> Result<Tensor> {
    Tensor::randn(x0.shape(), 0.0, 1.0, ditmoe_tensor::DType::F32, rng)
}

/// Per-image times as the `[N]` f32 tensor a model is given.
pub(crate) fn model_time(times: impl ExactSizeIterator<Item = f64>) -> Result<Tensor> {
    let n = times.len();
    Tensor::from_vec(times.map(|t| t as f32).collect(), &[n])
}

/// What the objectives' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use ditmoe_tensor::{seeded_rng, DType, Tensor};

    /// A batch of three 3×4×4 images in [−1, 1], drawn from `seed`.
    pub fn images(seed: u64) -> Tensor {
        Tensor::rand_uniform(&[3, 3, 4, 4], -1.0, 1.0, DType::F32, &mut seeded_rng(seed)).unwrap()
    }

    /// A model output: `prediction` plus `offset` on the data channels, then `extra` random
    /// channels per data channel (the learned-variance channels, or ones a loss must ignore).
    pub fn output(prediction: &Tensor, offset: f64, extra: usize, seed: u64) -> Tensor {
        let mut shape = prediction.shape().to_vec();
        shape[1] *= extra;
        let rest = Tensor::rand_uniform(&shape, -0.9, 0.9, DType::F32, &mut seeded_rng(seed));
        let data = prediction.add_scalar(offset).unwrap();
        Tensor::concat(&[&data, &rest.unwrap()], 1).unwrap()
    }

    /// |a − b| within f32 rounding of numbers of size `scale`.
    pub fn close(a: f64, b: f64, scale: f64) -> bool {
        (a - b).abs() <= 1e-5 * (1.0 + scale)
    }
}
