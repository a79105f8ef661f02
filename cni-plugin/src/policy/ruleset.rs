//! Policy and pods → the nftables plan. Per-packet cost is a fixed number of
//! hash lookups whatever the number of pods or projects: pods live in sets and
//! maps (here), and the rule count does not grow with pods (`chains`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use super::chains::base_chains;
use super::droplog::{DropKind, LogTarget};
use super::epoch::mark;
use super::model::{Policy, Project, Role};
use super::nftjson::{concat, counter, Batch, Elem, Fam, Verdict, FAMS};
use super::peers::Peer;

/// One attachment as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub host_ifname: String,
    pub ips: Vec<IpAddr>,
    pub project: Project,
    /// Interface group of the host veth: its project's number on this node,
    /// 0 for a veth made without one (then the pod's addresses map to its
    /// tenant instead).
    pub group: u32,
    /// Index of the host veth once it exists (see `chains::fast_source`).
    pub ifindex: Option<u32>,
}

/// Project → interface group, for the projects with pods on this node.
pub type Groups = BTreeMap<Project, u32>;

/// The map from a local pod's interface group to its tenant chain.
pub const GROUP_MAP: &str = "tenantgrp";

/// Table-wide settings from the network config.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub table: String,
    pub cluster_cidrs: Vec<IpNetwork>,
    pub masquerade: bool,
    /// Where dropped packets are logged, if anywhere.
    pub log: Option<LogTarget>,
    /// Conntrack mark bits of the fast path; 0: off.
    pub flow_mark_mask: u32,
}

impl TableSpec {
    /// An empty batch for our table.
    pub fn batch(&self) -> Batch {
        let mut b = Batch::new(&self.table);
        b.fast_path = self.flow_mark_mask != 0;
        b
    }
}

/// Per-key drop counters (meters) and what they count: cross-tenant by
/// (source, destination) from local pods and from other nodes' pods, forged
/// sources by (veth, source), denied egress by (source, destination).
pub const DROP_METERS: [(&str, DropKind); 4] = [
    (CROSS_METER, DropKind::CrossTenant),
    (PEER_METER, DropKind::CrossTenant),
    (SPOOF_METER, DropKind::Spoofed),
    (EGRESS_METER, DropKind::EgressDenied),
];
pub const CROSS_METER: &str = "drops";
pub const PEER_METER: &str = "peerdrops";
pub const SPOOF_METER: &str = "spoofs";
pub const EGRESS_METER: &str = "egressdrops";

/// The meter statement that counts drops by `key` (per family).
pub(super) fn drop_meter(f: Fam, meter: &str, key: Vec<Value>) -> Value {
    json!({"meter": {"name": f.name(meter), "key": concat(key), "stmt": counter()}})
}

pub fn tenant_chain(t: &Project) -> String {
    format!("tenant-{t}")
}

/// The whole table, replacing whatever is there in the same transaction
/// (add-then-delete makes the delete safe when the table is missing).
/// Peers (pods of other nodes) join their tenant's map and sets; an address
/// that is also a local pod is the local pod's. `epoch`: see `policy::epoch`.
pub fn full(
    spec: &TableSpec,
    policy: &Policy,
    pods: &[PodEntry],
    peers: &[Peer],
    groups: &Groups,
    epoch: u64,
) -> Batch {
    let mut b = spec.batch();
    b.add_table();
    b.delete_table();
    b.add_table();
    b.add_set(
        "podif",
        json!("ifname"),
        &[],
        pods.iter().map(|p| json!(p.host_ifname)).collect(),
    );
    b.add_verdict_map(GROUP_MAP, "devgroup", vec![]);
    for f in FAMS {
        declare_family_sets(&mut b, spec, f);
    }
    base_chains(&mut b, spec);
    if let Some(m) = mark(spec.flow_mark_mask, epoch) {
        b.set_epoch(m);
    }
    let mut tenants: BTreeSet<Project> = BTreeSet::new();
    let mut ensure_chain = |b: &mut Batch, project: &Project| {
        if let Role::Tenant(t) = policy.role(project) {
            if tenants.insert(t.clone()) {
                b.new_tenant_chain(&tenant_chain(&t));
            }
        }
    };
    for (project, group) in groups {
        ensure_chain(&mut b, project);
        let v = role_verdict(policy, project);
        b.element(true, GROUP_MAP, vec![Elem::GroupMap(*group, v)]);
    }
    let mut local: BTreeSet<IpAddr> = BTreeSet::new();
    for pod in pods {
        ensure_chain(&mut b, &pod.project);
        pod_elements(&mut b, policy, pod, true);
        local.extend(pod.ips.iter().copied());
    }
    for peer in peers.iter().filter(|p| !local.contains(&p.ip)) {
        ensure_chain(&mut b, &peer.project);
        member_elements(&mut b, policy, &peer.project, peer.ip, true, true);
    }
    b
}

/// The tenants that have a chain after [`full`].
pub fn tenants_with_chains(
    policy: &Policy,
    pods: &[PodEntry],
    peers: &[Peer],
    groups: &Groups,
) -> BTreeSet<Project> {
    let projects = pods
        .iter()
        .map(|p| &p.project)
        .chain(peers.iter().map(|p| &p.project))
        .chain(groups.keys());
    projects
        .filter_map(|p| match policy.role(p) {
            Role::Tenant(t) => Some(t),
            Role::Global => None,
        })
        .collect()
}

