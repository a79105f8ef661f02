//! A volume's node publications, all nodes', in one file of fixed-size
//! slots (`pubs/<volume>.tab`). A publish writes its record into free slots
//! and an unpublish zeroes them: neither creates nor removes a file. A file
//! per publication cost a publish pair ~120 µs on ext4 (an inode and a
//! directory entry allocated, then freed, every time), a seventh of it.
//!
//! A slot is a tag byte and payload. A record is its JSON and a newline,
//! spread over as many slots as it needs: the first tagged `R`, the rest
//! `C`; a free slot is tagged 0. JSON has no raw newline, so the newline
//! ends the record. A record without its newline or that does not parse is
//! torn: a writer killed before its mount (callers hold the pool lock, so
//! no reader sees one being written). Readers skip it; the node's start-up
//! reconcile frees it. Like stage records these need no fsync: they
//! describe mounts, which do not outlive the machine.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use super::{io_err, StateError, Store};
use crate::volume::NodePublication;

/// One slot holds a typical record (a kubelet target path is ~150 bytes).
const SLOT: usize = 512;
const START: u8 = b'R';
const MORE: u8 = b'C';

/// A record's place in the table; `record` is None if it is torn.
#[derive(Debug)]
struct Entry {
    first: usize,
    slots: usize,
    record: Option<NodePublication>,
}

impl Entry {
    fn is(&self, node: &str, target: &str) -> bool {
        self.record
            .as_ref()
            .is_some_and(|r| r.node_id == node && r.target == target)
    }
}

fn parse(bytes: &[u8]) -> Vec<Entry> {
    // A slot cut short at the end (a write that extended the file, killed)
    // is left out: the next write there covers it whole.
    let slots: Vec<&[u8]> = bytes.chunks_exact(SLOT).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < slots.len() {
        if slots[i][0] != START {
            i += 1;
            continue;
        }
        let (mut json, mut last) = (Vec::new(), i);
        let complete = loop {
            let payload = &slots[last][1..];
            if let Some(end) = payload.iter().position(|&b| b == b'\n') {
                json.extend_from_slice(&payload[..end]);
                break true;
            }
            json.extend_from_slice(payload);
            if slots.get(last + 1).is_none_or(|s| s[0] != MORE) {
                break false;
            }
            last += 1;
        };
        let record = complete
            .then(|| serde_json::from_slice(&json).ok())
            .flatten();
        out.push(Entry {
            first: i,
            slots: last - i + 1,
            record,
        });
        i = last + 1;
    }
    out
}

fn encode(p: &NodePublication) -> Vec<u8> {
    let mut json = serde_json::to_vec(p).expect("records serialise");
    json.push(b'\n');
    let mut out = Vec::with_capacity(json.len() + SLOT);
    for (k, chunk) in json.chunks(SLOT - 1).enumerate() {
        out.push(if k == 0 { START } else { MORE });
        out.extend_from_slice(chunk);
    }
    out.resize(out.len().div_ceil(SLOT) * SLOT, 0);
    out
}

