//! Names from the CO become ids of our own making; anything that is not such
//! an id is refused before it can reach the filesystem (`../../etc` included).

use sha2::{Digest, Sha256};

const HEX_LEN: usize = 24;

/// A deterministic id: the same CreateVolume name always maps to one id, so
/// a retried create after a crash finds what the first attempt left.
pub fn derive(prefix: &str, name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{}", &hex[..HEX_LEN])
}

pub fn is_valid(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|h| {
            h.len() == HEX_LEN
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

/// A CO-supplied name: the spec bans control characters; we cap the length.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(|c| c.is_control())
}

/// A target or staging path: absolute, no `..`, no NUL.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('\0')
        && path.len() <= 4096
        && !path.split('/').any(|c| c == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_derived_and_validated() {
        let id = derive("vol", "pvc-1");
        assert_eq!(id, derive("vol", "pvc-1"));
        assert_ne!(id, derive("vol", "pvc-2"));
        assert!(is_valid("vol", &id));
        for bad in [
            "../../etc",
            "vol-../../etc",
            "vol-",
            "snap-0123",
            &id.to_uppercase(),
            &format!("{id}/x"),
        ] {
            assert!(!is_valid("vol", bad), "{bad}");
        }
        assert!(!is_valid("snap", &id));
    }

    #[test]
    fn names_and_paths() {
        assert!(valid_name("pvc-1f2e"));
        assert!(!valid_name(""));
        assert!(!valid_name("a\u{7}b"));
        assert!(valid_path("/var/lib/kubelet/pods/x/volumes/y/mount"));
        assert!(!valid_path("relative/path"));
        assert!(!valid_path("/var/lib/../../etc"));
    }
}
