//! Start-up repair after a crash: finish or roll back what a killed process
//! left half done, from the records and the mount table.

use std::path::Path;

use tracing::{info, warn};

use super::{Driver, Result};
use crate::volume::{PubState, VolumeState};

/// Controller: roll back creates (the CO retries them), finish deletes.
pub fn controller(d: &Driver) -> Result<()> {
    let _lock = d.store.lock()?;
    for v in d.store.volumes()? {
        if v.state == VolumeState::Ready {
            continue;
        }
        d.pool.remove(v.kind, &d.pool.volume_path(v.kind, &v.id))?;
        d.store.remove_volume(&v.id)?;
        info!(volume_id = %v.id, state = ?v.state, "half-done volume operation rolled back");
    }
    for s in d.store.snapshots()?.into_iter().filter(|s| !s.ready) {
        d.pool
            .remove(s.kind, &d.pool.snapshot_path(s.kind, &s.id))?;
        d.store.remove_snapshot(&s.id)?;
        info!(snapshot_id = %s.id, "half-taken snapshot removed");
    }
    Ok(())
}

/// Node: a publication recorded but not confirmed is kept if its bind mount
/// exists and dropped if not, so records and mounts agree; so is a stage
/// (after a reboot none is left, and a stale one would hold a single-node
/// volume against every other node).
pub fn node(d: &Driver) -> Result<()> {
    let _lock = d.store.lock()?;
    stages(d)?;
    let torn = d.store.remove_torn_publications()?;
    if torn > 0 {
        warn!(
            records = torn,
            "torn publication records of a publish killed before its mount removed"
        );
    }
    for mut p in d.store.node_publications(&d.node_id)? {
        let mounted = d.mounter.mounted(Path::new(&p.target))?.is_some();
        match (p.state, mounted) {
            (PubState::Publishing, true) => {
                p.state = PubState::Published;
                d.store.add_publication(&p)?;
                info!(volume_id = %p.volume_id, target_path = %p.target, "publication confirmed");
            }
            (_, false) => {
                d.store
                    .remove_publication(&p.volume_id, &p.node_id, &p.target)?;
                super::node::drop_own_device(d, p.device.as_deref());
                warn!(volume_id = %p.volume_id, target_path = %p.target, "publication without a mount dropped");
            }
            _ => {}
        }
    }
    Ok(())
}

fn stages(d: &Driver) -> Result<()> {
    for (id, stage) in d.store.node_stages(&d.node_id)? {
        let kept = match (&stage, d.store.volume(&id)?) {
            (None, _) => false,
            // An earlier boot's: nothing of it is left, a Dir's neither.
            (Some(s), _) if !s.boot.is_empty() && s.boot != d.boot_id => false,
            (Some(s), Some(v)) => super::stage::still_staged(d, &v, s)?,
            (Some(s), None) => d.mounter.mounted(Path::new(&s.staging_path))?.is_some(),
        };
        if !kept {
            d.store.remove_stage(&d.node_id, &id)?;
            warn!(volume_id = %id, readable = stage.is_some(), "stage record without its mount dropped");
        }
    }
    Ok(())
}
