//! Statistics for the routing ablation (issue #5): expert-load balance, entropy and mutual
//! information of routing decisions, expert specialisation by timestep / position / class, and
//! the Fréchet distance between feature distributions.

pub mod frechet;
pub mod routing_stats;
pub mod specialization;

pub use frechet::{frechet_distance, mean_and_covariance};
pub use routing_stats::{
    entropy, imbalance, normalized_mutual_information, router_entropy, Imbalance, LayerRouting,
};
pub use specialization::{Specialization, SpecializationScores};
