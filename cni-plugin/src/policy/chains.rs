//! The table's chains and rules: the same whatever pods and projects there
//! are (every per-pod or per-project fact is an element of a set or map the
//! rules look up), so ADD and DEL never touch them and the rule count stays
//! constant as pods grow.

use serde_json::{json, Value};

use super::droplog::{log_statements, DropKind, LogTarget};
use super::epoch::{EPOCH_CHAIN, VERIFIED_CHAIN};
use super::nftjson::{
    concat, counter, ct, in_set, jump, matches, meta, not_in_set, verdict, Batch, Fam, FAMS,
};
use super::ruleset::{
    drop_meter, TableSpec, CROSS_METER, EGRESS_METER, GROUP_MAP, PEER_METER, SPOOF_METER,
};

/// Where a pod's packets prove their source.
const ANTISPOOF: &str = "antispoof";
const PRIO_FILTER_EARLY: i32 = -5;
const PRIO_SRCNAT: i32 = 100;

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
/// in, so ADD adds these elements when the wiring is done
/// ([`super::ruleset::fast_elements`]); until then, or if that failed, the
/// pod's packets take the full path.
/// Kernels allocate link indexes cyclically, so one left behind by a veth
/// that vanished before its DEL is not handed to another link.
fn fast_source(f: Fam) -> Vec<Value> {
    source_in(f, "iif", "podfast")
}

/// Every chain but the tenants': they are the same whatever pods and
/// projects there are.
pub(super) fn base_chains(b: &mut Batch, spec: &TableSpec) {
    antispoof_chain(b, spec.log);
    let drops = Drops {
        log: spec.log,
        forget: spec.flow_mark_mask,
    };
    for f in FAMS {
        to_pod_chain(b, f, drops);
        from_pod_chain(b, f, drops);
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
        masquerade_chain(b);
    }
}

/// Anti-spoofing: a pod's packets must carry its own address, whether they
/// are forwarded or for the node. Jumped to from the forward and input
/// chains rather than hooked at prerouting: a hook of its own was a second
/// chain run on every forwarded packet (a spoofed packet still stops before
/// routing could deliver it: a conntrack entry made for it is never
/// confirmed, a DNAT keeps its source).
fn antispoof_chain(b: &mut Batch, log: Option<LogTarget>) {
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
        let spoofed = vec![
            nfproto(f),
            in_set(meta("iifname"), "podif"),
            not_in_set(concat(vec![meta("iifname"), f.saddr()]), &f.name("podsrc")),
        ];
        // By veth, which names the pod that sent it, and the forged source.
        let count = drop_meter(f, SPOOF_METER, vec![meta("iifname"), f.saddr()]);
        // A forged packet may match a pod's own connection: its mark stays.
        let drops = Drops { log, forget: 0 };
        logged_drop(b, ANTISPOOF, spoofed, count, drops, DropKind::Spoofed);
    }
}

/// How a chain's drops are made.
#[derive(Debug, Clone, Copy)]
struct Drops {
    /// Where they are logged, if anywhere.
    log: Option<LogTarget>,
    /// Epoch bits of the conntrack mark that a dropped packet's connection
    /// loses (0: none). A connection the rules let open and a later change
    /// closed keeps its old epoch in its mark; once the counter came round to
    /// that epoch again it would pass the fast path unchecked. Cleared at its
    /// first dropped packet, the mark can never match an epoch again.
    forget: u32,
}

/// A drop of what `matching` matches, in three rules with that match: log
/// it (when logging is on), count it in `meter`, drop it. A `limit` over its
/// rate and a meter that is full both end the rule they are in without its
/// verdict, so neither may share a rule with the drop: a pod that forges
/// 65535 sources, or scans as many outside addresses, fills its meter and
/// would otherwise be let through.
fn logged_drop(
    b: &mut Batch,
    chain: &str,
    matching: Vec<Value>,
    meter: Value,
    drops: Drops,
    kind: DropKind,
) {
    let with = |extra: Vec<Value>| matching.iter().cloned().chain(extra).collect::<Vec<_>>();
    if let Some(target) = drops.log {
        b.add_rule(chain, with(log_statements(target, kind)));
    }
    b.add_rule(chain, with(vec![meter]));
    let mut drop = vec![verdict("drop")];
    if drops.forget != 0 {
        drop.insert(0, forget_epoch(drops.forget));
    }
    b.add_rule(chain, with(drop));
}

/// `ct mark set ct mark & ~mask`: the connection's epoch bits cleared, its
/// other bits (another program's) kept.
fn forget_epoch(mask: u32) -> Value {
    json!({"mangle": {"key": ct("mark"), "value": {"&": [ct("mark"), !mask]}}})
}

/// Pods' packets to anywhere outside the cluster leave with the node's address.
fn masquerade_chain(b: &mut Batch) {
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

/// Traffic to a local pod.
fn to_pod_chain(b: &mut Batch, f: Fam, drops: Drops) {
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
    for (sources, meter) in [("pods", CROSS_METER), ("cluster", PEER_METER)] {
        let count = drop_meter(f, meter, vec![f.saddr(), f.daddr()]);
        let from = vec![in_set(f.saddr(), &f.name(sources))];
        logged_drop(b, &chain, from, count, drops, DropKind::CrossTenant);
    }
    // From outside: only what a service or NodePort DNAT brought in, and replies.
    b.add_rule(
        &chain,
        vec![
            matches(ct("status"), "in", json!("dnat")),
            verdict("accept"),
        ],
    );
    accept_replies(b, &chain);
    b.add_rule(&chain, vec![counter(), verdict("drop")]);
}

/// Packets answering a connection the rules let open.
fn accept_replies(b: &mut Batch, chain: &str) {
    b.add_rule(
        chain,
        vec![
            matches(ct("direction"), "==", json!("reply")),
            verdict("accept"),
        ],
    );
}

/// Traffic from a local pod to anything that is not a local pod.
fn from_pod_chain(b: &mut Batch, f: Fam, drops: Drops) {
    let chain = f.name("from_pod");
    b.add_chain(&chain, None);
    accept_replies(b, &chain);
    let leaving = vec![
        in_set(f.saddr(), &f.name("egress_deny")),
        not_in_set(f.daddr(), &f.name("cluster")),
    ];
    let count = drop_meter(f, EGRESS_METER, vec![f.saddr(), f.daddr()]);
    logged_drop(b, &chain, leaving, count, drops, DropKind::EgressDenied);
}

/// The fixed chains that a listing of our table has empty or not at all. A
/// table flushed with `nft flush table` keeps its chains and sets (every
/// pod's address is still found) while nothing filters; an admin's `nft
/// flush chain` leaves one chain so. Checked for emptiness, not for the
/// exact rules: a table built before a settings change the next ADD applies
/// has other rules, and is whole.
pub fn empty_chains(spec: &TableSpec, listing: &Value) -> Vec<String> {
    let mut plan = spec.batch();
    base_chains(&mut plan, spec);
    if let Some(m) = super::epoch::mark(spec.flow_mark_mask, 0) {
        plan.set_epoch(m);
    }
    let chain_of = |rule: &Value| rule["chain"].as_str().map(String::from);
    let planned: std::collections::BTreeSet<String> = plan
        .cmds
        .iter()
        .filter_map(|c| c.pointer("/add/rule"))
        .filter_map(chain_of)
        .collect();
    let listed: std::collections::BTreeSet<String> = listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter_map(chain_of)
        .collect();
    planned.difference(&listed).cloned().collect()
}
