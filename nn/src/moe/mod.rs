//! Mixture-of-Experts FFNs with pluggable routing rules: token choice (DiT-MoE), expert choice
//! (EC-DiT), expert race (Race-DiT) and its pools, DiffMoE's global pool with its capacity
//! predictor, and ReMoE's ReLU routing. Start with [`rule`] (the `RoutingRule` trait: gate,
//! pick, combine weights, aux loss), then one rule ([`token_choice`]), then [`layer`] (how the
//! chosen pairs are computed) and [`experts`] (the experts stacked as `[E, out, in]`).
//!
//! A new rule is one new file implementing [`RoutingRule`] plus its variant in
//! [`RoutingConfig`] (and its arm in `RoutingConfig::rule`).

pub mod capacity_predictor;
pub mod config;
pub mod decision;
pub mod expert_choice;
pub mod expert_race;
pub mod experts;
pub mod global_pool;
pub mod layer;
pub mod race_router;
pub mod relu_routing;
pub mod rule;
pub mod token_choice;

pub use capacity_predictor::CapacityPredictor;
pub use config::{
    ExpertKind, Gate, MoeConfig, PoolInference, RaceInference, RacePool, RouterConfig,
    RoutingConfig, RoutingGroup,
};
pub use decision::{RoutingDecision, RoutingRecord};
pub use expert_choice::capacity;
pub use experts::{Experts, FeedForward};
pub use global_pool::pool_capacity;
pub use layer::{MoeLayer, MoeOutput};
pub use rule::RoutingRule;
