//! Gaussian diffusion schedules (Ho et al., 2020; Nichol & Dhariwal, 2021), computed in f64.
//!
//! Forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) with ᾱ_t = Π_{s≤t} (1 − β_s).
//! The posterior q(x_{t−1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t) has
//! β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), c1_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t),
//! c2_t = (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t).

use serde::{Deserialize, Serialize};

/// How β_t grows over the steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// β from 1e-4 to 0.02 (scaled by 1000/T), DDPM and DiT.
    #[default]
    Linear,
    /// ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2), β capped at 0.999 (Nichol & Dhariwal).
    Cosine,
}

/// Every per-step coefficient the objectives and samplers use.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    /// log β̃_t with the t = 0 entry (β̃_0 = 0) replaced by log β̃_1, as the reference does.
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
}

impl Schedule {
    /// The schedule of `steps` steps.
    pub fn new(kind: BetaSchedule, steps: usize) -> Self {
        let betas: Vec<f64> = match kind {
            BetaSchedule::Linear => {
                let scale = 1000.0 / steps as f64;
                let (start, end) = (scale * 1e-4, scale * 0.02);
                (0..steps)
                    .map(|i| start + (end - start) * i as f64 / (steps.max(2) - 1) as f64)
                    .collect()
            }
            BetaSchedule::Cosine => {
                let alpha_bar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..steps)
                    .map(|i| {
                        (1.0 - alpha_bar((i + 1) as f64 / steps as f64)
                            / alpha_bar(i as f64 / steps as f64))
                        .min(0.999)
                    })
                    .collect()
            }
        };
        Schedule::from_betas(betas)
    }

    /// The schedule with the given β (also used to respace a schedule).
    pub fn from_betas(betas: Vec<f64>) -> Self {
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut product = 1.0;
        for b in &betas {
            product *= 1.0 - b;
            alphas_cumprod.push(product);
        }
        let alphas_cumprod_prev: Vec<f64> = std::iter::once(1.0)
            .chain(
                alphas_cumprod[..alphas_cumprod.len().saturating_sub(1)]
                    .iter()
                    .copied(),
            )
            .collect();
        let n = betas.len();
        let posterior_variance: Vec<f64> = (0..n)
            .map(|t| betas[t] * (1.0 - alphas_cumprod_prev[t]) / (1.0 - alphas_cumprod[t]))
            .collect();
        let posterior_log_variance_clipped = (0..n)
            .map(|t| posterior_variance[if t == 0 && n > 1 { 1 } else { t }].ln())
            .collect();
        let posterior_mean_coef1 = (0..n)
            .map(|t| betas[t] * alphas_cumprod_prev[t].sqrt() / (1.0 - alphas_cumprod[t]))
            .collect();
        let posterior_mean_coef2 = (0..n)
            .map(|t| {
                (1.0 - alphas_cumprod_prev[t]) * (1.0 - betas[t]).sqrt() / (1.0 - alphas_cumprod[t])
            })
            .collect();
        Schedule {
            betas,
            alphas_cumprod,
            alphas_cumprod_prev,
            posterior_variance,
            posterior_log_variance_clipped,
            posterior_mean_coef1,
            posterior_mean_coef2,
        }
    }

    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// `count` timesteps spread evenly over the schedule (DiT's `space_timesteps(T, "count")`)
    /// and the schedule that jumps between them: β'_i = 1 − ᾱ_{t_i} / ᾱ_{t_{i−1}}.
    pub fn respaced(&self, count: usize) -> (Vec<usize>, Schedule) {
        let count = count.clamp(1, self.steps());
        let stride = if count > 1 {
            (self.steps() - 1) as f64 / (count - 1) as f64
        } else {
            0.0
        };
        let kept: Vec<usize> = (0..count)
            .map(|i| (i as f64 * stride).round() as usize)
            .collect();
        let mut previous = 1.0;
        let betas = kept
            .iter()
            .map(|&t| {
                let beta = 1.0 - self.alphas_cumprod[t] / previous;
                previous = self.alphas_cumprod[t];
                beta
            })
            .collect();
        (kept, Schedule::from_betas(betas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_matches_ddpm() {
        let s = Schedule::new(BetaSchedule::Linear, 1000);
        assert!((s.betas[0] - 1e-4).abs() < 1e-15 && (s.betas[999] - 0.02).abs() < 1e-15);
        // ᾱ_T ≈ 4.0e-5 for the DDPM schedule.
        assert!(
            (s.alphas_cumprod[999] - 4.036e-5).abs() < 1e-7,
            "{}",
            s.alphas_cumprod[999]
        );
        assert_eq!(s.posterior_variance[0], 0.0);
        assert_eq!(
            s.posterior_log_variance_clipped[0],
            s.posterior_variance[1].ln()
        );
    }

    #[test]
    fn cosine_schedule_is_monotone_and_capped() {
        let s = Schedule::new(BetaSchedule::Cosine, 100);
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        assert!(s.betas.iter().all(|&b| b > 0.0 && b <= 0.999));
    }

    #[test]
    fn respacing_keeps_the_cumulative_products() {
        let s = Schedule::new(BetaSchedule::Linear, 1000);
        let (kept, r) = s.respaced(10);
        assert_eq!(kept.first(), Some(&0));
        assert_eq!(kept.last(), Some(&999));
        for (i, &t) in kept.iter().enumerate() {
            assert!((r.alphas_cumprod[i] - s.alphas_cumprod[t]).abs() < 1e-12);
        }
        let (all, same) = s.respaced(1000);
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert!(same
            .betas
            .iter()
            .zip(&s.betas)
            .all(|(a, b)| (a - b).abs() < 1e-12));
    }
}
