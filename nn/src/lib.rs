//! # ditmoe-nn
//!
//! Will own the module system with PyTorch-compatible parameter names, the layers of DiT,
//! attention, the token-choice / expert-choice / expert-race MoE layers, the DiT model family and
//! safetensors checkpoints (issue #3). It builds on [`ditmoe_autograd`], re-exported here.

pub use ditmoe_autograd as autograd;
