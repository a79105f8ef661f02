//! Changes in place: the element differences (and new tenant chains) that
//! take the table from one state to the next in one transaction, for the
//! changes that used to rebuild it (which also reset the drop counters).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::model::{Policy, Project, Role};
use super::nftjson::{Batch, Elem};
use super::peers::Peer;
use super::ruleset::{
    full, member_elements, tenant_chain, tenants_with_chains, Groups, PodEntry, TableSpec,
};

/// The elements that turn the peers `old` into `new`, for a sync that need
/// not rebuild the table (which would reset the drop counters): departed
/// peers' elements deleted, new ones added, a tenant chain made for a tenant
/// that `chains` lacks (returned). Addresses that are local pods (`local`)
/// are the local pods' and left alone, as in [`full`].
pub fn peers_change(
    spec: &TableSpec,
    policy: &Policy,
    old: &[Peer],
    new: &[Peer],
    local: impl Fn(IpAddr) -> bool,
    chains: &BTreeSet<Project>,
) -> (Batch, BTreeSet<Project>) {
    let (before, after): (BTreeSet<&Peer>, BTreeSet<&Peer>) =
        (old.iter().collect(), new.iter().collect());
    let mut b = spec.batch();
    let mut made = BTreeSet::new();
    for gone in before.difference(&after).filter(|p| !local(p.ip)) {
        member_elements(&mut b, policy, &gone.project, gone.ip, false, true);
    }
    for came in after.difference(&before).filter(|p| !local(p.ip)) {
        if let Role::Tenant(t) = policy.role(&came.project) {
            if !chains.contains(&t) && made.insert(t.clone()) {
                b.new_tenant_chain(&tenant_chain(&t));
            }
        }
        member_elements(&mut b, policy, &came.project, came.ip, true, true);
    }
    (b, made)
}

/// The change from the table [`full`] makes under policy `old` to the one it
/// makes under `new`: the elements only one of them has are deleted or added
/// (a verdict-map key whose verdict changes is both, in that order), and the
/// tenant chains `new` needs and `chains` lacks are made (returned). Chains
/// no longer used stay, empty, until the next rebuild.
pub fn policy_change(
    spec: &TableSpec,
    old: &Policy,
    new: &Policy,
    state: (&[PodEntry], &[Peer], &Groups),
    chains: &BTreeSet<Project>,
) -> (Batch, BTreeSet<Project>) {
    let (pods, peers, groups) = state;
    let elements = |policy: &Policy| -> BTreeSet<(String, Elem)> {
        let plan = full(spec, policy, pods, peers, groups, 0);
        let ops = plan.elements.into_iter();
        ops.flat_map(|op| op.elems.into_iter().map(move |e| (op.set.clone(), e)))
            .collect()
    };
    let (before, after) = (elements(old), elements(new));
    let mut b = spec.batch();
    let made: BTreeSet<Project> = tenants_with_chains(new, pods, peers, groups)
        .difference(chains)
        .cloned()
        .collect();
    for t in &made {
        b.new_tenant_chain(&tenant_chain(t));
    }
    put_grouped(&mut b, false, before.difference(&after));
    put_grouped(&mut b, true, after.difference(&before));
    (b, made)
}

/// One element command per run of elements of one set.
fn put_grouped<'a>(b: &mut Batch, add: bool, elems: impl Iterator<Item = &'a (String, Elem)>) {
    let mut run: Option<(&str, Vec<Elem>)> = None;
    for (set, e) in elems {
        match &mut run {
            Some((s, v)) if *s == set.as_str() => v.push(e.clone()),
            _ => {
                if let Some((s, v)) = run.take() {
                    b.element(add, s, v);
                }
                run = Some((set, vec![e.clone()]));
            }
        }
    }
    if let Some((s, v)) = run {
        b.element(add, s, v);
    }
}
