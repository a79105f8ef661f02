//! NodeStage and NodeUnstage: the volume's loop device attached and its
//! filesystem mounted at the staging path, claimed against other nodes for
//! single-node modes.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::controller::{known_volume_id, ready_volume};
use super::node::{check_cap, drop_own_device, io, refusal};
use super::{Driver, DriverError, Result};
use crate::backend::grow_fs;
use crate::volume::access::{self, AccessMode, Capability};
use crate::volume::{Kind, Stage, Volume};

/// Decided and claimed under the pool lock, so two nodes racing for a
/// single-node volume see each other's stage; attached and mounted after
/// it, so a slow mount (the resize of a large image) holds up no other
/// node's RPCs. The claim is the stage record without its device: a crash
/// before the mount leaves it, which a retried NodeStage redoes and the
/// node's start-up reconcile drops.
pub fn stage(d: &Driver, id: &str, staging: &str, cap: &Capability) -> Result<()> {
    let v = ready_volume(d, id)?;
    check_cap(&v, cap)?;
    let ro = cap.mode.read_only();
    let record = |device: Option<PathBuf>| Stage {
        volume_id: id.into(),
        node_id: d.node_id.clone(),
        staging_path: staging.into(),
        device: device.map(|p| p.to_string_lossy().into_owned()),
        readonly: ro,
        mode: Some(cap.mode),
        released: false,
        boot: d.boot_id.clone(),
    };
    {
        let _lock = d.store.lock()?;
        if let Some(s) = d.store.stage(&d.node_id, id)? {
            if s.staging_path != staging || s.readonly != ro {
                return Err(DriverError::AlreadyExists(format!(
                    "volume {id} is staged at {} with readonly={}",
                    s.staging_path, s.readonly
                )));
            }
            // A claim whose mount was made but not recorded (a crash, a
            // failed write) is redone: attach and mount find theirs in place.
            let complete = v.kind == Kind::Dir || s.device.is_some();
            if complete && still_staged(d, &v, &s)? {
                return restaged(d, s, cap.mode);
            }
        }
        claim(d, id, cap.mode)?;
        d.store.put_stage(&record(None))?;
    }
    let staging_path = Path::new(staging);
    let image = d.pool.volume_path(v.kind, id);
    let device = fs::create_dir_all(staging_path)
        .map_err(io("create", staging_path))
        .and_then(|()| match v.kind {
            Kind::Dir => Ok(None),
            Kind::Block => Ok(Some(attached(d, &image, ro)?.0)),
            Kind::Image => Ok(Some(stage_image(d, &v, &image, staging_path, ro)?)),
        });
    let device = match device {
        Ok(dev) => dev,
        Err(e) => {
            let _lock = d.store.lock()?;
            d.store.remove_stage(&d.node_id, id)?;
            return Err(e);
        }
    };
    d.crash_point("stage-after-mount");
    let _lock = d.store.lock()?;
    // A force-detach meanwhile released the claim: the record keeps saying
    // so, for the node's NodeUnstage, and the CO hears it lost the volume.
    let released = d.store.stage(&d.node_id, id)?.is_some_and(|s| s.released);
    d.store.put_stage(&Stage {
        released,
        ..record(device)
    })?;
    if released {
        return Err(DriverError::FailedPrecondition(format!(
            "volume {id} was detached from this node while it was being staged"
        )));
    }
    info!(volume_id = %id, staging_path = %staging, mode = ?cap.mode, "volume staged");
    Ok(())
}

/// The volume may be staged on this node for `mode`: no other node's stage
/// holds it (see [`access::node_stage`]).
fn claim(d: &Driver, id: &str, mode: AccessMode) -> Result<()> {
    let stages = d.store.stages_of(id)?;
    access::node_stage(&stages, &d.node_id, mode).map_err(refusal)
}

/// NodeStage again over a stage still in place: done, unless the CO
/// detached it meanwhile (it must hold the volume again) or asks for a
/// single-node mode where it had another. A record from before modes were
/// kept only learns its mode: this node already holds the volume.
fn restaged(d: &Driver, mut s: Stage, mode: AccessMode) -> Result<()> {
    if s.mode == Some(mode) && !s.released {
        return Ok(());
    }
    if s.released || s.mode.is_some() {
        claim(d, &s.volume_id, mode)?;
    }
    (s.mode, s.released) = (Some(mode), false);
    d.store.put_stage(&s)?;
    Ok(())
}

/// Whether a stage record's mount (or device) is still in place.
pub(super) fn still_staged(d: &Driver, v: &Volume, s: &Stage) -> Result<bool> {
    Ok(match v.kind {
        Kind::Dir => true,
        Kind::Image => d.mounter.mounted(Path::new(&s.staging_path))?.is_some(),
        // After a reboot the recorded number may be another volume's; the
        // volume's read-only publications have devices of their own.
        Kind::Block => d
            .loops
            .associated(&d.pool.volume_path(Kind::Block, &v.id))?
            .iter()
            .any(|(dev, ro)| {
                *ro == s.readonly && s.device.as_deref() == Some(&*dev.to_string_lossy())
            }),
    })
}

