//! # ditmoe-experiments
//!
//! Everything behind the `ditmoe` command line: training configs ([`config`]), data
//! ([`data`]), the training loop ([`train`]), sample grids ([`grid`]), the statistics the
//! routing ablation reports ([`analysis`]), the subcommands ([`commands`]), their terminal
//! output ([`console`]) and the lock that keeps one process per run directory ([`run_lock`]).

pub mod ablate;
pub mod analysis;
pub mod commands;
pub mod config;
pub mod console;
pub mod data;
pub mod generate;
pub mod grid;
pub mod plot;
pub mod run_lock;
pub mod step_profile;
pub mod train;
