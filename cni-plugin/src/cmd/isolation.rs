//! Keeping our nftables table in step with attachments and policy.
//! Callers hold the network's state lock.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::layout::{
    epoch_applied, forget_layout, layout_exists, load_layout, next_epoch, save_layout, settings,
    Built, Layout,
};
use crate::firewall::Firewall;
use crate::ipam::{Attachment, IpStore};
use crate::policy::chains::empty_chains;
use crate::policy::diff::{peers_change, policy_change};
use crate::policy::droplog::LogTarget;
use crate::policy::file::{load, save};
use crate::policy::neighbours::{claim, conflicts};
use crate::policy::peers::{self, Peer};
use crate::policy::ruleset::{fast_elements, full, pod_change, tenants_with_chains, Groups, Known};
use crate::policy::{PodEntry, Policy, Project, Role, TableSpec};
use crate::spec::{CniError, Code, IsolationConf, NetConf};

pub fn spec(conf: &NetConf) -> TableSpec {
    TableSpec {
        table: conf.isolation.table.clone(),
        cluster_cidrs: cluster_cidrs(conf),
        masquerade: conf.isolation.masquerade,
        log: log_target(&conf.isolation),
        flow_mark_mask: conf.isolation.flow_mark_mask,
    }
}

/// A group, if named, wins over the kernel log: one log per drop.
fn log_target(iso: &IsolationConf) -> Option<LogTarget> {
    match iso.log_group {
        Some(group) => Some(LogTarget::Group(group)),
        None => iso.log_drops.then_some(LogTarget::Kernel),
    }
}

/// Without explicit cluster CIDRs, the node's own pod ranges are the cluster:
/// otherwise a pod's traffic to a pod of another node would count as egress and
/// be masqueraded, and the other node would drop it as traffic from outside
/// the cluster. Ranges that came from the
/// runtime (`ipRanges`) reach ADD and DEL but not the CLI or a GC: those use
/// the ranges the last rebuild that had them recorded.
fn cluster_cidrs(conf: &NetConf) -> Vec<ipnetwork::IpNetwork> {
    if !conf.isolation.cluster_cidrs.is_empty() {
        return conf.isolation.cluster_cidrs.clone();
    }
    if conf.ranges.is_empty() {
        return recorded_cluster(conf);
    }
    let mut cidrs: Vec<_> = conf
        .ranges
        .iter()
        .flat_map(|set| set.ranges.iter().map(|r| r.subnet))
        .collect();
    cidrs.sort_by_key(|c| (c.is_ipv6(), c.network(), c.prefix()));
    cidrs.dedup();
    // An interval set refuses overlapping elements: keep only the outermost.
    let outer = |c: &ipnetwork::IpNetwork| {
        !cidrs
            .iter()
            .any(|d| d.prefix() < c.prefix() && d.contains(c.network()))
    };
    cidrs.iter().copied().filter(outer).collect()
}

const CLUSTER: &str = "cluster.json";

