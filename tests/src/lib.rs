//! Harness for Moat's end-to-end tests and the local demo: test-made network
//! namespaces, the built binaries driven like a runtime or sidecar, cleanup on drop.

pub mod bins;
pub mod cni;
pub mod csi;
pub mod demo_storage;
pub mod netns;
pub mod probe;
pub mod truth;
