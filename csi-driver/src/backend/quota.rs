//! Capacity for directory volumes: a project quota on the pool filesystem
//! (ext4 mounted with `prjquota`, XFS with `pquota`). Each directory volume
//! gets a project id; files created under it inherit the id, and the kernel
//! refuses writes beyond the limit with EDQUOT. A pool without project quota
//! support (NFS, a plain local folder) reports usage but cannot enforce.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::mount::parse_mountinfo;

const PRJQUOTA: i32 = 2;
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

#[repr(C)]
#[derive(Default)]
pub struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_set_xattr, b'X', 32, FsXattr);

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("set project {project} on {path}")]
    Project {
        project: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("set the limit of project {project} on {device}")]
    Limit {
        project: u32,
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The pool's block device, if its filesystem enforces project quotas.
pub fn detect(pool: &Path) -> Option<PathBuf> {
    let pool = pool.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = parse_mountinfo(&table)
        .into_iter()
        .filter(|m| pool.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())?;
    let device = PathBuf::from(&mount.source);
    let mut info = [0u8; 64];
    (quotactl(libc_q_getinfo(), &device, 0, info.as_mut_ptr()) == 0).then_some(device)
}

/// A stable, non-zero project id for a volume id.
pub fn project_id(volume_id: &str) -> u32 {
    let hex = volume_id.rsplit('-').next().unwrap_or_default();
    let n = u32::from_str_radix(hex.get(..8).unwrap_or("1"), 16).unwrap_or(1);
    (n & 0x7fff_ffff).max(1)
}

/// Tag `dir` (and what will be created in it) with `project`, then limit it.
pub fn limit(device: &Path, dir: &Path, project: u32, bytes: u64) -> Result<(), QuotaError> {
    let perr = |source| QuotaError::Project {
        project,
        path: dir.into(),
        source,
    };
    let f = File::open(dir).map_err(perr)?;
    let mut x = FsXattr::default();
    // SAFETY: the ioctls read and write one FsXattr, laid out as the kernel's.
    unsafe { fs_get_xattr(f.as_raw_fd(), &mut x) }.map_err(|e| perr(e.into()))?;
    x.projid = project;
    x.xflags |= FS_XFLAG_PROJINHERIT;
    unsafe { fs_set_xattr(f.as_raw_fd(), &x) }.map_err(|e| perr(e.into()))?;
    set_limit(device, project, bytes)
}

/// Change the byte limit of a project.
pub fn set_limit(device: &Path, project: u32, bytes: u64) -> Result<(), QuotaError> {
    let mut q = nix::libc::dqblk {
        dqb_bhardlimit: bytes.div_ceil(1024),
        dqb_bsoftlimit: bytes.div_ceil(1024),
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: nix::libc::QIF_BLIMITS,
    };
    let cmd = nix::libc::QCMD(nix::libc::Q_SETQUOTA, PRJQUOTA);
    if quotactl(
        cmd,
        device,
        project as i32,
        (&mut q as *mut nix::libc::dqblk).cast(),
    ) != 0
    {
        return Err(QuotaError::Limit {
            project,
            device: device.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn libc_q_getinfo() -> i32 {
    nix::libc::QCMD(nix::libc::Q_GETINFO, PRJQUOTA)
}

fn quotactl(cmd: i32, device: &Path, id: i32, data: *mut u8) -> i32 {
    let Ok(dev) = CString::new(device.as_os_str().as_encoded_bytes()) else {
        return -1;
    };
    // SAFETY: `dev` is a valid C string and `data` points at a buffer of the
    // size the command expects (dqblk, or 64 bytes for the smaller dqinfo).
    unsafe { nix::libc::quotactl(cmd, dev.as_ptr(), id, data.cast()) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn project_ids_are_stable_and_non_zero() {
        let a = super::project_id("vol-0123abcd0123abcd0123abcd");
        assert_eq!(a, 0x0123abcd);
        assert_eq!(a, super::project_id("vol-0123abcd0123abcd0123abcd"));
        assert_eq!(super::project_id("vol-00000000ffffffff00000000"), 1);
        assert!(super::project_id("vol-ffffffff00000000ffffffff") <= 0x7fff_ffff);
    }
}
