//! Mounts, through the mount syscalls (no `mount` program), and the mount
//! table read from /proc/self/mountinfo.

mod info;

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub use info::{parse_mountinfo, MountEntry};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {source_path} on {target}")]
    Mount {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("read the mount table")]
    Table(#[source] std::io::Error),
}

/// What the node service needs from the kernel's mount table.
pub trait Mounter: Send + Sync {
    /// Mount the filesystem on `device` at `target`.
    fn mount_fs(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        readonly: bool,
    ) -> Result<(), MountError>;
    /// Bind `source` at `target`; read-only binds are remounted read-only, so
    /// the kernel refuses writes (EROFS) whatever the pod asks for.
    fn bind(&self, source: &Path, target: &Path, readonly: bool) -> Result<(), MountError>;
    /// Unmount `target` if something is mounted there; returns whether it was.
    fn unmount(&self, target: &Path) -> Result<bool, MountError>;
    /// The topmost mount at `target`, if any.
    fn mounted(&self, target: &Path) -> Result<Option<MountEntry>, MountError>;
}

pub struct LinuxMounter;

impl Mounter for LinuxMounter {
    fn mount_fs(
        &self,
        device: &Path,
        target: &Path,
        fs_type: &str,
        readonly: bool,
    ) -> Result<(), MountError> {
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        // A read-only ext4 must not replay its journal: another node may own it.
        let data = if readonly {
            flags |= MsFlags::MS_RDONLY;
            (fs_type == "ext4").then_some("noload")
        } else {
            None
        };
        mount(Some(device), target, Some(fs_type), flags, data).map_err(|source| {
            MountError::Mount {
                source_path: device.into(),
                target: target.into(),
                source,
            }
        })
    }

    fn bind(&self, source: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
        let err = |e| MountError::Mount {
            source_path: source.into(),
            target: target.into(),
            source: e,
        };
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err)?;
        if readonly {
            // MS_RDONLY is ignored on the first bind; only a remount applies it.
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(err(e));
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<bool, MountError> {
        // EINVAL: not a mount point; ENOENT: no such path. Either way nothing
        // is mounted there, and the mount table need not be read.
        match umount2(target, MntFlags::empty()) {
            Ok(()) => Ok(true),
            Err(nix::Error::EINVAL | nix::Error::ENOENT) => Ok(false),
            Err(source) => Err(MountError::Unmount {
                target: target.into(),
                source,
            }),
        }
    }

    fn mounted(&self, target: &Path) -> Result<Option<MountEntry>, MountError> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Table)?;
        Ok(parse_mountinfo(&table)
            .into_iter()
            .rev()
            .find(|m| m.mount_point == target))
    }
}
