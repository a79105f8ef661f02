//! DEL: idempotent; works with the netns gone or CNI_NETNS empty.

use super::naming::host_ifname;
use super::teardown::{forget, log};
use super::Ctx;
use crate::firewall::Firewall;
use crate::ipam::{AttachmentKey, IpStore};
use crate::lock::StateLock;
use crate::netlink::Wiring;
use crate::spec::{CniError, Code};

/// The veth delete (until the kernel has unlisted the pair) and the state
/// work (IPAM files, one nf_tables transaction) run side by side. The veth
/// needs no lock (its name is this attachment's alone), and an ADD that gets
/// the address before the old veth is gone replaces the host route instead of
/// failing.
pub(super) fn del<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
) -> Result<(), CniError> {
    let key = AttachmentKey::new(&ctx.inv.container_id, &ctx.inv.ifname);
    let host = host_ifname(&key);
    let (conf, store, firewall, wiring) = (
        ctx.conf,
        &mut *ctx.store,
        &mut *ctx.firewall,
        &mut *ctx.wiring,
    );
    let (link, state) = std::thread::scope(|s| {
        let link = s.spawn(|| wiring.detach(&host));
        let state = StateLock::acquire(&conf.state_dir())
            .map_err(|e| CniError::from_error(Code::Io, &e))
            .and_then(|_lock| forget(conf, store, firewall, &key));
        (link.join(), state)
    });
    let removed_link = link
        .map_err(|_| CniError::new(Code::Kernel, "veth delete panicked"))?
        .map_err(|e| CniError::from_error(Code::Kernel, &e))?;
    let record = state?;
    log(&key, &host, record.is_some(), removed_link);
    Ok(())
}
