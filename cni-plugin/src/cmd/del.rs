//! DEL: idempotent; works with the netns gone or CNI_NETNS empty.

use super::teardown::teardown;
use super::Ctx;
use crate::firewall::Firewall;
use crate::ipam::{AttachmentKey, IpStore};
use crate::lock::StateLock;
use crate::netlink::Wiring;
use crate::spec::{CniError, Code};

pub(super) fn del<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
) -> Result<(), CniError> {
    let key = AttachmentKey::new(&ctx.inv.container_id, &ctx.inv.ifname);
    let _lock = StateLock::acquire(&ctx.conf.state_dir())
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    teardown(ctx, &key)
}
