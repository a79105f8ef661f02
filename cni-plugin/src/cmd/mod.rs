//! The CNI verbs: orchestration only. Each asks the pure domain for a plan and
//! hands it to the adapters (IPAM store, netlink wiring, firewall).

mod add;
mod check;
mod del;
mod gc;
pub mod isolation;
mod layout;
mod naming;
mod status;
#[cfg(test)]
mod sweep_tests;
mod teardown;
#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::firewall::Firewall;
use crate::ipam::IpStore;
use crate::netlink::Wiring;
use crate::spec::{CniError, Command, Invocation, NetConf};

pub use naming::{host_ifname, link_alias, parse_alias};

/// What a verb needs: its input and the adapters it may use.
pub struct Ctx<'a, S, W, F> {
    pub conf: &'a NetConf,
    pub inv: &'a Invocation,
    pub store: &'a mut S,
    pub wiring: &'a mut W,
    pub firewall: &'a mut F,
}

/// Run one verb; `Ok(Some(json))` is printed on stdout.
pub fn dispatch<S: IpStore, W: Wiring, F: Firewall>(
    ctx: &mut Ctx<S, W, F>,
) -> Result<Option<Value>, CniError> {
    match ctx.inv.command {
        Command::Add => add::add(ctx).map(Some),
        Command::Del => del::del(ctx).map(|_| None),
        Command::Check => check::check(ctx).map(|_| None),
        Command::Status => status::status(ctx).map(|_| None),
        Command::Gc => gc::gc(ctx).map(|_| None),
        Command::Version => unreachable!("VERSION is answered before any config is read"),
    }
}
