//! [`IpStore`] on disk: `ips/<address>` holds the owner's key,
//! `attachments/<cid>:<ifname>.json` the record, `last/<set>` the allocation cursor.
//! Files are replaced atomically without fsync: see [`crate::durable`] for why
//! that is the right strength for state that dies with the machine's veths.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::store::{Attachment, AttachmentKey, IpStore, StoreError};
use crate::durable::{remove_stale_temps, replace, temp_name};

pub struct DiskStore {
    ips: PathBuf,
    records: PathBuf,
    last: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl DiskStore {
    /// Where the attachment records are: every ADD and DEL changes this
    /// directory, so its modification time tells a reader the pods changed.
    pub fn records_dir(state_dir: &Path) -> PathBuf {
        state_dir.join("attachments")
    }

    /// Open (creating if needed) the store under a network's state directory.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let store = Self {
            ips: state_dir.join("ips"),
            records: Self::records_dir(state_dir),
            last: state_dir.join("last"),
        };
        // Made together, `last` last: if it exists, so do the others (one
        // stat per ADD instead of six calls).
        if !store.last.is_dir() {
            for d in [&store.ips, &store.records, &store.last] {
                fs::create_dir_all(d).map_err(io_err("create", d))?;
            }
        }
        Ok(store)
    }

    fn record_path(&self, key: &AttachmentKey) -> PathBuf {
        self.records.join(format!("{}.json", key.file_stem()))
    }

    /// A record a power cut left empty or torn reads as absent (and is
    /// removed): one unreadable file must not stop every ADD. The addresses it
    /// reserved go back at the next GC.
    fn read_record(path: &Path) -> Result<Option<Attachment>, StoreError> {
        match fs::read(path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(r) => Ok(Some(r)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable attachment record dropped");
                    fs::remove_file(path)
                        .or_else(ignore_missing)
                        .map_err(io_err("remove", path))?;
                    Ok(None)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", path)(e)),
        }
    }

    fn ip_owner(&self, ip: &IpAddr) -> Option<String> {
        fs::read_to_string(self.ips.join(ip.to_string())).ok()
    }
}

impl IpStore for DiskStore {
    fn get(&self, key: &AttachmentKey) -> Result<Option<Attachment>, StoreError> {
        Self::read_record(&self.record_path(key))
    }

    fn list(&self) -> Result<Vec<Attachment>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.records).map_err(io_err("list", &self.records))? {
            let path = entry.map_err(io_err("list", &self.records))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.extend(Self::read_record(&path)?);
            }
        }
        Ok(out)
    }

    fn reserved(&self) -> Result<HashSet<IpAddr>, StoreError> {
        let entries = fs::read_dir(&self.ips).map_err(io_err("list", &self.ips))?;
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect())
    }

    fn is_reserved(&self, ip: IpAddr) -> Result<bool, StoreError> {
        let p = self.ips.join(ip.to_string());
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("check", &p)(e)),
        }
    }

    fn last_reserved(&self, set_index: usize) -> Result<Option<IpAddr>, StoreError> {
        let p = self.last.join(set_index.to_string());
        match fs::read_to_string(&p) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// Record first, reservations second: a crash in between leaves a record
    /// whose DEL finds and releases whatever reservations were made, never a
    /// reservation that no DEL can attribute.
    fn put(&mut self, record: &Attachment) -> Result<(), StoreError> {
        self.write_record(record)?;
        let owner = record.key.file_stem();
        for ip in &record.ips {
            reserve(&self.ips.join(ip.to_string()), owner.as_bytes())?;
        }
        Ok(())
    }

    /// A record that fits in the one it updates (ADD marking itself complete)
    /// is overwritten in place, padded with JSON whitespace, in one write of
    /// less than a page: a killed process leaves the old or the new bytes, and
    /// ext4 is not made to flush as on a rename over an existing file.
    fn write_record(&mut self, record: &Attachment) -> Result<(), StoreError> {
        let mut json = serde_json::to_vec(record).expect("record serialises");
        let name = format!("{}.json", record.key.file_stem());
        let path = self.records.join(&name);
        let old_len = fs::metadata(&path).map_or(0, |m| m.len() as usize);
        if old_len >= json.len() && old_len <= IN_PLACE_MAX {
            json.resize(old_len, b' ');
            return fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.write_all_at(&json, 0))
                .map_err(io_err("write", &path));
        }
        replace(&self.records, &name, &json).map_err(io_err("write", &self.records))
    }

    fn set_last_reserved(&mut self, set_index: usize, ip: IpAddr) -> Result<(), StoreError> {
        // The cursor is a hint: losing it in a crash only changes which free
        // address comes next. Overwritten in place at a fixed width: replacing
        // or truncating a file makes ext4 flush it (auto_da_alloc), which cost
        // a third of a millisecond per ADD.
        let p = self.last.join(set_index.to_string());
        let line = format!("{:<width$}", ip.to_string(), width = CURSOR_WIDTH);
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&p)
            .and_then(|f| f.write_all_at(line.as_bytes(), 0))
            .map_err(io_err("write", &p))
    }

    fn remove(&mut self, key: &AttachmentKey) -> Result<Option<Attachment>, StoreError> {
        let path = self.record_path(key);
        // The temp of an ADD killed while writing the record: found by name
        // (see `durable`), not by listing a directory of every attachment.
        let name = format!("{}.json", key.file_stem());
        let tmp = self.records.join(temp_name(&name));
        fs::remove_file(&tmp)
            .or_else(ignore_missing)
            .map_err(io_err("remove", &tmp))?;
        let Some(record) = Self::read_record(&path)? else {
            return Ok(None);
        };
        let owner = key.file_stem();
        // Only drop reservations this attachment still owns; an empty owner is
        // this record's own reservation, cut short by a crash (see `reserve`).
        for ip in &record.ips {
            if self
                .ip_owner(ip)
                .is_some_and(|o| o == owner || o.is_empty())
            {
                let p = self.ips.join(ip.to_string());
                fs::remove_file(&p)
                    .or_else(ignore_missing)
                    .map_err(io_err("release", &p))?;
            }
        }
        fs::remove_file(&path)
            .or_else(ignore_missing)
            .map_err(io_err("remove", &path))?;
        Ok(Some(record))
    }

    fn release_orphans(&mut self) -> Result<Vec<IpAddr>, StoreError> {
        for d in [&self.ips, &self.records, &self.last] {
            remove_stale_temps(d).map_err(io_err("sweep", d))?;
        }
        let mut released = Vec::new();
        for ip in self.reserved()? {
            let Some(owner) = self.ip_owner(&ip) else {
                continue;
            };
            if !self.records.join(format!("{owner}.json")).exists() {
                let p = self.ips.join(ip.to_string());
                fs::remove_file(&p)
                    .or_else(ignore_missing)
                    .map_err(io_err("release", &p))?;
                released.push(ip);
            }
        }
        Ok(released)
    }
}

