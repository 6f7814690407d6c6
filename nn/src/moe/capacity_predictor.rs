//! DiffMoE's capacity predictor (Shi et al., 2025, "DiffMoE: Dynamic Token Selection for
//! Scalable Diffusion Transformers", §3.3 and Algorithm 4): a small MLP that learns, from a
//! token alone, the probability that each expert of the batch-level global pool would take it.
//!
//! - **Training**: the pool's selection mask `[N, E]` is the target of a binary cross-entropy on
//!   the predictor's logits; the predictor reads a detached copy of the layer input, so the loss
//!   trains the predictor only. Every training forward also moves each expert's threshold toward
//!   the k-th largest predicted probability of its column: τ ← d·τ + (1 − d)·q (d = 0.95).
//! - **Sampling**: expert i takes as many tokens of the sampling batch as have a predicted
//!   probability above τᵢ (strictly); which tokens, the router's scores over the batch decide.
//!   So compute adapts to the inputs, but an image still depends on the images sampled with it
//!   (the pool is the batch; DiffMoE's Table 13 reports FID moving with the sampling batch size).
//!
//! Names as the official code (`KwaiVGI/DiffMoE` `models_DiffMoE.py`): `capacity_predictor.0`
//! and `.2` (Linear(D, D) → SiLU → Linear(D, E)), buffers `expert_threshold` `[E]` and
//! `ema_decay` `[1]`.

use crate::layers::Linear;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{DType, Device, Result, SeededRng, Tensor};

pub struct CapacityPredictor {
    pub hidden: Linear,
    pub out: Linear,
    /// τ `[E]`: the per-expert probability a token must exceed at sampling time (starts at 0).
    pub threshold: Var,
    /// d `[1]`: the decay of the thresholds' moving average (a buffer, as in the official code).
    pub decay: Var,
}

impl CapacityPredictor {
    /// Xavier-uniform weights and zero biases (DiT's pass reaches both Linear layers),
    /// thresholds 0.
    pub fn new(dim: usize, experts: usize, decay: f64, rng: &mut SeededRng) -> Result<Self> {
        Ok(CapacityPredictor {
            hidden: Linear::new(dim, dim, true, rng)?,
            out: Linear::new(dim, experts, true, rng)?,
            threshold: Var::constant(Tensor::zeros(&[experts], DType::F32)?),
            decay: Var::constant(Tensor::full(&[1], decay, DType::F32)?),
        })
    }

    /// Logits `[N, E]` of tokens `[N, D]`, through a detached copy: no gradient reaches the
    /// layer input.
    pub fn logits(&self, tokens: &Var) -> Result<Var> {
        self.out
            .forward(&self.hidden.forward(&tokens.detach())?.silu()?)
    }

    /// BCEWithLogits(logits, mask), the mean over all N·E entries, in its stable form
    /// softplus(x) − x·m with softplus(x) = max(x, 0) + log(1 + e^−|x|).
    pub fn loss(logits: &Var, mask: &Tensor) -> Result<Var> {
        let softplus = logits
            .relu()?
            .add(&logits.abs()?.neg()?.exp()?.add_scalar(1.0)?.log()?)?;
        softplus
            .sub(&logits.mul(&Var::constant(mask.clone()))?)?
            .mean_all()
    }

    /// τᵢ ← d·τᵢ + (1 − d)·(the `k`-th largest σ(logit) of expert i's column `[N]`).
    pub fn update_thresholds(&self, logits: &Tensor, k: usize) -> Result<()> {
        let (top, _) = logits.sigmoid()?.topk(k, 0, true)?;
        let kth = top.narrow(0, k - 1, 1)?.flatten()?;
        let decay = self.decay.value().to_device(Device::Cpu)?.item()?;
        let moved = self
            .threshold
            .value()
            .mul_scalar(decay)?
            .add(&kth.mul_scalar(1.0 - decay)?)?;
        self.threshold.set_value(moved)
    }

    /// How many tokens each expert takes at sampling time: #{t : σ(logit[t, i]) > τᵢ}, with
    /// `thresholds` `[E]` the moving averages or one swept γ for all.
    pub fn counts(&self, logits: &Tensor, thresholds: &Tensor) -> Result<Vec<usize>> {
        let above = logits
            .sigmoid()?
            .gt(&thresholds.unsqueeze(0)?)?
            .to_dtype(DType::F32)?
            .sum(&[0], false)?;
        Ok(above.to_vec_f64().into_iter().map(|c| c as usize).collect())
    }
}

impl Module for CapacityPredictor {
    fn visit(&self, v: &mut Visitor) {
        v.child("capacity_predictor.0", &self.hidden);
        v.child("capacity_predictor.2", &self.out);
        v.buffer("expert_threshold", &self.threshold);
        v.buffer("ema_decay", &self.decay);
    }
}
