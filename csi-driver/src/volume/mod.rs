//! Volumes as the driver sees them: typed access modes and kinds, durable
//! records, and the pure rules that decide who may publish what.

pub mod access;
pub mod ids;
pub mod record;

pub use access::{AccessMode, Kind};
pub use record::{
    CtrlPublication, NodePublication, PubState, Snapshot, Source, Stage, Volume, VolumeState,
};
