//! Removing one attachment's host-side state: shared by DEL and GC.

use tracing::info;

use super::isolation::pod_changed;
use super::naming::host_ifname;
use super::Ctx;
use crate::firewall::Firewall;
use crate::ipam::{AttachmentKey, IpStore};
use crate::netlink::Wiring;
use crate::spec::{CniError, Code};

/// Delete the host veth (the pod end goes with it, or went with its netns),
/// release the addresses and drop the pod from the firewall. Already-gone
/// pieces are fine: DEL is idempotent. The caller holds the state lock.
pub(super) fn teardown<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
    key: &AttachmentKey,
) -> Result<(), CniError> {
    let record = ctx
        .store
        .get(key)
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    let host = record
        .as_ref()
        .map_or_else(|| host_ifname(key), |r| r.host_ifname.clone());
    let removed_link = ctx
        .wiring
        .detach(&host)
        .map_err(|e| CniError::from_error(Code::Kernel, &e))?;
    ctx.store
        .remove(key)
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    // A writer killed mid-ADD may have left a temp file; under the lock none is live.
    ctx.store
        .sweep()
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    if let Some(r) = &record {
        pod_changed(ctx.conf, ctx.store, ctx.firewall, r, false)?;
    }
    info!(container_id = %key.container_id, ifname = %key.ifname, host_ifname = %host,
          had_record = record.is_some(), removed_link, "torn down");
    Ok(())
}
