//! Removing one attachment's host-side state: shared by DEL and GC.

use tracing::info;

use super::naming::host_ifname;
use crate::ipam::{AttachmentKey, IpStore};
use crate::netlink::Wiring;
use crate::spec::{CniError, Code};

/// Delete the host veth (the pod end goes with it, or went with its netns)
/// and release the addresses. Already-gone pieces are fine: DEL is idempotent.
/// The caller holds the state lock.
pub(super) fn teardown<S: IpStore, W: Wiring>(
    store: &mut S,
    wiring: &mut W,
    key: &AttachmentKey,
) -> Result<(), CniError> {
    let record = store
        .get(key)
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    let host = record
        .as_ref()
        .map_or_else(|| host_ifname(key), |r| r.host_ifname.clone());
    let removed_link = wiring
        .detach(&host)
        .map_err(|e| CniError::from_error(Code::Kernel, &e))?;
    store
        .remove(key)
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    // A writer killed mid-ADD may have left a temp file; under the lock none is live.
    store
        .sweep()
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    info!(container_id = %key.container_id, ifname = %key.ifname, host_ifname = %host,
          had_record = record.is_some(), removed_link, "torn down");
    Ok(())
}
