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
    // Six moves of the counter: it came round twice, wherever the first
    // build (whose epoch comes from the clock) started it.
    assert_eq!(w.fw.swept.len(), 3, "{:?}", w.fw.swept);
    for &(mask, before) in &w.fw.swept[1..] {
        assert_eq!(mask, 0x3000);
        let (what, next) = &w.fw.applied[before];
        assert_eq!(*what, "pod delete");
        let first_epoch = format!(r#""right":{}"#, 0x1000);
        assert!(next.to_string().contains(&first_epoch), "{next}");
    }
    let first_current =
        w.fw.applied
            .iter()
            .filter(|(what, b)| *what == "pod delete" && b.to_string().contains(r#""right":4096"#))
            .count();
    assert_eq!(first_current, 2, "a sweep came right before each of those");
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
