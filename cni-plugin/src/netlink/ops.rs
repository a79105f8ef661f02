//! Typed rtnetlink operations on a [`NetlinkSocket`]. Messages are built with
//! rtnetlink's builders and sent through our synchronous socket.

use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use rtnetlink::{AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::socket::{Flags, NetlinkSocket, SocketError};

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;

/// What we read back about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfoLite {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub alias: Option<String>,
    pub up: bool,
    pub is_veth: bool,
    pub group: u32,
}

pub struct VethRequest<'a> {
    pub host: &'a str,
    pub peer: &'a str,
    pub peer_netns: RawFd,
    pub mtu: u32,
    pub host_mac: [u8; 6],
    pub group: u32,
}

impl NetlinkSocket {
    /// Create a veth pair whose peer is born inside `peer_netns`.
    pub fn create_veth(&mut self, req: &VethRequest) -> Result<(), SocketError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(req.peer.to_string())
            .mtu(req.mtu)
            .setns_by_fd(req.peer_netns)
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(req.host.to_string())
            .mtu(req.mtu)
            .address(req.host_mac.to_vec())
            .link_group(req.group)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.request("create veth", Rt::NewLink(msg), Flags::CreateExcl)
            .map(drop)
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfoLite>, SocketError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request("get link", Rt::GetLink(msg), Flags::Ack) {
            Ok(replies) => Ok(replies.into_iter().find_map(link_lite)),
            Err(e) if matches!(e.errno(), Some(ENODEV) | Some(ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Index and MAC of a link in this socket's netns, by two ioctls on the
    /// socket: no netlink round trip and no 1.5 kB link message to decode
    /// (~0.1 ms an ADD, twice). `Ok(None)` if there is no such link.
    pub fn link_index_mac(&self, name: &str) -> Result<Option<(u32, [u8; 6])>, SocketError> {
        let what = "link lookup";
        let mut req = ifreq(what, name)?;
        match self.ioctl(libc::SIOCGIFINDEX, &mut req) {
            Err(e) if e.raw_os_error() == Some(ENODEV) => return Ok(None),
            r => r.map_err(|source| SocketError::Request { what, source })?,
        }
        // SAFETY: SIOCGIFINDEX filled the index member.
        let index = unsafe { req.ifr_ifru.ifru_ifindex } as u32;
        self.ioctl(libc::SIOCGIFHWADDR, &mut req)
            .map_err(|source| SocketError::Request { what, source })?;
        // SAFETY: SIOCGIFHWADDR filled the hardware address member.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data) {
            *m = d as u8;
        }
        Ok(Some((index, mac)))
    }

    pub fn links(&mut self) -> Result<Vec<LinkInfoLite>, SocketError> {
        let replies = self.request(
            "dump links",
            Rt::GetLink(LinkMessage::default()),
            Flags::Dump,
        )?;
        Ok(replies.into_iter().filter_map(link_lite).collect())
    }

    /// Bring a link up, optionally labelling it (the label is how GC recognises ours).
    pub fn set_up(&mut self, index: u32, alias: Option<&str>) -> Result<(), SocketError> {
        let mut b = LinkUnspec::new_with_index(index).up();
        if let Some(a) = alias {
            b = b.alias(a.to_string());
        }
        self.request("set link up", Rt::SetLink(b.build()), Flags::Ack)
            .map(drop)
    }

    /// Read `name`'s link state as ethtool does (GLINK); the value is not
    /// used, the read is the point: the kernel first runs the link's pending
    /// link-watch event, which is what gives a veth its transmit queue after
    /// both ends came up. Until that event runs (a kworker, soon, later on a
    /// loaded node) the queue is the kernel's noop qdisc, which drops: a
    /// pod's first packets after ADD returned could be lost.
    pub fn sync_link_state(&self, name: &str) -> Result<(), SocketError> {
        let what = "link state";
        let mut req = ifreq(what, name)?;
        // struct ethtool_value of <linux/ethtool.h>, which libc lacks.
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        const ETHTOOL_GLINK: u32 = 0x0000_000a;
        let mut value = EthtoolValue {
            cmd: ETHTOOL_GLINK,
            data: 0,
        };
        // The kernel reads and writes `value` through this pointer during the
        // ioctl below, while `value` lives.
        req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        self.ioctl(libc::SIOCETHTOOL, &mut req)
            .map_err(|source| SocketError::Request { what, source })
    }

    /// Delete a link by name; `Ok(false)` if it was already gone.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, SocketError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request("delete link", Rt::DelLink(msg), Flags::Ack) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.errno(), Some(ENODEV) | Some(ENOENT)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Add a host address (/32 or /128) without duplicate address detection,
    /// so it is usable at once.
    pub fn add_host_address(&mut self, index: u32, ip: IpAddr) -> Result<(), SocketError> {
        let mut msg = match ip {
            IpAddr::V4(v4) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                .index(index)
                .address(v4, 32)
                .build(),
            IpAddr::V6(v6) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(v6, 128)
                .build(),
        };
        if ip.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request("add address", Rt::NewAddress(msg), Flags::CreateExcl)
            .map(drop)
    }

    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNetwork>, SocketError> {
        let replies = self.request(
            "dump addresses",
            Rt::GetAddress(AddressMessage::default()),
            Flags::Dump,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                Rt::NewAddress(a) if a.header.index == index => {
                    let prefix = a.header.prefix_len;
                    a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(ip) => IpNetwork::new(*ip, prefix).ok(),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Route `dst` out of `oif`, via `gw` if given (on-link: the gateway is a
    /// link-local address that no subnet covers).
    pub fn add_route(
        &mut self,
        dst: IpNetwork,
        oif: u32,
        gw: Option<IpAddr>,
        flags: Flags,
    ) -> Result<(), SocketError> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .map_err(|e| SocketError::Decode {
                what: "add route",
                detail: e.to_string(),
            })?
            .output_interface(oif);
        b = match gw {
            Some(gw) => b
                .gateway(gw)
                .map_err(|e| SocketError::Decode {
                    what: "add route",
                    detail: e.to_string(),
                })?
                .onlink(),
            None => b.scope(RouteScope::Link),
        };
        self.request("add route", Rt::NewRoute(b.build()), flags)
            .map(drop)
    }

    /// Routes of the main table as (destination, gateway, output interface).
    pub fn routes(
        &mut self,
        family: AddressFamily,
    ) -> Result<Vec<(IpNetwork, Option<IpAddr>, u32)>, SocketError> {
        let mut q = RouteMessage::default();
        q.header.address_family = family;
        let replies = self.request("dump routes", Rt::GetRoute(q), Flags::Dump)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| route_lite(m, family))
            .collect())
    }

    /// A permanent neighbour entry: the pod never has to resolve its gateway.
    pub fn add_neighbour(
        &mut self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), SocketError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request("add neighbour", Rt::NewNeighbour(msg), Flags::CreateExcl)
            .map(drop)
    }
}

/// An ifreq naming `name`, refused (for `what`) if the kernel could not hold
/// the name.
fn ifreq(what: &'static str, name: &str) -> Result<libc::ifreq, SocketError> {
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(SocketError::Decode {
            what,
            detail: format!("interface name {name:?} too long or not a name"),
        });
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn link_lite(m: Rt) -> Option<LinkInfoLite> {
    let Rt::NewLink(l) = m else { return None };
    let mut out = LinkInfoLite {
        index: l.header.index,
        name: String::new(),
        mac: Vec::new(),
        alias: None,
        up: l.header.flags.contains(LinkFlags::Up),
        is_veth: false,
        group: 0,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n,
            LinkAttribute::Address(m) => out.mac = m,
            LinkAttribute::IfAlias(s) => out.alias = Some(s),
            LinkAttribute::Group(g) => out.group = g,
            LinkAttribute::LinkInfo(infos) => {
                out.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    Some(out)
}

fn route_lite(m: Rt, family: AddressFamily) -> Option<(IpNetwork, Option<IpAddr>, u32)> {
    let Rt::NewRoute(r) = m else { return None };
    if r.header.table != 254 && r.header.table != 0 {
        return None;
    }
    let zero: IpAddr = if family == AddressFamily::Inet6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let (mut dst, mut gw, mut oif) = (zero, None, 0);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(ad) => dst = route_ip(ad)?,
            RouteAttribute::Gateway(ad) => gw = route_ip(ad),
            RouteAttribute::Oif(i) => oif = *i,
            _ => {}
        }
    }
    Some((
        IpNetwork::new(dst, r.header.destination_prefix_length).ok()?,
        gw,
        oif,
    ))
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::ifreq;

    #[test]
    fn ifreq_takes_kernel_names_only() {
        let r = ifreq("t", "moat0123456789a").expect("15 bytes fit");
        assert_eq!(r.ifr_name[14] as u8, b'a');
        assert_eq!(r.ifr_name[15], 0, "NUL-terminated");
        assert!(ifreq("t", "moat0123456789ab").is_err(), "16 bytes do not");
        assert!(ifreq("t", "a\0b").is_err());
    }
}
