//! What IPAM persists: one record per attachment, one reservation per address.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// (container id, ifname): the identity of one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    pub fn new(container_id: &str, ifname: &str) -> Self {
        Self {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        }
    }

    /// File-name form. `:` cannot occur in a validated container id or ifname.
    pub fn file_stem(&self) -> String {
        format!("{}:{}", self.container_id, self.ifname)
    }
}

/// Everything needed to undo or re-check an attachment, written before any
/// kernel change so that a crash mid-ADD leaves a record DEL and GC can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub key: AttachmentKey,
    pub netns: Option<String>,
    pub host_ifname: String,
    pub ips: Vec<IpAddr>,
    pub project: String,
    pub pod_name: Option<String>,
    /// Interface group of the host veth (its project's, see
    /// `cmd::isolation::project_group`); 0: none.
    #[serde(default)]
    pub group: u32,
    /// Index of the host veth, once its fast-path elements are in the table
    /// (see `policy::ruleset::fast_elements`); DEL removes them by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifindex: Option<u32>,
    /// False until ADD finished; a false record found later is a crashed ADD.
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Persistent IPAM state. Callers hold the network's [`crate::lock::StateLock`].
pub trait IpStore {
    fn get(&self, key: &AttachmentKey) -> Result<Option<Attachment>, StoreError>;
    fn list(&self) -> Result<Vec<Attachment>, StoreError>;
    /// Every reserved address, including reservations whose record is gone.
    fn reserved(&self) -> Result<HashSet<IpAddr>, StoreError>;
    /// Whether one address is reserved (a lookup, not a listing).
    fn is_reserved(&self, ip: IpAddr) -> Result<bool, StoreError>;
    fn last_reserved(&self, set_index: usize) -> Result<Option<IpAddr>, StoreError>;
    /// Reserve the record's addresses and write the record, durably.
    fn put(&mut self, record: &Attachment) -> Result<(), StoreError>;
    /// Rewrite a record whose addresses are already reserved.
    fn write_record(&mut self, record: &Attachment) -> Result<(), StoreError>;
    fn set_last_reserved(&mut self, set_index: usize, ip: IpAddr) -> Result<(), StoreError>;
    /// Drop the record, its reservations and a half-written copy a crashed
    /// writer left; `None` if there was no record.
    fn remove(&mut self, key: &AttachmentKey) -> Result<Option<Attachment>, StoreError>;
    /// Reservations whose owner record does not exist, and half-written files
    /// (crash leftovers); only safe under the lock.
    fn release_orphans(&mut self) -> Result<Vec<IpAddr>, StoreError>;
}
