use super::*;
use crate::volume::{AccessMode, PubState};

fn publication(target: &str) -> NodePublication {
    NodePublication {
        volume_id: "vol-1".into(),
        node_id: "node-a".into(),
        target: target.into(),
        mode: AccessMode::SingleNodeSingleWriter,
        readonly: false,
        state: PubState::Publishing,
    }
}

fn store() -> (Store, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "moat-csi-state-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&dir);
    (Store::open(&dir).unwrap(), dir)
}

#[test]
fn a_torn_publication_is_skipped_by_readers_and_removed_by_reconcile() {
    let (s, dir) = store();
    let good = publication("/t/good");
    s.add_publication(&good).unwrap();
    // What a publish killed between create and write leaves.
    let torn = s.pub_path("vol-1", "node-a", "/t/torn");
    fs::write(&torn, b"{\"volume_id\":\"vo").unwrap();
    assert_eq!(s.publications("vol-1").unwrap(), vec![good.clone()]);
    assert_eq!(s.node_publications("node-a").unwrap(), vec![good.clone()]);
    assert_eq!(s.remove_torn_publications().unwrap(), 1);
    assert!(!torn.exists());
    assert_eq!(s.publications("vol-1").unwrap(), vec![good]);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn adding_an_existing_publication_replaces_it() {
    let (s, dir) = store();
    let mut p = publication("/t/x");
    s.add_publication(&p).unwrap();
    p.state = PubState::Published;
    s.add_publication(&p).unwrap();
    assert_eq!(s.publications("vol-1").unwrap(), vec![p]);
    fs::remove_dir_all(dir).unwrap();
}

/// The threads share one open lock file, which flock cannot tell apart: the
/// lock must still let one read-modify-write run at a time, also against a
/// second store (another process's view) on the same directory.
#[test]
fn the_lock_serialises_threads_of_one_store_and_two_stores() {
    let (s, dir) = store();
    let other = Store::open(&dir).unwrap();
    let counter = dir.join("counter");
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
    let _ = fs::remove_dir_all(&dir);
}
