//! Access-mode rules, decided from records alone (no I/O), so every rule is
//! unit-tested: which kind of storage a set of capabilities needs, whether a
//! controller or node publication may proceed, and whether it must be read-only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{CtrlPublication, NodePublication, Stage};

/// CSI access modes (spec v1.12 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl AccessMode {
    pub fn from_proto(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::SingleNodeWriter,
            2 => Self::SingleNodeReaderOnly,
            3 => Self::MultiNodeReaderOnly,
            4 => Self::MultiNodeSingleWriter,
            5 => Self::MultiNodeMultiWriter,
            6 => Self::SingleNodeSingleWriter,
            7 => Self::SingleNodeMultiWriter,
            _ => return None,
        })
    }

    /// At most one node at a time.
    pub fn single_node(self) -> bool {
        matches!(
            self,
            Self::SingleNodeWriter
                | Self::SingleNodeReaderOnly
                | Self::SingleNodeSingleWriter
                | Self::SingleNodeMultiWriter
        )
    }

    /// Every publication is read-only, whatever the request says.
    pub fn read_only(self) -> bool {
        matches!(self, Self::SingleNodeReaderOnly | Self::MultiNodeReaderOnly)
    }

    /// Several nodes write at once: only a shared directory can take that.
    fn multi_writer(self) -> bool {
        matches!(
            self,
            Self::MultiNodeMultiWriter | Self::MultiNodeSingleWriter
        )
    }
}

/// Where a volume's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A sparse image file with a filesystem, loop-mounted: hard capacity.
    Image,
    /// A directory in the shared pool: many nodes, many writers.
    Dir,
    /// A raw image file published as a block device.
    Block,
}

/// One requested capability, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub mode: AccessMode,
    pub block: bool,
    pub fs_type: Option<String>,
}

/// The kind that serves every capability asked for at creation.
pub fn kind_for(caps: &[Capability]) -> Result<Kind, String> {
    let block = caps.iter().filter(|c| c.block).count();
    if block > 0 && block < caps.len() {
        return Err("block and mount capabilities cannot be mixed".into());
    }
    if block > 0 {
        if caps.iter().any(|c| c.mode.multi_writer()) {
            return Err("a block volume cannot have writers on several nodes".into());
        }
        return Ok(Kind::Block);
    }
    if caps.iter().any(|c| c.mode.multi_writer()) {
        return Ok(Kind::Dir);
    }
    Ok(Kind::Image)
}

/// Whether a volume of `kind` can be used with `cap`.
pub fn supports(kind: Kind, cap: &Capability) -> bool {
    match kind {
        Kind::Block => cap.block && !cap.mode.multi_writer(),
        Kind::Image => !cap.block && !cap.mode.multi_writer(),
        Kind::Dir => !cap.block,
    }
}

/// Whether a volume of `kind` created for `modes` can be used with `cap`:
/// its storage must serve it, and the mode must be one it was created for (a
/// ReadOnlyMany volume is not mounted writable because a request names
/// ReadWriteOnce). Volumes recorded without modes are judged by kind alone.
pub fn allows(kind: Kind, modes: &[AccessMode], cap: &Capability) -> Result<(), String> {
    if !supports(kind, cap) {
        return Err(format!("a {kind:?} volume cannot be used as {cap:?}"));
    }
    if !modes.is_empty() && !modes.contains(&cap.mode) {
        return Err(format!(
            "the volume was created for {modes:?}, not {:?}",
            cap.mode
        ));
    }
    Ok(())
}

/// Why a publication may not proceed; each maps to one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another node or target holds it (FAILED_PRECONDITION).
    Held(String),
    /// Already published here with other settings (ALREADY_EXISTS).
    Incompatible(String),
}

