//! STATUS: can an ADD succeed right now?

use std::fs;

use super::isolation::table_fault;
use super::Ctx;
use crate::firewall::Firewall;
use crate::ipam::{free_count, IpStore};
use crate::netlink::Wiring;
use crate::spec::{CniError, Code, Version};

pub(super) fn status<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
) -> Result<(), CniError> {
    require_1_1(ctx.conf.version, "STATUS")?;
    ctx.conf.require_ranges()?;
    let unavailable = |msg: String| CniError::new(Code::NotAvailable, msg);
    let dir = ctx.conf.state_dir();
    let probe = dir.join(".status-probe");
    fs::create_dir_all(&dir)
        .and_then(|_| fs::write(&probe, b"ok"))
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| {
            unavailable(format!(
                "state directory {} is not writable: {e}",
                dir.display()
            ))
        })?;
    let taken = ctx
        .store
        .reserved()
        .map_err(|e| unavailable(e.to_string()))?;
    for set in &ctx.conf.ranges {
        if free_count(set, &taken) == 0 {
            return Err(unavailable(format!(
                "range {} is exhausted",
                set.ranges[0].subnet
            )));
        }
    }
    // A missing table with no pods is a fresh node: the first ADD makes it.
    // With pods attached it means they run unisolated.
    let pods = ctx.store.list().map_err(|e| unavailable(e.to_string()))?;
    if ctx.conf.isolation.enabled && !pods.is_empty() {
        if let Some(fault) = table_fault(ctx.conf, ctx.firewall)? {
            return Err(CniError::new(
                Code::NotAvailableLimited,
                format!("{fault}: pods are not isolated; run `moat reconcile`"),
            ));
        }
    }
    Ok(())
}

/// STATUS and GC exist from spec 1.1.0 on; an older config asking for them is
/// a version mismatch, as libcni itself treats it.
pub(super) fn require_1_1(v: Version, verb: &str) -> Result<(), CniError> {
    if v < Version::V1_1_0 {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("{verb} needs cniVersion 1.1.0, config has {}", v.as_str()),
        ));
    }
    Ok(())
}
