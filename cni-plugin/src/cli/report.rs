//! Plain-text tables for the operator commands.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use crate::cmd::isolation::load_peers;
use crate::firewall::{Firewall, NftFirewall};
use crate::ipam::{DiskStore, IpStore};
use crate::policy::peers::Peer;
use crate::policy::{Policy, Project, Role};
use crate::spec::{CniError, Code, NetConf};

fn io(e: crate::ipam::StoreError) -> CniError {
    CniError::from_error(Code::Io, &e)
}

fn role_name(policy: &Policy, project: &str) -> String {
    match Project::new(project).map(|p| policy.role(&p)) {
        Ok(Role::Global) => "global".into(),
        Ok(Role::Tenant(t)) => format!("tenant {t}"),
        Err(_) => "invalid".into(),
    }
}

pub fn policy(policy: &Policy, store: &DiskStore) -> Result<String, CniError> {
    let known: BTreeSet<Project> = store
        .list()
        .map_err(io)?
        .iter()
        .filter_map(|r| Project::new(&r.project).ok())
        .collect();
    let mut out = String::new();
    let global: Vec<&str> = policy.global.iter().map(Project::as_str).collect();
    let _ = writeln!(out, "global: {}", global.join(", "));
    for (t, members) in policy.tenants(&known) {
        let m: Vec<&str> = members.iter().map(Project::as_str).collect();
        let _ = writeln!(out, "tenant {t}: {}", m.join(", "));
    }
    let deny: Vec<&str> = policy.egress_deny.iter().map(Project::as_str).collect();
    let _ = writeln!(out, "egress denied: {}", deny.join(", "));
    Ok(out)
}

pub fn pods(policy: &Policy, store: &DiskStore) -> Result<String, CniError> {
    let mut out = format!(
        "{:<24} {:<16} {:<20} {:<16} {:<6} {}\n",
        "POD", "PROJECT", "ROLE", "HOST IF", "GROUP", "ADDRESSES"
    );
    let mut records = store.list().map_err(io)?;
    records.sort_by(|a, b| (&a.project, &a.pod_name).cmp(&(&b.project, &b.pod_name)));
    for r in records {
        let ips: Vec<String> = r.ips.iter().map(IpAddr::to_string).collect();
        let name = r
            .pod_name
            .clone()
            .unwrap_or_else(|| r.key.container_id.chars().take(24).collect());
        let _ = writeln!(
            out,
            "{:<24} {:<16} {:<20} {:<16} {:<6} {}{}",
            name,
            r.project,
            role_name(policy, &r.project),
            r.host_ifname,
            r.group,
            ips.join(","),
            if r.complete { "" } else { " (incomplete)" }
        );
    }
    Ok(out)
}

pub fn peers(policy: &Policy, peers: &[Peer]) -> Result<String, CniError> {
    let mut out = format!("{:<40} {:<24} {}\n", "ADDRESS", "PROJECT", "ROLE");
    for p in peers {
        let role = role_name(policy, p.project.as_str());
        let _ = writeln!(out, "{:<40} {:<24} {role}", p.ip, p.project);
    }
    Ok(out)
}

/// Who is who on this node, by project.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    /// Address → project: other nodes' pods, then this node's (a local
    /// pod's record wins for an address both name).
    pub addrs: BTreeMap<IpAddr, String>,
    /// Host veth → its pod's project.
    pub links: BTreeMap<String, String>,
}

pub fn owners(conf: &NetConf, store: &DiskStore) -> Result<Owners, CniError> {
    let mut owners = Owners {
        addrs: load_peers(conf)?
            .into_iter()
            .map(|p| (p.ip, p.project.to_string()))
            .collect(),
        links: BTreeMap::new(),
    };
    for r in store.list().map_err(io)? {
        owners.links.insert(r.host_ifname, r.project.clone());
        owners
            .addrs
            .extend(r.ips.into_iter().map(|ip| (ip, r.project.clone())));
    }
    Ok(owners)
}

pub fn drops(conf: &NetConf, store: &DiskStore, fw: &mut NftFirewall) -> Result<String, CniError> {
    let owner = owners(conf, store)?.addrs;
    let project_of = |ip: &IpAddr| {
        owner
            .get(ip)
            .cloned()
            .unwrap_or_else(|| format!("({ip}, gone)"))
    };
    let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();
    for d in fw
        .drops(&conf.isolation.table)
        .map_err(|e| CniError::from_error(Code::Firewall, &e))?
    {
        *pairs
            .entry((project_of(&d.src), project_of(&d.dst)))
            .or_default() += d.packets;
    }
    let mut out = format!(
        "{:<24} {:<24} {}\n",
        "FROM PROJECT", "TO PROJECT", "DROPPED PACKETS"
    );
    for ((from, to), n) in pairs {
        let _ = writeln!(out, "{from:<24} {to:<24} {n}");
    }
    Ok(out)
}
