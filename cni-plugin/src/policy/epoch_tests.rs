//! The fast path in the planned table: where it sits, what marks, and
//! nothing of it when it is off.

use serde_json::Value;

use super::model::Policy;
use super::ruleset::full;
use super::ruleset_tests::{grouped, pod, spec};

/// Rules of one chain, as JSON text.
fn rules_of(cmds: &[Value], chain: &str) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| c.pointer("/add/rule"))
        .filter(|r| r["chain"] == chain)
        .map(|r| r["expr"].to_string())
        .collect()
}

#[test]
fn the_fast_path_comes_first_and_only_tenant_accepts_mark() {
    let (pods, groups) = grouped(vec![pod(0, "a"), pod(1, "b")]);
    let b = full(
        &spec(false, true),
        &Policy::default(),
        &pods,
        &[],
        &groups,
        3,
    );
    let forward = rules_of(&b.cmds, "forward");
    // First, per family, a pod's own source on a connection of this epoch;
    // then anti-spoofing for everything else, before any other lookup.
    for (rule, fam) in forward[..2].iter().zip(["ipv4", "ipv6"]) {
        assert!(rule.contains(fam) && rule.contains("@podsrc"), "{rule}");
        assert!(rule.ends_with(r#"{"jump":{"target":"epoch"}}]"#), "{rule}");
    }
    assert_eq!(forward[2], r#"[{"jump":{"target":"antispoof"}}]"#);
    assert_eq!(rules_of(&b.cmds, "input"), [forward[2].clone()]);
    assert!(
        rules_of(&b.cmds, "epoch")[0].contains(r#""right":67108864"#),
        "epoch 3 → 4 << 24"
    );
    assert!(rules_of(&b.cmds, "verified")[0].contains("mangle"));
    for chain in ["tenant-a", "tenant-b"] {
        let rules = rules_of(&b.cmds, chain);
        assert_eq!(rules.len(), 2);
        assert!(rules
            .iter()
            .all(|r| r.contains(r#"{"goto":{"target":"verified"}}"#)));
    }
    // Nothing else marks: global traffic, DNAT and replies accept as before.
    let marking: Vec<_> = b
        .cmds
        .iter()
        .filter(|c| c.to_string().contains("verified"))
        .filter_map(|c| c.pointer("/add/rule/chain"))
        .filter(|c| !c.as_str().unwrap().starts_with("tenant-") && *c != "verified")
        .collect();
    assert!(marking.is_empty(), "{marking:?}");
    let mut off = spec(false, true);
    off.flow_mark_mask = 0;
    let b = full(&off, &Policy::default(), &pods, &[], &groups, 3);
    let text = serde_json::to_string(&b.cmds).unwrap();
    assert!(!text.contains("epoch") && !text.contains("verified") && !text.contains("mark"));
    assert!(b.epoch.is_none());
}
