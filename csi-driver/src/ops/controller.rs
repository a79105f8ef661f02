//! Controller RPCs: volumes in the pool and their controller publications.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::{round_up, Driver, DriverError, Result, DEFAULT_SIZE, MIB};
use crate::backend::{min_size, supported_fs};
use crate::volume::access::{self, kind_for, Capability, Refusal};
use crate::volume::{ids, CtrlPublication, Kind, Source, Volume, VolumeState};

pub const PARAM_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PARAM_SHARED_WITH: &str = "moat.dev/shared-with";
pub const PARAM_FS_TYPE: &str = "fsType";

pub struct CreateArgs {
    pub name: String,
    pub required: u64,
    pub limit: u64,
    pub caps: Vec<Capability>,
    pub params: BTreeMap<String, String>,
    pub source: Option<Source>,
}

fn not_found(what: &str, id: &str) -> DriverError {
    DriverError::NotFound(format!("{what} {id} does not exist"))
}

/// NOT_FOUND for an id we never made: it names no state of ours, and one
/// shaped like `../x` must not reach a path built from it.
pub(super) fn known_volume_id(id: &str) -> Result<()> {
    if ids::is_valid("vol", id) {
        Ok(())
    } else {
        Err(not_found("volume", id))
    }
}

/// A ready volume, or NOT_FOUND (ids we did not make are never looked up).
pub fn ready_volume(d: &Driver, id: &str) -> Result<Volume> {
    known_volume_id(id)?;
    match d.store.volume(id)? {
        Some(v) if v.state == VolumeState::Ready => Ok(v),
        _ => Err(not_found("volume", id)),
    }
}

fn refusal(r: Refusal) -> DriverError {
    match r {
        Refusal::Held(m) => DriverError::FailedPrecondition(m),
        Refusal::Incompatible(m) => DriverError::AlreadyExists(m),
    }
}

/// The plan for a new volume, from the request alone.
fn plan(a: &CreateArgs) -> Result<Volume> {
    let kind = kind_for(&a.caps).map_err(DriverError::InvalidArgument)?;
    let fs = a
        .caps
        .iter()
        .find_map(|c| c.fs_type.clone())
        .or_else(|| a.params.get(PARAM_FS_TYPE).cloned())
        .unwrap_or_else(|| "ext4".into());
    if kind == Kind::Image && !supported_fs(&fs) {
        return Err(DriverError::InvalidArgument(format!(
            "fsType {fs} is not supported (ext4, xfs, btrfs)"
        )));
    }
    let floor = if kind == Kind::Image {
        min_size(&fs)
    } else {
        MIB
    };
    let wanted = if a.required == 0 {
        DEFAULT_SIZE.min(if a.limit > 0 { a.limit } else { u64::MAX })
    } else {
        a.required
    };
    let capacity = round_up(wanted.max(floor), MIB);
    if a.limit > 0 && capacity > a.limit {
        return Err(DriverError::OutOfRange(format!(
            "{capacity} bytes (the smallest {kind:?} volume this can be) exceed the limit of {}",
            a.limit
        )));
    }
    let shared_with = a
        .params
        .get(PARAM_SHARED_WITH)
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut modes: Vec<_> = a.caps.iter().map(|c| c.mode).collect();
    modes.sort();
    modes.dedup();
    Ok(Volume {
        id: ids::derive("vol", &a.name),
        name: a.name.clone(),
        kind,
        fs_type: (kind == Kind::Image).then_some(fs),
        capacity,
        owner: a.params.get(PARAM_PVC_NAMESPACE).cloned(),
        shared_with,
        modes,
        source: a.source.clone(),
        state: VolumeState::Creating,
        published: BTreeMap::new(),
    })
}

/// Same name again: the same volume if compatible, ALREADY_EXISTS otherwise.
fn compatible(existing: &Volume, a: &CreateArgs, planned: &Volume) -> bool {
    existing.capacity >= a.required
        && (a.limit == 0 || existing.capacity <= a.limit)
        && existing.kind == planned.kind
        && existing.fs_type == planned.fs_type
        && existing.source == planned.source
        && existing.owner == planned.owner
}

