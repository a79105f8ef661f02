//! Durable metadata in the pool's state directory, shared by the controller
//! and every node process: one JSON file per record, replaced atomically
//! (write, fsync, rename, fsync directory) so a SIGKILL or a power cut at any
//! point leaves the old record or the new one. A flock serialises
//! read-modify-write.
//!
//! Node publications are slots in one table file per volume (see
//! [`pubtable`]). Stage records and publications are written without
//! fsync: they describe mounts, which do not outlive the machine. A killed
//! process leaves them in the page cache, intact; after a power cut the
//! node's start-up reconcile drops every record whose mount is gone, which
//! is all of them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::volume::{Snapshot, Stage, Volume};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state record {path} is corrupt")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.into(),
        source,
    }
}

pub struct Store {
    dir: PathBuf,
    /// The lock file, opened once: an open and a close per locked RPC were a
    /// tenth of a publish's syscalls. flock excludes other processes only
    /// (every thread here shares this open file), so the mutex excludes
    /// threads. The file is out of the slot while a thread holds the lock.
    lock_file: Mutex<Option<File>>,
}

/// Held while a read-modify-write of shared records is in progress.
pub struct StateLock<'a> {
    slot: MutexGuard<'a, Option<File>>,
    held: Option<Flock<File>>,
}

impl Drop for StateLock<'_> {
    fn drop(&mut self) {
        // Unlocked, the file goes back for the next lock; if the unlock
        // failed, dropping it closes it, which releases the lock too.
        if let Some(Ok(file)) = self.held.take().map(Flock::unlock) {
            *self.slot = Some(file);
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, StateError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        for sub in ["volumes", "snapshots", "pubs", "stages"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let lock_file = open_lock_file(&dir.join("lock"))?;
        Ok(Self {
            dir: dir.into(),
            lock_file: Mutex::new(Some(lock_file)),
        })
    }

    pub fn lock(&self) -> Result<StateLock<'_>, StateError> {
        // A thread that panicked under the lock released the flock on unwind.
        let mut slot = self.lock_file.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.dir.join("lock");
        let file = match slot.take() {
            Some(f) => f,
            // Closed after a failed unlock: open it again.
            None => open_lock_file(&path)?,
        };
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(held) => Ok(StateLock {
                slot,
                held: Some(held),
            }),
            Err((file, errno)) => {
                *slot = Some(file);
                Err(io_err(&path)(errno.into()))
            }
        }
    }

    fn volume_path(&self, id: &str) -> PathBuf {
        self.dir.join("volumes").join(format!("{id}.json"))
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.dir.join("snapshots").join(format!("{id}.json"))
    }

    fn stage_path(&self, node: &str, volume_id: &str) -> PathBuf {
        self.dir
            .join("stages")
            .join(hash(node))
            .join(format!("{volume_id}.json"))
    }

    pub fn volume(&self, id: &str) -> Result<Option<Volume>, StateError> {
        read(&self.volume_path(id))
    }

    pub fn put_volume(&self, v: &Volume) -> Result<(), StateError> {
        write(&self.volume_path(&v.id), v, Sync::Durable)
    }

    pub fn remove_volume(&self, id: &str) -> Result<(), StateError> {
        remove(&self.volume_path(id), Sync::Durable)?;
        self.remove_pub_table(id)
    }

    /// Every volume, ordered by id (the order ListVolumes pages through).
    pub fn volumes(&self) -> Result<Vec<Volume>, StateError> {
        list(&self.dir.join("volumes"))
    }

    pub fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, StateError> {
        read(&self.snapshot_path(id))
    }

    pub fn put_snapshot(&self, s: &Snapshot) -> Result<(), StateError> {
        write(&self.snapshot_path(&s.id), s, Sync::Durable)
    }

    pub fn remove_snapshot(&self, id: &str) -> Result<(), StateError> {
        remove(&self.snapshot_path(id), Sync::Durable)
    }

    pub fn snapshots(&self) -> Result<Vec<Snapshot>, StateError> {
        list(&self.dir.join("snapshots"))
    }

    pub fn stage(&self, node: &str, volume_id: &str) -> Result<Option<Stage>, StateError> {
        read(&self.stage_path(node, volume_id))
    }

    pub fn put_stage(&self, s: &Stage) -> Result<(), StateError> {
        let path = self.stage_path(&s.node_id, &s.volume_id);
        let dir = path.parent().expect("stage dir");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write(&path, s, Sync::UntilReboot)
    }

    pub fn remove_stage(&self, node: &str, volume_id: &str) -> Result<(), StateError> {
        remove(&self.stage_path(node, volume_id), Sync::UntilReboot)
    }

    /// A volume's stages on every node (one directory per node). A record
    /// that cannot be read (one left empty by a power cut: stage records are
    /// not synced) is skipped with a warning: one node's bad record must not
    /// stop every node's NodeStage, nor the ControllerUnpublish that frees it.
    pub fn stages_of(&self, volume_id: &str) -> Result<Vec<Stage>, StateError> {
        let dir = self.dir.join("stages");
        let mut out = Vec::new();
        for node_dir in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let node_dir = node_dir.map_err(io_err(&dir))?.path();
            if !node_dir.is_dir() {
                continue;
            }
            match read(&node_dir.join(format!("{volume_id}.json"))) {
                Ok(s) => out.extend(s),
                // Torn, not unreadable: an I/O error must not hide a holder.
                Err(e @ StateError::Parse { .. }) => {
                    tracing::warn!(error = %e, "corrupt stage record skipped")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// This node's stage records by volume id, `None` for one that cannot
    /// be read.
    pub fn node_stages(&self, node: &str) -> Result<Vec<(String, Option<Stage>)>, StateError> {
        let dir = self.dir.join("stages").join(hash(node));
        Ok(record_paths(&dir)?
            .into_iter()
            .filter_map(|p| {
                let id = p.file_stem()?.to_str()?.to_string();
                Some((id, read(&p).ok().flatten()))
            })
            .collect())
    }
}

fn hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    // Records are small: a buffer of their usual size spares the statx and
    // lseek that `File`'s own read_to_end makes to size its buffer (three
    // records are read per NodePublish). Through `Take` the generic
    // read_to_end runs: read, read, done.
    let read = |path: &Path| -> io::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(1024);
        File::open(path)?.take(u64::MAX).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse {
                path: path.into(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// All records in `dir`, ordered by file name; temp files of a writer that
/// died are skipped.
fn list<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StateError> {
    let mut out = Vec::new();
    for p in record_paths(dir)? {
        out.extend(read(&p)?);
    }
    Ok(out)
}

/// The `*.json` files in `dir`, sorted; none if it does not exist.
fn record_paths(dir: &Path) -> Result<Vec<PathBuf>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// How long a record must survive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// A power cut: fsync the file and the directory.
    Durable,
    /// A process crash: the page cache keeps it; see the module comment.
    UntilReboot,
}

fn write<T: Serialize>(path: &Path, value: &T, sync: Sync) -> Result<(), StateError> {
    let dir = path.parent().expect("record has a directory");
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let bytes = serde_json::to_vec(value).expect("records serialise");
    let attempt = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        if sync == Sync::Durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if sync == Sync::Durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    attempt().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

fn remove(path: &Path, sync: Sync) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) if sync == Sync::UntilReboot => Ok(()),
        Ok(()) => {
            let dir = path.parent().expect("record has a directory");
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

mod pubtable;

#[cfg(test)]
mod tests;
