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
