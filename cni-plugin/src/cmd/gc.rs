//! GC: release everything of this network that the runtime no longer lists.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::isolation::{load_policy, rebuild};
use super::naming::{alias_prefix, parse_alias};
use super::status::require_1_1;
use super::teardown::teardown;
use super::Ctx;
use crate::firewall::Firewall;
use crate::ipam::{AttachmentKey, IpStore};
use crate::lock::StateLock;
use crate::netlink::Wiring;
use crate::spec::{CniError, Code};

pub(super) fn gc<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
) -> Result<(), CniError> {
    require_1_1(ctx.conf.version, "GC")?;
    // Without the list, GC would wipe every pod: refuse rather than guess.
    let valid: BTreeSet<AttachmentKey> = ctx
        .conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "GC needs cni.dev/valid-attachments"))?
        .iter()
        .map(|a| AttachmentKey::new(&a.container_id, &a.ifname))
        .collect();
    let _lock = StateLock::acquire(&ctx.conf.state_dir())
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    let io = |e: crate::ipam::StoreError| CniError::from_error(Code::Io, &e);
    let mut stale: BTreeSet<AttachmentKey> = ctx
        .store
        .list()
        .map_err(io)?
        .into_iter()
        .map(|r| r.key)
        .filter(|k| !valid.contains(k))
        .collect();
    // Labelled host veths without a record: a DEL that lost its record half-way.
    let links = ctx
        .wiring
        .labelled_links(&alias_prefix(&ctx.conf.name))
        .map_err(|e| CniError::from_error(Code::Kernel, &e))?;
    stale.extend(
        links
            .iter()
            .filter_map(|(_, a)| parse_alias(&ctx.conf.name, a))
            .filter(|k| !valid.contains(k)),
    );
    // Collect every failure instead of stopping at the first.
    let mut errors = Vec::new();
    for key in &stale {
        if let Err(e) = teardown(ctx, key) {
            warn!(container_id = %key.container_id, ifname = %key.ifname, error = %e, "gc: teardown failed");
            errors.push(e.to_string());
        }
    }
    let orphans = ctx.store.release_orphans().map_err(io)?;
    // GC is also the periodic repair: the table is remade from what survives
    // (or, with isolation off, taken out).
    let policy = load_policy(ctx.conf)?;
    rebuild(ctx.conf, ctx.store, ctx.firewall, &policy)?;
    info!(
        released = stale.len(),
        orphan_ips = orphans.len(),
        "gc done"
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::Kernel,
            format!("gc could not remove {} attachments", errors.len()),
        )
        .with_details(errors.join("; ")))
    }
}
