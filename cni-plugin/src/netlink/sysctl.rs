//! Forwarding sysctls of the node's network namespace (the caller's).

use std::fs;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot set sysctl {path}")]
pub struct SysctlError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Write `1` unless already set: the read is cheaper than the write on the hot path.
fn ensure_one(path: &str) -> Result<(), SysctlError> {
    if fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(path, "1").map_err(|source| SysctlError {
        path: path.into(),
        source,
    })
}

/// Routed pods need the node to forward between its veths.
pub fn enable_forwarding(ipv6: bool) -> Result<(), SysctlError> {
    ensure_one("/proc/sys/net/ipv4/ip_forward")?;
    if ipv6 {
        ensure_one("/proc/sys/net/ipv6/conf/all/forwarding")?;
    }
    Ok(())
}