fn recorded_cluster(conf: &NetConf) -> Vec<ipnetwork::IpNetwork> {
    std::fs::read(conf.state_dir().join(CLUSTER))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Keep the cluster ranges a rebuild derived from the node's pod ranges, for
/// invocations that have none.
fn record_cluster(conf: &NetConf, cidrs: &[ipnetwork::IpNetwork]) {
    if !conf.isolation.cluster_cidrs.is_empty() || conf.ranges.is_empty() {
        return;
    }
    if recorded_cluster(conf) == cidrs {
        return;
    }
    let json = serde_json::to_vec(cidrs).expect("networks serialise");
    if let Err(e) = crate::durable::replace(&conf.state_dir(), CLUSTER, &json) {
        warn!(error = %e, "cannot record the cluster ranges");
    }
}

pub fn load_policy(conf: &NetConf) -> Result<Policy, CniError> {
    let global = conf
        .isolation
        .global_projects
        .iter()
        .map(|p| Project::new(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CniError::from_error(Code::InvalidConfig, &e))?;
    load(&conf.policy_path(), &global).map_err(|e| CniError::from_error(Code::InvalidConfig, &e))
}

pub fn save_policy(conf: &NetConf, policy: &Policy) -> Result<(), CniError> {
    save(&conf.policy_path(), policy).map_err(|e| CniError::from_error(Code::Io, &e))
}

/// Pods of other nodes, as last synced by the node agent.
pub fn peers_path(conf: &NetConf) -> std::path::PathBuf {
    conf.state_dir().join("peers.json")
}

pub fn load_peers(conf: &NetConf) -> Result<Vec<Peer>, CniError> {
    let peers = peers::load(&peers_path(conf))
        .map_err(|e| CniError::from_error(Code::InvalidConfig, &e))?;
    Ok(remote_only(conf, peers))
}

/// Peers without the ones in this node's own pod ranges: no pod of another
/// node has such an address, and a stale entry (a removed node's range given
/// to this one) would put a local pod's address in another tenant's set.
fn remote_only(conf: &NetConf, peers: Vec<Peer>) -> Vec<Peer> {
    let (remote, local): (Vec<Peer>, Vec<Peer>) = peers
        .into_iter()
        .partition(|p| !conf.ranges.iter().any(|set| set.contains(p.ip)));
    if !local.is_empty() {
        warn!(ignored = local.len(), first = %local[0].ip, "peers in this node's own pod ranges ignored");
    }
    remote
}

fn entry(record: &Attachment) -> Option<PodEntry> {
    let project = Project::new(&record.project)
        .inspect_err(|e| warn!(container_id = %record.key.container_id, error = %e, "record with invalid project skipped"))
        .ok()?;
    Some(PodEntry {
        host_ifname: record.host_ifname.clone(),
        ips: record.ips.clone(),
        project,
        group: record.group,
        ifindex: record.host_ifindex,
    })
}

fn fw_err(e: crate::firewall::FirewallError) -> CniError {
    CniError::from_error(Code::Firewall, &e)
}

/// Isolation turned off in the config: take our table out (left in, it
/// would go on judging pods by the state of when it was on, and pods
/// attached since are not in it) and forget its layout, so that turning
/// isolation on again rebuilds from the records. Only where a layout says a
/// table was made: a node that never had one pays a file lookup.
fn retire_table<F: Firewall>(conf: &NetConf, fw: &mut F) -> Result<(), CniError> {
    if !layout_exists(conf) {
        return Ok(());
    }
    if fw
        .list_table(&conf.isolation.table)
        .map_err(fw_err)?
        .is_some()
    {
        let mut batch = spec(conf).batch();
        batch.delete_table();
        fw.apply("retire", &batch).map_err(fw_err)?;
        info!(table = %conf.isolation.table, "isolation is off: table removed");
    }
    forget_layout(conf);
    Ok(())
}

/// Make the whole table from persisted state, in one transaction.
pub fn rebuild<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &S,
    fw: &mut F,
    policy: &Policy,
) -> Result<(), CniError> {
    if !conf.isolation.enabled {
        return retire_table(conf, fw);
    }
    let mut layout = load_layout(conf, store, policy)?;
    let records = store
        .list()
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    let pods: Vec<PodEntry> = records.iter().filter_map(entry).collect();
    let peers = load_peers(conf)?;
    // Projects without a pod here any more (short-lived namespaces come and
    // go) lose their group, element and chain: no veth carries the number,
    // and the map and chains stay as small as the node's projects.
    let live: BTreeSet<&Project> = pods.iter().map(|p| &p.project).collect();
    layout.groups.retain(|p, _| live.contains(p));
    // Saved with the new epoch: if this rebuild fails, the next change must
    // not trust the old group map for the pruned groups (a new project could
    // get one of their numbers and be judged by the old project's chain).
    layout.built = None;
    next_epoch(conf, &mut layout, fw)?;
    let groups = &layout.groups;
    let spec = spec(conf);
    check_neighbours(&spec, fw)?;
    let table = full(&spec, policy, &pods, &peers, groups, layout.epoch);
    fw.apply("rebuild", &table).map_err(fw_err)?;
    record_cluster(conf, &spec.cluster_cidrs);
    let mapped = groups.values().copied().collect();
    layout.built = Some(Built {
        chains: tenants_with_chains(policy, &pods, &peers, groups),
        mapped,
        settings: settings(&spec, policy),
    });
    epoch_applied(conf, &mut layout, fw);
    // Best effort: a lost file costs a rebuild, not correctness.
    if let Err(e) = save_layout(conf, &layout) {
        warn!(error = %e, "cannot record the table layout");
    }
    info!(table = %conf.isolation.table, pods = pods.len(), peers = peers.len(), "table rebuilt");
    Ok(())
}

/// Refuse to build our table next to another moat network's that uses our
/// conntrack-mark bits or log group ([`crate::policy::neighbours`]). Every
/// table comes from a rebuild, and so does every change of those settings.
fn check_neighbours<F: Firewall>(spec: &TableSpec, fw: &mut F) -> Result<(), CniError> {
    let mut claims = Vec::new();
    for name in fw.inet_tables().map_err(fw_err)? {
        if name != spec.table {
            if let Some(listing) = fw.list_table(&name).map_err(fw_err)? {
                claims.extend(claim(&name, &listing));
            }
        }
    }
    let problems = conflicts(spec, &claims);
    if problems.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        Code::InvalidConfig,
        "another moat network on this node shares this one's conntrack-mark bits or log group",
    )
    .with_details(problems.join("; ")))
}

