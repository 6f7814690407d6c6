//! The layers of DiT, each a [`Module`](crate::Module) with PyTorch's parameter names.

pub mod adaln;
pub mod attention;
pub mod embedding;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod patch;
pub mod timestep;

pub use adaln::{modulate, AdaLnModulation};
pub use attention::{naive_attention, Attention, AttentionKernel, Placement, FUSED_FROM_TOKENS};
pub use embedding::{Embedding, LabelEmbedder};
pub use linear::Linear;
pub use mlp::{Mlp, SwiGlu};
pub use norm::LayerNorm;
pub use patch::{patchify, sincos_pos_embed_2d, unpatchify, PatchEmbed};
pub use timestep::{timestep_frequencies, TimestepEmbedder};
