//! DiffMoE's capacity predictor (Shi et al., 2025, "DiffMoE: Dynamic Token Selection for
//! Scalable Diffusion Transformers", §3.3 and Algorithm 4): a small MLP that learns, from a
//! token alone, the probability that each expert of the batch-level global pool would take it.
//!
//! - **Training**: the pool's selection mask `[N, E]` is the target of a binary cross-entropy on
//!   the predictor's logits (`Var::bce_with_logits`); the predictor reads a detached copy of the layer input, so the loss
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
use ditmoe_tensor::{DType, Result, SeededRng, Tensor};

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

    /// τᵢ ← d·τᵢ + (1 − d)·(the `k`-th largest σ(logit) of expert i's column `[N]`), where
    /// the logits are (nothing is read back from a GPU).
    pub fn update_thresholds(&self, logits: &Tensor, k: usize) -> Result<()> {
        let (top, _) = logits.sigmoid()?.topk(k, 0, true)?;
        let kth = top.narrow(0, k - 1, 1)?.flatten()?;
        let decay = self.decay.value();
        let moved = self
            .threshold
            .value()
            .mul(&decay)?
            .add(&kth.mul(&decay.neg()?.add_scalar(1.0)?)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Tensor {
        // 4 tokens × 2 experts; σ of the columns: (0.731, 0.269, 0.881, 0.5) and
        // (0.119, 0.953, 0.5, 0.622).
        Tensor::from_vec(vec![1.0f32, -2.0, -1.0, 3.0, 2.0, 0.0, 0.0, 0.5], &[4, 2]).unwrap()
    }

    #[test]
    fn thresholds_move_toward_the_kth_probability_and_counts_are_strict() {
        let mut rng = ditmoe_tensor::seeded_rng(0);
        let predictor = CapacityPredictor::new(3, 2, 0.95, &mut rng).unwrap();
        predictor
            .threshold
            .set_value(Tensor::from_vec(vec![0.5f32, 0.2], &[2]).unwrap())
            .unwrap();
        predictor.update_thresholds(&logits(), 2).unwrap();
        // The 2nd largest σ: column 0 σ(1) = 0.7311, column 1 σ(0.5) = 0.6225.
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected = [
            0.95 * 0.5 + 0.05 * sigmoid(1.0),
            0.95 * 0.2 + 0.05 * sigmoid(0.5),
        ];
        for (got, want) in predictor
            .threshold
            .value()
            .to_vec_f64()
            .iter()
            .zip(expected)
        {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // σ = 0.5 exactly is not above a threshold of 0.5.
        let half = Tensor::from_vec(vec![0.5f32, 0.5], &[2]).unwrap();
        assert_eq!(predictor.counts(&logits(), &half).unwrap(), vec![2, 2]);
    }
}
