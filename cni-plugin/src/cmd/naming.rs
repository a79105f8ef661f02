//! Deterministic host-side names and the link label GC recognises.

use sha2::{Digest, Sha256};

use crate::ipam::AttachmentKey;

/// `moat` + 11 hex digits of sha256(container id, ifname): unique per
/// attachment, stable across retries, 15 characters (the kernel's limit).
pub fn host_ifname(key: &AttachmentKey) -> String {
    let digest = Sha256::digest(format!("{}:{}", key.container_id, key.ifname));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("moat{}", &hex[..11])
}

/// `moat:<network>:<container id>:<ifname>` on the host veth.
pub fn link_alias(network: &str, key: &AttachmentKey) -> String {
    format!(
        "{}{}:{}",
        alias_prefix(network),
        key.container_id,
        key.ifname
    )
}

pub fn alias_prefix(network: &str) -> String {
    format!("moat:{network}:")
}

pub fn parse_alias(network: &str, alias: &str) -> Option<AttachmentKey> {
    let rest = alias.strip_prefix(&alias_prefix(network))?;
    let (cid, ifname) = rest.split_once(':')?;
    Some(AttachmentKey::new(cid, ifname))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_stable_and_distinct() {
        let a = host_ifname(&AttachmentKey::new("c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_ifname(&AttachmentKey::new("c1", "eth0")));
        assert_ne!(a, host_ifname(&AttachmentKey::new("c1", "eth1")));
    }

    #[test]
    fn alias_round_trips() {
        let k = AttachmentKey::new("abc", "net1");
        assert_eq!(parse_alias("n", &link_alias("n", &k)), Some(k));
        assert_eq!(
            parse_alias("other", &link_alias("n", &AttachmentKey::new("a", "b"))),
            None
        );
    }
}
