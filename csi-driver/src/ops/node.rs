//! Node RPCs: publishing (bind mounts, read-only when the rules say so),
//! stats and online expansion; staging is in [`super::stage`].

use std::fs;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::controller::{known_volume_id, ready_volume};
pub use super::stage::{stage, unstage};
use super::{Driver, DriverError, Result};
use crate::backend::grow_fs;
use crate::volume::access::{self, Capability, Refusal};
use crate::volume::{Kind, NodePublication, PubState, Stage, Volume};

pub const CTX_POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";

pub(super) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DriverError + 'a {
    move |source| {
        DriverError::Backend(crate::backend::BackendError::Io {
            what,
            path: path.into(),
            source,
        })
    }
}

pub(super) fn check_cap(v: &Volume, cap: &Capability) -> Result<()> {
    access::allows(v.kind, &v.modes, cap).map_err(DriverError::InvalidArgument)
}

pub struct PublishArgs<'a> {
    pub id: &'a str,
    pub staging: &'a str,
    pub target: &'a str,
    pub cap: &'a Capability,
    pub readonly: bool,
    pub pod_namespace: Option<&'a str>,
}

pub(super) fn refusal(r: Refusal) -> DriverError {
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
