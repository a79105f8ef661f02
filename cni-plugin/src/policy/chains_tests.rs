//! The table's fixed chains (`chains.rs`) with logging on: where drops are
//! logged, counted and dropped, and that no verdict hangs on a full meter.

use serde_json::Value;

use super::chains::empty_chains;
use super::droplog::LogTarget;
use super::model::Policy;
use super::ruleset::{full, Groups, TableSpec};
use super::ruleset_tests::{chains, empty_table, spec};

#[test]
fn log_drops_adds_a_rate_limited_log_chain_and_masquerade_is_optional() {
    let plain = empty_table(false, false);
    assert!(!chains(&plain.cmds).iter().any(|c| c == "postrouting"));
    let logs = |b: &super::nftjson::Batch| -> Vec<Value> {
        b.cmds
            .iter()
            .filter_map(|c| c.pointer("/add/rule/expr"))
            .filter(|e| e.as_array().unwrap().iter().any(|s| s.get("log").is_some()))
            .cloned()
            .collect()
    };
    assert!(logs(&plain).is_empty());
    let logged = empty_table(true, true);
    assert!(chains(&logged.cmds).iter().any(|c| c == "postrouting"));
    let rules = logs(&logged);
    // Per family: local and peer sources, spoofed, egress denied.
    assert_eq!(rules.len(), 8);
    for expr in rules {
        let stmts = expr.as_array().unwrap();
        let limit = stmts.iter().position(|s| s.get("limit").is_some());
        assert_eq!(limit, Some(stmts.len() - 2), "limit, then log: {expr}");
        assert!(
            stmts
                .iter()
                .all(|s| s.get("drop").is_none() && s.get("jump").is_none()),
            "no verdict: {expr}"
        );
    }
}

fn logged_table() -> super::nftjson::Batch {
    full(
        &TableSpec {
            log: Some(LogTarget::Group(5)),
            ..spec(false, true)
        },
        &Policy::default(),
        &[],
        &[],
        &Groups::new(),
        1,
    )
}

fn rules(b: &super::nftjson::Batch) -> Vec<(&Value, &Vec<Value>)> {
    b.cmds
        .iter()
        .filter_map(|c| {
            Some((
                c.pointer("/add/rule/chain")?,
                c.pointer("/add/rule/expr")?.as_array()?,
            ))
        })
        .collect()
}

/// Each log rule is followed by the rule that counts and the rule that
/// drops, all three with the same match: a packet is logged (at most at the
/// rate) and counted exactly when it is dropped.
#[test]
fn every_log_rule_matches_what_the_next_rules_count_and_drop() {
    let b = logged_table();
    let rules = rules(&b);
    let mut seen = 0;
    for (i, (chain, expr)) in rules.iter().enumerate() {
        if !expr.iter().any(|s| s.get("log").is_some()) {
            continue;
        }
        seen += 1;
        assert_eq!(expr.last().unwrap()["log"]["group"], 5);
        let matching = &expr[..expr.len() - 2];
        let (count, drop) = (rules[i + 1], rules[i + 2]);
        for (next_chain, next) in [count, drop] {
            assert_eq!(*chain, next_chain);
            assert_eq!(&next[..matching.len()], matching, "{next:?}");
        }
        assert_eq!(count.1.len(), matching.len() + 1, "{:?}", count.1);
        // The drop may first clear the connection's epoch bits (below).
        let extra = drop.1.len() - matching.len();
        assert!(extra == 1 || (extra == 2 && is_forget(&drop.1[matching.len()])));
        assert!(
            count.1.last().unwrap().get("meter").is_some(),
            "{:?}",
            count.1
        );
        assert!(drop.1.last().unwrap().get("drop").is_some(), "{:?}", drop.1);
    }
    assert_eq!(seen, 8);
}

