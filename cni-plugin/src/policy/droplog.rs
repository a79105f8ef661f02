//! Logging of dropped packets: where the log goes, and the prefix that says
//! why a packet was dropped (the contract between the rules and
//! `moat drops --follow`, which reads the prefix back).

use serde_json::{json, Value};

/// Logged drops per second and rule; more are dropped (and counted) unlogged,
/// so a flood cannot flood the log too.
pub const RATE_PER_SECOND: u32 = 10;
/// Headers are all a reader needs: IPv6 with a TCP header fits.
const SNAPLEN: u32 = 128;

/// Where a dropped packet is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The kernel log (`journalctl -k`), as `moat drop: …` lines. Only the
    /// host's own network namespace logs there unless the
    /// `nf_log_all_netns` sysctl says otherwise.
    Kernel,
    /// An NFLOG group, for `moat drops --follow` or ulogd; works in any
    /// network namespace.
    Group(u16),
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKind {
    /// A pod's packet to a pod of another tenant.
    CrossTenant,
    /// A pod's packet carrying an address that is not its own.
    Spoofed,
    /// A pod's packet leaving the cluster from a project whose egress is denied.
    EgressDenied,
}

const KINDS: [DropKind; 3] = [
    DropKind::CrossTenant,
    DropKind::Spoofed,
    DropKind::EgressDenied,
];

impl DropKind {
    pub fn prefix(self) -> &'static str {
        match self {
            DropKind::CrossTenant => "moat drop: ",
            DropKind::Spoofed => "moat spoof: ",
            DropKind::EgressDenied => "moat egress: ",
        }
    }

    /// The kind whose prefix this is (NFLOG hands it back NUL-free).
    pub fn from_prefix(prefix: &str) -> Option<Self> {
        KINDS.into_iter().find(|k| k.prefix() == prefix)
    }

    pub fn name(self) -> &'static str {
        match self {
            DropKind::CrossTenant => "cross-tenant",
            DropKind::Spoofed => "spoofed",
            DropKind::EgressDenied => "egress-denied",
        }
    }
}

/// The statements of a log rule: rate limit, then log. No verdict: the
/// packet goes on to the drop rule that follows, and is counted there.
pub(super) fn log_statements(target: LogTarget, kind: DropKind) -> Vec<Value> {
    let log = match target {
        LogTarget::Kernel => json!({"prefix": kind.prefix()}),
        LogTarget::Group(g) => json!({"prefix": kind.prefix(), "group": g, "snaplen": SNAPLEN}),
    };
    vec![
        json!({"limit": {"rate": RATE_PER_SECOND, "per": "second"}}),
        json!({ "log": log }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_read_back_to_their_kind() {
        for k in KINDS {
            assert_eq!(DropKind::from_prefix(k.prefix()), Some(k));
        }
        assert_eq!(DropKind::from_prefix("moat drop:"), None);
        assert_eq!(DropKind::from_prefix("other: "), None);
    }

    #[test]
    fn a_group_log_copies_headers_only() {
        let stmts = log_statements(LogTarget::Group(7), DropKind::Spoofed);
        assert_eq!(stmts[0]["limit"]["rate"], RATE_PER_SECOND);
        assert_eq!(stmts[1]["log"]["group"], 7);
        assert_eq!(stmts[1]["log"]["snaplen"], SNAPLEN);
        assert_eq!(stmts[1]["log"]["prefix"], "moat spoof: ");
        let kernel = log_statements(LogTarget::Kernel, DropKind::CrossTenant);
        assert!(kernel[1]["log"].get("group").is_none());
    }
}
