//! CHECK: the attachment still looks the way ADD left it.

use std::net::IpAddr;

use super::isolation::listing_fault;
use super::Ctx;
use crate::firewall::{set_contains, Firewall};
use crate::ipam::{Attachment, AttachmentKey, IpStore};
use crate::netlink::wiring::{gateway_for, host_prefix};
use crate::netlink::{Observed, Wiring};
use crate::spec::result::prev_result_ips;
use crate::spec::{CniError, Code};

pub(super) fn check<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
) -> Result<(), CniError> {
    let prev = ctx
        .conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult"))?;
    let prev_ips = prev_result_ips(prev)?;
    let key = AttachmentKey::new(&ctx.inv.container_id, &ctx.inv.ifname);
    let record = ctx
        .store
        .get(&key)
        .map_err(|e| CniError::from_error(Code::Io, &e))?
        .ok_or_else(|| {
            CniError::new(
                Code::UnknownContainer,
                format!("no attachment for {}/{}", key.container_id, key.ifname),
            )
        })?;
    if !record.complete {
        return Err(failed("the ADD for this attachment never finished"));
    }
    for p in &prev_ips {
        if !record.ips.contains(&p.ip()) {
            return Err(failed(&format!(
                "prevResult address {p} is not allocated to this attachment"
            )));
        }
    }
    let netns = ctx.inv.netns.clone().expect("CHECK validated CNI_NETNS");
    let seen = ctx
        .wiring
        .observe(&record.host_ifname, &netns, &key.ifname)
        .map_err(|e| CniError::from_error(Code::Kernel, &e))?;
    compare(&record, &seen).map_err(|m| failed(&m))?;
    if ctx.conf.isolation.enabled {
        check_firewall(ctx, &record)?;
    }
    Ok(())
}

/// The table exists, filters, and knows every address of the pod.
fn check_firewall<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
    record: &Attachment,
) -> Result<(), CniError> {
    let table = &ctx.conf.isolation.table;
    let listing = ctx
        .firewall
        .list_table(table)
        .map_err(|e| CniError::from_error(Code::Firewall, &e))?
        .ok_or_else(|| failed(&format!("nftables table inet {table} is missing")))?;
    if let Some(fault) = listing_fault(ctx.conf, &listing) {
        return Err(failed(&fault));
    }
    for ip in &record.ips {
        let set = if ip.is_ipv4() { "pods4" } else { "pods6" };
        if !set_contains(&listing, set, *ip) {
            return Err(failed(&format!("{ip} is not in the firewall set {set}")));
        }
    }
    Ok(())
}

fn failed(msg: &str) -> CniError {
    CniError::new(Code::CheckFailed, msg.to_string())
}

/// Pure comparison of the record against what the kernel shows.
pub(super) fn compare(record: &Attachment, seen: &Observed) -> Result<(), String> {
    let host = seen
        .host_link
        .as_ref()
        .ok_or(format!("host veth {} is missing", record.host_ifname))?;
    if !host.up {
        return Err(format!("host veth {} is down", record.host_ifname));
    }
    // The firewall finds the pod's tenant by this group.
    if record.group != 0 && host.group != record.group {
        return Err(format!(
            "host veth {} is in interface group {}, not its project's {}",
            record.host_ifname, host.group, record.group
        ));
    }
    let pod = seen
        .pod_link
        .as_ref()
        .ok_or(format!("{} is missing in the pod", record.key.ifname))?;
    if !pod.up {
        return Err(format!("{} is down in the pod", record.key.ifname));
    }
    for ip in &record.ips {
        let want = host_prefix(*ip);
        if !seen.pod_addrs.contains(&want) {
            return Err(format!(
                "address {want} is missing on {}",
                record.key.ifname
            ));
        }
        if !seen.host_routes.contains(&want) {
            return Err(format!(
                "host route to {want} via {} is missing",
                record.host_ifname
            ));
        }
        let default = default_for(*ip);
        if !seen
            .pod_routes
            .iter()
            .any(|(d, g)| d.prefix() == 0 && d.ip() == default && *g == Some(gateway_for(*ip)))
        {
            return Err(format!(
                "default route via {} is missing in the pod",
                gateway_for(*ip)
            ));
        }
    }
    Ok(())
}

fn default_for(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    }
}
