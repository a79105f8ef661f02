//! Keeping our nftables table in step with attachments and policy.
//! Callers hold the network's state lock.

use std::collections::BTreeSet;

use tracing::{info, warn};

use crate::firewall::Firewall;
use crate::ipam::{Attachment, IpStore};
use crate::policy::file::{load, save};
use crate::policy::peers::{self, Peer};
use crate::policy::ruleset::{full, pod_change, tenants_with_chains};
use crate::policy::{PodEntry, Policy, Project, Role, TableSpec};
use crate::spec::{CniError, Code, NetConf};

pub fn spec(conf: &NetConf) -> TableSpec {
    TableSpec {
        table: conf.isolation.table.clone(),
        cluster_cidrs: cluster_cidrs(conf),
        masquerade: conf.isolation.masquerade,
        log_drops: conf.isolation.log_drops,
    }
}

/// Without explicit cluster CIDRs, the node's own pod ranges are the cluster:
/// otherwise a pod's traffic to a pod of another node would count as egress and
/// be masqueraded past the tenant check.
fn cluster_cidrs(conf: &NetConf) -> Vec<ipnetwork::IpNetwork> {
    if !conf.isolation.cluster_cidrs.is_empty() {
        return conf.isolation.cluster_cidrs.clone();
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
    peers::load(&peers_path(conf)).map_err(|e| CniError::from_error(Code::InvalidConfig, &e))
}

fn entry(record: &Attachment) -> Option<PodEntry> {
    let project = Project::new(&record.project)
        .inspect_err(|e| warn!(container_id = %record.key.container_id, error = %e, "record with invalid project skipped"))
        .ok()?;
    Some(PodEntry {
        host_ifname: record.host_ifname.clone(),
        ips: record.ips.clone(),
        project,
    })
}

fn fw_err(e: crate::firewall::FirewallError) -> CniError {
    CniError::from_error(Code::Firewall, &e)
}

/// Tenants whose chain our table has, as last built. Absent before the first
/// build in this state directory: then an ADD builds the whole table at once.
fn chains_path(conf: &NetConf) -> std::path::PathBuf {
    conf.state_dir().join("chains.json")
}

fn load_chains(conf: &NetConf) -> Option<BTreeSet<Project>> {
    let bytes = std::fs::read(chains_path(conf)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Best effort: a missing or stale file only costs a rebuild or a remade chain.
fn save_chains(conf: &NetConf, chains: &BTreeSet<Project>) {
    let json = serde_json::to_vec(chains).expect("projects serialise");
    if let Err(e) = crate::durable::replace(&conf.state_dir(), "chains.json", &json) {
        warn!(error = %e, "cannot record the tenant chains");
    }
}

/// Make the whole table from persisted state, in one transaction.
pub fn rebuild<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &S,
    fw: &mut F,
    policy: &Policy,
) -> Result<(), CniError> {
    let records = store
        .list()
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    let pods: Vec<PodEntry> = records.iter().filter_map(entry).collect();
    let peers = load_peers(conf)?;
    fw.apply("rebuild", &full(&spec(conf), policy, &pods, &peers))
        .map_err(fw_err)?;
    save_chains(conf, &tenants_with_chains(policy, &pods, &peers));
    info!(table = %conf.isolation.table, pods = pods.len(), peers = peers.len(), "table rebuilt");
    Ok(())
}

/// Add or remove one pod's elements; if that fails (the table was flushed,
/// an element was already gone) rebuild everything from the records instead.
pub fn pod_changed<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &S,
    fw: &mut F,
    record: &Attachment,
    added: bool,
) -> Result<(), CniError> {
    if !conf.isolation.enabled {
        return Ok(());
    }
    let Some(pod) = entry(record) else {
        return Ok(());
    };
    let policy = load_policy(conf)?;
    let Some(mut chains) = load_chains(conf) else {
        return rebuild(conf, store, fw, &policy);
    };
    let tenant = match policy.role(&pod.project) {
        Role::Tenant(t) => Some(t),
        Role::Global => None,
    };
    let exists = tenant.as_ref().is_none_or(|t| chains.contains(t));
    let what = if added { "pod add" } else { "pod delete" };
    let batch = pod_change(&spec(conf), &policy, &pod, added, exists);
    if let Err(e) = fw.apply(what, &batch) {
        info!(error = %e, "incremental update failed; rebuilding the table");
        return rebuild(conf, store, fw, &policy);
    }
    if let (true, false, Some(t)) = (added, exists, tenant) {
        chains.insert(t);
        save_chains(conf, &chains);
    }
    Ok(())
}

/// Whether the table exists (STATUS, CHECK).
pub fn table_present<F: Firewall>(conf: &NetConf, fw: &mut F) -> Result<bool, CniError> {
    Ok(fw
        .list_table(&conf.isolation.table)
        .map_err(fw_err)?
        .is_some())
}
