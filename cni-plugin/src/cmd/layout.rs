//! The layout file: what our table holds beyond the pods' own elements (so
//! a change can be made in place), the projects' interface groups and the
//! fast path's epoch. Callers hold the network's state lock.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::isolation::{load_policy, spec};
use crate::firewall::Firewall;
use crate::ipam::IpStore;
use crate::policy::epoch::{comes_round, mark, EpochMark};
use crate::policy::ruleset::Groups;
use crate::policy::{Policy, Project, TableSpec};
use crate::spec::{CniError, Code, NetConf};

/// What this node's table holds beyond the pods' own elements, as last
/// built, and the interface group of every project that had a pod here.
/// Lives in the run directory with the records: a reboot removes the veths
/// that carry the groups, and the table, together with it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Layout {
    /// Unique among the node's veths: a project keeps its number until a
    /// rebuild finds it without pods.
    pub(super) groups: Groups,
    /// `None` after the file was lost: the next change rebuilds the table.
    pub(super) built: Option<Built>,
    /// The fast path's epoch (`policy::epoch`), saved before the table gets
    /// it, so that it never goes back to a value the table had.
    #[serde(default)]
    pub(super) epoch: u64,
    /// The policy `built` was checked against when this was read: ADD reads
    /// it once, for the group and the elements.
    #[serde(skip)]
    pub(super) policy: Policy,
    /// Connections may carry epochs of an earlier round (the counter came
    /// round; the file was lost; the mark bits changed): the next epoch
    /// move first clears every mark of them ([`next_epoch`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sweep_due: bool,
    /// A sweep ran before the epoch being applied: once it is in, marks
    /// made meanwhile with the previous epoch go too ([`epoch_applied`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sweep_after: bool,
    /// The mark bits the epoch was last moved in.
    #[serde(default)]
    mark_mask: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Built {
    /// Tenants with a chain.
    pub(super) chains: BTreeSet<Project>,
    /// Groups with an element in the group map.
    pub(super) mapped: BTreeSet<u32>,
    /// The table-wide settings it was built with ([`settings`]).
    #[serde(default)]
    pub(super) settings: String,
}

/// The network config's table-wide settings (log target, masquerade,
/// cluster ranges, flow-mark bits, table) and the policy, comparable. The
/// policy is in it because it can change without `moat project …` (a
/// policy file edited or copied in ahead of `moat reconcile`, or
/// `globalProjects` in the conflist while there is no file): an ADD must
/// not add to a table built for another one. Built into the rules
/// rather than the elements, so a table built with others is rebuilt at the
/// next change: an operator who turns logging on in the conflist sees it at
/// the next ADD or DEL, not only after `moat reconcile`. (Its Debug form: a
/// new Rust that prints it differently costs one rebuild.)
pub(super) fn settings(spec: &TableSpec, policy: &Policy) -> String {
    format!("{spec:?} {policy:?}")
}

const LAYOUT: &str = "layout.json";

/// The layout, or one recovered from the records (their groups are exactly
/// the ones live veths carry) with nothing known to be built.
pub(super) fn load_layout<S: IpStore>(
    conf: &NetConf,
    store: &S,
    policy: &Policy,
) -> Result<Layout, CniError> {
    if let Ok(bytes) = std::fs::read(conf.state_dir().join(LAYOUT)) {
        if let Ok(mut layout) = serde_json::from_slice::<Layout>(&bytes) {
            let now = settings(&spec(conf), policy);
            if layout.built.as_ref().is_some_and(|b| b.settings != now) {
                info!(settings = %now, "the table was built with other settings: rebuilding it");
                layout.built = None;
            }
            layout.policy = policy.clone();
            return Ok(layout);
        }
    }
    let records = store
        .list()
        .map_err(|e| CniError::from_error(Code::Io, &e))?;
    let mut groups = Groups::new();
    for r in records.iter().filter(|r| r.group != 0) {
        if let Ok(p) = Project::new(&r.project) {
            groups.entry(p).or_insert(r.group);
        }
    }
    Ok(Layout {
        groups,
        built: None,
        epoch: recovered_epoch(),
        policy: policy.clone(),
        sweep_due: true,
        sweep_after: false,
        mark_mask: 0,
    })
}

