//! Links, addresses, routes and neighbours through rtnetlink; sysctls for forwarding.

#[cfg(test)]
pub mod fake;
pub mod ops;
pub mod release;
pub mod socket;
pub mod sysctl;
pub mod wiring;

pub use socket::{NetlinkSocket, SocketError};
pub use wiring::{AttachPlan, KernelWiring, Observed, Wiring, WiringError};
