//! Policy and pods → the nftables plan. Per-packet cost is a fixed number of
//! hash lookups whatever the number of pods or projects: pods live in sets and
//! maps, and the rule count does not grow with pods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use super::epoch::{mark, EPOCH_CHAIN, VERIFIED_CHAIN};
use super::model::{Policy, Project, Role};
use super::nftjson::{
    concat, counter, ct, in_set, jump, matches, meta, not_in_set, verdict, Batch, Elem, Fam,
    Verdict, FAMS,
};
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
    /// Index of the host veth once it exists (see [`fast_source`]).
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
    pub log_drops: bool,
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

/// Per (source, destination) drop counters: local sources, other nodes' pods.
pub const DROP_METERS: [&str; 2] = ["drops", "peerdrops"];
/// Where a pod's packets prove their source.
const ANTISPOOF: &str = "antispoof";
const PRIO_FILTER_EARLY: i32 = -5;
const PRIO_SRCNAT: i32 = 100;

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

/// The family test first: every packet crosses these rules, and a packet of
/// the other family then stops at a compare instead of an interface-name
/// lookup (nft would put its own family test after the lookup).
fn nfproto(f: Fam) -> Value {
    let name = if f.is_v4() { "ipv4" } else { "ipv6" };
    matches(meta("nfproto"), "==", json!(name))
}

/// A packet from one of our veths with that pod's own address. Our veths
/// carry a group (a project's number), most other links none: they skip the
/// lookup at a compare.
fn own_source(f: Fam) -> Vec<Value> {
    source_in(f, "iifname", "podsrc")
}

fn source_in(f: Fam, iface: &str, set: &str) -> Vec<Value> {
    vec![
        nfproto(f),
        matches(meta("iifgroup"), "!=", json!(0)),
        in_set(concat(vec![meta(iface), f.saddr()]), &f.name(set)),
    ]
}

