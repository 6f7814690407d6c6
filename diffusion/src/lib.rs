//! # ditmoe-diffusion
//!
//! Will own Gaussian diffusion (DDPM ε-prediction, learned σ), rectified flow, the samplers
//! (DDPM, DDIM, Euler) and classifier-free guidance (issue #4). It builds on [`ditmoe_nn`].

pub use ditmoe_nn as nn;
