//! Durable metadata in the pool's state directory, shared by the controller
//! and every node process: one JSON file per record, replaced atomically
//! (write, fsync, rename, fsync directory) so a SIGKILL or a power cut at any
//! point leaves the old record or the new one. A flock serialises
//! read-modify-write.
//!
//! Publication and stage records are renamed into place without fsync: they
//! describe mounts, which do not outlive the machine. A killed process leaves
//! them in the page cache, intact; after a power cut the node's start-up
//! reconcile drops every record whose mount is gone, which is all of them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::volume::{NodePublication, Snapshot, Stage, Volume};

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

    fn pub_dir(&self, volume_id: &str) -> PathBuf {
        self.dir.join("pubs").join(volume_id)
    }

    fn pub_path(&self, volume_id: &str, node: &str, target: &str) -> PathBuf {
        let key = hash(&format!("{node}\0{target}"));
        self.pub_dir(volume_id).join(format!("{key}.json"))
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
        let pubs = self.pub_dir(id);
        match fs::remove_dir(&pubs) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&pubs)(e)),
            _ => Ok(()),
        }
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

    /// Node publications of one volume, on every node. Torn records are
    /// skipped: see [`Self::add_publication`].
    pub fn publications(&self, volume_id: &str) -> Result<Vec<NodePublication>, StateError> {
        Ok(list_lenient(&self.pub_dir(volume_id))?.0)
    }

    /// Replace a publication record (start-up reconcile confirming one).
    pub fn put_publication(&self, p: &NodePublication) -> Result<(), StateError> {
        let path = self.pub_path(&p.volume_id, &p.node_id, &p.target);
        write(&path, p, Sync::UntilReboot)
    }

    /// Record a new publication, before its mount, in one create and one
    /// write: no temp file and no rename (the rename was a third of the
    /// driver's share of a publish on ext4). A process killed in between
    /// leaves a torn record, which can only mean that no mount followed:
    /// readers skip it and the node's start-up reconcile removes it. Callers
    /// hold the lock, so no reader sees one being written.
    pub fn add_publication(&self, p: &NodePublication) -> Result<(), StateError> {
        let path = self.pub_path(&p.volume_id, &p.node_id, &p.target);
        let bytes = serde_json::to_vec(p).expect("records serialise");
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        let file = match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = self.pub_dir(&p.volume_id);
                match fs::create_dir(&dir) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(io_err(&dir)(e))
                    }
                    _ => create(),
                }
            }
            other => other,
        };
        match file {
            Ok(mut f) => f.write_all(&bytes).map_err(io_err(&path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.put_publication(p),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Remove publication records that do not parse (see
    /// [`Self::add_publication`]); returns how many. The caller holds the lock.
    pub fn remove_torn_publications(&self) -> Result<usize, StateError> {
        let root = self.dir.join("pubs");
        let mut removed = 0;
        for entry in fs::read_dir(&root).map_err(io_err(&root))? {
            let dir = entry.map_err(io_err(&root))?.path();
            for torn in list_lenient::<NodePublication>(&dir)?.1 {
                remove(&torn, Sync::UntilReboot)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Forget the publication of `volume_id` at `target` on `node`, if any.
    pub fn remove_publication(
        &self,
        volume_id: &str,
        node: &str,
        target: &str,
    ) -> Result<(), StateError> {
        remove(&self.pub_path(volume_id, node, target), Sync::UntilReboot)
    }

    /// Every publication of one node, across volumes.
    pub fn node_publications(&self, node: &str) -> Result<Vec<NodePublication>, StateError> {
        let root = self.dir.join("pubs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&root).map_err(io_err(&root))? {
            let dir = entry.map_err(io_err(&root))?.path();
            let pubs: Vec<NodePublication> = list_lenient(&dir)?.0;
            out.extend(pubs.into_iter().filter(|p| p.node_id == node));
        }
        Ok(out)
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

/// The records in `dir` that parse, and the paths of those that do not.
fn list_lenient<T: DeserializeOwned>(dir: &Path) -> Result<(Vec<T>, Vec<PathBuf>), StateError> {
    let (mut good, mut torn) = (Vec::new(), Vec::new());
    for p in record_paths(dir)? {
        match read(&p) {
            Ok(r) => good.extend(r),
            Err(StateError::Parse { path, .. }) => torn.push(path),
            Err(e) => return Err(e),
        }
    }
    Ok((good, torn))
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

#[cfg(test)]
mod tests;