/// ControllerPublish: returns whether the publication is new.
pub fn controller_publish(
    published: &BTreeMap<String, CtrlPublication>,
    node: &str,
    mode: AccessMode,
    readonly: bool,
) -> Result<bool, Refusal> {
    let readonly = readonly || mode.read_only();
    if let Some(existing) = published.get(node) {
        if existing.readonly == readonly && existing.mode == mode {
            return Ok(false);
        }
        return Err(Refusal::Incompatible(format!(
            "already published on node {node} with readonly={} mode={:?}",
            existing.readonly, existing.mode
        )));
    }
    let others = published.iter().filter(|(n, _)| n.as_str() != node);
    for (other, p) in others {
        if mode.single_node() || p.mode.single_node() {
            return Err(Refusal::Held(format!(
                "volume is published on node {other} ({:?}) and may be used by one node at a time",
                p.mode
            )));
        }
        if mode == AccessMode::MultiNodeSingleWriter && !readonly && !p.readonly {
            return Err(Refusal::Held(format!(
                "node {other} already holds the one read-write publication"
            )));
        }
    }
    Ok(true)
}

/// What NodePublish must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPlan {
    pub readonly: bool,
    /// Already published at this target with these settings: nothing to do.
    pub done: bool,
}

/// NodePublish, judged against every publication of the volume on every node
/// (the registry lives in the shared pool, so a CO that skipped
/// ControllerPublish still meets the rules here).
pub fn node_publish(
    pubs: &[NodePublication],
    node: &str,
    target: &str,
    mode: AccessMode,
    readonly: bool,
) -> Result<PublishPlan, Refusal> {
    let mut ro = readonly || mode.read_only();
    let (same, others): (Vec<_>, Vec<_>) = pubs
        .iter()
        .partition(|p| p.node_id == node && p.target == target);
    if mode == AccessMode::MultiNodeSingleWriter && others.iter().any(|p| !p.readonly) {
        // One writer; every further publication is read-only.
        ro = true;
    }
    if let Some(existing) = same.first() {
        if existing.readonly == ro {
            return Ok(PublishPlan {
                readonly: ro,
                done: true,
            });
        }
        return Err(Refusal::Incompatible(format!(
            "already published at {target} with readonly={}",
            existing.readonly
        )));
    }
    if let Some(p) = others.first() {
        if mode == AccessMode::SingleNodeSingleWriter
            || p.mode == AccessMode::SingleNodeSingleWriter
        {
            return Err(Refusal::Held(format!(
                "single-writer volume is already published at {} on node {}",
                p.target, p.node_id
            )));
        }
    }
    if let Some(p) = others.iter().find(|p| p.node_id != node) {
        if mode.single_node() || p.mode.single_node() {
            return Err(Refusal::Held(format!(
                "volume is in use on node {} and may be used by one node at a time",
                p.node_id
            )));
        }
    }
    Ok(PublishPlan {
        readonly: ro,
        done: false,
    })
}

/// NodeStage on `node`, judged against the volume's stages on every node
/// (the records live in the shared pool): a volume for one node at a time is
/// staged on one node at a time, whether or not the CO asked ControllerPublish
/// first. Stages the CO has detached (force-detach) no longer count. A
/// record from before stages kept their mode holds the volume against a
/// single-node request (its node's start-up drops it once stale).
pub fn node_stage(stages: &[Stage], node: &str, mode: AccessMode) -> Result<(), Refusal> {
    let holder = stages
        .iter()
        .filter(|s| s.node_id != node && !s.released)
        .find(|s| mode.single_node() || s.mode.is_some_and(AccessMode::single_node));
    match holder {
        Some(s) => Err(Refusal::Held(format!(
            "volume is staged on node {} ({:?}) and may be used by one node at a time",
            s.node_id, s.mode
        ))),
        None => Ok(()),
    }
}

/// Tenancy: the pod's project must own the volume or be one it is shared with.
pub fn may_mount(
    owner: Option<&str>,
    shared_with: &[String],
    pod_ns: Option<&str>,
) -> Result<(), String> {
    let Some(owner) = owner else {
        return Ok(());
    };
    match pod_ns {
        Some(ns) if ns == owner => Ok(()),
        Some(ns) if shared_with.iter().any(|s| s == "*" || s == ns) => Ok(()),
        Some(ns) => Err(format!("volume belongs to project {owner}; project {ns} may not mount it")),
        None => Err(format!(
            "volume belongs to project {owner} and the request names no pod namespace (enable podInfoOnMount)"
        )),
    }
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