/// What the table already has for a pod's project when the pod is added.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The tenant's chain.
    pub chain: bool,
    /// The project's group in the group map.
    pub group: bool,
}

/// Elements of one pod, added or deleted. On add, the pod's tenant chain is
/// made unless it exists: remaking it would delete its rules, and a
/// transaction that deletes costs the kernel a grace period. It is made
/// exclusively: if it exists after all, the batch fails and the caller
/// rebuilds the table. A project's first pod also maps the project's group
/// to the chain; the group stays mapped when its pods leave, until a rebuild
/// finds the project without pods.
///
/// Only that first pod adds a jump element: every jump element added makes
/// the kernel re-validate the chain graph at commit, walking every element of
/// every verdict map (with one address element per pod that was 0.23 ms of
/// an ADD at 1000 pods).
pub fn pod_change(
    spec: &TableSpec,
    policy: &Policy,
    pod: &PodEntry,
    add: bool,
    known: Known,
) -> Batch {
    let mut b = spec.batch();
    if let (true, Role::Tenant(t)) = (add, policy.role(&pod.project)) {
        if !known.chain {
            b.new_tenant_chain(&tenant_chain(&t));
        }
    }
    if add && !known.group && pod.group != 0 {
        let v = role_verdict(policy, &pod.project);
        b.element(true, GROUP_MAP, vec![Elem::GroupMap(pod.group, v)]);
    }
    pod_elements(&mut b, policy, pod, add);
    b
}

/// Where a project's packets go in the verdict maps: its tenant's chain, or
/// straight through for a global project.
fn role_verdict(policy: &Policy, project: &Project) -> Verdict {
    match policy.role(project) {
        Role::Tenant(t) => Verdict::Jump(tenant_chain(&t)),
        Role::Global => Verdict::Accept,
    }
}

fn declare_family_sets(b: &mut Batch, spec: &TableSpec, f: Fam) {
    let t = json!(f.addr_type);
    for base in ["pods", "global", "egress_deny"] {
        b.add_set(&f.name(base), t.clone(), &[], vec![]);
    }
    let cidrs: Vec<Value> = spec
        .cluster_cidrs
        .iter()
        .filter(|c| (c.is_ipv4()) == (f.suffix == "4"))
        .map(|c| json!({"prefix": {"addr": c.network().to_string(), "len": c.prefix()}}))
        .collect();
    b.add_set(&f.name("cluster"), t.clone(), &["interval"], cidrs);
    b.add_set(
        &f.name("podsrc"),
        json!(["ifname", f.addr_type]),
        &[],
        vec![],
    );
    b.add_verdict_map(&f.name("tenant"), f.addr_type, vec![]);
    if spec.flow_mark_mask != 0 {
        b.add_set(
            &f.name("podfast"),
            json!(["iface_index", f.addr_type]),
            &[],
            vec![],
        );
    }
}

fn pod_elements(b: &mut Batch, policy: &Policy, pod: &PodEntry, add: bool) {
    fast_pod_elements(b, pod, add);
    b.element(add, "podif", vec![Elem::Ifname(pod.host_ifname.clone())]);
    for ip in &pod.ips {
        let f = Fam::of(ip);
        b.element(add, &f.name("pods"), vec![Elem::Addr(*ip)]);
        b.element(
            add,
            &f.name("podsrc"),
            vec![Elem::IfAddr(pod.host_ifname.clone(), *ip)],
        );
        member_elements(b, policy, &pod.project, *ip, add, pod.group == 0);
        if policy.egress_deny.contains(&pod.project) {
            b.element(add, &f.name("egress_deny"), vec![Elem::Addr(*ip)]);
        }
    }
}

/// What makes an address a member of its project's tenant (or of the
/// globals). `by_address`: its packets find their tenant by source address
/// (pods of other nodes, local veths without a group) rather than by group.
pub(super) fn member_elements(
    b: &mut Batch,
    policy: &Policy,
    project: &Project,
    ip: IpAddr,
    add: bool,
    by_address: bool,
) {
    let f = Fam::of(&ip);
    if by_address {
        let v = role_verdict(policy, project);
        b.element(add, &f.name("tenant"), vec![Elem::AddrMap(ip, v)]);
    }
    match policy.role(project) {
        Role::Global => b.element(add, &f.name("global"), vec![Elem::Addr(ip)]),
        Role::Tenant(t) => b.element(add, &f.tenant_set(&tenant_chain(&t)), vec![Elem::Addr(ip)]),
    }
}

/// The fast path's elements of a pod whose veth now exists.
pub fn fast_elements(spec: &TableSpec, pod: &PodEntry) -> Batch {
    let mut b = spec.batch();
    fast_pod_elements(&mut b, pod, true);
    b
}

fn fast_pod_elements(b: &mut Batch, pod: &PodEntry, add: bool) {
    if let (true, Some(index)) = (b.fast_path, pod.ifindex) {
        for ip in &pod.ips {
            let set = Fam::of(ip).name("podfast");
            b.element(add, &set, vec![Elem::IdxAddr(index, *ip)]);
        }
    }
}
