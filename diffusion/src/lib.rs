//! # ditmoe-diffusion
//!
//! The diffusion side of ditmoe: noise schedules ([`schedule`]), the training [`Objective`]
//! trait ([`objective`]) with its two implementations — DDPM with DiT's learned variance
//! ([`gaussian`]) and rectified flow ([`flow`]) — and the samplers ([`sampler`]): DDPM with
//! respacing, DDIM and Euler. See `README.md` for the formulas.

pub mod flow;
pub mod gaussian;
pub mod objective;
pub mod sampler;
pub mod schedule;

pub use ditmoe_nn as nn;
pub use flow::{flow_interpolate, flow_loss, RectifiedFlow};
pub use gaussian::{DdpmTarget, GaussianDiffusion};
pub use objective::{Draw, LossTerms, Objective};
pub use sampler::{sample, sample_from, Denoiser, SampleOptions, SamplerKind};
pub use schedule::{BetaSchedule, Schedule};
