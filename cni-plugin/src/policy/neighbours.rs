//! Other moat networks' tables in the same network namespace. Two networks
//! on one node share the namespace's connection tracking and NFLOG groups:
//! if their fast paths used overlapping conntrack-mark bits, a connection one
//! table accepted could carry the other's current epoch and pass the other's
//! first rule unchecked; if they logged to one group, the one reader of the
//! group would name the wrong network's pods. Both are configuration
//! mistakes a rebuild refuses, read from the other tables themselves (nothing
//! shared to keep in step, and nothing to go stale when a network is removed).

use serde_json::Value;

use super::droplog::{DropKind, LogTarget};
use super::epoch::EPOCH_CHAIN;
use super::ruleset::TableSpec;

/// What another moat table holds of the namespace's shared resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub table: String,
    /// Conntrack-mark bits of its fast path, if it has one.
    pub mask: Option<u32>,
    /// NFLOG groups its drop rules log to.
    pub log_groups: Vec<u16>,
}

/// The claim of table `name` from its `nft -j list table` answer, or `None`
/// if it is not a moat table (no anti-spoofing chain and pod-source set).
pub fn claim(name: &str, listing: &Value) -> Option<Claim> {
    let objects = listing["nftables"].as_array()?;
    let named = |kind: &str, want: &str| {
        objects
            .iter()
            .any(|o| o.pointer(&format!("/{kind}/name")).and_then(Value::as_str) == Some(want))
    };
    if !(named("chain", "antispoof") && named("set", "podsrc4")) {
        return None;
    }
    let mut claim = Claim {
        table: name.to_string(),
        mask: None,
        log_groups: Vec::new(),
    };
    for rule in objects.iter().filter_map(|o| o.get("rule")) {
        for expr in rule["expr"].as_array().into_iter().flatten() {
            if rule["chain"] == EPOCH_CHAIN {
                claim.mask = claim.mask.or_else(|| epoch_mask(expr));
            }
            if let Some(group) = drop_log_group(expr) {
                if !claim.log_groups.contains(&group) {
                    claim.log_groups.push(group);
                }
            }
        }
    }
    Some(claim)
}

/// The mask of `ct mark & MASK == EPOCH`. nft lists a mask of leading bits
/// as a prefix match (`ct mark 0x3000/20`), any other as the `&` it is.
fn epoch_mask(expr: &Value) -> Option<u32> {
    let m = expr.get("match")?;
    if m["left"].pointer("/ct/key").is_some_and(|k| k == "mark") {
        let len = u32::try_from(m["right"].pointer("/prefix/len")?.as_u64()?).ok()?;
        return (1..=32).contains(&len).then(|| u32::MAX << (32 - len));
    }
    let and = m.pointer("/left/&")?.as_array()?;
    if and.first()?.pointer("/ct/key")? != "mark" {
        return None;
    }
    u32::try_from(and.get(1)?.as_u64()?).ok()
}

/// The group of a `log prefix "moat …" group N` statement.
fn drop_log_group(expr: &Value) -> Option<u16> {
    let log = expr.get("log")?;
    let prefix = log["prefix"].as_str()?;
    DropKind::from_prefix(prefix)?;
    u16::try_from(log["group"].as_u64()?).ok()
}

const ANOTHER: &str = "another moat network's, or this one's under an old name: then delete it";

/// Why `spec` cannot share the namespace with the tables of `claims` (ours
/// excluded), one line each; empty if it can.
pub fn conflicts(spec: &TableSpec, claims: &[Claim]) -> Vec<String> {
    let mut out = Vec::new();
    for c in claims.iter().filter(|c| c.table != spec.table) {
        if let Some(theirs) = c.mask {
            if theirs & spec.flow_mark_mask != 0 {
                out.push(format!(
                    "isolation.flowMarkMask {:#010x} overlaps {theirs:#010x} of table inet {} \
                     ({ANOTHER}): give each network its own conntrack-mark bits",
                    spec.flow_mark_mask, c.table
                ));
            }
        }
        if let Some(LogTarget::Group(g)) = spec.log {
            if c.log_groups.contains(&g) {
                out.push(format!(
                    "isolation.logGroup {g} is the group table inet {} ({ANOTHER}) logs to: \
                     a group has one reader, give each network its own",
                    c.table
                ));
            }
        }
    }
    out
}