/// With the file lost, the epoch the table holds is unknown: start far from
/// wherever the counter was (a million epochs by default), not at 0.
fn recovered_epoch() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_secs())
}

/// Move the epoch and save it before the table gets it. When the counter
/// comes round to values it used before (or nobody knows which it used),
/// connections first lose whatever epoch their marks carry: one marked a
/// round ago, and idle since the change that closed it, would otherwise
/// pass when its old epoch is current again. Best effort: a failed sweep is
/// tried again at the next move, and must not fail the DEL or change.
pub(super) fn next_epoch<F: Firewall>(
    conf: &NetConf,
    layout: &mut Layout,
    fw: &mut F,
) -> Result<Option<EpochMark>, CniError> {
    layout.epoch += 1;
    let mask = conf.isolation.flow_mark_mask;
    let m = mark(mask, layout.epoch);
    if m.is_some() {
        if layout.mark_mask != mask {
            (layout.sweep_due, layout.mark_mask) = (true, mask);
        }
        if layout.sweep_due || comes_round(mask, layout.epoch) {
            layout.sweep_due = !sweep(fw, mask, None, layout.epoch);
            layout.sweep_after = true;
        }
        save_layout(conf, layout)?;
    }
    Ok(m)
}

/// After a transaction that applied the epoch [`next_epoch`] swept for:
/// connections the rules accepted between that sweep and the transaction
/// carry the previous epoch, which comes round again before the next sweep.
pub(super) fn epoch_applied<F: Firewall>(conf: &NetConf, layout: &mut Layout, fw: &mut F) {
    let mask = conf.isolation.flow_mark_mask;
    let Some(m) = mark(mask, layout.epoch).filter(|_| layout.sweep_after) else {
        return;
    };
    if sweep(fw, mask, Some(m.value), layout.epoch) {
        layout.sweep_after = false;
        if let Err(e) = save_layout(conf, layout) {
            warn!(error = %e, "cannot record the table layout");
        }
    }
}

fn sweep<F: Firewall>(fw: &mut F, mask: u32, keep: Option<u32>, epoch: u64) -> bool {
    match fw.forget_marks(mask, keep) {
        Ok(n) => {
            info!(epoch, connections = n, kept = ?keep, "old epochs cleared from conntrack marks");
            true
        }
        Err(e) => {
            warn!(error = %e, "cannot clear old epochs from conntrack marks");
            false
        }
    }
}

pub(super) fn save_layout(conf: &NetConf, layout: &Layout) -> Result<(), CniError> {
    let json = serde_json::to_vec(layout).expect("layout serialises");
    crate::durable::replace(&conf.state_dir(), LAYOUT, &json)
        .map_err(|e| CniError::from_error(Code::Io, &e))
}

/// The interface group of `project`'s veths on this node: its own number,
/// given at its first pod and saved before any veth carries it, so that two
/// projects never share one (a number is only dropped, by a rebuild, once no
/// record and so no veth has it). 0 when isolation is off. The layout it
/// read goes on to [`super::isolation::pod_changed`], which need not read it again.
pub fn project_group<S: IpStore>(
    conf: &NetConf,
    store: &S,
    project: &Project,
) -> Result<(u32, Option<Layout>), CniError> {
    if !conf.isolation.enabled {
        return Ok((0, None));
    }
    let mut layout = load_layout(conf, store, &load_policy(conf)?)?;
    if let Some(g) = layout.groups.get(project) {
        return Ok((*g, Some(layout)));
    }
    let next = layout.groups.values().max().map_or(1, |g| g + 1);
    layout.groups.insert(project.clone(), next);
    save_layout(conf, &layout)?;
    Ok((next, Some(layout)))
}

/// Whether a layout file says a table was made here.
pub(super) fn layout_exists(conf: &NetConf) -> bool {
    conf.state_dir().join(LAYOUT).exists()
}

/// Forget what the table was built with: the next change rebuilds it from
/// the records (the designed path of a lost file). Best effort.
pub(super) fn forget_layout(conf: &NetConf) {
    if let Err(e) = std::fs::remove_file(conf.state_dir().join(LAYOUT)) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(error = %e, "cannot forget the table layout");
        }
    }
}