/// Add or remove one pod's elements; if that fails (the table was flushed,
/// an element was already gone) rebuild everything from the records instead.
/// `layout`: as [`project_group`] just read it, or `None` to read it here.
pub fn pod_changed<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &S,
    fw: &mut F,
    record: &Attachment,
    added: bool,
    layout: Option<Layout>,
) -> Result<(), CniError> {
    if !conf.isolation.enabled {
        return retire_table(conf, fw);
    }
    let Some(pod) = entry(record) else {
        return Ok(());
    };
    let mut layout = match layout {
        Some(l) => l,
        None => load_layout(conf, store, &load_policy(conf)?)?,
    };
    let policy = std::mem::take(&mut layout.policy);
    let Some(built) = layout.built.as_ref() else {
        return rebuild(conf, store, fw, &policy);
    };
    let tenant = match policy.role(&pod.project) {
        Role::Tenant(t) => Some(t),
        Role::Global => None,
    };
    let known = Known {
        chain: tenant.as_ref().is_none_or(|t| built.chains.contains(t)),
        group: pod.group == 0 || built.mapped.contains(&pod.group),
    };
    let what = if added { "pod add" } else { "pod delete" };
    let mut batch = pod_change(&spec(conf), &policy, &pod, added, known);
    if !added {
        // The pod's addresses may go to another project's pod next.
        if let Some(m) = next_epoch(conf, &mut layout, fw)? {
            batch.set_epoch(m);
        }
    }
    if let Err(e) = fw.apply(what, &batch) {
        info!(error = %e, "incremental update failed; rebuilding the table");
        return rebuild(conf, store, fw, &policy);
    }
    if !added {
        epoch_applied(conf, &mut layout, fw);
    }
    if added && !(known.chain && known.group) {
        let built = layout.built.as_mut().expect("checked above");
        built.chains.extend(tenant);
        if pod.group != 0 {
            built.mapped.insert(pod.group);
        }
        if let Err(e) = save_layout(conf, &layout) {
            warn!(error = %e, "cannot record the table layout");
        }
    }
    Ok(())
}

/// [`pod_changed`] for a pod whose record and addresses are already gone.
/// If the table could not be changed, the pod's elements may still be in it
/// while its addresses are free again: forget the layout, so that the next
/// change rebuilds from the records first (an ADD handing an address to
/// another project's pod rebuilds before anything, or fails).
pub fn pod_removed<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &S,
    fw: &mut F,
    record: &Attachment,
) -> Result<(), CniError> {
    let result = pod_changed(conf, store, fw, record, false, None);
    if result.is_err() {
        warn!("pod maybe not removed from the table: the next change rebuilds it");
        forget_layout(conf);
    }
    result
}

/// The fast path's elements of a pod whose veth exists (see
/// [`fast_elements`]); whether there were any to add.
pub fn pod_wired<F: Firewall>(
    conf: &NetConf,
    fw: &mut F,
    record: &Attachment,
) -> Result<bool, CniError> {
    if !conf.isolation.enabled {
        return Ok(false);
    }
    let Some(pod) = entry(record) else {
        return Ok(false);
    };
    let batch = fast_elements(&spec(conf), &pod);
    if batch.elements.is_empty() {
        return Ok(false);
    }
    fw.apply("pod wired", &batch).map_err(fw_err)?;
    Ok(true)
}

