use serde_json::{json, Value};

use super::droplog::LogTarget;
use super::neighbours::{claim, conflicts, Claim};
use super::ruleset::TableSpec;

/// A listing shaped as `nft -j list table` prints a moat table (the shapes
/// copied from nft 1.0.6's answer for a table with `logGroup: 47`).
fn moat_listing(table: &str, epoch: Value, group: Option<u16>) -> Value {
    let rule = |chain: &str, expr: Value| json!({"rule": {"family": "inet", "table": table, "chain": chain, "handle": 9, "expr": expr}});
    let mut objects = vec![
        json!({"metainfo": {"version": "1.0.6"}}),
        json!({"table": {"family": "inet", "name": table, "handle": 3}}),
        json!({"chain": {"family": "inet", "table": table, "name": "antispoof", "handle": 1}}),
        json!({"set": {"family": "inet", "table": table, "name": "podsrc4", "type": ["ifname", "ipv4_addr"]}}),
        rule("epoch", json!([{"match": epoch}, {"accept": null}])),
    ];
    if let Some(g) = group {
        let log = json!({"log": {"group": g, "prefix": "moat drop: ", "snaplen": 128}});
        objects.push(rule("to_pod4", json!([log, {"counter": null}])));
        let spoof = json!({"log": {"group": g, "prefix": "moat spoof: ", "snaplen": 128}});
        objects.push(rule("antispoof", json!([spoof])));
    }
    json!({ "nftables": objects })
}

fn prefix_epoch(len: u32) -> Value {
    json!({"left": {"ct": {"key": "mark"}}, "op": "==", "right": {"prefix": {"addr": 12288, "len": len}}})
}

fn masked_epoch(mask: u32) -> Value {
    json!({"left": {"&": [{"ct": {"key": "mark"}}, mask]}, "op": "==", "right": 512})
}

fn spec(mask: u32, log: Option<LogTarget>) -> TableSpec {
    TableSpec {
        table: "moat".into(),
        cluster_cidrs: Vec::new(),
        masquerade: true,
        log,
        flow_mark_mask: mask,
    }
}

#[test]
fn a_moat_table_claims_its_mark_bits_and_log_group() {
    let c = claim("other", &moat_listing("other", prefix_epoch(20), Some(47))).unwrap();
    assert_eq!(
        c,
        Claim {
            table: "other".into(),
            mask: Some(0xffff_f000),
            log_groups: vec![47],
        }
    );
    // A mask that is not leading bits is listed as the `&` it is.
    let c = claim(
        "other",
        &moat_listing("other", masked_epoch(0x0000_ff00), None),
    )
    .unwrap();
    assert_eq!((c.mask, c.log_groups), (Some(0x0000_ff00), vec![]));
    let c = claim("other", &moat_listing("other", prefix_epoch(32), None)).unwrap();
    assert_eq!(c.mask, Some(u32::MAX));
}

#[test]
fn other_tables_claim_nothing() {
    // An admin's table with a chain of the same name, a kube-proxy-like one,
    // an empty answer.
    let admin = json!({"nftables": [
        {"chain": {"family": "inet", "table": "fw", "name": "antispoof"}},
        {"rule": {"family": "inet", "table": "fw", "chain": "epoch", "expr": [{"match": prefix_epoch(20)}]}},
    ]});
    assert_eq!(claim("fw", &admin), None);
    assert_eq!(
        claim("kp", &json!({"nftables": [{"table": {"name": "kp"}}]})),
        None
    );
    assert_eq!(claim("x", &json!({})), None);
    // A moat table without a fast path claims no bits.
    let mut off = moat_listing("off", prefix_epoch(20), Some(5));
    off["nftables"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o.pointer("/rule/chain") != Some(&json!("epoch")));
    assert_eq!(claim("off", &off).unwrap().mask, None);
}

#[test]
fn overlapping_bits_and_a_shared_group_are_refused() {
    let theirs = |mask, groups: Vec<u16>| Claim {
        table: "moat2".into(),
        mask,
        log_groups: groups,
    };
    let ours = spec(0xffff_f000, Some(LogTarget::Group(47)));
    let both = conflicts(&ours, &[theirs(Some(0x0000_1000), vec![47])]);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both[0].contains("flowMarkMask 0xfffff000 overlaps 0x00001000 of table inet moat2"));
    assert!(both[1].contains("logGroup 47"));
    // Disjoint bits, another group, no fast path there, none here, or the
    // kernel log here: no conflict.
    for (ours, claim) in [
        (&ours, theirs(Some(0x0000_0f00), vec![48])),
        (&ours, theirs(None, vec![])),
        (&spec(0, None), theirs(Some(u32::MAX), vec![47])),
        (
            &spec(0x0000_0f00, Some(LogTarget::Kernel)),
            theirs(Some(0xffff_f000), vec![47]),
        ),
    ] {
        assert_eq!(conflicts(ours, &[claim]), Vec::<String>::new());
    }
    // Our own table is not a neighbour.
    let own = Claim {
        table: "moat".into(),
        mask: Some(0xffff_f000),
        log_groups: vec![47],
    };
    assert!(conflicts(&ours, &[own]).is_empty());
}
