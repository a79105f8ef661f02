//! Removing one attachment's host-side state: shared by DEL and GC.

use tracing::info;

use super::isolation::pod_removed;
use super::naming::host_ifname;
use super::Ctx;
use crate::firewall::Firewall;
use crate::ipam::{Attachment, AttachmentKey, IpStore};
use crate::netlink::Wiring;
use crate::spec::{CniError, Code, NetConf};

/// Delete the host veth (the pod end goes with it, or went with its netns),
/// release the addresses and drop the pod from the firewall. Already-gone
/// pieces are fine: DEL is idempotent. The caller holds the state lock.
pub(super) fn teardown<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
    key: &AttachmentKey,
) -> Result<(), CniError> {
    let host = host_ifname(key);
    let removed_link = ctx
        .wiring
        .detach(&host)
        .map_err(|e| CniError::from_error(Code::Kernel, &e))?;
    let record = forget(ctx.conf, ctx.store, ctx.firewall, key)?;
    log(key, &host, record.is_some(), removed_link);
    Ok(())
}

/// The state half of a teardown: release the addresses and drop the pod from
/// the firewall. The caller holds the state lock.
pub(super) fn forget<S: IpStore, F: Firewall>(
    conf: &NetConf,
    store: &mut S,
    firewall: &mut F,
    key: &AttachmentKey,
) -> Result<Option<Attachment>, CniError> {
    let io = |e: crate::ipam::StoreError| CniError::from_error(Code::Io, &e);
    let record = store.remove(key).map_err(io)?;
    if let Some(r) = &record {
        pod_removed(conf, store, firewall, r)?;
    }
    Ok(record)
}

pub(super) fn log(key: &AttachmentKey, host: &str, had_record: bool, removed_link: bool) {
    info!(container_id = %key.container_id, ifname = %key.ifname, host_ifname = %host,
          had_record, removed_link, "torn down");
}
