//! Moat's CNI plugin: routed veth wiring, node-local IPAM and nftables tenant isolation.

pub mod cli;
pub mod cmd;
pub mod durable;
pub mod entry;
pub mod firewall;
pub mod ipam;
pub mod linger;
pub mod lock;
pub mod logging;
pub mod netlink;
pub mod policy;
pub mod spec;