fn check_quota(d: &Driver, owner: Option<&str>, id: &str, extra: u64) -> Result<()> {
    let Some((owner, quota)) = owner.and_then(|o| d.quotas.get(o).map(|q| (o, *q))) else {
        return Ok(());
    };
    let used: u64 = d
        .store
        .volumes()?
        .iter()
        .filter(|v| v.owner.as_deref() == Some(owner) && v.id != id)
        .map(|v| v.capacity)
        .sum();
    if used + extra > quota {
        return Err(DriverError::ResourceExhausted(format!(
            "project {owner} would use {} of its {quota}-byte quota",
            used + extra
        )));
    }
    Ok(())
}

/// The source's data path and kind, after checking the new volume may use it.
fn source_data(d: &Driver, v: &Volume) -> Result<Option<(std::path::PathBuf, u64)>> {
    let (kind, owner, path, size) = match &v.source {
        None => return Ok(None),
        Some(Source::Snapshot(sid)) => {
            let s = ids::is_valid("snap", sid)
                .then(|| d.store.snapshot(sid))
                .transpose()?
                .flatten()
                .filter(|s| s.ready)
                .ok_or_else(|| not_found("snapshot", sid))?;
            (
                s.kind,
                s.owner.clone(),
                d.pool.snapshot_path(s.kind, sid),
                s.size,
            )
        }
        Some(Source::Volume(src)) => {
            let s = ready_volume(d, src)?;
            (
                s.kind,
                s.owner.clone(),
                d.pool.volume_path(s.kind, src),
                s.capacity,
            )
        }
    };
    if kind != v.kind {
        return Err(DriverError::InvalidArgument(format!(
            "source is a {kind:?} volume, the new one a {:?}",
            v.kind
        )));
    }
    if owner.is_some() && owner != v.owner {
        return Err(DriverError::PermissionDenied(format!(
            "the source belongs to project {}",
            owner.unwrap_or_default()
        )));
    }
    Ok(Some((path, size)))
}

pub fn create(d: &Driver, a: CreateArgs) -> Result<Volume> {
    let mut v = plan(&a)?;
    {
        let _lock = d.store.lock()?;
        match d.store.volume(&v.id)? {
            Some(e) if e.state == VolumeState::Ready && compatible(&e, &a, &v) => return Ok(e),
            Some(e) if e.state == VolumeState::Ready => {
                return Err(DriverError::AlreadyExists(format!(
                    "volume {} exists with other parameters ({} bytes, {:?})",
                    a.name, e.capacity, e.kind
                )))
            }
            Some(e) if e.state == VolumeState::Deleting => {
                return Err(DriverError::Aborted(format!(
                    "volume {} is being deleted",
                    e.id
                )))
            }
            _ => {}
        }
        if let Some((_, size)) = source_data(d, &v)? {
            v.capacity = v.capacity.max(round_up(size, MIB));
            if a.limit > 0 && v.capacity > a.limit {
                return Err(DriverError::OutOfRange(format!(
                    "the source needs {} bytes",
                    v.capacity
                )));
            }
        }
        check_quota(d, v.owner.as_deref(), &v.id, v.capacity)?;
        // Recorded first: a crash from here on leaves a record that start-up
        // rolls back and a retried create redoes.
        d.store.put_volume(&v)?;
    }
    let path = d.pool.volume_path(v.kind, &v.id);
    match source_data(d, &v)? {
        Some((from, _)) => {
            d.pause_point("copy");
            d.pool.copy(v.kind, &from, &path)?;
            d.pool.grow(v.kind, &path, v.capacity)?;
        }
        None => d.pool.create(
            v.kind,
            &path,
            v.capacity,
            v.fs_type.as_deref().unwrap_or("ext4"),
        )?,
    }
    d.crash_point("create-after-data");
    v.state = VolumeState::Ready;
    d.store.put_volume(&v)?;
    info!(volume_id = %v.id, name = %v.name, kind = ?v.kind, capacity = v.capacity, owner = ?v.owner, "volume created");
    Ok(v)
}

