//! ADD: reserve addresses, record the intent, wire the pod, report the result.

use serde_json::Value;
use tracing::{info, warn};

use super::isolation::{pod_changed, pod_removed, pod_wired};
use super::layout::project_group;
use super::naming::{host_ifname, link_alias};
use super::Ctx;
use crate::firewall::Firewall;
use crate::ipam::{allocate, allocate_probing, AllocError, Attachment, AttachmentKey, IpStore};
use crate::lock::StateLock;
use crate::netlink::sysctl::enable_forwarding;
use crate::netlink::wiring::{gateway_for, host_prefix, AttachOutcome};
use crate::netlink::{AttachPlan, Wiring};
use crate::policy::Project;
use crate::spec::result::{CniResult, Interface, IpConfig, RouteConfig};
use crate::spec::{CniError, Code};

/// Candidate addresses looked up one by one before listing them all.
const PROBES: usize = 16;

pub(super) fn add<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
) -> Result<Value, CniError> {
    let record = reserve(ctx)?;
    info!(container_id = %record.key.container_id, ifname = %record.key.ifname,
          project = %record.project, ips = ?record.ips, "reserved");
    let outcome = match wire(ctx, &record) {
        Ok(o) => o,
        Err(e) => {
            rollback(ctx, &record);
            return Err(e);
        }
    };
    if let Err(e) = finish(ctx, &record, outcome.host_index) {
        // The fast path's elements may be in (keyed by the index): out too.
        let wired = Attachment {
            host_ifindex: Some(outcome.host_index),
            ..record
        };
        rollback(ctx, &wired);
        return Err(e);
    }
    Ok(build_result(ctx, &record, &outcome).to_json(ctx.conf.version))
}

/// Under the lock: refuse a duplicate, allocate, and persist the record before
/// any kernel change, so a crash from here on leaves something DEL/GC can undo.
pub(super) fn reserve<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
) -> Result<Attachment, CniError> {
    let key = AttachmentKey::new(&ctx.inv.container_id, &ctx.inv.ifname);
    ctx.conf.require_ranges()?;
    let project = project_of(ctx)?;
    let _lock = StateLock::acquire(&ctx.conf.state_dir())
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    if ctx
        .store
        .get(&key)
        .map_err(|e| CniError::from_error(Code::Io, &e))?
        .is_some()
    {
        return Err(CniError::new(
            Code::AlreadyAttached,
            format!(
                "container {} already has {} on network {}",
                key.container_id, key.ifname, ctx.conf.name
            ),
        ));
    }
    let store_err = |e: crate::ipam::StoreError| CniError::from_error(Code::Io, &e);
    let last = (0..ctx.conf.ranges.len())
        .map(|i| ctx.store.last_reserved(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_err)?;
    // After the cursor the next address is nearly always free: a few lookups
    // instead of listing every reservation. A crowded range, or a lookup
    // error, falls back to the list.
    let mut budget = PROBES;
    let store = &*ctx.store;
    let probed = allocate_probing(&ctx.conf.ranges, &last, |ip| {
        budget = budget.checked_sub(1)?;
        store.is_reserved(ip).ok()
    });
    let allocated = match probed {
        Some(r) => r,
        None => allocate(
            &ctx.conf.ranges,
            &ctx.store.reserved().map_err(store_err)?,
            &last,
        ),
    };
    let ips = allocated.map_err(|e| match e {
        AllocError::Exhausted { .. } => CniError::from_error(Code::Exhausted, &e),
    })?;
    let (group, layout) = project_group(ctx.conf, &*ctx.store, &project)?;
    let record = Attachment {
        host_ifname: host_ifname(&key),
        group,
        host_ifindex: None,
        key,
        netns: ctx.inv.netns.as_ref().map(|p| p.display().to_string()),
        ips,
        project: project.to_string(),
        pod_name: ctx.inv.pod.name.clone(),
        complete: false,
    };
    ctx.store.put(&record).map_err(store_err)?;
    for (i, ip) in record.ips.iter().enumerate() {
        ctx.store.set_last_reserved(i, *ip).map_err(store_err)?;
    }
    // Filter before the veth exists, so the pod's first packet is already policed.
    if let Err(e) = pod_changed(ctx.conf, ctx.store, ctx.firewall, &record, true, layout) {
        let _ = ctx.store.remove(&record.key);
        return Err(e);
    }
    Ok(record)
}

/// The project (tenant unit) of the pod: its Kubernetes namespace, else
/// `args.cni`, else the configured default.
fn project_of<S, W, F>(ctx: &Ctx<S, W, F>) -> Result<Project, CniError> {
    let mut pod = ctx.inv.pod.clone();
    pod.merge_args_cni(&ctx.conf.args_cni);
    let name = pod
        .namespace
        .unwrap_or_else(|| ctx.conf.isolation.default_project.clone());
    Project::new(&name).map_err(|e| CniError::from_error(Code::InvalidEnv, &e))
}

fn wire<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
    record: &Attachment,
) -> Result<AttachOutcome, CniError> {
    enable_forwarding(ctx.conf.has_ipv6()).map_err(|e| CniError::from_error(Code::Kernel, &e))?;
    let plan = AttachPlan {
        host_ifname: record.host_ifname.clone(),
        ifname: record.key.ifname.clone(),
        netns: ctx.inv.netns.clone().expect("ADD validated CNI_NETNS"),
        mtu: ctx.conf.mtu,
        ips: record.ips.clone(),
        alias: link_alias(&ctx.conf.name, &record.key),
        group: record.group,
    };
    ctx.wiring
        .attach(&plan)
        .map_err(|e| CniError::from_error(Code::Kernel, &e))
}