/// The loop device over `image` (read-only or not, as asked): one already
/// there (another simulated node's on this machine, or this node's before
/// a retried stage), or a new one; and whether it is new.
fn attached(d: &Driver, image: &Path, ro: bool) -> Result<(PathBuf, bool)> {
    Ok(match d.loops.find(image, ro)? {
        Some(dev) => (dev, false),
        None => (d.loops.attach_new(image, ro)?, true),
    })
}

/// Attach the image (or find it attached, by another simulated node on this
/// machine) and mount its filesystem at the staging path. A device this
/// stage attached is detached again if the mount fails: it would otherwise
/// stay attached until a retry that may never come.
fn stage_image(d: &Driver, v: &Volume, image: &Path, staging: &Path, ro: bool) -> Result<PathBuf> {
    let (dev, new) = attached(d, image, ro)?;
    if d.mounter.mounted(staging)?.is_none() {
        if let Err(e) = mount_image(d, v, &dev, staging, ro) {
            if new {
                drop_own_device(d, Some(&dev.to_string_lossy()));
            }
            return Err(e);
        }
    }
    Ok(dev)
}

fn mount_image(d: &Driver, v: &Volume, dev: &Path, staging: &Path, ro: bool) -> Result<()> {
    let fs_type = v.fs_type.as_deref().unwrap_or("ext4");
    if !ro {
        grow_before_mount(d, dev, fs_type)?;
    }
    d.mounter.mount_fs(dev, staging, fs_type, ro)?;
    if !ro && fs_type != "ext4" {
        // btrfs answers EINVAL when there is nothing to grow.
        if let Err(e) = grow_fs(fs_type, dev, staging) {
            warn!(volume_id = %v.id, error = %e, "online grow at stage did nothing");
        }
    }
    Ok(())
}

/// A clone, a restore or an expansion while unpublished left the image
/// larger than its filesystem. ext4 grows before the mount: its online
/// resize needs CAP_SYS_RESOURCE, which a confined node plugin may lack.
fn grow_before_mount(d: &Driver, dev: &Path, fs_type: &str) -> Result<()> {
    d.loops.refresh(dev)?;
    if fs_type == "ext4" {
        crate::backend::run("resize2fs", &["-f", &dev.to_string_lossy()])?;
    }
    Ok(())
}

/// Unstage and unpublish may outlive their volume, so they check its id but
/// do not look it up.
pub fn unstage(d: &Driver, id: &str, staging: &str) -> Result<()> {
    known_volume_id(id)?;
    let staging_path = Path::new(staging);
    d.mounter.unmount(staging_path)?;
    // Locked: a ControllerUnpublish releasing this record meanwhile would
    // write it back after its removal.
    let _lock = d.store.lock()?;
    let record = d.store.stage(&d.node_id, id)?;
    // Nodes of one boot share a kernel (kind, simulated nodes) and so the
    // volume's loop device: after a force-detach another node may have
    // staged the volume on the one this node attached. A mounted device
    // outlives its detach, a block volume's does not.
    let same_kernel = |o: &Stage| !d.boot_id.is_empty() && o.boot == d.boot_id;
    let others: Vec<Stage> = d
        .store
        .stages_of(id)?
        .into_iter()
        .filter(|o| o.node_id != d.node_id && !o.released && same_kernel(o))
        .collect();
    match &record {
        Some(s) if !others.iter().any(|o| o.readonly == s.readonly) => {
            detach_image(d, id, s.readonly)?
        }
        Some(_) => {}
        // No record (the node's start-up dropped a stale one, or a retry
        // after it was removed): whatever device is left over the image.
        None if others.is_empty() => {
            for ro in [false, true] {
                if let Err(e) = detach_image(d, id, ro) {
                    warn!(volume_id = %id, error = %e, "cannot detach a loop device without its stage record");
                }
            }
        }
        None => {}
    }
    if record.is_some() {
        d.crash_point("unstage-after-detach");
        d.store.remove_stage(&d.node_id, id)?;
    }
    info!(volume_id = %id, staging_path = %staging, "volume unstaged");
    Ok(())
}

/// Detach the loop device over the volume's image: the one there now, not
/// the number recorded at stage time, which after a reboot may be another
/// volume's and after a crash between the detach and the record's removal
/// is free (detaching it again would fail every retry). Another (simulated)
/// node on this machine may share the device: the kernel then frees it when
/// its last user unmounts.
fn detach_image(d: &Driver, id: &str, readonly: bool) -> Result<()> {
    for kind in [Kind::Image, Kind::Block] {
        let image = d.pool.volume_path(kind, id);
        if image.exists() {
            if let Some(dev) = d.loops.find(&image, readonly)? {
                d.loops.detach(&dev)?;
            }
        }
    }
    Ok(())
}