/// [`own_source`] for the fast path, keyed by the veth's index rather than
/// its name: an index is loaded and hashed at a fraction of a name's cost
/// (in a forwarding flood the fast rule's CPU share fell by a fifth). The
/// index exists only once the veth does, after the pod's other elements went
/// in, so ADD adds these elements when the wiring is done ([`fast_elements`]);
/// until then, or if that failed, the pod's packets take the full path.
/// Kernels allocate link indexes cyclically, so one left behind by a veth
/// that vanished before its DEL is not handed to another link.
fn fast_source(f: Fam) -> Vec<Value> {
    source_in(f, "iif", "podfast")
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

fn base_chains(b: &mut Batch, spec: &TableSpec) {
    // Anti-spoofing: a pod's packets must carry its own address, whether
    // they are forwarded or for the node. Jumped to from the forward and
    // input chains rather than hooked at prerouting: a hook of its own was a
    // second chain run on every forwarded packet (a spoofed packet still
    // stops before routing could deliver it: a conntrack entry made for it
    // is never confirmed, a DNAT keeps its source).
    b.add_chain(ANTISPOOF, None);
    // The common case first, in one lookup: a pod's packet with its own address.
    for f in FAMS {
        let mut rule = own_source(f);
        rule.push(verdict("return"));
        b.add_rule(ANTISPOOF, rule);
    }
    // Link-local and unspecified sources (NDP, DAD) are the pod's too.
    for ll in ["fe80::/10", "::"] {
        let (addr, len) = ll
            .split_once('/')
            .map_or((ll, 128), |(a, l)| (a, l.parse().unwrap_or(128)));
        b.add_rule(
            ANTISPOOF,
            vec![
                nfproto(FAMS[1]),
                matches(
                    FAMS[1].saddr(),
                    "==",
                    json!({"prefix": {"addr": addr, "len": len}}),
                ),
                verdict("return"),
            ],
        );
    }
    for f in FAMS {
        b.add_rule(
            ANTISPOOF,
            vec![
                nfproto(f),
                in_set(meta("iifname"), "podif"),
                not_in_set(concat(vec![meta("iifname"), f.saddr()]), &f.name("podsrc")),
                counter(),
                verdict("drop"),
            ],
        );
    }
    for f in FAMS {
        to_pod_chain(b, f, spec.log_drops);
        from_pod_chain(b, f);
    }
    b.add_chain("input", Some(("filter", "input", PRIO_FILTER_EARLY)));
    b.add_rule("input", vec![jump(ANTISPOOF)]);
    b.add_chain("forward", Some(("filter", "forward", PRIO_FILTER_EARLY)));
    if spec.flow_mark_mask != 0 {
        // First, in one rule: a pod's packet with its own source on a
        // connection the rules accepted in this epoch.
        b.add_chain(EPOCH_CHAIN, None);
        b.add_chain(VERIFIED_CHAIN, None);
        for f in FAMS {
            let mut rule = fast_source(f);
            rule.push(jump(EPOCH_CHAIN));
            b.add_rule("forward", rule);
        }
    }
    b.add_rule("forward", vec![jump(ANTISPOOF)]);
    for f in FAMS {
        b.add_rule(
            "forward",
            vec![in_set(f.daddr(), &f.name("pods")), jump(&f.name("to_pod"))],
        );
    }
    for f in FAMS {
        b.add_rule(
            "forward",
            vec![
                in_set(f.saddr(), &f.name("pods")),
                jump(&f.name("from_pod")),
            ],
        );
    }
    if spec.masquerade {
        b.add_chain("postrouting", Some(("nat", "postrouting", PRIO_SRCNAT)));
        for f in FAMS {
            b.add_rule(
                "postrouting",
                vec![
                    in_set(f.saddr(), &f.name("pods")),
                    not_in_set(f.daddr(), &f.name("pods")),
                    not_in_set(f.daddr(), &f.name("cluster")),
                    json!({"masquerade": null}),
                ],
            );
        }
    }
}

/// Traffic to a local pod.
fn to_pod_chain(b: &mut Batch, f: Fam, log: bool) {
    let chain = f.name("to_pod");
    b.add_chain(&chain, None);
    // The source's project first: a tenant's chain accepts if the
    // destination is a member, a global project's pods pass. A local pod's
    // project comes from its host veth's group (only our veths: an admin may
    // group other links), a remote pod's from its address. Same-tenant
    // traffic, the bulk, is through after three lookups.
    b.add_rule(
        &chain,
        vec![
            in_set(meta("iifname"), "podif"),
            json!({"vmap": {"key": meta("iifgroup"), "data": format!("@{GROUP_MAP}")}}),
        ],
    );
    b.add_rule(
        &chain,
        vec![json!({"vmap": {"key": f.saddr(), "data": format!("@{}", f.name("tenant"))}})],
    );
    // Anything may reach a global project's pods.
    b.add_rule(
        &chain,
        vec![in_set(f.daddr(), &f.name("global")), verdict("accept")],
    );
    // Any other local pod: a cross-tenant packet, whatever conntrack thinks of it.
    // Local pods, then pods of other nodes not of this tenant (or not synced
    // yet): cross-tenant, whatever conntrack or a DNAT says. Each has its own
    // meter: two rules cannot share one.
    for (sources, meter) in [("pods", DROP_METERS[0]), ("cluster", DROP_METERS[1])] {
        if log {
            // Its own rule: `limit` ends the rule it is in once over the rate,
            // and a verdict (even a jump) must be the last statement of a rule.
            b.add_rule(
                &chain,
                vec![
                    in_set(f.saddr(), &f.name(sources)),
                    json!({"limit": {"rate": 10, "per": "second"}}),
                    json!({"log": {"prefix": "moat drop: "}}),
                ],
            );
        }
        b.add_rule(
            &chain,
            vec![
                in_set(f.saddr(), &f.name(sources)),
                json!({"meter": {"name": f.name(meter), "key": concat(vec![f.saddr(), f.daddr()]), "stmt": counter()}}),
                verdict("drop"),
            ],
        );
    }
    // From outside: only what a service or NodePort DNAT brought in, and replies.
    b.add_rule(
        &chain,
        vec![
            matches(ct("status"), "in", json!("dnat")),
            verdict("accept"),
        ],
    );
    b.add_rule(
        &chain,
        vec![
            matches(ct("direction"), "==", json!("reply")),
            verdict("accept"),
        ],
    );
    b.add_rule(&chain, vec![counter(), verdict("drop")]);
}

/// Traffic from a local pod to anything that is not a local pod.
fn from_pod_chain(b: &mut Batch, f: Fam) {
    let chain = f.name("from_pod");
    b.add_chain(&chain, None);
    b.add_rule(
        &chain,
        vec![
            matches(ct("direction"), "==", json!("reply")),
            verdict("accept"),
        ],
    );
    b.add_rule(
        &chain,
        vec![
            in_set(f.saddr(), &f.name("egress_deny")),
            not_in_set(f.daddr(), &f.name("cluster")),
            counter(),
            verdict("drop"),
        ],
    );
}
