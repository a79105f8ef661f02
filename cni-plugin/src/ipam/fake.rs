//! In-memory [`IpStore`] for unit tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::store::{Attachment, AttachmentKey, IpStore, StoreError};

#[derive(Debug, Default)]
pub struct FakeStore {
    pub records: BTreeMap<AttachmentKey, Attachment>,
    pub ips: HashMap<IpAddr, AttachmentKey>,
    pub last: HashMap<usize, IpAddr>,
}

impl IpStore for FakeStore {
    fn get(&self, key: &AttachmentKey) -> Result<Option<Attachment>, StoreError> {
        Ok(self.records.get(key).cloned())
    }
    fn list(&self) -> Result<Vec<Attachment>, StoreError> {
        Ok(self.records.values().cloned().collect())
    }
    fn reserved(&self) -> Result<HashSet<IpAddr>, StoreError> {
        Ok(self.ips.keys().copied().collect())
    }
    fn is_reserved(&self, ip: IpAddr) -> Result<bool, StoreError> {
        Ok(self.ips.contains_key(&ip))
    }
    fn last_reserved(&self, set_index: usize) -> Result<Option<IpAddr>, StoreError> {
        Ok(self.last.get(&set_index).copied())
    }
    fn put(&mut self, record: &Attachment) -> Result<(), StoreError> {
        for ip in &record.ips {
            self.ips.insert(*ip, record.key.clone());
        }
        self.records.insert(record.key.clone(), record.clone());
        Ok(())
    }
    fn write_record(&mut self, record: &Attachment) -> Result<(), StoreError> {
        self.records.insert(record.key.clone(), record.clone());
        Ok(())
    }
    fn set_last_reserved(&mut self, set_index: usize, ip: IpAddr) -> Result<(), StoreError> {
        self.last.insert(set_index, ip);
        Ok(())
    }
    fn remove(&mut self, key: &AttachmentKey) -> Result<Option<Attachment>, StoreError> {
        self.ips.retain(|_, k| k != key);
        Ok(self.records.remove(key))
    }
    fn release_orphans(&mut self) -> Result<Vec<IpAddr>, StoreError> {
        let orphans: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|(_, k)| !self.records.contains_key(*k))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &orphans {
            self.ips.remove(ip);
        }
        Ok(orphans)
    }
}
