//! Sysctls of the node's network namespace (the caller's).

use std::fs;
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot set sysctl {path}")]
pub struct SysctlError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Write `1` unless already set: the read is cheaper than the write on the
/// hot path, and one `read` of a few bytes is all a flag file needs.
fn ensure_one(path: &str) -> Result<(), SysctlError> {
    let mut buf = [0u8; 4];
    let set = fs::File::open(path)
        .and_then(|mut f| f.read(&mut buf))
        .is_ok_and(|n| buf[..n].trim_ascii() == b"1");
    if set {
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

/// An IPv4-only host veth needs no IPv6 at all. Left on, bringing it up adds
/// a link-local address and per-link routes that share one prefix with every
/// other veth's, and the kernel's insertion walks them all: at 1000 pods that
/// alone cost 1.1 ms of each ADD. A kernel without IPv6 has no such file.
pub fn disable_ipv6(ifname: &str) -> Result<(), SysctlError> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match fs::write(&path, "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SysctlError {
            path: path.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}
