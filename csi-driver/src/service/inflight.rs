//! Keys with an operation in progress, so a second operation on the same
//! volume or snapshot answers ABORTED, as the spec asks, instead of racing
//! the first.
//!
//! A clone or a snapshot reads its source for as long as the copy takes. It
//! holds the source's [`source_key`] shared: clones and snapshots of one
//! source run side by side, and publishing the source is not held up, but a
//! DeleteVolume or DeleteSnapshot of it, which takes that key exclusively,
//! is ABORTED until the copy is done (and waits for no copy to start meanwhile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

/// How an operation holds a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// No other operation on the key.
    Exclusive,
    /// Others that share it may run; an exclusive one may not.
    Shared,
}

/// The key a copy holds on its source, and a delete of that source too.
pub fn source_key(id: &str) -> String {
    format!("source:{id}")
}

/// Key → holders: `None` exclusive, `Some(n)` n shared holders.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<String, Option<usize>>>);

/// Releases its holds when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    set: Arc<InFlight>,
    keys: Vec<String>,
}

impl InFlight {
    /// No operation in progress.
    pub fn is_idle(&self) -> bool {
        self.0.lock().expect("in-flight set").is_empty()
    }

    /// Every hold at once, or none (ABORTED naming the busy key).
    pub fn begin(self: &Arc<Self>, holds: &[(String, Hold)]) -> Result<InFlightGuard, Status> {
        let mut set = self.0.lock().expect("in-flight set");
        if let Some((key, _)) = holds.iter().find(|(k, h)| conflicts(set.get(k), *h)) {
            return Err(Status::aborted(format!(
                "an operation on {key} is already in progress"
            )));
        }
        for (key, hold) in holds {
            let holders = match hold {
                Hold::Exclusive => None,
                Hold::Shared => Some(set.get(key).copied().flatten().unwrap_or(0) + 1),
            };
            set.insert(key.clone(), holders);
        }
        Ok(InFlightGuard {
            set: self.clone(),
            keys: holds.iter().map(|(k, _)| k.clone()).collect(),
        })
    }
}

/// Free, or shared and wanted shared: no conflict.
fn conflicts(held: Option<&Option<usize>>, want: Hold) -> bool {
    !matches!((held, want), (None, _) | (Some(Some(_)), Hold::Shared))
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut set = self.set.0.lock().expect("in-flight set");
        for key in &self.keys {
            match set.get(key).copied() {
                Some(Some(n)) if n > 1 => {
                    set.insert(key.clone(), Some(n - 1));
                }
                _ => {
                    set.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(set: &Arc<InFlight>, holds: &[(&str, Hold)]) -> Result<InFlightGuard, Status> {
        let holds: Vec<_> = holds.iter().map(|(k, h)| (k.to_string(), *h)).collect();
        set.begin(&holds)
    }

    #[test]
    fn exclusive_excludes_everything_and_shared_excludes_exclusive() {
        use Hold::*;
        let set = Arc::new(InFlight::default());
        let a = hold(&set, &[("vol-a", Exclusive)]).unwrap();
        assert_eq!(
            hold(&set, &[("vol-a", Exclusive)]).unwrap_err().code(),
            tonic::Code::Aborted
        );
        assert!(hold(&set, &[("vol-a", Shared)]).is_err());
        drop(a);
        let c1 = hold(&set, &[("clone-1", Exclusive), ("source:vol-a", Shared)]).unwrap();
        let c2 = hold(&set, &[("clone-2", Exclusive), ("source:vol-a", Shared)]).unwrap();
        let delete = [("vol-a", Exclusive), ("source:vol-a", Exclusive)];
        assert!(hold(&set, &delete).is_err());
        drop(c1);
        assert!(
            hold(&set, &delete).is_err(),
            "the second copy still reads the source"
        );
        drop(c2);
        let d = hold(&set, &delete).unwrap();
        assert!(hold(&set, &[("clone-3", Exclusive), ("source:vol-a", Shared)]).is_err());
        drop(d);
        assert!(set.is_idle());
    }

    #[test]
    fn a_refused_begin_holds_nothing() {
        use Hold::*;
        let set = Arc::new(InFlight::default());
        let busy = hold(&set, &[("source:vol-a", Exclusive)]).unwrap();
        assert!(hold(&set, &[("clone-1", Exclusive), ("source:vol-a", Shared)]).is_err());
        assert!(
            hold(&set, &[("clone-1", Exclusive)]).is_ok(),
            "clone-1 was not left held"
        );
        drop(busy);
        assert!(set.is_idle());
    }
}