/// `ct mark set ct mark & ~mask`, with the table's mask.
fn is_forget(stmt: &Value) -> bool {
    let m = &stmt["mangle"];
    m["key"]["ct"]["key"] == "mark"
        && m["value"]["&"][0]["ct"]["key"] == "mark"
        && m["value"]["&"][1] == !0xff00_0000u32
}

/// A cross-tenant or egress drop clears the epoch bits of its connection's
/// mark, so a connection the rules closed can never pass the fast path
/// again, even once the epoch counter has come round to the mark it had. A
/// spoofed packet leaves the mark alone: it may match a pod's own
/// connection. With the fast path off no drop touches the mark.
#[test]
fn cross_tenant_and_egress_drops_forget_the_epoch() {
    let b = logged_table();
    let drops: Vec<_> = rules(&b)
        .into_iter()
        .filter(|(_, e)| e.last().is_some_and(|s| s.get("drop").is_some()))
        .filter(|(_, e)| e.len() > 1 && e.iter().all(|s| s.get("counter").is_none()))
        .collect();
    let forgetting = |chain: &str| {
        drops
            .iter()
            .filter(|(c, e)| *c == chain && e.iter().any(is_forget))
            .count()
    };
    // Local and peer sources in to_pod, egress in from_pod; per family.
    for (chain, n) in [
        ("to_pod4", 2),
        ("to_pod6", 2),
        ("from_pod4", 1),
        ("from_pod6", 1),
    ] {
        assert_eq!(forgetting(chain), n, "{chain}");
    }
    assert_eq!(forgetting("antispoof"), 0);
    let off = full(
        &TableSpec {
            flow_mark_mask: 0,
            ..spec(false, true)
        },
        &Policy::default(),
        &[],
        &[],
        &Groups::new(),
        1,
    );
    assert!(!rules(&off)
        .iter()
        .any(|(_, e)| e.iter().any(|s| s.get("mangle").is_some())));
}

/// A meter that is full, or a limit over its rate, ends its rule there:
/// no rule that drops (or accepts) may hold one, or the verdict would
/// depend on how full a set is (a pod forging random sources fills one).
#[test]
fn no_verdict_depends_on_a_meter_or_a_limit() {
    for b in [logged_table(), empty_table(false, true)] {
        for (chain, expr) in rules(&b) {
            let verdict = expr
                .iter()
                .any(|s| s.get("drop").is_some() || s.get("accept").is_some());
            let breaks = expr
                .iter()
                .any(|s| s.get("meter").is_some() || s.get("limit").is_some());
            assert!(!(verdict && breaks), "{chain}: {expr:?}");
        }
    }
}

/// The listing nft would give of a planned table: its rules.
fn listed(b: &super::nftjson::Batch) -> Value {
    let rules: Vec<Value> = b
        .cmds
        .iter()
        .filter_map(|c| c.pointer("/add/rule"))
        .map(|r| serde_json::json!({ "rule": r }))
        .collect();
    serde_json::json!({ "nftables": rules })
}

#[test]
fn a_flushed_table_or_chain_is_found_empty() {
    for (log, masq) in [(false, false), (true, true)] {
        let built = empty_table(log, masq);
        let spec = spec(log, masq);
        assert_eq!(empty_chains(&spec, &listed(&built)), Vec::<String>::new());
        // `nft flush table`: every chain kept, no rule.
        let flushed = empty_chains(&spec, &serde_json::json!({"nftables": []}));
        for chain in [
            "antispoof",
            "forward",
            "input",
            "to_pod4",
            "from_pod6",
            "epoch",
        ] {
            assert!(flushed.iter().any(|c| c == chain), "{chain} in {flushed:?}");
        }
        assert_eq!(flushed.iter().any(|c| c == "postrouting"), masq);
        // `nft flush chain inet moat forward`
        let mut listing = listed(&built);
        listing["nftables"]
            .as_array_mut()
            .unwrap()
            .retain(|o| o["rule"]["chain"] != "forward");
        assert_eq!(empty_chains(&spec, &listing), ["forward"]);
    }
}
