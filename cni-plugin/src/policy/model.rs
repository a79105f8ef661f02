//! Projects and tenants: who may talk to whom. Pure data, persisted as JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("project name {0:?} is not a DNS label (a-z, 0-9, '-', at most 63)")]
    InvalidProject(String),
    #[error("join needs at least two projects")]
    JoinTooFew,
}

/// A Kubernetes namespace name, validated once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Project(String);

impl Project {
    pub fn new(s: &str) -> Result<Self, PolicyError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(PolicyError::InvalidProject(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Project {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Project> for String {
    fn from(p: Project) -> Self {
        p.0
    }
}

impl std::fmt::Display for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The operator's policy. Every project not named in a group is its own tenant.
/// The same JSON can be shipped as a ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
// Unknown keys are refused: a misspelt `egressDeny` would otherwise leave
// egress open without a word.
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Policy {
    /// Projects that reach and are reachable by every pod.
    pub global: BTreeSet<Project>,
    /// Projects joined into one tenant; each inner set has two or more members.
    pub groups: Vec<BTreeSet<Project>>,
    /// Projects whose pods may not reach addresses outside the cluster.
    pub egress_deny: BTreeSet<Project>,
}

/// How a project's pods are treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Global,
    /// Member of the tenant with this id (its alphabetically first project).
    Tenant(Project),
}

impl Policy {
    pub fn with_global(global: impl IntoIterator<Item = Project>) -> Self {
        Self {
            global: global.into_iter().collect(),
            ..Self::default()
        }
    }

    pub fn role(&self, p: &Project) -> Role {
        if self.global.contains(p) {
            return Role::Global;
        }
        let group = self.groups.iter().find(|g| g.contains(p));
        Role::Tenant(group.and_then(|g| g.first()).unwrap_or(p).clone())
    }

    /// Join projects (and everything already joined to them) into one tenant.
    pub fn join(&mut self, projects: &[Project]) -> Result<(), PolicyError> {
        let mut merged: BTreeSet<Project> = projects.iter().cloned().collect();
        if merged.len() < 2 {
            return Err(PolicyError::JoinTooFew);
        }
        let (touching, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.groups)
            .into_iter()
            .partition(|g| g.iter().any(|p| merged.contains(p)));
        for g in touching {
            merged.extend(g);
        }
        self.groups = rest;
        self.groups.push(merged);
        self.groups.sort();
        Ok(())
    }

    /// The same policy with overlapping groups merged (joining is
    /// transitive) and groups of one dropped: a file written by hand need not
    /// be in the form `join` keeps, and `[[a, b], [b, c]]` is one tenant.
    pub fn normalised(mut self) -> Self {
        for group in std::mem::take(&mut self.groups) {
            let members: Vec<Project> = group.into_iter().collect();
            if members.len() >= 2 {
                self.join(&members).expect("two or more members");
            }
        }
        self
    }

    /// Make a project its own tenant again: out of any group, not global.
    pub fn isolate(&mut self, p: &Project) {
        self.global.remove(p);
        for g in &mut self.groups {
            g.remove(p);
        }
        self.groups.retain(|g| g.len() >= 2);
    }

    pub fn make_global(&mut self, p: &Project) {
        self.global.insert(p.clone());
    }

    pub fn set_egress(&mut self, p: &Project, allowed: bool) {
        if allowed {
            self.egress_deny.remove(p);
        } else {
            self.egress_deny.insert(p.clone());
        }
    }

    /// Every tenant id with its member projects, for display.
    pub fn tenants(&self, known: &BTreeSet<Project>) -> BTreeMap<Project, BTreeSet<Project>> {
        let mut out: BTreeMap<Project, BTreeSet<Project>> = BTreeMap::new();
        for p in known.iter().chain(self.groups.iter().flatten()) {
            if let Role::Tenant(t) = self.role(p) {
                out.entry(t).or_default().insert(p.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Project {
        Project::new(s).unwrap()
    }

    #[test]
    fn projects_are_dns_labels() {
        assert!(Project::new("team-a").is_ok());
        for bad in ["", "Team", "a_b", "-a", "a-", &"x".repeat(64), "../etc"] {
            assert!(Project::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_project_starts_as_its_own_tenant() {
        let pol = Policy::with_global([p("kube-system")]);
        assert_eq!(pol.role(&p("a")), Role::Tenant(p("a")));
        assert_eq!(pol.role(&p("kube-system")), Role::Global);
    }

    #[test]
    fn join_is_transitive_and_isolate_undoes_it() {
        let mut pol = Policy::default();
        pol.join(&[p("b"), p("c")]).unwrap();
        pol.join(&[p("a"), p("c")]).unwrap();
        assert_eq!(pol.groups.len(), 1);
        for x in ["a", "b", "c"] {
            assert_eq!(pol.role(&p(x)), Role::Tenant(p("a")));
        }
        pol.isolate(&p("a"));
        assert_eq!(pol.role(&p("a")), Role::Tenant(p("a")));
        assert_eq!(pol.role(&p("c")), Role::Tenant(p("b")));
        pol.isolate(&p("b"));
        assert!(pol.groups.is_empty(), "a group of one is no group");
        assert_eq!(pol.join(&[p("a")]), Err(PolicyError::JoinTooFew));
    }

    #[test]
    fn global_wins_and_isolate_clears_it() {
        let mut pol = Policy::default();
        pol.join(&[p("a"), p("b")]).unwrap();
        pol.make_global(&p("a"));
        assert_eq!(pol.role(&p("a")), Role::Global);
        pol.isolate(&p("a"));
        assert_eq!(pol.role(&p("a")), Role::Tenant(p("a")));
    }

    #[test]
    fn a_hand_written_file_is_read_as_join_would_keep_it() {
        let pol: Policy =
            serde_json::from_str(r#"{"groups": [["a", "b"], ["c"], ["b", "d"]]}"#).unwrap();
        let pol = pol.normalised();
        assert_eq!(pol.groups.len(), 1);
        for x in ["a", "b", "d"] {
            assert_eq!(pol.role(&p(x)), Role::Tenant(p("a")));
        }
        assert_eq!(pol.role(&p("c")), Role::Tenant(p("c")));
        let typo = serde_json::from_str::<Policy>(r#"{"egress_deny": ["a"]}"#);
        assert!(typo.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn json_round_trip_rejects_bad_names() {
        let mut pol = Policy::with_global([p("kube-system")]);
        pol.join(&[p("a"), p("b")]).unwrap();
        pol.set_egress(&p("c"), false);
        let s = serde_json::to_string(&pol).unwrap();
        assert_eq!(serde_json::from_str::<Policy>(&s).unwrap(), pol);
        assert!(serde_json::from_str::<Policy>(r#"{"global":["Bad Name"]}"#).is_err());
    }
}