/// The first slot of `n` free ones in a row (entries are in file order),
/// at the end of the table if no gap is wide enough.
fn free_run(entries: &[Entry], n: usize) -> usize {
    let mut start = 0;
    for e in entries {
        if e.first - start >= n {
            return start;
        }
        start = e.first + e.slots;
    }
    start
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
    // Through `Take`, as records are read in mod.rs: no statx, no lseek.
    let mut bytes = Vec::with_capacity(4 * SLOT);
    file.take(u64::MAX).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// One volume's table, open and read, for one read-modify-write.
pub struct PubTable {
    file: File,
    path: PathBuf,
    entries: Vec<Entry>,
}

impl PubTable {
    /// The publications in it, torn records skipped.
    pub fn records(&self) -> Vec<NodePublication> {
        self.entries
            .iter()
            .filter_map(|e| e.record.clone())
            .collect()
    }

    /// Record a publication, or replace the record of the same node and
    /// target (start-up reconcile confirming one). A new publication is
    /// recorded before its mount.
    pub fn put(mut self, p: &NodePublication) -> Result<(), StateError> {
        let bytes = encode(p);
        let n = bytes.len() / SLOT;
        let same = |e: &Entry| e.is(&p.node_id, &p.target);
        let at = match self.entries.iter().find(|e| same(e) && e.slots == n) {
            Some(e) => e.first,
            None => free_run(&self.entries, n),
        };
        self.file
            .write_all_at(&bytes, (at * SLOT) as u64)
            .map_err(io_err(&self.path))?;
        // Only then the old copy: killed in between, a reader sees the
        // record twice rather than not at all.
        self.free_where(|e| same(e) && e.first != at)?;
        Ok(())
    }

    fn remove(&mut self, node: &str, target: &str) -> Result<(), StateError> {
        self.free_where(|e| e.is(node, target)).map(drop)
    }

    /// Zero the slots of the entries `pick` chooses; returns how many.
    fn free_where(&mut self, pick: impl Fn(&Entry) -> bool) -> Result<usize, StateError> {
        let mut freed = 0;
        for e in self.entries.iter().filter(|e| pick(e)) {
            let zeros = vec![0; e.slots * SLOT];
            self.file
                .write_all_at(&zeros, (e.first * SLOT) as u64)
                .map_err(io_err(&self.path))?;
            freed += 1;
        }
        self.entries.retain(|e| !pick(e));
        Ok(freed)
    }
}

impl Store {
    fn pub_table_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join("pubs").join(format!("{volume_id}.tab"))
    }

    /// The table of `volume_id`, made if need be, open for one
    /// read-modify-write. The caller holds the lock.
    pub fn pub_table(&self, volume_id: &str) -> Result<PubTable, StateError> {
        Ok(self.open_table(volume_id, true)?.expect("made if missing"))
    }

    /// None if the table does not exist and `create` is false.
    fn open_table(&self, volume_id: &str, create: bool) -> Result<Option<PubTable>, StateError> {
        let path = self.pub_table_path(volume_id);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let bytes = read_all(&file).map_err(io_err(&path))?;
        let entries = parse(&bytes);
        Ok(Some(PubTable {
            file,
            path,
            entries,
        }))
    }

    /// Node publications of one volume, on every node; torn records skipped.
    pub fn publications(&self, volume_id: &str) -> Result<Vec<NodePublication>, StateError> {
        let path = self.pub_table_path(volume_id);
        let bytes = match File::open(&path).and_then(|f| read_all(&f)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(parse(&bytes).into_iter().filter_map(|e| e.record).collect())
    }

    /// [`PubTable::put`] in the table of the publication's volume.
    pub fn add_publication(&self, p: &NodePublication) -> Result<(), StateError> {
        self.pub_table(&p.volume_id)?.put(p)
    }

    /// Forget the publication of `volume_id` at `target` on `node`, if
    /// any. The caller holds the lock.
    pub fn remove_publication(
        &self,
        volume_id: &str,
        node: &str,
        target: &str,
    ) -> Result<(), StateError> {
        match self.open_table(volume_id, false)? {
            Some(mut t) => t.remove(node, target),
            None => Ok(()),
        }
    }

    /// The volumes that have a table.
    fn table_ids(&self) -> Result<Vec<String>, StateError> {
        let root = self.dir.join("pubs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&root).map_err(io_err(&root))? {
            let name = entry.map_err(io_err(&root))?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".tab")) {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }

    /// Free the slots of torn records (see the module comment); returns
    /// how many. The caller holds the lock.
    pub fn remove_torn_publications(&self) -> Result<usize, StateError> {
        let mut freed = 0;
        for id in self.table_ids()? {
            if let Some(mut t) = self.open_table(&id, false)? {
                freed += t.free_where(|e| e.record.is_none())?;
            }
        }
        Ok(freed)
    }

    /// Every publication of one node, across volumes.
    pub fn node_publications(&self, node: &str) -> Result<Vec<NodePublication>, StateError> {
        let mut out = Vec::new();
        for id in self.table_ids()? {
            out.extend(
                self.publications(&id)?
                    .into_iter()
                    .filter(|p| p.node_id == node),
            );
        }
        Ok(out)
    }

    pub(super) fn remove_pub_table(&self, volume_id: &str) -> Result<(), StateError> {
        let path = self.pub_table_path(volume_id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "pubtable_tests.rs"]
mod tests;
