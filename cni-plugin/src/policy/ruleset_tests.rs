//! Policy and pods → plan, checked on the JSON the kernel would receive.

use std::net::IpAddr;

use serde_json::Value;

use super::diff::{peers_change, policy_change};
use super::droplog::LogTarget;
use super::model::{Policy, Project};
use super::nftjson::Elem;
use super::peers::Peer;
use super::ruleset::{full, pod_change, Groups, Known, PodEntry, TableSpec, GROUP_MAP};

fn peer(ip: &str, project: &str) -> Peer {
    Peer {
        ip: ip.parse().unwrap(),
        project: p(project),
    }
}

fn p(name: &str) -> Project {
    Project::new(name).unwrap()
}

pub(super) fn spec(log_drops: bool, masquerade: bool) -> TableSpec {
    TableSpec {
        table: "moat".into(),
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        masquerade,
        log: log_drops.then_some(LogTarget::Kernel),
        flow_mark_mask: 0xff00_0000,
    }
}

pub(super) fn pod(i: u32, project: &str) -> PodEntry {
    PodEntry {
        host_ifname: format!("moat{i:011x}"),
        ips: vec![
            format!("10.1.{}.{}", i / 250, i % 250 + 2).parse().unwrap(),
            format!("fd00::{:x}", i + 2).parse().unwrap(),
        ],
        project: p(project),
        group: 0,
        ifindex: Some(100 + i),
    }
}

/// Groups numbered in order of first appearance, as `project_group` does.
pub(super) fn grouped(mut pods: Vec<PodEntry>) -> (Vec<PodEntry>, Groups) {
    let mut groups = Groups::new();
    for pod in &mut pods {
        let next = groups.len() as u32 + 1;
        pod.group = *groups.entry(pod.project.clone()).or_insert(next);
    }
    (pods, groups)
}

const NONE: &[(&str, &str)] = &[];

/// The table of a node without pods, peers or policy.
pub(super) fn empty_table(log_drops: bool, masquerade: bool) -> super::nftjson::Batch {
    full(
        &spec(log_drops, masquerade),
        &Policy::default(),
        &[],
        &[],
        &Groups::new(),
        1,
    )
}

/// A project new to the node, and one whose chain and group the table has.
const FRESH: Known = Known {
    chain: false,
    group: false,
};
const KNOWN: Known = Known {
    chain: true,
    group: true,
};

