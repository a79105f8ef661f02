//! The pod's datapath: a veth pair, /32 and /128 addresses, a link-local
//! gateway with a permanent neighbour entry, and host routes to the pod.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use tracing::warn;

use super::ops::{LinkInfoLite, VethRequest};
use super::socket::{Flags, NetlinkSocket, SocketError};
use super::sysctl::disable_ipv6;
use crate::linger::Cleanup;

pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Every host-side veth carries this MAC (as Calico does): the pod's
/// gateway neighbour entry is then known before the veth exists.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

pub fn gateway_for(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        GATEWAY_V4.into()
    } else {
        GATEWAY_V6.into()
    }
}

pub fn host_prefix(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix is valid")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPlan {
    pub host_ifname: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub mtu: u32,
    pub ips: Vec<IpAddr>,
    /// Link alias on the host veth; names network and attachment for GC.
    pub alias: String,
    /// Interface group of the host veth: the firewall finds the pod's tenant by it.
    pub group: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOutcome {
    pub host_index: u32,
    pub host_mac: String,
    pub pod_mac: String,
}

/// What CHECK compares against the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub host_link: Option<LinkInfoLite>,
    pub pod_link: Option<LinkInfoLite>,
    pub pod_addrs: Vec<IpNetwork>,
    /// (destination, gateway) of routes out of the pod interface.
    pub pod_routes: Vec<(IpNetwork, Option<IpAddr>)>,
    /// Destinations routed out of the host veth.
    pub host_routes: Vec<IpNetwork>,
}

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("cannot open netns {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} for {ifname}")]
    Step {
        step: &'static str,
        ifname: String,
        #[source]
        source: SocketError,
    },
    #[error("{ifname} did not appear after creation")]
    Missing { ifname: String },
    #[error("cannot configure {ifname}")]
    Sysctl {
        ifname: String,
        #[source]
        source: super::sysctl::SysctlError,
    },
}

/// The kernel side of an attachment, narrow enough to fake in unit tests.
pub trait Wiring: Send {
    fn attach(&mut self, plan: &AttachPlan) -> Result<AttachOutcome, WiringError>;
    /// Remove the host veth (its peer goes with it); `false` if already gone.
    fn detach(&mut self, host_ifname: &str) -> Result<bool, WiringError>;
    fn observe(
        &mut self,
        host_ifname: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<Observed, WiringError>;
    /// Host links whose alias starts with `prefix`, as (name, alias).
    fn labelled_links(&mut self, prefix: &str) -> Result<Vec<(String, String)>, WiringError>;
}

pub struct KernelWiring {
    host: NetlinkSocket,
    cleanup: Cleanup,
}

fn step<'a>(step: &'static str, ifname: &'a str) -> impl FnOnce(SocketError) -> WiringError + 'a {
    move |source| WiringError::Step {
        step,
        ifname: ifname.to_string(),
        source,
    }
}

impl KernelWiring {
    pub fn new(cleanup: Cleanup) -> Result<Self, WiringError> {
        let host = NetlinkSocket::open().map_err(step("open netlink", "host"))?;
        Ok(Self { host, cleanup })
    }

