//! The durable records: what a volume is, who it belongs to, where it is
//! published. Serialized as JSON in the pool's state directory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::access::{AccessMode, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeState {
    /// Record written, bytes not complete: rolled back at start, redone by a retried create.
    Creating,
    Ready,
    /// Deletion started: finished at start or by a retried delete.
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtrlPublication {
    pub mode: AccessMode,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    pub fs_type: Option<String>,
    pub capacity: u64,
    /// The project (namespace of the PVC) that created it.
    pub owner: Option<String>,
    /// Projects that may mount it besides the owner (`*` for all).
    pub shared_with: Vec<String>,
    pub modes: Vec<AccessMode>,
    pub source: Option<Source>,
    pub state: VolumeState,
    /// ControllerPublish state: node id → how.
    pub published: BTreeMap<String, CtrlPublication>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub source_volume_id: String,
    pub kind: Kind,
    pub fs_type: Option<String>,
    pub size: u64,
    pub owner: Option<String>,
    pub created_unix_nanos: i128,
    pub ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PubState {
    /// Recorded before the mount; confirmed or dropped at start from the mount table.
    Publishing,
    Published,
}

/// A NodePublish: one bind mount at one target on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePublication {
    pub volume_id: String,
    pub node_id: String,
    pub target: String,
    pub mode: AccessMode,
    pub readonly: bool,
    pub state: PubState,
    /// A loop device of this publication's own: the read-only one a
    /// read-only publish of a block volume binds (a read-only mount does not
    /// stop writes through a device node; a read-only loop device does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A NodeStage: the volume attached and mounted at a staging path on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub volume_id: String,
    pub node_id: String,
    pub staging_path: String,
    /// The loop device, for image and block volumes.
    pub device: Option<String>,
    pub readonly: bool,
    /// The access mode it was staged for (None: a record from before modes
    /// were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AccessMode>,
    /// The CO detached the volume from this node (ControllerUnpublish, a
    /// force-detach from a node gone for good): the stage no longer holds
    /// the volume against other nodes. The record stays for the node's own
    /// NodeUnstage, should the node come back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// The node's boot id when it staged: a record from an earlier boot has
    /// no mount left, and nodes with one boot id share one kernel (kind,
    /// simulated nodes) and so their loop devices.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot: String,
}
