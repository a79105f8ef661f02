//! nftables: apply a planned batch to our own table, read it back. Nothing
//! outside our table is ever flushed or changed; other tables are only read,
//! at a rebuild, to find another moat network's (`policy::neighbours`).

mod conntrack;
mod drops;
#[cfg(test)]
pub mod fake;
pub mod nflog;
mod nfnl;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde_json::Value;

pub use drops::{parse_meter, DropCount};

use crate::policy::Batch;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft rejected the {what} transaction for table {table}: {stderr}")]
    Apply {
        what: &'static str,
        table: String,
        stderr: String,
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
    #[error("the {what} transaction for table {table} failed")]
    InProcess {
        what: &'static str,
        table: String,
        #[source]
        source: nfnl::NfnlError,
    },
    #[error("cannot list {what} of table {table}")]
    List {
        what: &'static str,
        table: String,
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
    #[error("cannot clear the fast path's bits in the conntrack marks")]
    Conntrack(#[from] conntrack::ConntrackError),
    #[error("nft listing of table {table} is not valid JSON")]
    Json {
        table: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Our table in the caller's network namespace.
pub trait Firewall {
    /// Apply the batch as one transaction.
    fn apply(&mut self, what: &'static str, batch: &Batch) -> Result<(), FirewallError>;
    /// `nft -j list table inet <table>`, or `None` if the table does not exist.
    fn list_table(&mut self, table: &str) -> Result<Option<Value>, FirewallError>;
    /// The names of the namespace's `inet` tables, ours included.
    fn inet_tables(&mut self) -> Result<Vec<String>, FirewallError>;
    /// Per (source, destination) packet counts of dropped cross-tenant traffic.
    fn drops(&mut self, table: &str) -> Result<Vec<DropCount>, FirewallError>;
    /// Clear `mask`'s bits in every connection's conntrack mark that has
    /// any, except where they equal `keep`; returns how many it cleared.
    fn forget_marks(&mut self, mask: u32, keep: Option<u32>) -> Result<usize, FirewallError>;
}

pub struct NftFirewall {
    program: PathBuf,
    /// Opened on first use and kept: see [`nfnl::Conn`].
    nfnl: Option<nfnl::Conn>,
}

impl NftFirewall {
    /// The runtime may start us with a minimal PATH: look in the usual places.
    pub fn new() -> Self {
        let program = [
            "/usr/sbin/nft",
            "/sbin/nft",
            "/usr/bin/nft",
            "/usr/local/sbin/nft",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nft"));
        Self {
            program,
            nfnl: None,
        }
    }

    /// The in-process nf_tables socket, if this invocation opened one.
    pub fn into_socket(self) -> Option<OwnedFd> {
        self.nfnl.map(nfnl::Conn::into_fd)
    }

    fn list(
        &self,
        what: &'static str,
        table: &str,
        args: &[&str],
    ) -> Result<Option<Value>, FirewallError> {
        match nftables::helper::get_current_ruleset_raw(Some(&self.program), args) {
            Ok(out) => serde_json::from_str(&out)
                .map(Some)
                .map_err(|source| FirewallError::Json {
                    table: table.into(),
                    source,
                }),
            Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file") =>
            {
                Ok(None)
            }
            Err(source) => Err(FirewallError::List {
                what,
                table: table.into(),
                source: Box::new(source),
            }),
        }
    }
}

impl Default for NftFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl Firewall for NftFirewall {
    fn apply(&mut self, what: &'static str, batch: &Batch) -> Result<(), FirewallError> {
        let in_process =
            !batch.elements.is_empty() || !batch.tenant_chains.is_empty() || batch.epoch.is_some();
        if in_process && !batch.structural {
            let err = |source| FirewallError::InProcess {
                what,
                table: batch.table.clone(),
                source,
            };
            if self.nfnl.is_none() {
                self.nfnl = Some(nfnl::Conn::open().map_err(err)?);
            }
            let conn = self.nfnl.as_mut().expect("opened above");
            return conn.apply(batch).map_err(err);
        }
        let payload = batch.to_json().to_string();
        nftables::helper::apply_ruleset_raw(
            &payload,
            Some(&self.program),
            std::iter::empty::<&str>(),
        )
        .map(drop)
        .map_err(|source| {
            let stderr = match &source {
                nftables::helper::NftablesError::NftFailed { stderr, .. } => {
                    stderr.trim().to_string()
                }
                _ => String::new(),
            };
            FirewallError::Apply {
                what,
                table: batch.table.clone(),
                stderr,
                source: Box::new(source),
            }
        })
    }

    fn list_table(&mut self, table: &str) -> Result<Option<Value>, FirewallError> {
        self.list("table", table, &["list", "table", "inet", table])
    }

    fn inet_tables(&mut self) -> Result<Vec<String>, FirewallError> {
        let listing = self.list("tables", "*", &["list", "tables", "inet"])?;
        Ok(listing
            .as_ref()
            .and_then(|l| l["nftables"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|o| o.pointer("/table/name").and_then(Value::as_str))
            .map(String::from)
            .collect())
    }

    fn drops(&mut self, table: &str) -> Result<Vec<DropCount>, FirewallError> {
        let mut out = Vec::new();
        for (meter, kind) in crate::policy::ruleset::DROP_METERS {
            for fam in ["4", "6"] {
                let name = format!("{meter}{fam}");
                if let Some(v) =
                    self.list("meter", table, &["list", "meter", "inet", table, &name])?
                {
                    out.extend(parse_meter(&v, kind));
                }
            }
        }
        Ok(out)
    }

    fn forget_marks(&mut self, mask: u32, keep: Option<u32>) -> Result<usize, FirewallError> {
        Ok(conntrack::forget_bits(mask, keep)?)
    }
}

/// Count the rules in a `list table` JSON answer.
pub fn rule_count(listing: &Value) -> usize {
    listing["nftables"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|o| o.get("rule").is_some()).count())
}

/// Whether `ip` is an element of `set` in a `list table` JSON answer.
pub fn set_contains(listing: &Value, set: &str, ip: IpAddr) -> bool {
    let want = ip.to_string();
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| {
            o.pointer("/set/name").and_then(Value::as_str) == Some(set)
                && o.pointer("/set/elem")
                    .and_then(Value::as_array)
                    .is_some_and(|e| e.iter().any(|x| x.as_str() == Some(&want)))
        })
}
