//! `moat drops --follow`: dropped packets as the rules log them, one line
//! each, with the projects at both ends.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

use super::report::Owners;
use crate::firewall::nflog::{Delivery, DropFeed, LoggedPacket};
use crate::policy::droplog::DropKind;
use crate::spec::{CniError, Code};

/// An address the owners do not name, with the state unchanged, sends us
/// back to the store at most this often: a flood from a pod that is gone, or
/// from outside the cluster, must not rescan it per packet.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What a log line says of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp`, `icmp`, … with ports or the ICMP type.
    pub what: String,
    ports: Option<(u16, u16)>,
}

impl Flow {
    fn end(&self, ip: IpAddr, port: Option<u16>) -> String {
        match port {
            Some(p) => SocketAddr::new(ip, p).to_string(),
            None => ip.to_string(),
        }
    }
}

/// The addresses and protocol of a logged packet's first bytes (a logged
/// packet may be cut short: the rules copy only its headers).
pub fn decode(payload: &[u8]) -> Option<Flow> {
    let sliced = LaxSlicedPacket::from_ip(payload).ok()?;
    let net = sliced.net.as_ref()?;
    let (src, dst) = match net {
        LaxNetSlice::Ipv4(s) => {
            let h = s.header();
            (h.source_addr().into(), h.destination_addr().into())
        }
        LaxNetSlice::Ipv6(s) => {
            let h = s.header();
            (h.source_addr().into(), h.destination_addr().into())
        }
        LaxNetSlice::Arp(_) => return None,
    };
    let number = net.ip_payload_ref()?.ip_number;
    let name = match number.keyword_str() {
        Some("IPv6-ICMP") => "icmpv6".to_string(),
        Some(k) => k.to_ascii_lowercase(),
        None => format!("proto {}", number.0),
    };
    let (ports, what) = match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => (Some((t.source_port(), t.destination_port())), name),
        Some(TransportSlice::Udp(u)) => (Some((u.source_port(), u.destination_port())), name),
        Some(TransportSlice::Icmpv4(i)) => (None, format!("{name} type {}", i.type_u8())),
        Some(TransportSlice::Icmpv6(i)) => (None, format!("{name} type {}", i.type_u8())),
        _ => (None, name),
    };
    Some(Flow {
        src,
        dst,
        what,
        ports,
    })
}

/// The sender's project: its pod's, when the packet came in on a pod's veth
/// (a forged source address would name another), else its address's.
fn sender<'a>(owners: &'a Owners, indev: Option<&str>, src: &IpAddr) -> Option<&'a String> {
    indev
        .and_then(|l| owners.links.get(l))
        .or_else(|| owners.addrs.get(src))
}

/// One line: when, why, and who to whom (`-` for an address outside the
/// cluster or of a pod already gone).
pub fn line(
    at: SystemTime,
    kind: Option<DropKind>,
    flow: &Flow,
    indev: Option<&str>,
    owners: &Owners,
) -> String {
    let name = |p: Option<&String>| p.map_or("-", String::as_str).to_string();
    format!(
        "{} {:<13} {} {} -> {} {} {}",
        humantime::format_rfc3339_seconds(at),
        kind.map_or("dropped", DropKind::name),
        name(sender(owners, indev, &flow.src)),
        flow.end(flow.src, flow.ports.map(|p| p.0)),
        name(owners.addrs.get(&flow.dst)),
        flow.end(flow.dst, flow.ports.map(|p| p.1)),
        flow.what,
    )
}

/// Who owns which address and veth.
pub trait OwnerSource {
    /// The owners as the node's state has them now; `missing`: the caller
    /// met an address or veth the last answer did not name.
    fn owners(&mut self, missing: bool) -> Result<&Owners, CniError>;
}

/// Owners read from the node's state, read again when the watched paths
/// changed (every ADD and DEL changes the records directory, a peers sync
/// the peers file) or, for a name still missing, once a second passed
/// (modification times are coarse).
pub struct StateOwners<L> {
    load: L,
    watched: Vec<PathBuf>,
    stamp: Option<Vec<Option<SystemTime>>>,
    loaded_at: Instant,
    owners: Owners,
}

impl<L: FnMut() -> Result<Owners, CniError>> StateOwners<L> {
    pub fn new(load: L, watched: Vec<PathBuf>) -> Self {
        Self {
            load,
            watched,
            stamp: None,
            loaded_at: Instant::now(),
            owners: Owners::default(),
        }
    }
}

impl<L: FnMut() -> Result<Owners, CniError>> OwnerSource for StateOwners<L> {
    fn owners(&mut self, missing: bool) -> Result<&Owners, CniError> {
        let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stamp: Vec<_> = self.watched.iter().map(modified).collect();
        let changed = self.stamp.as_ref() != Some(&stamp);
        if changed || (missing && self.loaded_at.elapsed() >= REFRESH_EVERY) {
            self.owners = (self.load)()?;
            self.stamp = Some(stamp);
            self.loaded_at = Instant::now();
        }
        Ok(&self.owners)
    }
}

/// Print logged drops until `count` were printed (forever without one).
pub fn follow(
    feed: &mut dyn DropFeed,
    source: &mut dyn OwnerSource,
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), CniError> {
    let mut printed = 0;
    let write_err = |e: std::io::Error| CniError::from_error(Code::Io, &e);
    while count != Some(printed) {
        let delivery = feed
            .next()
            .map_err(|e| CniError::from_error(Code::Firewall, &e))?;
        let packets = match delivery {
            Delivery::Packets(p) => p,
            Delivery::Lost => {
                writeln!(out, "(log messages lost: this reader fell behind)").map_err(write_err)?;
                continue;
            }
        };
        for LoggedPacket {
            prefix,
            payload,
            indev,
        } in packets
        {
            let Some(flow) = decode(&payload) else {
                continue;
            };
            let indev = indev.as_deref();
            let names = |o: &Owners| {
                sender(o, indev, &flow.src).is_some() && o.addrs.contains_key(&flow.dst)
            };
            let mut known = source.owners(false)?;
            if !names(known) {
                known = source.owners(true)?;
            }
            let kind = DropKind::from_prefix(&prefix);
            let text = line(SystemTime::now(), kind, &flow, indev, known);
            writeln!(out, "{text}").map_err(write_err)?;
            printed += 1;
            if count == Some(printed) {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
