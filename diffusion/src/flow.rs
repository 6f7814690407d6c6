//! Rectified flow (Liu et al., 2022) with logit-normal times, as Stable Diffusion 3 trains it
//! (Esser et al., 2024): z_t = (1 − t)·x₀ + t·ε, and the model predicts the velocity ε − x₀.

use crate::gaussian::per_sample;
use crate::objective::{draw_noise, model_time, Draw, LossTerms, Objective};
use ditmoe_autograd::Var;
use ditmoe_tensor::{Device, Result, SeededRng, Tensor};
use rand_distr::{Distribution, StandardNormal};

/// The rectified-flow objective: t = sigmoid(n), n ~ N(0, 1) per image; the model sees z_t
/// and t·`time_scale`, and is scored by [`flow_loss`] against the velocity ε − x₀.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RectifiedFlow {
    /// What the model's time is scaled by (DiT-MoE feeds t ∈ (0, 1) unscaled: 1).
    pub time_scale: f64,
}

/// Rectified flow: z_t = (1 − t)·x + t·ε, target velocity v = ε − x, one t per sample.
/// Returns z_t and the target.
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

impl Objective for RectifiedFlow {
    /// The target velocity ε − x₀.
    type Target = Tensor;

    fn draw(&self, x0: &Tensor, rng: &mut SeededRng, device: Device) -> Result<Draw<Tensor>> {
        let noise = draw_noise(x0, rng)?;
        let t: Vec<f64> = (0..x0.shape()[0])
            .map(|_| {
                let n: f64 = StandardNormal.sample(rng);
                1.0 / (1.0 + (-n).exp())
            })
            .collect();
        let (z, velocity) = flow_interpolate(x0, &noise, &t)?;
        Ok(Draw {
            model_input: z.to_device(device)?,
            model_time: model_time(t.iter().map(|&t| t * self.time_scale))?.to_device(device)?,
            target: velocity.to_device(device)?,
        })
    }

    fn loss(&self, draw: &Draw<Tensor>, out: &Var) -> Result<LossTerms> {
        Ok(LossTerms::mse_only(flow_loss(out, &draw.target)?))
    }

    fn prediction_target<'a>(&self, draw: &'a Draw<Tensor>) -> &'a Tensor {
        &draw.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::test_support::{close, images, output};
    use ditmoe_tensor::{seeded_rng, DType};
    use proptest::prelude::*;
    use rand::Rng;

    const FLOW: RectifiedFlow = RectifiedFlow { time_scale: 1000.0 };

    #[test]
    fn the_draw_and_loss_are_flow_interpolate_and_flow_loss() {
        let x0 = images(4);
        let mut rng = seeded_rng(5);
        let draw = FLOW.draw(&x0, &mut rng, Device::Cpu).unwrap();
        // By hand, from the same seed: the noise first, then one logit-normal time per image.
        let mut by_hand = seeded_rng(5);
        let noise = Tensor::randn(x0.shape(), 0.0, 1.0, DType::F32, &mut by_hand).unwrap();
        let t: Vec<f64> = (0..3)
            .map(|_| {
                let n: f64 = StandardNormal.sample(&mut by_hand);
                1.0 / (1.0 + (-n).exp())
            })
            .collect();
        let (z, velocity) = flow_interpolate(&x0, &noise, &t).unwrap();
        assert_eq!(
            rng.random::<u64>(),
            by_hand.random::<u64>(),
            "as many draws"
        );
        assert_eq!(draw.model_input.to_vec_f64(), z.to_vec_f64());
        assert_eq!(draw.target.to_vec_f64(), velocity.to_vec_f64());
        let times: Vec<f64> = t.iter().map(|&t| (t * 1000.0) as f32 as f64).collect();
        assert_eq!(draw.model_time.to_vec_f64(), times);
        let out = Var::constant(output(&velocity, -0.3, 1, 6));
        let terms = FLOW.loss(&draw, &out).unwrap();
        let expected = flow_loss(&out, &velocity).unwrap().item().unwrap();
        assert_eq!(terms.total.item().unwrap(), expected);
        assert_eq!(terms.mse.item().unwrap(), expected);
        assert!(terms.vb.is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// z_t lies on the straight line x₀ + t·v at the time the model is told, and a velocity
        /// off by c costs c² (extra output channels are ignored).
        #[test]
        fn the_draw_is_on_the_line_and_an_offset_velocity_costs_its_square(offset in -2.0f64..2.0, seed in any::<u64>()) {
            let x0 = images(seed);
            let draw = FLOW.draw(&x0, &mut seeded_rng(seed ^ 1), Device::Cpu).unwrap();
            let times = draw.model_time.to_vec_f64();
            prop_assert!(times.iter().all(|&t| t > 0.0 && t < 1000.0));
            let t = per_sample(times.iter().map(|t| t / 1000.0), DType::F32).unwrap();
            let line = x0.add(&draw.target.mul(&t).unwrap()).unwrap().to_vec_f64();
            for (z, expected) in draw.model_input.to_vec_f64().iter().zip(line) {
                prop_assert!(close(*z, expected, 4.0), "{z} vs {expected}");
            }
            let out = output(&draw.target, offset, 1, seed);
            let loss = FLOW.loss(&draw, &Var::constant(out)).unwrap().total.item().unwrap();
            prop_assert!(close(loss, offset * offset, offset * offset), "{loss} vs {}", offset * offset);
        }
    }
}
