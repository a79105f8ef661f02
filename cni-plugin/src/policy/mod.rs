//! Tenants and projects → the desired nftables ruleset, as pure data.

pub mod chains;
#[cfg(test)]
mod chains_tests;
pub mod diff;
pub mod droplog;
pub mod epoch;
#[cfg(test)]
mod epoch_tests;
pub mod file;
pub mod model;
pub mod neighbours;
#[cfg(test)]
mod neighbours_tests;
pub mod nftjson;
pub mod peers;
pub mod ruleset;
#[cfg(test)]
mod ruleset_tests;

pub use model::{Policy, PolicyError, Project, Role};
pub use nftjson::Batch;
pub use ruleset::{PodEntry, TableSpec};
