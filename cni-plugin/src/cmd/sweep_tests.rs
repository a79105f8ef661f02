//! When the fast path's epoch counter comes round, conntrack marks are
//! cleared of old epochs before the table makes one current again, and of
//! the previous epoch right after.

use serde_json::json;

use super::tests::{conf, inv, World};

const FIRST: u32 = 0x1000;

/// Two mark bits: three epochs a round. Every DEL moves the epoch; the
/// first build does not know which epochs connections carry.
#[test]
fn marks_are_swept_around_the_transaction_that_starts_a_round() {
    let conf = conf(json!({"isolation": {"flowMarkMask": 0x3000}}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    assert_eq!(
        w.fw.swept.iter().map(|s| s.1).collect::<Vec<_>>()[..1],
        [None],
        "before the first build: every old epoch"
    );
    for _ in 0..6 {
        w.run(&conf, &inv("DEL", "c1")).unwrap();
        w.run(&conf, &inv("ADD", "c1")).unwrap();
    }
    // Six moves of the counter: it came round twice, wherever the first
    // build (whose epoch comes from the clock) started it. Each time: every
    // old epoch before the transaction, all but the new one after it.
    let rounds: Vec<_> = w.fw.swept[2..].chunks(2).collect();
    assert_eq!(rounds.len(), 2, "{:?}", w.fw.swept);
    for pair in rounds {
        let [(mask, None, before), (_, Some(kept), after)] = pair else {
            panic!("a sweep of all, then one keeping the new epoch: {pair:?}");
        };
        assert_eq!((*mask, *kept), (0x3000, FIRST));
        assert_eq!(*after, before + 1, "one transaction between them");
        let (what, applied) = &w.fw.applied[*before];
        assert_eq!(*what, "pod delete");
        let first = format!(r#""right":{FIRST}"#);
        assert!(applied.to_string().contains(&first), "{applied}");
    }
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
