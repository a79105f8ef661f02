//! Plain-text tables for the operator commands.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use crate::cmd::isolation::load_peers;
use crate::firewall::{DropCount, Firewall, NftFirewall};
use crate::ipam::{DiskStore, IpStore};
use crate::policy::droplog::DropKind;
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
    let counts = fw
        .drops(&conf.isolation.table)
        .map_err(|e| CniError::from_error(Code::Firewall, &e))?;
    Ok(drop_tables(&owners(conf, store)?, &counts))
}

/// Cross-tenant drops by project pair, then (if any) forged sources by the
/// pod that sent them and denied egress by project.
pub fn drop_tables(owners: &Owners, counts: &[DropCount]) -> String {
    let gone = |what: &dyn std::fmt::Display| format!("({what}, gone)");
    let project_of = |ip: &IpAddr| owners.addrs.get(ip).cloned().unwrap_or_else(|| gone(ip));
    let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut forged: BTreeMap<(String, String, IpAddr), u64> = BTreeMap::new();
    let mut egress: BTreeMap<String, u64> = BTreeMap::new();
    for d in counts {
        match (d.kind, d.dst, &d.link) {
            (DropKind::Spoofed, _, Some(link)) => {
                let sender = owners
                    .links
                    .get(link)
                    .cloned()
                    .unwrap_or_else(|| gone(link));
                *forged.entry((sender, link.clone(), d.src)).or_default() += d.packets;
            }
            (DropKind::EgressDenied, _, _) => {
                *egress.entry(project_of(&d.src)).or_default() += d.packets
            }
            (_, Some(dst), _) => {
                *pairs
                    .entry((project_of(&d.src), project_of(&dst)))
                    .or_default() += d.packets
            }
            _ => {}
        }
    }
    let mut out = format!(
        "{:<24} {:<24} {}\n",
        "FROM PROJECT", "TO PROJECT", "DROPPED PACKETS"
    );
    for ((from, to), n) in pairs {
        let _ = writeln!(out, "{from:<24} {to:<24} {n}");
    }
    if !forged.is_empty() {
        let _ = write!(
            out,
            "\nFORGED SOURCES\n{:<24} {:<16} {:<40} DROPPED PACKETS\n",
            "PROJECT", "HOST IF", "SOURCE"
        );
        for ((project, link, src), n) in forged {
            let _ = writeln!(out, "{project:<24} {link:<16} {:<40} {n}", src.to_string());
        }
    }
    if !egress.is_empty() {
        let _ = write!(out, "\nEGRESS DENIED\n{:<24} DROPPED PACKETS\n", "PROJECT");
        for (project, n) in egress {
            let _ = writeln!(out, "{project:<24} {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(
        kind: DropKind,
        src: &str,
        dst: Option<&str>,
        link: Option<&str>,
        packets: u64,
    ) -> DropCount {
        DropCount {
            kind,
            src: src.parse().unwrap(),
            dst: dst.map(|d| d.parse().unwrap()),
            link: link.map(str::to_string),
            packets,
        }
    }

    #[test]
    fn drops_are_tabled_by_kind_with_the_senders_project() {
        let owners = Owners {
            addrs: [("10.0.0.2", "a"), ("10.0.0.3", "b"), ("10.0.0.4", "a")]
                .into_iter()
                .map(|(ip, p)| (ip.parse().unwrap(), p.to_string()))
                .collect(),
            links: [("moat-a1".to_string(), "a".to_string())].into(),
        };
        let counts = [
            count(DropKind::CrossTenant, "10.0.0.2", Some("10.0.0.3"), None, 3),
            count(DropKind::CrossTenant, "10.0.0.4", Some("10.0.0.3"), None, 2),
            count(DropKind::Spoofed, "10.0.0.3", None, Some("moat-a1"), 1),
            count(
                DropKind::EgressDenied,
                "10.0.0.2",
                Some("192.0.2.2"),
                None,
                4,
            ),
        ];
        let text = drop_tables(&owners, &counts);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.contains(&vec!["a", "b", "5"]), "{text}");
        assert!(
            rows.contains(&vec!["a", "moat-a1", "10.0.0.3", "1"]),
            "forged b's address from a's veth: {text}"
        );
        assert!(rows.contains(&vec!["a", "4"]), "{text}");
        let plain = drop_tables(&owners, &counts[..1]);
        assert_eq!(plain.lines().count(), 2, "no empty sections: {plain}");
    }
}
