use super::*;
use crate::volume::{AccessMode, NodePublication, PubState};

pub(super) fn publication(target: &str) -> NodePublication {
    NodePublication {
        volume_id: "vol-1".into(),
        node_id: "node-a".into(),
        target: target.into(),
        mode: AccessMode::SingleNodeSingleWriter,
        readonly: false,
        state: PubState::Publishing,
        device: None,
    }
}

/// A store in a directory of its own, removed when the test ends, passed or not.
pub(super) fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("moat-csi-state-")
        .tempdir()
        .unwrap();
    (Store::open(dir.path()).unwrap(), dir)
}

/// The threads share one open lock file, which flock cannot tell apart: the
/// lock must still let one read-modify-write run at a time, also against a
/// second store (another process's view) on the same directory.
#[test]
fn the_lock_serialises_threads_of_one_store_and_two_stores() {
    let (s, dir) = store();
    let other = Store::open(dir.path()).unwrap();
    let counter = dir.path().join("counter");
    fs::write(&counter, "0").unwrap();
    std::thread::scope(|scope| {
        for i in 0..8 {
            let (store, counter) = (if i % 2 == 0 { &s } else { &other }, &counter);
            scope.spawn(move || {
                for _ in 0..50 {
                    let _lock = store.lock().unwrap();
                    let n: u32 = fs::read_to_string(counter).unwrap().parse().unwrap();
                    std::thread::yield_now();
                    fs::write(counter, (n + 1).to_string()).unwrap();
                }
            });
        }
    });
    assert_eq!(fs::read_to_string(&counter).unwrap(), "400");
}
