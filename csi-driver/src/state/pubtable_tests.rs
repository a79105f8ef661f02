use super::*;
use crate::state::tests::{publication, store};
use crate::volume::PubState;
use std::path::Path;

fn table_bytes(dir: &Path) -> Vec<u8> {
    fs::read(dir.join("pubs").join("vol-1.tab")).unwrap()
}

#[test]
fn a_record_round_trips_in_one_slot_or_several() {
    let short = publication("/t/a");
    let long = publication(&format!("/t/{}", "x".repeat(1500)));
    assert_eq!(encode(&short).len(), SLOT);
    let bytes = [encode(&short), encode(&long), encode(&short)].concat();
    let entries = parse(&bytes);
    let got: Vec<_> = entries.iter().map(|e| (e.first, e.slots)).collect();
    assert_eq!(got, vec![(0, 1), (1, 4), (5, 1)]);
    assert_eq!(entries[1].record.as_ref(), Some(&long));
}

#[test]
fn a_torn_record_is_skipped_and_does_not_swallow_the_next() {
    let good = publication("/t/good");
    let long = encode(&publication(&format!("/t/{}", "y".repeat(700))));
    // A long record whose second slot was never written, then a good one.
    let mut bytes = long[..SLOT].to_vec();
    bytes.extend(encode(&good));
    // A slot cut short at the end: a write that extended the file, killed.
    bytes.extend(&encode(&good)[..100]);
    let entries = parse(&bytes);
    assert_eq!(entries.len(), 2);
    assert!(entries[0].record.is_none());
    assert_eq!(entries[1].record.as_ref(), Some(&good));
}

#[test]
fn free_slots_are_reused_before_the_table_grows() {
    let e = |first, slots| Entry {
        first,
        slots,
        record: None,
    };
    assert_eq!(free_run(&[], 2), 0);
    assert_eq!(free_run(&[e(0, 1), e(3, 1)], 2), 1);
    assert_eq!(free_run(&[e(0, 1), e(2, 1)], 2), 3);
}

#[test]
fn publish_and_unpublish_reuse_one_table_file() {
    let (s, dir) = store();
    let (a, b) = (publication("/t/a"), publication("/t/b"));
    s.add_publication(&a).unwrap();
    s.add_publication(&b).unwrap();
    s.remove_publication("vol-1", "node-a", "/t/a").unwrap();
    assert_eq!(s.publications("vol-1").unwrap(), vec![b.clone()]);
    let c = publication("/t/c");
    s.add_publication(&c).unwrap();
    // c took a's freed slot: the file did not grow.
    assert_eq!(table_bytes(dir.path()).len(), 2 * SLOT);
    assert_eq!(s.publications("vol-1").unwrap(), vec![c.clone(), b.clone()]);
    assert_eq!(s.node_publications("node-a").unwrap().len(), 2);
    assert!(s.node_publications("node-b").unwrap().is_empty());
    s.remove_publication("vol-1", "node-a", "/t/nothing")
        .unwrap();
    s.remove_publication("vol-2", "node-a", "/t/a").unwrap();
    s.remove_pub_table("vol-1").unwrap();
    assert!(s.publications("vol-1").unwrap().is_empty());
    dir.close().unwrap();
}

#[test]
fn adding_an_existing_publication_replaces_it_also_when_its_size_changes() {
    let (s, dir) = store();
    let mut p = publication("/t/x");
    s.add_publication(&p).unwrap();
    p.state = PubState::Published;
    s.add_publication(&p).unwrap();
    assert_eq!(s.publications("vol-1").unwrap(), vec![p.clone()]);
    // A target just long enough that the confirmed record ("Published" is
    // one byte shorter) fits one slot where the first took two.
    let mut p = (0..SLOT)
        .map(|n| publication(&format!("/t/{}", "z".repeat(n))))
        .find(|p| encode(p).len() == 2 * SLOT)
        .unwrap();
    s.add_publication(&p).unwrap();
    p.state = PubState::Published;
    assert_eq!(encode(&p).len(), SLOT);
    s.add_publication(&p).unwrap();
    let left = s.publications("vol-1").unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(left[1], p);
    dir.close().unwrap();
}

#[test]
fn a_torn_publication_is_skipped_by_readers_and_freed_by_reconcile() {
    let (s, dir) = store();
    let good = publication("/t/good");
    s.add_publication(&good).unwrap();
    // What a publish killed in the middle of its write leaves.
    let path = dir.path().join("pubs").join("vol-1.tab");
    let torn = encode(&publication("/t/torn"));
    let mut bytes = table_bytes(dir.path());
    bytes.extend(&torn[..40]);
    bytes.resize(2 * SLOT, 0);
    fs::write(&path, &bytes).unwrap();
    assert_eq!(s.publications("vol-1").unwrap(), vec![good.clone()]);
    assert_eq!(s.node_publications("node-a").unwrap(), vec![good.clone()]);
    assert_eq!(s.remove_torn_publications().unwrap(), 1);
    assert_eq!(s.remove_torn_publications().unwrap(), 0);
    assert_eq!(s.publications("vol-1").unwrap(), vec![good]);
    dir.close().unwrap();
}
