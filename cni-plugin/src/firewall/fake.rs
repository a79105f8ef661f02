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
    /// The rules our table holds, as the applied batches left them.
    pub rules: Vec<Value>,
    /// Other tables of the namespace: name → `list table` answer.
    pub others: BTreeMap<String, Value>,
    /// Transactions (by `what`) that fail, as a flushed or busy table would.
    pub failing: Vec<&'static str>,
    /// Every conntrack sweep (mask, kept value), and where it came in the
    /// transactions (the number applied before it).
    pub swept: Vec<(u32, Option<u32>, usize)>,
}

impl Firewall for FakeFirewall {
    fn apply(&mut self, what: &'static str, batch: &Batch) -> Result<(), FirewallError> {
        if self.failing.contains(&what) {
            return Err(FirewallError::Json {
                table: batch.table.clone(),
                source: serde_json::from_str::<Value>("refused").unwrap_err(),
            });
        }
        for cmd in &batch.cmds {
            if cmd.pointer("/delete/table").is_some() {
                self.rules.clear();
            } else if let Some(chain) = cmd.pointer("/flush/chain/name") {
                self.rules.retain(|r| &r["chain"] != chain);
            } else if let Some(rule) = cmd.pointer("/add/rule") {
                self.rules.push(rule.clone());
            }
        }
        self.applied.push((what, batch.to_json()));
        self.table_present = true;
        Ok(())
    }
    fn list_table(&mut self, table: &str) -> Result<Option<Value>, FirewallError> {
        if let Some(other) = self.others.get(table) {
            return Ok(Some(other.clone()));
        }
        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| serde_json::json!({ "rule": r }))
            .collect();
        Ok(self
            .table_present
            .then(|| serde_json::json!({ "nftables": rules })))
    }
    fn inet_tables(&mut self) -> Result<Vec<String>, FirewallError> {
        Ok(self.others.keys().cloned().collect())
    }
    fn drops(&mut self, _: &str) -> Result<Vec<DropCount>, FirewallError> {
        Ok(Vec::new())
    }
    fn forget_marks(&mut self, mask: u32, keep: Option<u32>) -> Result<usize, FirewallError> {
        self.swept.push((mask, keep, self.applied.len()));
        Ok(0)
    }
}
