//! # ditmoe-diffusion
//!
//! The diffusion side of ditmoe: noise schedules ([`schedule`]), the DDPM objective with DiT's
//! learned variance and the rectified-flow objective ([`gaussian`]), and the samplers
//! ([`sampler`]): DDPM with respacing, DDIM and Euler. See `README.md` for the formulas.

pub mod gaussian;
pub mod sampler;
pub mod schedule;

pub use ditmoe_nn as nn;
pub use gaussian::{flow_interpolate, flow_loss, GaussianDiffusion, LossTerms};
pub use sampler::{sample, sample_from, Denoiser, SampleOptions, SamplerKind};
pub use schedule::{BetaSchedule, Schedule};
