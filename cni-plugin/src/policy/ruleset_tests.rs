//! Policy and pods → plan, checked on the JSON the kernel would receive.

use serde_json::Value;

use super::model::{Policy, Project};
use super::peers::Peer;
use super::ruleset::{full, pod_change, PodEntry, TableSpec};

fn p(name: &str) -> Project {
    Project::new(name).unwrap()
}

fn spec(log_drops: bool, masquerade: bool) -> TableSpec {
    TableSpec {
        table: "moat".into(),
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        masquerade,
        log_drops,
    }
}

fn pod(i: u32, project: &str) -> PodEntry {
    PodEntry {
        host_ifname: format!("moat{i:011x}"),
        ips: vec![
            format!("10.1.{}.{}", i / 250, i % 250 + 2).parse().unwrap(),
            format!("fd00::{:x}", i + 2).parse().unwrap(),
        ],
        project: p(project),
    }
}

/// (verb, kind, name) of every command, e.g. ("add", "element", "pods4").
fn ops(cmds: &[Value]) -> Vec<(String, String, String)> {
    cmds.iter()
        .map(|c| {
            let (verb, body) = c.as_object().unwrap().iter().next().unwrap();
            let (kind, obj) = body.as_object().unwrap().iter().next().unwrap();
            let name = obj["name"].as_str().or(obj["chain"].as_str()).unwrap_or("");
            (verb.clone(), kind.clone(), name.to_string())
        })
        .collect()
}

