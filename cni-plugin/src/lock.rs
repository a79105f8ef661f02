//! One exclusive file lock per network: serialises IPAM and firewall updates
//! across the many plugin processes a runtime starts in parallel.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::durable::open_creating_dir;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Held until dropped; the kernel releases it if the process dies.
pub struct StateLock {
    _flock: Flock<File>,
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<Self, LockError> {
        let path = state_dir.join("lock");
        let mut opts = OpenOptions::new();
        opts.create(true).truncate(false).write(true);
        let file = open_creating_dir(&opts, &path).map_err(|source| LockError::Open {
            path: path.clone(),
            source,
        })?;
        let flock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| LockError::Lock { path, source })?;
        Ok(Self { _flock: flock })
    }
}