/// A change made in place: `persist` writes the new state (peers, policy),
/// `plan` turns it into element changes and new tenant chains, applied in one
/// transaction (running pods are affected at once; the drop counters stay).
/// Rebuild instead if the table was never built here or the change fails (an
/// element already gone, a lost table). Until the change is in, the layout
/// says "not built": a crash between the file and the table makes the next
/// change rebuild.
fn in_place<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &S,
    fw: &mut F,
    what: &'static str,
    persist: impl FnOnce() -> Result<(), CniError>,
    plan: impl FnOnce(&Policy, &Groups, &BTreeSet<Project>) -> Result<Planned, CniError>,
) -> Result<(), CniError> {
    // Read against the policy the table was built for: still the file's.
    let mut layout = load_layout(conf, store, &load_policy(conf)?)?;
    let built = layout.built.take();
    // Peers and policy may take permissions away: open connections meet the
    // rules again. Saved with "not built" (also with the fast path off, when
    // next_epoch saves nothing): a crash before the table has the change
    // makes the next one rebuild.
    let epoch = next_epoch(conf, &mut layout, fw)?;
    if built.is_some() && epoch.is_none() {
        save_layout(conf, &layout)?;
    }
    persist()?;
    if !conf.isolation.enabled {
        return retire_table(conf, fw);
    }
    let policy = load_policy(conf)?;
    let Some(mut built) = built else {
        return rebuild(conf, store, fw, &policy);
    };
    let (mut batch, made) = plan(&policy, &layout.groups, &built.chains)?;
    // The epoch moved above goes in even when nothing else changes: the
    // table's epoch is always the layout's.
    if let Some(m) = epoch {
        batch.set_epoch(m);
    }
    if !batch.elements.is_empty() || !made.is_empty() || epoch.is_some() {
        if let Err(e) = fw.apply(what, &batch) {
            info!(error = %e, what, "change in place failed; rebuilding the table");
            return rebuild(conf, store, fw, &policy);
        }
        epoch_applied(conf, &mut layout, fw);
    }
    built.chains.extend(made);
    built.settings = settings(&spec(conf), &policy);
    layout.built = Some(built);
    save_layout(conf, &layout)?;
    info!(table = %conf.isolation.table, what, "applied in place");
    Ok(())
}

/// A batch and the tenant chains it makes.
type Planned = (crate::policy::Batch, BTreeSet<Project>);

/// Persist a new peer list and apply the difference in place.
pub fn peers_changed<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &S,
    fw: &mut F,
    new: &[Peer],
) -> Result<(), CniError> {
    let old = load_peers(conf)?;
    let new = &remote_only(conf, new.to_vec())[..];
    let persist =
        || peers::save(&peers_path(conf), new).map_err(|e| CniError::from_error(Code::Io, &e));
    let plan = |policy: &Policy, _: &Groups, chains: &BTreeSet<Project>| {
        let local = |ip| store.is_reserved(ip).unwrap_or(false);
        Ok(peers_change(&spec(conf), policy, &old, new, local, chains))
    };
    in_place(conf, store, fw, "peers sync", persist, plan)
}

/// Persist a changed policy (`old` as loaded before the change) and apply the
/// difference in place.
pub fn policy_changed<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &S,
    fw: &mut F,
    old: &Policy,
    new: &Policy,
) -> Result<(), CniError> {
    let plan = |new: &Policy, groups: &Groups, chains: &BTreeSet<Project>| {
        let records = store
            .list()
            .map_err(|e| CniError::from_error(Code::Io, &e))?;
        let pods: Vec<PodEntry> = records.iter().filter_map(entry).collect();
        let peers = load_peers(conf)?;
        let state = (&pods[..], &peers[..], groups);
        Ok(policy_change(&spec(conf), old, new, state, chains))
    };
    in_place(
        conf,
        store,
        fw,
        "policy change",
        || save_policy(conf, new),
        plan,
    )
}

/// Why our table cannot be filtering as built (STATUS, CHECK), or `None`:
/// it is missing, or fixed chains are empty (see [`empty_chains`]).
pub fn table_fault<F: Firewall>(conf: &NetConf, fw: &mut F) -> Result<Option<String>, CniError> {
    let table = &conf.isolation.table;
    let Some(listing) = fw.list_table(table).map_err(fw_err)? else {
        return Ok(Some(format!("nftables table inet {table} is missing")));
    };
    Ok(listing_fault(conf, &listing))
}

/// [`table_fault`] of a listing the caller has.
pub fn listing_fault(conf: &NetConf, listing: &serde_json::Value) -> Option<String> {
    let empty = empty_chains(&spec(conf), listing);
    (!empty.is_empty()).then(|| {
        format!(
            "nftables table inet {} has empty chains ({}): flushed?",
            conf.isolation.table,
            empty.join(", ")
        )
    })
}
