//! Where volume bytes live: the pool directory (a shared filesystem on a real
//! cluster, a local folder on one machine). Image files carry a filesystem and
//! are loop-mounted, so their capacity is hard; directories serve many writers.

mod loopdev;
mod quota;
mod tools;

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub use loopdev::{Loops, LosetupLoops};
pub use tools::{grow_fs, min_size, mkfs, run, supported_fs};

use crate::volume::Kind;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("directory quota")]
    Quota(#[from] quota::QuotaError),
    #[error("{program} {args} failed: {stderr}")]
    Command {
        program: String,
        args: String,
        stderr: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |source| BackendError::Io {
        what,
        path: path.into(),
        source,
    }
}

pub struct Pool {
    root: PathBuf,
    /// The pool's device when its filesystem enforces project quotas.
    quota_device: Option<PathBuf>,
}

impl Pool {
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        for sub in ["volumes", "snapshots"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        let quota_device = quota::detect(root);
        tracing::info!(pool = %root.display(), quota_device = ?quota_device, "pool opened");
        Ok(Self {
            root: root.into(),
            quota_device,
        })
    }

    /// Ids are validated before they get here; see `volume::ids`.
    pub fn volume_path(&self, kind: Kind, id: &str) -> PathBuf {
        data_path(&self.root.join("volumes"), kind, id)
    }

    pub fn snapshot_path(&self, kind: Kind, id: &str) -> PathBuf {
        data_path(&self.root.join("snapshots"), kind, id)
    }

    /// Fresh bytes for a volume: a sparse image (with a filesystem unless it
    /// is a block volume) or a directory.
    pub fn create(
        &self,
        kind: Kind,
        path: &Path,
        size: u64,
        fs_type: &str,
    ) -> Result<(), BackendError> {
        self.remove(kind, path)?;
        match kind {
            Kind::Dir => {
                fs::create_dir(path).map_err(io_err("create", path))?;
                self.limit_dir(path, Some(size))
            }
            Kind::Block => sparse_file(path, size),
            Kind::Image => {
                sparse_file(path, size)?;
                mkfs(fs_type, path)
            }
        }
    }

    /// Copy a volume's or snapshot's content (reflinked where the pool can).
    pub fn copy(&self, kind: Kind, from: &Path, to: &Path) -> Result<(), BackendError> {
        self.remove(kind, to)?;
        let (f, t) = (from.to_string_lossy(), to.to_string_lossy());
        match kind {
            Kind::Dir => {
                // Tagged before the copy, so every copied file counts against it.
                fs::create_dir(to).map_err(io_err("create", to))?;
                self.limit_dir(to, None)?;
                run("cp", &["-a", "--reflink=auto", &format!("{f}/."), &t])
            }
            _ => run("cp", &["--sparse=always", "--reflink=auto", &f, &t]),
        }
    }

    /// Grow an image file to `size`; the filesystem follows at the node.
    pub fn grow(&self, kind: Kind, path: &Path, size: u64) -> Result<(), BackendError> {
        if kind == Kind::Dir {
            return self.limit_dir(path, Some(size));
        }
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        let len = f.metadata().map_err(io_err("stat", path))?.len();
        if size > len {
            f.set_len(size).map_err(io_err("grow", path))?;
            f.sync_all().map_err(io_err("sync", path))?;
        }
        Ok(())
    }

    /// Tag a directory volume with its project and, given a size, limit it.
    /// Without project quota support on the pool this does nothing.
    fn limit_dir(&self, dir: &Path, size: Option<u64>) -> Result<(), BackendError> {
        let Some(device) = &self.quota_device else {
            return Ok(());
        };
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let project = quota::project_id(&id);
        // A limit of 0 is "none": the copy into a new volume is limited after.
        Ok(quota::limit(device, dir, project, size.unwrap_or(0))?)
    }

    pub fn remove(&self, kind: Kind, path: &Path) -> Result<(), BackendError> {
        let r = match kind {
            Kind::Dir => fs::remove_dir_all(path),
            _ => fs::remove_file(path),
        };
        match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
            _ => Ok(()),
        }
    }

    /// Free bytes in the pool.
    pub fn available(&self) -> Result<u64, BackendError> {
        let s = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| io_err("statvfs", &self.root)(e.into()))?;
        Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
    }

    /// Bytes and inodes used under a directory volume.
    pub fn usage(&self, path: &Path) -> Result<(u64, u64), BackendError> {
        let mut bytes = 0;
        let mut inodes = 0;
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
                let entry = entry.map_err(io_err("read", &dir))?;
                let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
                inodes += 1;
                bytes += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok((bytes, inodes))
    }
}

fn data_path(dir: &Path, kind: Kind, id: &str) -> PathBuf {
    match kind {
        Kind::Dir => dir.join(id),
        _ => dir.join(format!("{id}.img")),
    }
}

fn sparse_file(path: &Path, size: u64) -> Result<(), BackendError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("create", path))?;
    f.set_len(size).map_err(io_err("size", path))?;
    f.sync_all().map_err(io_err("sync", path))
}