pub fn delete(d: &Driver, id: &str) -> Result<()> {
    if !ids::is_valid("vol", id) {
        return Ok(());
    }
    let v = {
        let _lock = d.store.lock()?;
        let Some(mut v) = d.store.volume(id)? else {
            return Ok(());
        };
        if let Some(node) = v.published.keys().next() {
            return Err(DriverError::FailedPrecondition(format!(
                "volume {id} is still published on node {node}"
            )));
        }
        if let Some(p) = d.store.publications(id)?.first() {
            return Err(DriverError::FailedPrecondition(format!(
                "volume {id} is still mounted at {} on node {}",
                p.target, p.node_id
            )));
        }
        v.state = VolumeState::Deleting;
        d.store.put_volume(&v)?;
        v
    };
    d.pool.remove(v.kind, &d.pool.volume_path(v.kind, id))?;
    d.store.remove_volume(id)?;
    info!(volume_id = %id, "volume deleted");
    Ok(())
}

pub fn publish(d: &Driver, id: &str, node: &str, cap: &Capability, readonly: bool) -> Result<bool> {
    let _lock = d.store.lock()?;
    let mut v = ready_volume(d, id)?;
    access::allows(v.kind, &v.modes, cap).map_err(DriverError::InvalidArgument)?;
    let ro = readonly || cap.mode.read_only();
    if access::controller_publish(&v.published, node, cap.mode, readonly).map_err(refusal)? {
        v.published.insert(
            node.into(),
            CtrlPublication {
                mode: cap.mode,
                readonly: ro,
            },
        );
        d.store.put_volume(&v)?;
        info!(volume_id = %id, node_id = %node, readonly = ro, "volume published to node");
    }
    Ok(ro)
}

pub fn unpublish(d: &Driver, id: &str, node: &str) -> Result<()> {
    let _lock = d.store.lock()?;
    let Ok(mut v) = ready_volume(d, id) else {
        return Ok(());
    };
    let before = v.published.len();
    if node.is_empty() {
        v.published.clear();
    } else {
        v.published.remove(node);
    }
    if v.published.len() != before {
        d.store.put_volume(&v)?;
        info!(volume_id = %id, node_id = %node, "volume unpublished from node");
    }
    // The CO says the volume is no longer in use there. Normally that node's
    // NodeUnpublish came first; after a force-detach (a node shut down for
    // good, out-of-service) its records would hold an RWO or RWOP volume, and
    // DeleteVolume, forever, as nothing on that node will ever remove them.
    for p in d.store.publications(id)? {
        if node.is_empty() || p.node_id == node {
            d.store.remove_publication(id, &p.node_id, &p.target)?;
            warn!(volume_id = %id, node_id = %p.node_id, target_path = %p.target,
                  "node publication dropped: the volume was detached from that node");
        }
    }
    for mut s in d.store.stages_of(id)? {
        if (node.is_empty() || s.node_id == node) && !s.released {
            s.released = true;
            d.store.put_stage(&s)?;
            warn!(volume_id = %id, node_id = %s.node_id, "stage released: the volume was detached from that node");
        }
    }
    Ok(())
}

/// Grow a volume; returns (capacity, whether the node must grow its filesystem).
pub fn expand(d: &Driver, id: &str, required: u64, limit: u64) -> Result<(u64, bool)> {
    let _lock = d.store.lock()?;
    let mut v = ready_volume(d, id)?;
    let wanted = round_up(required, MIB);
    if limit > 0 && wanted > limit {
        return Err(DriverError::OutOfRange(format!(
            "{wanted} bytes exceed the limit of {limit}"
        )));
    }
    let node_grows = v.kind != Kind::Dir;
    if wanted <= v.capacity {
        return Ok((v.capacity, node_grows));
    }
    check_quota(d, v.owner.as_deref(), id, wanted)?;
    d.pool
        .grow(v.kind, &d.pool.volume_path(v.kind, id), wanted)?;
    v.capacity = wanted;
    d.store.put_volume(&v)?;
    info!(volume_id = %id, capacity = wanted, "volume expanded");
    Ok((wanted, node_grows))
}

/// Which of `caps` this volume cannot serve (empty: all confirmed).
pub fn unsupported(v: &Volume, caps: &[Capability]) -> Vec<String> {
    caps.iter()
        .filter(|c| access::allows(v.kind, &v.modes, c).is_err())
        .map(|c| format!("{:?} {}", c.mode, if c.block { "block" } else { "mount" }))
        .collect()
}
