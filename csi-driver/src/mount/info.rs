//! /proc/self/mountinfo, parsed.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub readonly: bool,
    pub fs_type: String,
    pub source: String,
}

/// Fields: id parent major:minor root mount-point options [optional…] - fstype source super-options.
pub fn parse_mountinfo(table: &str) -> Vec<MountEntry> {
    table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                readonly: l.get(5)?.split(',').any(|o| o == "ro"),
                fs_type: r.first()?.to_string(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|o| b[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(o) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_read_only_binds_and_escaped_paths() {
        let table = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                     37 36 7:3 / /var/lib/kubelet/pods/x/mount ro,nosuid,nodev - ext4 /dev/loop3 ro\n";
        let m = parse_mountinfo(table);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert!(!m[0].readonly);
        assert!(m[1].readonly);
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[1].fs_type, "ext4");
    }
}
