//! When the fast path's epoch counter comes round, conntrack marks are
//! cleared of old epochs before the table makes one current again.

use serde_json::json;

use super::tests::{conf, inv, World};

/// Two mark bits: three epochs a round. Every DEL moves the epoch; the
/// first build does not know which epochs connections carry.
#[test]
fn marks_are_swept_before_an_epoch_comes_round() {
    let conf = conf(json!({"isolation": {"flowMarkMask": 0x3000}}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    assert_eq!(w.fw.swept, [(0x3000, 0)], "before the first build");
    for _ in 0..6 {
        w.run(&conf, &inv("DEL", "c1")).unwrap();
        w.run(&conf, &inv("ADD", "c1")).unwrap();
    }
    // Six moves of the counter: it came round twice.
    assert_eq!(w.fw.swept.len(), 3, "{:?}", w.fw.swept);
    for &(mask, before) in &w.fw.swept[1..] {
        assert_eq!(mask, 0x3000);
        let (what, next) = &w.fw.applied[before];
        assert_eq!(*what, "pod delete");
        let first_epoch = format!(r#""right":{}"#, 0x1000);
        assert!(next.to_string().contains(&first_epoch), "{next}");
    }
    let others: Vec<_> = w.fw.applied.iter().map(|(_, b)| b.to_string()).collect();
    let current_first = others
        .iter()
        .filter(|b| b.contains(r#""right":4096"#))
        .count();
    assert_eq!(current_first, 3, "the sweeps came right before those");
}

#[test]
fn with_the_fast_path_off_nothing_is_swept() {
    let conf = conf(json!({"isolation": {"flowMarkMask": 0}}));
    let mut w = World::default();
    for _ in 0..4 {
        w.run(&conf, &inv("ADD", "c1")).unwrap();
        w.run(&conf, &inv("DEL", "c1")).unwrap();
    }
    assert!(w.fw.swept.is_empty());
}