/// Below a page, one write is all or nothing for a process that is killed.
const IN_PLACE_MAX: usize = 4096;

/// Longest textual IPv6 address: every cursor write covers the last one.
const CURSOR_WIDTH: usize = 39;

/// A reservation file is created, never replaced: the allocator chose a free
/// address under the lock. A crash before the owner is written leaves an
/// empty owner: the record (written first) lists the address, so DEL
/// releases it, and GC releases it like any orphan.
fn reserve(path: &Path, owner: &[u8]) -> Result<(), StoreError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("reserve", path))?;
    f.write_all(owner).map_err(io_err("reserve", path))
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cid: &str, ips: &[&str]) -> Attachment {
        Attachment {
            key: AttachmentKey::new(cid, "eth0"),
            netns: None,
            host_ifname: "moat0".into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            project: "p".into(),
            pod_name: None,
            group: 0,
            host_ifindex: None,
            complete: true,
        }
    }

    /// What an ADD killed while writing its record leaves: DEL finds it by
    /// name, with or without the record.
    #[test]
    fn remove_takes_a_crashed_writers_temp_along() {
        let dir = tempfile::Builder::new()
            .prefix("moat-disk-")
            .tempdir()
            .unwrap();
        let mut s = DiskStore::open(dir.path()).unwrap();
        let r = record("c9", &["10.0.0.9"]);
        let torn = s
            .records
            .join(temp_name(&format!("{}.json", r.key.file_stem())));
        for with_record in [true, false] {
            if with_record {
                s.put(&r).unwrap();
            }
            fs::write(&torn, b"{\"torn").unwrap();
            assert_eq!(s.remove(&r.key).unwrap().is_some(), with_record);
            assert!(!torn.exists(), "with_record={with_record}");
        }
        assert!(s.list().unwrap().is_empty());
        dir.close().unwrap();
    }

    #[test]
    fn put_get_remove_and_orphans() {
        let tmp = tempfile::Builder::new()
            .prefix("moat-disk-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let mut s = DiskStore::open(dir).unwrap();
        let r = Attachment {
            complete: false,
            ..record("c1", &["10.0.0.2", "fd00::2"])
        };
        s.put(&r).unwrap();
        assert_eq!(s.get(&r.key).unwrap().unwrap(), r);
        assert_eq!(s.reserved().unwrap().len(), 2);
        // Completion rewrites the record in place (shorter, padded); a longer
        // record is replaced whole.
        let mut r = Attachment {
            complete: true,
            ..r
        };
        s.write_record(&r).unwrap();
        assert_eq!(s.get(&r.key).unwrap().unwrap(), r);
        r.pod_name = Some("a-much-longer-pod-name-than-before".into());
        s.write_record(&r).unwrap();
        assert_eq!(s.get(&r.key).unwrap().unwrap(), r);
        s.set_last_reserved(0, "10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(s.last_reserved(0).unwrap().unwrap().to_string(), "10.0.0.2");
        // Overwritten in place: a shorter address leaves nothing of a longer one.
        s.set_last_reserved(0, "fd00:1234:5678::abcd".parse().unwrap())
            .unwrap();
        s.set_last_reserved(0, "10.0.0.9".parse().unwrap()).unwrap();
        assert_eq!(s.last_reserved(0).unwrap().unwrap().to_string(), "10.0.0.9");
        // A crash between creating a reservation and writing its owner: DEL
        // still releases it.
        let torn = record("c2", &["10.0.0.3"]);
        s.put(&torn).unwrap();
        fs::write(dir.join("ips/10.0.0.3"), "").unwrap();
        s.remove(&torn.key).unwrap();
        assert!(!s.is_reserved("10.0.0.3".parse().unwrap()).unwrap());
        // A crash between reservation and record leaves an orphan reservation.
        fs::write(dir.join("ips/10.0.0.9"), "gone:eth0").unwrap();
        assert_eq!(
            s.release_orphans().unwrap(),
            vec!["10.0.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(s.remove(&r.key).unwrap().unwrap(), r);
        assert!(s.remove(&r.key).unwrap().is_none());
        assert!(s.reserved().unwrap().is_empty());
        tmp.close().unwrap();
    }
}
