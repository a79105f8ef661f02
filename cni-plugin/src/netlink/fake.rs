//! In-memory [`Wiring`] for unit tests of the verbs.

use std::collections::BTreeMap;
use std::path::Path;

use super::wiring::{AttachOutcome, AttachPlan, Observed, Wiring, WiringError};

#[derive(Debug, Default)]
pub struct FakeWiring {
    /// host ifname → plan
    pub links: BTreeMap<String, AttachPlan>,
    /// Fail the next attach after "creating" the veth, as a kernel error would.
    pub fail_attach: bool,
}

impl Wiring for FakeWiring {
    fn attach(&mut self, plan: &AttachPlan) -> Result<AttachOutcome, WiringError> {
        // The kernel refuses a second link of the same name (EEXIST).
        if self.links.contains_key(&plan.host_ifname) {
            return Err(WiringError::Missing {
                ifname: format!("{} (exists)", plan.host_ifname),
            });
        }
        self.links.insert(plan.host_ifname.clone(), plan.clone());
        if self.fail_attach {
            return Err(WiringError::Missing {
                ifname: plan.ifname.clone(),
            });
        }
        Ok(AttachOutcome {
            host_index: 100 + self.links.len() as u32,
            host_mac: "ee:ee:ee:ee:ee:ee".into(),
            pod_mac: "02:00:00:00:00:01".into(),
        })
    }
    fn detach(&mut self, host_ifname: &str) -> Result<bool, WiringError> {
        Ok(self.links.remove(host_ifname).is_some())
    }
    fn observe(&mut self, _: &str, _: &Path, _: &str) -> Result<Observed, WiringError> {
        Ok(Observed::default())
    }
    fn labelled_links(&mut self, prefix: &str) -> Result<Vec<(String, String)>, WiringError> {
        Ok(self
            .links
            .iter()
            .filter(|(_, p)| p.alias.starts_with(prefix))
            .map(|(n, p)| (n.clone(), p.alias.clone()))
            .collect())
    }
}