/// The group map as (group, chain) pairs.
fn group_map(cmds: &[Value]) -> Vec<(u64, String)> {
    elements_of(cmds, "add", GROUP_MAP)
        .iter()
        .map(|e| (e[0].as_u64().unwrap(), target(&e[1])))
        .collect()
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

/// Elements of `set` under `verb`, as strings (addresses).
fn addrs(cmds: &[Value], verb: &str, set: &str) -> Vec<String> {
    let elems = elements_of(cmds, verb, set);
    elems
        .iter()
        .map(|e| e.as_str().unwrap_or_default().to_string())
        .collect()
}

/// A verdict-map element's verdict: the chain it jumps to, or "accept".
fn target(verdict: &Value) -> String {
    match verdict["jump"]["target"].as_str() {
        Some(chain) => chain.into(),
        None => verdict.as_object().unwrap().keys().next().unwrap().clone(),
    }
}

/// The IPv4 tenant verdict map as (address, verdict) pairs.
fn tenant_map(cmds: &[Value]) -> Vec<(String, String)> {
    elements_of(cmds, "add", "tenant4")
        .iter()
        .map(|e| (e[0].as_str().unwrap().into(), target(&e[1])))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

pub(super) fn chains(cmds: &[Value]) -> Vec<String> {
    ops(cmds)
        .into_iter()
        .filter(|(v, k, _)| v == "add" && k == "chain")
        .map(|(_, _, n)| n)
        .collect()
}

#[test]
fn rule_count_is_independent_of_pods_and_projects() {
    let policy = Policy::with_global([p("kube-system")]);
    let (few, g_few) = grouped((0..3).map(|i| pod(i, "a")).collect());
    let (many, g_many) = grouped(
        (0..1000)
            .map(|i| pod(i, &format!("p{}", i % 100)))
            .collect(),
    );
    let base = full(&spec(false, true), &policy, &few, &[], &g_few, 1).rule_count();
    // Each tenant chain holds two rules (v4, v6); the per-packet path visits one.
    let tenants = |n: usize| 2 * n;
    assert_eq!(
        full(&spec(false, true), &policy, &many, &[], &g_many, 1).rule_count() - tenants(100),
        base - tenants(1)
    );
}

#[test]
fn full_replaces_the_table_atomically() {
    let b = empty_table(false, true);
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
    let (pods, groups) = grouped(vec![
        pod(0, "a"),
        pod(1, "b"),
        pod(2, "c"),
        pod(3, "kube-system"),
        pod(4, "a"),
    ]);
    let b = full(&spec(false, true), &policy, &pods, &[], &groups, 1);
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
    let to = |c: &str| c.to_string();
    assert_eq!(
        group_map(&b.cmds),
        [
            (1, to("tenant-a")),
            (2, to("tenant-a")),
            (3, to("tenant-c")),
            (4, to("accept"))
        ],
        "one element per project; a global one's pods pass"
    );
    assert_eq!(tenant_map(&b.cmds), pairs(NONE), "no element per pod");
    assert_eq!(elements_of(&b.cmds, "add", "tenant-a-4").len(), 3);
    assert_eq!(addrs(&b.cmds, "add", "global4"), ["10.1.0.5"]);
    assert_eq!(addrs(&b.cmds, "add", "global6"), ["fd00::5"]);
    assert_eq!(elements_of(&b.cmds, "add", "pods6").len(), 5);
    assert_eq!(elements_of(&b.cmds, "add", "podsrc4").len(), 5);
}

#[test]
fn a_veth_without_a_group_finds_its_tenant_by_address() {
    let b = full(
        &spec(false, true),
        &Policy::default(),
        &[pod(0, "a")],
        &[],
        &Groups::new(),
        1,
    );
    assert_eq!(tenant_map(&b.cmds), pairs(&[("10.1.0.2", "tenant-a")]));
    assert!(group_map(&b.cmds).is_empty());
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
        &Groups::new(),
        1,
    );
    assert_eq!(addrs(&b.cmds, "add", "egress_deny4"), ["10.1.0.2"]);
    assert_eq!(addrs(&b.cmds, "add", "egress_deny6"), ["fd00::2"]);
}

#[test]
fn pod_change_touches_elements_only_and_deletes_what_add_added() {
    let policy = Policy::default();
    let new = Known {
        chain: false,
        ..KNOWN
    };
    let added = pod_change(&spec(false, true), &policy, &pod(7, "a"), true, new);
    let removed = pod_change(&spec(false, true), &policy, &pod(7, "a"), false, new);
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
fn peers_join_their_tenant_but_a_local_pod_keeps_its_address() {
    let mut policy = Policy::with_global([p("kube-system")]);
    policy.join(&[p("a"), p("b")]).unwrap();
    let peers = [
        peer("10.2.0.5", "b"),
        peer("10.2.0.6", "kube-system"),
        peer("10.2.0.7", "d"),
        peer("10.1.0.2", "d"), // stale: that address is a local pod of a now
    ];
    let b = full(
        &spec(false, true),
        &policy,
        &[pod(0, "a")],
        &peers,
        &Groups::new(),
        1,
    );
    assert_eq!(
        tenant_map(&b.cmds),
        pairs(&[
            ("10.1.0.2", "tenant-a"),
            ("10.2.0.5", "tenant-a"),
            ("10.2.0.6", "accept"),
            ("10.2.0.7", "tenant-d")
        ])
    );
    assert_eq!(addrs(&b.cmds, "add", "global4"), ["10.2.0.6"]);
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
    let again = pod_change(&spec(false, true), &policy, &pod(8, "a"), true, KNOWN);
    assert_eq!(again.rule_count(), 0);
    assert!(
        ops(&again.cmds)
            .iter()
            .all(|(v, k, _)| v == "add" && k == "element"),
        "only additions: no grace period"
    );
}

#[test]
fn only_a_projects_first_pod_adds_a_jump_element() {
    let policy = Policy::default();
    let mut first = pod(9, "a");
    first.group = 4;
    let b = pod_change(&spec(false, true), &policy, &first, true, FRESH);
    assert_eq!(group_map(&b.cmds), [(4, "tenant-a".to_string())]);
    assert_eq!(tenant_map(&b.cmds), pairs(NONE));
    for add in [true, false] {
        let b = pod_change(&spec(false, true), &policy, &first, add, KNOWN);
        let jumps = b
            .elements
            .iter()
            .flat_map(|op| &op.elems)
            .filter(|e| matches!(e, Elem::AddrMap(..) | Elem::GroupMap(..)))
            .count();
        assert_eq!(jumps, 0, "add={add}: no jump element, no chain validation");
    }
}

#[test]
fn a_global_projects_first_pod_maps_its_group_to_accept() {
    let policy = Policy::with_global([p("kube-system")]);
    let mut dns = pod(3, "kube-system");
    dns.group = 2;
    let b = pod_change(&spec(false, true), &policy, &dns, true, FRESH);
    assert_eq!(group_map(&b.cmds), [(2, "accept".to_string())]);
    assert!(
        chains(&b.cmds).is_empty(),
        "no tenant chain for a global project"
    );
    assert_eq!(addrs(&b.cmds, "add", "global4"), ["10.1.0.5"]);
}

#[test]
fn a_peer_sync_changes_only_what_changed() {
    let policy = Policy::with_global([p("kube-system")]);
    let old = [
        peer("10.2.0.5", "a"),
        peer("10.2.0.6", "kube-system"),
        peer("10.2.0.7", "b"),
        peer("10.1.0.2", "b"), // a local pod's address: the local pod's
    ];
    let new = [
        peer("10.2.0.5", "a"),
        peer("10.2.0.7", "c"), // same address, another project now
        peer("10.2.0.8", "d"),
        peer("10.1.0.2", "e"),
    ];
    let local = |ip: IpAddr| ip.to_string() == "10.1.0.2";
    let known = [p("a"), p("b"), p("c")].into_iter().collect();
    let (b, made) = peers_change(&spec(false, true), &policy, &old, &new, local, &known);
    assert_eq!(made.into_iter().collect::<Vec<_>>(), [p("d")]);
    assert_eq!(chains(&b.cmds), ["tenant-d"]);
    let gone: Vec<_> = elements_of(&b.cmds, "delete", "tenant4");
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert_eq!(addrs(&b.cmds, "delete", "global4"), ["10.2.0.6"]);
    assert_eq!(
        tenant_map(&b.cmds),
        pairs(&[("10.2.0.7", "tenant-c"), ("10.2.0.8", "tenant-d")])
    );
    assert!(!b
        .cmds
        .to_vec()
        .iter()
        .any(|c| c.to_string().contains("10.1.0.2")));
    assert!(!b
        .cmds
        .to_vec()
        .iter()
        .any(|c| c.to_string().contains("10.2.0.5")));
    assert!(!b.structural, "in-process: elements and a new chain only");
}

#[test]
fn a_policy_change_is_element_changes_in_one_batch() {
    let (pods, groups) = grouped(vec![pod(0, "a"), pod(1, "b")]);
    let old = Policy::default();
    let mut joined = old.clone();
    joined.join(&[p("a"), p("b")]).unwrap();
    let chains = [p("a"), p("b")].into_iter().collect();
    let state = (&pods[..], &[][..], &groups);
    let (b, made) = policy_change(&spec(false, true), &old, &joined, state, &chains);
    assert!(made.is_empty() && b.rule_count() == 0 && !b.structural);
    let verbs: Vec<_> = ops(&b.cmds).into_iter().map(|(v, _, _)| v).collect();
    let add_then_delete = verbs.windows(2).any(|w| w[0] == "add" && w[1] == "delete");
    assert!(!add_then_delete, "deletes first: {verbs:?}");
    let gone: Vec<_> = elements_of(&b.cmds, "delete", GROUP_MAP);
    assert_eq!(
        gone,
        [serde_json::json!([2, {"jump": {"target": "tenant-b"}}])]
    );
    assert_eq!(group_map(&b.cmds), [(2, "tenant-a".to_string())]);
    assert_eq!(addrs(&b.cmds, "delete", "tenant-b-4"), ["10.1.0.3"]);
    assert_eq!(addrs(&b.cmds, "add", "tenant-a-4"), ["10.1.0.3"]);
    // Made global: its group passes, its pods join the global sets; and a
    // tenant new to the table gets its chain.
    let mut global = old.clone();
    global.make_global(&p("a"));
    let only_a = [p("a")].into_iter().collect();
    let (b, made) = policy_change(&spec(false, true), &old, &global, state, &only_a);
    assert_eq!(made.into_iter().collect::<Vec<_>>(), [p("b")]);
    assert!(group_map(&b.cmds).contains(&(1, "accept".to_string())));
    assert_eq!(addrs(&b.cmds, "add", "global4"), ["10.1.0.2"]);
    assert_eq!(addrs(&b.cmds, "delete", "tenant-a-4"), ["10.1.0.2"]);
}
