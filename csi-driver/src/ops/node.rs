//! Node RPCs: staging (loop device + filesystem mount), publishing (bind
//! mounts, read-only when the rules say so), stats and online expansion.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::controller::{known_volume_id, ready_volume};
use super::{Driver, DriverError, Result};
use crate::backend::grow_fs;
use crate::volume::access::{self, AccessMode, Capability, Refusal};
use crate::volume::{Kind, NodePublication, PubState, Stage, Volume};

pub const CTX_POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DriverError + 'a {
    move |source| {
        DriverError::Backend(crate::backend::BackendError::Io {
            what,
            path: path.into(),
            source,
        })
    }
}

fn check_cap(v: &Volume, cap: &Capability) -> Result<()> {
    access::allows(v.kind, &v.modes, cap).map_err(DriverError::InvalidArgument)
}

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
            if still_staged(d, &v, &s)? {
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
    // A force-detach meanwhile released the claim: the record keeps saying so.
    let released = d.store.stage(&d.node_id, id)?.is_some_and(|s| s.released);
    d.store.put_stage(&Stage {
        released,
        ..record(device)
    })?;
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
        // After a reboot the recorded number may be another volume's.
        Kind::Block => d
            .loops
            .find(&d.pool.volume_path(Kind::Block, &v.id), s.readonly)?
            .is_some_and(|now| s.device.as_deref() == Some(&*now.to_string_lossy())),
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
    if let Some(s) = d.store.stage(&d.node_id, id)? {
        // Nodes sharing one kernel (kind, tests) share a loop device: after
        // a force-detach another node may stage the volume on the device
        // this one attached. A mounted device outlives its detach, a block
        // volume's does not.
        let shared = d.store.stages_of(id)?.iter().any(|o| {
            o.node_id != d.node_id && !o.released && o.device.is_some() && o.device == s.device
        });
        if s.device.is_some() && !shared {
            detach_image(d, id, s.readonly)?;
        }
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

pub struct PublishArgs<'a> {
    pub id: &'a str,
    pub staging: &'a str,
    pub target: &'a str,
    pub cap: &'a Capability,
    pub readonly: bool,
    pub pod_namespace: Option<&'a str>,
}

fn refusal(r: Refusal) -> DriverError {
    match r {
        Refusal::Held(m) => DriverError::FailedPrecondition(m),
        Refusal::Incompatible(m) => DriverError::AlreadyExists(m),
    }
}

/// A stage the CO detached (a force-detach from a node it took for gone)
/// no longer holds the volume: another node may have it mounted read-write
/// by now, so nothing here may mount or grow it until NodeStage again.
fn refuse_released(s: &Stage) -> Result<()> {
    if s.released {
        return Err(DriverError::FailedPrecondition(format!(
            "volume {} was detached from this node; NodeStage it again",
            s.volume_id
        )));
    }
    Ok(())
}

/// What gets bind-mounted at the target.
fn bind_source(d: &Driver, v: &Volume, staging: &str) -> Result<PathBuf> {
    let not_staged = || {
        DriverError::FailedPrecondition(format!(
            "volume {} is not staged at {staging} on this node",
            v.id
        ))
    };
    let stage = d
        .store
        .stage(&d.node_id, &v.id)?
        .filter(|s| s.staging_path == staging)
        .ok_or_else(not_staged)?;
    refuse_released(&stage)?;
    Ok(match v.kind {
        Kind::Dir => d.pool.volume_path(Kind::Dir, &v.id),
        Kind::Block => PathBuf::from(stage.device.ok_or_else(not_staged)?),
        Kind::Image => PathBuf::from(&stage.staging_path),
    })
}

pub fn publish(d: &Driver, a: &PublishArgs) -> Result<bool> {
    let v = ready_volume(d, a.id)?;
    access::may_mount(v.owner.as_deref(), &v.shared_with, a.pod_namespace)
        .map_err(DriverError::PermissionDenied)?;
    check_cap(&v, a.cap)?;
    let target = Path::new(a.target);
    // Held across the decision and the mount: two nodes racing for a
    // single-writer volume see each other's publication.
    let _lock = d.store.lock()?;
    let table = d.store.pub_table(a.id)?;
    let plan = access::node_publish(
        &table.records(),
        &d.node_id,
        a.target,
        a.cap.mode,
        a.readonly,
    )
    .map_err(refusal)?;
    if plan.done && d.mounter.mounted(target)?.is_some() {
        return Ok(plan.readonly);
    }
    let mut source = bind_source(d, &v, a.staging)?;
    let own = own_device(d, &v, plan.readonly)?;
    if let Some(dev) = &own {
        source = PathBuf::from(dev);
    }
    // One record, written before the mount: start-up reconcile confirms it
    // if the mount exists and drops it if not.
    let record = NodePublication {
        volume_id: a.id.into(),
        node_id: d.node_id.clone(),
        target: a.target.into(),
        mode: a.cap.mode,
        readonly: plan.readonly,
        state: PubState::Publishing,
        device: own,
    };
    let put = table.put(&record);
    d.crash_point("publish-before-mount");
    if let Err(e) = put
        .map_err(DriverError::from)
        .and_then(|()| mount_target(d, v.kind, &source, target, plan.readonly))
    {
        // Nothing is mounted: a record left behind would hold the volume
        // (RWO, RWOP, DeleteVolume) for a publication the CO saw fail and
        // will never unpublish.
        if let Err(cleanup) = d.store.remove_publication(a.id, &d.node_id, a.target) {
            warn!(volume_id = %a.id, error = %cleanup, "cannot drop the failed publication's record");
        }
        drop_own_device(d, record.device.as_deref());
        return Err(e);
    }
    d.crash_point("publish-after-mount");
    info!(volume_id = %a.id, target_path = %a.target, readonly = plan.readonly, "volume published");
    Ok(plan.readonly)
}

/// A read-only publication of a block volume binds a read-only loop device
/// of its own: the kernel does not apply a mount's read-only flag to a
/// device node (a read-only bind of a writable loop device still opens for
/// writing), while a read-only loop device refuses every write.
fn own_device(d: &Driver, v: &Volume, readonly: bool) -> Result<Option<String>> {
    if v.kind != Kind::Block || !readonly {
        return Ok(None);
    }
    let dev = d
        .loops
        .attach_new(&d.pool.volume_path(Kind::Block, &v.id), true)?;
    Ok(Some(dev.to_string_lossy().into_owned()))
}

/// Detach a loop device of a publication (or of a failed stage), if there
/// is one. Best effort: what it served is gone either way, and a leaked
/// device is visible in `losetup`.
pub(super) fn drop_own_device(d: &Driver, device: Option<&str>) {
    if let Some(dev) = device {
        if let Err(e) = d.loops.detach(Path::new(dev)) {
            warn!(device = %dev, error = %e, "cannot detach a publication's loop device");
        }
    }
}

/// Make the target (a directory, or a file for a block volume) and bind the
/// source on it.
fn mount_target(d: &Driver, kind: Kind, source: &Path, target: &Path, ro: bool) -> Result<()> {
    if kind == Kind::Block {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .map_err(io("create", target))?;
    } else {
        fs::create_dir_all(target).map_err(io("create", target))?;
    }
    // Nothing of ours is mounted here: a finished publication returned before.
    d.mounter.bind(source, target, ro)?;
    Ok(())
}

pub fn unpublish(d: &Driver, id: &str, target: &str) -> Result<()> {
    known_volume_id(id)?;
    let target_path = Path::new(target);
    let _lock = d.store.lock()?;
    // The spec has the plugin remove what it created at the target (a
    // directory, or a file for a block volume). A mount still there (one
    // stacked by a retried publish) makes the removal fail with EBUSY:
    // unmount again, rather than probe with a second umount every time.
    let own = d
        .store
        .publications(id)?
        .into_iter()
        .find(|p| p.node_id == d.node_id && p.target == target)
        .and_then(|p| p.device);
    let mut mounted = d.mounter.unmount(target_path)?;
    loop {
        let removed = match fs::remove_dir(target_path) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => fs::remove_file(target_path),
            other => other,
        };
        match removed {
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && mounted => {
                mounted = d.mounter.unmount(target_path)?;
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove", target_path)(e));
            }
            _ => break,
        }
    }
    d.store.remove_publication(id, &d.node_id, target)?;
    drop_own_device(d, own.as_deref());
    info!(volume_id = %id, target_path = %target, "volume unpublished");
    Ok(())
}