    fn wire_pod(
        &mut self,
        pod: &mut NetlinkSocket,
        plan: &AttachPlan,
    ) -> Result<[u8; 6], WiringError> {
        let ifn = plan.ifname.as_str();
        let (index, mac) = pod
            .link_index_mac(ifn)
            .map_err(step("find pod link", ifn))?
            .ok_or_else(|| WiringError::Missing { ifname: ifn.into() })?;
        for ip in &plan.ips {
            pod.add_host_address(index, *ip)
                .map_err(step("add pod address", ifn))?;
        }
        pod.set_up(index, None)
            .map_err(step("set pod link up", ifn))?;
        let mut families: Vec<bool> = plan.ips.iter().map(|ip| ip.is_ipv4()).collect();
        families.dedup();
        for v4 in families {
            let gw: IpAddr = if v4 {
                GATEWAY_V4.into()
            } else {
                GATEWAY_V6.into()
            };
            pod.add_neighbour(index, gw, HOST_MAC)
                .map_err(step("add gateway neighbour", ifn))?;
            let default: IpNetwork = if v4 {
                "0.0.0.0/0".parse()
            } else {
                "::/0".parse()
            }
            .expect("literal");
            pod.add_route(default, index, Some(gw), Flags::CreateExcl)
                .map_err(step("add default route", ifn))?;
        }
        Ok(mac)
    }
}

impl Wiring for KernelWiring {
    fn attach(&mut self, plan: &AttachPlan) -> Result<AttachOutcome, WiringError> {
        let ns = File::open(&plan.netns).map_err(|source| WiringError::Netns {
            path: plan.netns.clone(),
            source,
        })?;
        let mut pod =
            NetlinkSocket::open_in(&plan.netns).map_err(step("open pod netlink", &plan.ifname))?;
        let host_if = plan.host_ifname.as_str();
        let req = VethRequest {
            host: host_if,
            peer: &plan.ifname,
            peer_netns: ns.as_raw_fd(),
            mtu: plan.mtu,
            host_mac: HOST_MAC,
            group: plan.group,
        };
        self.host
            .create_veth(&req)
            .map_err(step("create veth", host_if))?;
        if plan.ips.iter().all(IpAddr::is_ipv4) {
            disable_ipv6(host_if).map_err(|source| WiringError::Sysctl {
                ifname: host_if.into(),
                source,
            })?;
        }
        let (host_index, _) = self
            .host
            .link_index_mac(host_if)
            .map_err(step("find host link", host_if))?
            .ok_or_else(|| WiringError::Missing {
                ifname: host_if.into(),
            })?;
        self.host
            .set_up(host_index, Some(&plan.alias))
            .map_err(step("set host link up", host_if))?;
        let pod_mac = self.wire_pod(&mut pod, plan)?;
        for ip in &plan.ips {
            // Replace: the address is ours (reserved under the lock), and the
            // veth of a pod that just left it may still be on its way out.
            self.host
                .add_route(host_prefix(*ip), host_index, None, Flags::Replace)
                .map_err(step("add host route", host_if))?;
            // The host veth's link-local address is still in DAD for a second
            // after creation; a permanent entry needs no ARP/ND at all.
            self.host
                .add_neighbour(host_index, *ip, pod_mac)
                .map_err(step("add pod neighbour", host_if))?;
        }
        // Both ends are up: have the kernel give the host end (up first, so
        // its carrier came with the pod end's) its transmit queue now rather
        // than when its link-watch worker gets to it, which waits for the
        // RTNL lock behind every netns being torn down on the node. Best
        // effort: the worker does it anyway.
        for (socket, ifname) in [(&self.host, host_if), (&pod, plan.ifname.as_str())] {
            if let Err(error) = socket.sync_link_state(ifname) {
                warn!(%ifname, %error, "could not sync the link state");
            }
        }
        Ok(AttachOutcome {
            host_index,
            host_mac: format_mac(&HOST_MAC),
            pod_mac: format_mac(&pod_mac),
        })
    }

    fn detach(&mut self, host_ifname: &str) -> Result<bool, WiringError> {
        match self.cleanup {
            Cleanup::Background => self.host.delete_link_background(host_ifname),
            Cleanup::Wait => self.host.delete_link(host_ifname),
        }
        .map_err(step("delete link", host_ifname))
    }

    fn observe(
        &mut self,
        host_ifname: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<Observed, WiringError> {
        let mut out = Observed {
            host_link: self
                .host
                .link_by_name(host_ifname)
                .map_err(step("find host link", host_ifname))?,
            ..Observed::default()
        };
        if let Some(h) = &out.host_link {
            for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
                let routes = self
                    .host
                    .routes(fam)
                    .map_err(step("dump host routes", host_ifname))?;
                out.host_routes
                    .extend(routes.into_iter().filter(|r| r.2 == h.index).map(|r| r.0));
            }
        }
        let mut pod = NetlinkSocket::open_in(netns).map_err(step("open pod netlink", ifname))?;
        out.pod_link = pod
            .link_by_name(ifname)
            .map_err(step("find pod link", ifname))?;
        if let Some(p) = &out.pod_link {
            out.pod_addrs = pod
                .addresses(p.index)
                .map_err(step("dump pod addresses", ifname))?;
            for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
                let routes = pod.routes(fam).map_err(step("dump pod routes", ifname))?;
                out.pod_routes.extend(
                    routes
                        .into_iter()
                        .filter(|r| r.2 == p.index)
                        .map(|r| (r.0, r.1)),
                );
            }
        }
        Ok(out)
    }

    fn labelled_links(&mut self, prefix: &str) -> Result<Vec<(String, String)>, WiringError> {
        let links = self.host.links().map_err(step("dump links", "host"))?;
        Ok(links
            .into_iter()
            .filter_map(|l| {
                l.alias
                    .filter(|a| a.starts_with(prefix))
                    .map(|a| (l.name, a))
            })
            .collect())
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
