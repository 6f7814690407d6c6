//! # ditmoe-nn
//!
//! The model layer of ditmoe: a small module system whose parameter names match the PyTorch
//! reference state dicts ([`module`]), DiT's layers ([`layers`]), Mixture-of-Experts FFNs with
//! three routings ([`moe`]), the DiT model ([`dit`]) with its configuration ([`config`]),
//! presets ([`presets`]), parameter/compute/memory accounting ([`accounting`]), config range
//! checks ([`validate`]), safetensors checkpoints ([`checkpoint`]) and atomic output files ([`files`]). Start reading at [`module`], then [`dit`].

pub mod accounting;
pub mod checkpoint;
pub mod config;
pub mod dit;
pub mod files;
pub mod init;
pub mod layers;
pub mod module;
pub mod moe;
pub mod optim;
pub mod presets;
pub mod validate;

pub use config::{DitConfig, FfnKind, MoePlacement};
pub use dit::{Dit, DitOutput, ForwardOptions};
pub use ditmoe_autograd as autograd;
pub use module::{CheckpointTensor, Module, TensorKind, Visitor};
pub use validate::Field;