fn elements_of(cmds: &[Value], verb: &str, set: &str) -> Vec<Value> {
    cmds.iter()
        .filter_map(|c| c.pointer(&format!("/{verb}/element")))
        .filter(|e| e["name"] == set)
        .flat_map(|e| e["elem"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The IPv4 tenant verdict map as (address, chain) pairs.
fn tenant_map(cmds: &[Value]) -> Vec<(String, String)> {
    elements_of(cmds, "add", "tenant4")
        .iter()
        .map(|e| {
            let target = &e[1]["jump"]["target"];
            (
                e[0].as_str().unwrap().into(),
                target.as_str().unwrap().into(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn chains(cmds: &[Value]) -> Vec<String> {
    ops(cmds)
        .into_iter()
        .filter(|(v, k, _)| v == "add" && k == "chain")
        .map(|(_, _, n)| n)
        .collect()
}

#[test]
fn rule_count_is_independent_of_pods_and_projects() {
    let policy = Policy::with_global([p("kube-system")]);
    let few: Vec<_> = (0..3).map(|i| pod(i, "a")).collect();
    let many: Vec<_> = (0..1000)
        .map(|i| pod(i, &format!("p{}", i % 100)))
        .collect();
    let base = full(&spec(false, true), &policy, &few, &[]).rule_count();
    // Each tenant chain holds two rules (v4, v6); the per-packet path visits one.
    let tenants = |n: usize| 2 * n;
    assert_eq!(
        full(&spec(false, true), &policy, &many, &[]).rule_count() - tenants(100),
        base - tenants(1)
    );
}

#[test]
fn full_replaces_the_table_atomically() {
    let b = full(&spec(false, true), &Policy::default(), &[], &[]);
    let o = ops(&b.cmds);
    let head: Vec<_> = o
        .iter()
        .take(3)
        .map(|(v, k, _)| format!("{v} {k}"))
        .collect();
    assert_eq!(head, ["add table", "delete table", "add table"]);
}

#[test]
fn tenant_pods_map_to_their_tenant_chain_and_global_pods_to_the_global_set() {
    let mut policy = Policy::with_global([p("kube-system")]);
    policy.join(&[p("b"), p("a")]).unwrap();
    let pods = [pod(0, "a"), pod(1, "b"), pod(2, "c"), pod(3, "kube-system")];
    let b = full(&spec(false, true), &policy, &pods, &[]);
    let mut tenant_chains: Vec<_> = chains(&b.cmds)
        .into_iter()
        .filter(|c| c.starts_with("tenant-"))
        .collect();
    tenant_chains.dedup();
    assert_eq!(
        tenant_chains,
        ["tenant-a", "tenant-c"],
        "a and b share the chain of a"
    );
    assert_eq!(
        tenant_map(&b.cmds),
        pairs(&[
            ("10.1.0.2", "tenant-a"),
            ("10.1.0.3", "tenant-a"),
            ("10.1.0.4", "tenant-c")
        ])
    );
    assert_eq!(elements_of(&b.cmds, "add", "tenant-a-4").len(), 2);
    assert_eq!(
        elements_of(&b.cmds, "add", "global4"),
        [Value::from("10.1.0.5")]
    );
    assert_eq!(
        elements_of(&b.cmds, "add", "global6"),
        [Value::from("fd00::5")]
    );
    assert_eq!(elements_of(&b.cmds, "add", "pods6").len(), 4);
    assert_eq!(elements_of(&b.cmds, "add", "podsrc4").len(), 4);
}

#[test]
fn egress_deny_puts_the_project_pods_in_the_deny_sets() {
    let mut policy = Policy::default();
    policy.set_egress(&p("a"), false);
    let b = full(
        &spec(false, true),
        &policy,
        &[pod(0, "a"), pod(1, "b")],
        &[],
    );
    assert_eq!(
        elements_of(&b.cmds, "add", "egress_deny4"),
        [Value::from("10.1.0.2")]
    );
    assert_eq!(
        elements_of(&b.cmds, "add", "egress_deny6"),
        [Value::from("fd00::2")]
    );
}

#[test]
fn pod_change_touches_elements_only_and_deletes_what_add_added() {
    let policy = Policy::default();
    let added = pod_change(&spec(false, true), &policy, &pod(7, "a"), true, false);
    let removed = pod_change(&spec(false, true), &policy, &pod(7, "a"), false, true);
    assert_eq!(removed.rule_count(), 0);
    assert!(ops(&removed.cmds)
        .iter()
        .all(|(v, k, _)| v == "delete" && k == "element"));
    let sets = |b: &super::nftjson::Batch, verb: &str| -> Vec<String> {
        ops(&b.cmds)
            .into_iter()
            .filter(|(v, k, _)| v == verb && k == "element")
            .map(|(_, _, n)| n)
            .collect()
    };
    assert_eq!(sets(&added, "add"), sets(&removed, "delete"));
}

#[test]
fn log_drops_adds_a_rate_limited_log_chain_and_masquerade_is_optional() {
    let plain = full(&spec(false, false), &Policy::default(), &[], &[]);
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
    let logged = full(&spec(true, true), &Policy::default(), &[], &[]);
    assert!(chains(&logged.cmds).iter().any(|c| c == "postrouting"));
    let rules = logs(&logged);
    assert_eq!(rules.len(), 4, "local and peer sources, per family");
    for expr in rules {
        let stmts = expr.as_array().unwrap();
        assert!(stmts[1].get("limit").is_some(), "{expr}");
        assert!(
            stmts
                .iter()
                .all(|s| s.get("drop").is_none() && s.get("jump").is_none()),
            "no verdict: {expr}"
        );
    }
}

#[test]
fn peers_join_their_tenant_but_a_local_pod_keeps_its_address() {
    let mut policy = Policy::with_global([p("kube-system")]);
    policy.join(&[p("a"), p("b")]).unwrap();
    let peer = |ip: &str, project: &str| Peer {
        ip: ip.parse().unwrap(),
        project: p(project),
    };
    let peers = [
        peer("10.2.0.5", "b"),
        peer("10.2.0.6", "kube-system"),
        peer("10.2.0.7", "d"),
        peer("10.1.0.2", "d"), // stale: that address is a local pod of a now
    ];
    let b = full(&spec(false, true), &policy, &[pod(0, "a")], &peers);
    assert_eq!(
        tenant_map(&b.cmds),
        pairs(&[
            ("10.1.0.2", "tenant-a"),
            ("10.2.0.5", "tenant-a"),
            ("10.2.0.7", "tenant-d")
        ])
    );
    assert_eq!(
        elements_of(&b.cmds, "add", "global4"),
        [Value::from("10.2.0.6")]
    );
    assert_eq!(
        elements_of(&b.cmds, "add", "pods4"),
        [Value::from("10.1.0.2")],
        "peers are not local pods"
    );
    assert!(
        chains(&b.cmds).iter().any(|c| c == "tenant-d"),
        "a tenant only peers have"
    );
}

#[test]
fn an_existing_tenant_chain_is_not_remade_on_add() {
    let policy = Policy::default();
    let again = pod_change(&spec(false, true), &policy, &pod(8, "a"), true, true);
    assert_eq!(again.rule_count(), 0);
    assert!(
        ops(&again.cmds)
            .iter()
            .all(|(v, k, _)| v == "add" && k == "element"),
        "only additions: no grace period"
    );
}