/// (bytes available, total, used) and (inodes available, total, used).
pub type Usage = ([u64; 3], [u64; 3]);

pub fn stats(d: &Driver, id: &str, path: &str) -> Result<Usage> {
    let v = ready_volume(d, id)?;
    let p = Path::new(path);
    if !p.exists() {
        return Err(DriverError::NotFound(format!(
            "volume path {path} does not exist"
        )));
    }
    if v.kind == Kind::Dir {
        let (used, inodes) = d.pool.usage(&d.pool.volume_path(Kind::Dir, id))?;
        return Ok((
            [v.capacity.saturating_sub(used), v.capacity, used],
            [0, 0, inodes],
        ));
    }
    if v.kind == Kind::Block {
        return Ok(([0, v.capacity, 0], [0, 0, 0]));
    }
    let s = nix::sys::statvfs::statvfs(p).map_err(|e| io("statvfs", p)(e.into()))?;
    let f = s.fragment_size() as u64;
    let (total, free, avail) = (
        s.blocks() as u64 * f,
        s.blocks_free() as u64 * f,
        s.blocks_available() as u64 * f,
    );
    let (itotal, ifree) = (s.files() as u64, s.files_free() as u64);
    Ok((
        [avail, total, total - free],
        [ifree, itotal, itotal - ifree],
    ))
}

/// Grow the filesystem (or block device) to the volume's new capacity, online.
pub fn expand(d: &Driver, id: &str) -> Result<u64> {
    let v = ready_volume(d, id)?;
    if v.kind == Kind::Dir {
        return Ok(v.capacity);
    }
    let stage = d.store.stage(&d.node_id, id)?.ok_or_else(|| {
        DriverError::FailedPrecondition(format!("volume {id} is not staged on this node"))
    })?;
    refuse_released(&stage)?;
    let dev = PathBuf::from(stage.device.unwrap_or_default());
    d.loops.refresh(&dev)?;
    if v.kind == Kind::Image {
        grow_fs(
            v.fs_type.as_deref().unwrap_or("ext4"),
            &dev,
            Path::new(&stage.staging_path),
        )?;
    }
    info!(volume_id = %id, capacity = v.capacity, "volume expanded on node");
    Ok(v.capacity)
}
