//! What each RPC does, as synchronous steps over the pool, the state store
//! and the kernel (called on blocking threads by the service layer).

pub mod controller;
pub mod node;
pub mod reconcile;
pub mod snapshot;
pub mod stage;

use std::collections::BTreeMap;

use crate::backend::{BackendError, Loops, Pool};
use crate::mount::{MountError, Mounter};
use crate::state::{StateError, Store};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Aborted(String),
    #[error("state")]
    State(#[from] StateError),
    #[error("storage")]
    Backend(#[from] BackendError),
    #[error("mount")]
    Mount(#[from] MountError),
}

pub type Result<T> = std::result::Result<T, DriverError>;

/// Everything an operation needs; one per process.
pub struct Driver {
    pub name: String,
    pub node_id: String,
    pub store: Store,
    pub pool: Pool,
    pub mounter: Box<dyn Mounter>,
    pub loops: Box<dyn Loops>,
    /// Per-project capacity quota in bytes.
    pub quotas: BTreeMap<String, u64>,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if unknown.
    pub boot_id: String,
    /// Test hook: abort the process at this named point, as a SIGKILL would.
    pub crash_at: Option<String>,
    /// Test hook, `point:file`: at this named point, make `file.reached`
    /// and wait while `file` exists (at most a minute), so a test can act
    /// while an operation is half done.
    pub pause_at: Option<String>,
}

impl Driver {
    pub fn crash_point(&self, point: &str) {
        if self.crash_at.as_deref() == Some(point) {
            tracing::warn!(point, "crashing on purpose (MOAT_CSI_CRASH_AT)");
            std::process::abort();
        }
    }

    pub fn pause_point(&self, point: &str) {
        let Some((at, file)) = self.pause_at.as_deref().and_then(|p| p.split_once(':')) else {
            return;
        };
        if at != point {
            return;
        }
        tracing::warn!(point, file, "pausing on purpose (MOAT_CSI_PAUSE_AT)");
        if let Err(e) = std::fs::write(format!("{file}.reached"), point) {
            tracing::warn!(error = %e, "cannot mark the pause point reached");
        }
        let start = std::time::Instant::now();
        while std::path::Path::new(file).exists() && start.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

pub const MIB: u64 = 1 << 20;
pub const DEFAULT_SIZE: u64 = 1 << 30;

pub fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Page through `items` (ordered by key) after `token`, at most `max` (0 = all).
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    token: &str,
    max: usize,
) -> (Vec<T>, String) {
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|i| token.is_empty() || key(i) > token)
        .collect();
    if max == 0 || rest.len() <= max {
        return (rest, String::new());
    }
    rest.truncate(max);
    let next = rest.last().map(|i| key(i).to_string()).unwrap_or_default();
    (rest, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_token() {
        let ids: Vec<String> = (0..7).map(|i| format!("vol-{i}")).collect();
        let (p1, t1) = page(ids.clone(), |s| s, "", 3);
        assert_eq!(p1, ["vol-0", "vol-1", "vol-2"]);
        let (p2, t2) = page(ids.clone(), |s| s, &t1, 3);
        assert_eq!(p2, ["vol-3", "vol-4", "vol-5"]);
        let (p3, t3) = page(ids.clone(), |s| s, &t2, 3);
        assert_eq!((p3.len(), t3.as_str()), (1, ""));
        let (all, none) = page(ids, |s| s, "", 0);
        assert_eq!((all.len(), none.as_str()), (7, ""));
    }

    #[test]
    fn sizes_round_up_to_mebibytes() {
        assert_eq!(round_up(1, MIB), MIB);
        assert_eq!(round_up(MIB, MIB), MIB);
        assert_eq!(round_up(MIB + 1, MIB), 2 * MIB);
    }
}