/// Under the lock: the fast path's elements (keyed by the veth's index, so
/// only now), then the record marked complete with the index DEL removes
/// them by. Without them the pod's packets take the full path: a failure
/// here costs speed, not the pod.
pub(super) fn finish<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
    record: &Attachment,
    host_index: u32,
) -> Result<(), CniError> {
    let _lock = StateLock::acquire(&ctx.conf.state_dir())
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    // A DEL or GC of this attachment may have run while it was wired
    // (outside the lock): its addresses are free again, and writing the
    // record back would give them to two pods.
    let io = |e: crate::ipam::StoreError| CniError::from_error(Code::Io, &e);
    if ctx.store.get(&record.key).map_err(io)?.is_none() {
        return Err(CniError::new(
            Code::TryAgainLater,
            "the attachment was deleted while it was being added",
        ));
    }
    let wired = Attachment {
        host_ifindex: Some(host_index),
        ..record.clone()
    };
    let host_ifindex = match pod_wired(ctx.conf, ctx.firewall, &wired) {
        Ok(added) => added.then_some(host_index),
        Err(e) => {
            warn!(ifname = %record.host_ifname, error = %e, "fast path not set up for the pod");
            None
        }
    };
    let done = Attachment {
        complete: true,
        host_ifindex,
        ..record.clone()
    };
    ctx.store.write_record(&done).map_err(io)
}

/// Undo everything a failed ADD did; failures here are logged, the original
/// error is what the runtime must see.
fn rollback<S: IpStore, W: Wiring, F: Firewall>(ctx: &mut Ctx<S, W, F>, record: &Attachment) {
    if let Err(e) = ctx.wiring.detach(&record.host_ifname) {
        warn!(ifname = %record.host_ifname, error = %e, "rollback: cannot remove veth");
    }
    let removed = StateLock::acquire(&ctx.conf.state_dir())
        .map_err(|e| e.to_string())
        .and_then(|_lock| {
            ctx.store.remove(&record.key).map_err(|e| e.to_string())?;
            pod_removed(ctx.conf, ctx.store, ctx.firewall, record).map_err(|e| e.to_string())
        });
    if let Err(e) = removed {
        warn!(container_id = %record.key.container_id, error = %e, "rollback: cannot release addresses");
    }
}

fn build_result<S, W, F>(
    ctx: &Ctx<S, W, F>,
    record: &Attachment,
    outcome: &AttachOutcome,
) -> CniResult {
    let sandbox = ctx.inv.netns.as_ref().map(|p| p.display().to_string());
    let mut routes: Vec<RouteConfig> = Vec::new();
    for ip in &record.ips {
        let dst = if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
            .parse()
            .expect("literal");
        if !routes.iter().any(|r| r.dst == dst) {
            routes.push(RouteConfig {
                dst,
                gw: gateway_for(*ip),
            });
        }
    }
    CniResult {
        interfaces: vec![
            Interface {
                name: record.host_ifname.clone(),
                mac: outcome.host_mac.clone(),
                mtu: ctx.conf.mtu,
                sandbox: None,
            },
            Interface {
                name: record.key.ifname.clone(),
                mac: outcome.pod_mac.clone(),
                mtu: ctx.conf.mtu,
                sandbox,
            },
        ],
        ips: record
            .ips
            .iter()
            .map(|ip| IpConfig {
                address: host_prefix(*ip),
                gateway: gateway_for(*ip),
                interface: 1,
            })
            .collect(),
        routes,
        dns: ctx.conf.dns.clone(),
    }
}
