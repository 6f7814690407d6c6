//! Mixture-of-Experts FFNs with pluggable routing: token choice (DiT-MoE), expert choice
//! (EC-DiT) and expert race (Race-DiT). Start with [`routing`] (the three rules side by side),
//! then [`layer`] (how the chosen pairs are computed).

pub mod config;
pub mod layer;
pub mod routing;

pub use config::{ExpertKind, MoeConfig, RaceGate, RoutingConfig, RoutingGroup};
pub use layer::{FeedForward, MoeLayer, MoeOutput};
pub use routing::{capacity, RoutingDecision, RoutingRecord};
