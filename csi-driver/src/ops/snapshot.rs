//! Snapshots: a copy of a volume's content in the pool (reflinked where the
//! pool filesystem can). Crash-consistent: a volume mounted read-write is
//! copied as a power cut would leave it.

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::info;

use super::controller::ready_volume;
use super::{page, Driver, DriverError, Result};
use crate::volume::{ids, Snapshot};

pub fn create(d: &Driver, source_id: &str, name: &str) -> Result<Snapshot> {
    let id = ids::derive("snap", name);
    let v = {
        let _lock = d.store.lock()?;
        if let Some(s) = d.store.snapshot(&id)? {
            if s.source_volume_id == source_id && s.ready {
                return Ok(s);
            }
            if s.source_volume_id != source_id {
                return Err(DriverError::AlreadyExists(format!(
                    "snapshot {name} exists for volume {}",
                    s.source_volume_id
                )));
            }
        }
        ready_volume(d, source_id)?
    };
    let mut snap = Snapshot {
        id: id.clone(),
        name: name.into(),
        source_volume_id: source_id.into(),
        kind: v.kind,
        fs_type: v.fs_type.clone(),
        size: v.capacity,
        owner: v.owner.clone(),
        created_unix_nanos: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as i128),
        ready: false,
    };
    d.store.put_snapshot(&snap)?;
    d.pause_point("copy");
    d.pool.copy(
        v.kind,
        &d.pool.volume_path(v.kind, source_id),
        &d.pool.snapshot_path(v.kind, &id),
    )?;
    snap.ready = true;
    d.store.put_snapshot(&snap)?;
    info!(snapshot_id = %id, volume_id = %source_id, "snapshot taken");
    Ok(snap)
}

pub fn delete(d: &Driver, id: &str) -> Result<()> {
    if !ids::is_valid("snap", id) {
        return Ok(());
    }
    let _lock = d.store.lock()?;
    let Some(s) = d.store.snapshot(id)? else {
        return Ok(());
    };
    d.pool.remove(s.kind, &d.pool.snapshot_path(s.kind, id))?;
    d.store.remove_snapshot(id)?;
    info!(snapshot_id = %id, "snapshot deleted");
    Ok(())
}

pub fn list(
    d: &Driver,
    token: &str,
    max: usize,
    source: &str,
    id: &str,
) -> Result<(Vec<Snapshot>, String)> {
    if !token.is_empty() && !ids::is_valid("snap", token) {
        return Err(DriverError::Aborted(format!(
            "starting token {token} is not one this driver gave"
        )));
    }
    let all: Vec<Snapshot> = d
        .store
        .snapshots()?
        .into_iter()
        .filter(|s| {
            s.ready
                && (source.is_empty() || s.source_volume_id == source)
                && (id.is_empty() || s.id == id)
        })
        .collect();
    Ok(page(all, |s| s.id.as_str(), token, max))
}
