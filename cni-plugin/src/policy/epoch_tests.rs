//! The fast path in the planned table: where it sits, what marks, and
//! nothing of it when it is off.

use serde_json::Value;

use super::model::Policy;
use super::nftjson::Elem;
use super::ruleset::{fast_elements, full, pod_change, Known};
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
        assert!(rule.contains(fam) && rule.contains("@podfast"), "{rule}");
        assert!(rule.contains(r#"{"meta":{"key":"iif"}}"#), "{rule}");
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

/// The fast path's own-source elements: by the veth's index, in a rebuild
/// for every pod that has one, on their own once ADD has wired the pod, and
/// out again with the pod's other elements on DEL.
#[test]
fn fast_path_sources_are_keyed_by_the_veths_index() {
    let (pods, groups) = grouped(vec![pod(0, "a"), pod(1, "b")]);
    let mut unwired = pod(2, "a");
    unwired.ifindex = None;
    let fast = |elements: &[super::nftjson::ElementOp]| -> Vec<(bool, Elem)> {
        elements
            .iter()
            .filter(|op| op.set.starts_with("podfast"))
            .flat_map(|op| op.elems.iter().map(move |e| (op.add, e.clone())))
            .collect()
    };
    let mut all = pods.clone();
    all.push(unwired.clone());
    let b = full(
        &spec(false, true),
        &Policy::default(),
        &all,
        &[],
        &groups,
        1,
    );
    let cmds = serde_json::to_string(&b.cmds).unwrap();
    assert!(
        cmds.contains(r#""type":["iface_index","ipv4_addr"]"#),
        "{cmds}"
    );
    assert!(cmds.contains(r#"{"concat":[101,"10.1.0.3"]}"#), "{cmds}");
    let indexes: Vec<u32> = fast(&b.elements)
        .into_iter()
        .map(|(_, e)| match e {
            Elem::IdxAddr(i, _) => i,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(indexes, [100, 100, 101, 101], "the unwired pod has none");
    let wired = fast_elements(&spec(false, true), &pods[0]);
    let ips = &pods[0].ips;
    assert_eq!(
        fast(&wired.elements),
        [
            (true, Elem::IdxAddr(100, ips[0])),
            (true, Elem::IdxAddr(100, ips[1]))
        ]
    );
    assert!(fast_elements(&spec(false, true), &unwired)
        .elements
        .is_empty());
    let known = Known {
        chain: true,
        group: true,
    };
    let del = pod_change(
        &spec(false, true),
        &Policy::default(),
        &pods[0],
        false,
        known,
    );
    assert_eq!(
        fast(&del.elements),
        [
            (false, Elem::IdxAddr(100, ips[0])),
            (false, Elem::IdxAddr(100, ips[1]))
        ]
    );
    let mut off = spec(false, true);
    off.flow_mark_mask = 0;
    assert!(fast_elements(&off, &pods[0]).elements.is_empty());
    let b = full(&off, &Policy::default(), &pods, &[], &groups, 1);
    assert!(!serde_json::to_string(&b.cmds).unwrap().contains("podfast"));
}
