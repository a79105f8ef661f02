//! A recording [`Firewall`] for unit tests.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{DropCount, Firewall, FirewallError};
use crate::policy::Batch;

#[derive(Debug, Default)]
pub struct FakeFirewall {
    /// (what, JSON) of every applied batch.
    pub applied: Vec<(&'static str, Value)>,
    pub table_present: bool,
    /// Other tables of the namespace: name → `list table` answer.
    pub others: BTreeMap<String, Value>,
    /// Transactions (by `what`) that fail, as a flushed or busy table would.
    pub failing: Vec<&'static str>,
}

impl Firewall for FakeFirewall {
    fn apply(&mut self, what: &'static str, batch: &Batch) -> Result<(), FirewallError> {
        if self.failing.contains(&what) {
            return Err(FirewallError::Json {
                table: batch.table.clone(),
                source: serde_json::from_str::<Value>("refused").unwrap_err(),
            });
        }
        self.applied.push((what, batch.to_json()));
        self.table_present = true;
        Ok(())
    }
    fn list_table(&mut self, table: &str) -> Result<Option<Value>, FirewallError> {
        if let Some(other) = self.others.get(table) {
            return Ok(Some(other.clone()));
        }
        Ok(self
            .table_present
            .then(|| serde_json::json!({"nftables": []})))
    }
    fn inet_tables(&mut self) -> Result<Vec<String>, FirewallError> {
        Ok(self.others.keys().cloned().collect())
    }
    fn drops(&mut self, _: &str) -> Result<Vec<DropCount>, FirewallError> {
        Ok(Vec::new())
    }
}
