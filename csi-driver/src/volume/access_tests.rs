use std::collections::BTreeMap;

use super::*;
use crate::volume::record::{NodePublication, PubState};
use AccessMode::*;

fn cap(mode: AccessMode, block: bool) -> Capability {
    Capability {
        mode,
        block,
        fs_type: None,
    }
}

fn ctrl(entries: &[(&str, AccessMode, bool)]) -> BTreeMap<String, CtrlPublication> {
    entries
        .iter()
        .map(|(n, mode, ro)| {
            (
                n.to_string(),
                CtrlPublication {
                    mode: *mode,
                    readonly: *ro,
                },
            )
        })
        .collect()
}

fn pubs(entries: &[(&str, &str, AccessMode, bool)]) -> Vec<NodePublication> {
    entries
        .iter()
        .map(|(node, target, mode, ro)| NodePublication {
            volume_id: "vol-x".into(),
            node_id: node.to_string(),
            target: target.to_string(),
            mode: *mode,
            readonly: *ro,
            state: PubState::Published,
            device: None,
        })
        .collect()
}

#[test]
fn kinds_follow_the_capabilities() {
    assert_eq!(kind_for(&[cap(SingleNodeWriter, false)]), Ok(Kind::Image));
    assert_eq!(
        kind_for(&[
            cap(MultiNodeReaderOnly, false),
            cap(SingleNodeWriter, false)
        ]),
        Ok(Kind::Image)
    );
    assert_eq!(kind_for(&[cap(MultiNodeMultiWriter, false)]), Ok(Kind::Dir));
    assert_eq!(
        kind_for(&[cap(MultiNodeSingleWriter, false)]),
        Ok(Kind::Dir)
    );
    assert_eq!(
        kind_for(&[cap(SingleNodeSingleWriter, true)]),
        Ok(Kind::Block)
    );
    assert!(kind_for(&[cap(SingleNodeWriter, true), cap(SingleNodeWriter, false)]).is_err());
    assert!(kind_for(&[cap(MultiNodeMultiWriter, true)]).is_err());
    assert!(!supports(Kind::Image, &cap(MultiNodeMultiWriter, false)));
    assert!(supports(Kind::Dir, &cap(SingleNodeWriter, false)));
    assert!(!supports(Kind::Block, &cap(SingleNodeWriter, false)));
}

#[test]
fn rwo_is_one_node_at_a_time_and_names_the_holder() {
    let held = ctrl(&[("node-a", SingleNodeWriter, false)]);
    assert_eq!(
        controller_publish(&held, "node-a", SingleNodeWriter, false),
        Ok(false)
    );
    match controller_publish(&held, "node-b", SingleNodeWriter, false) {
        Err(Refusal::Held(msg)) => assert!(msg.contains("node-a"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        controller_publish(&held, "node-a", SingleNodeWriter, true),
        Err(Refusal::Incompatible(_))
    ));
}

#[test]
fn rox_and_rwx_go_to_many_nodes_and_multi_node_single_writer_allows_one_writer() {
    let rox = ctrl(&[("a", MultiNodeReaderOnly, true)]);
    assert_eq!(
        controller_publish(&rox, "b", MultiNodeReaderOnly, false),
        Ok(true)
    );
    let rwx = ctrl(&[("a", MultiNodeMultiWriter, false)]);
    assert_eq!(
        controller_publish(&rwx, "b", MultiNodeMultiWriter, false),
        Ok(true)
    );
    let one = ctrl(&[("a", MultiNodeSingleWriter, false)]);
    assert!(matches!(
        controller_publish(&one, "b", MultiNodeSingleWriter, false),
        Err(Refusal::Held(_))
    ));
    assert_eq!(
        controller_publish(&one, "b", MultiNodeSingleWriter, true),
        Ok(true)
    );
}

#[test]
fn rwop_allows_one_publication_at_all() {
    let one = pubs(&[("n1", "/t1", SingleNodeSingleWriter, false)]);
    let again = node_publish(&one, "n1", "/t1", SingleNodeSingleWriter, false);
    assert_eq!(
        again,
        Ok(PublishPlan {
            readonly: false,
            done: true
        })
    );
    match node_publish(&one, "n1", "/t2", SingleNodeSingleWriter, false) {
        Err(Refusal::Held(msg)) => assert!(msg.contains("/t1"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rwo_allows_several_targets_on_one_node_but_not_a_second_node() {
    let one = pubs(&[("n1", "/t1", SingleNodeWriter, false)]);
    assert_eq!(
        node_publish(&one, "n1", "/t2", SingleNodeWriter, false),
        Ok(PublishPlan {
            readonly: false,
            done: false
        })
    );
    assert!(matches!(
        node_publish(&one, "n2", "/t3", SingleNodeWriter, false),
        Err(Refusal::Held(_))
    ));
}

#[test]
fn read_only_modes_and_flags_force_read_only_mounts() {
    let none = pubs(&[]);
    for mode in [MultiNodeReaderOnly, SingleNodeReaderOnly] {
        let plan = node_publish(&none, "n1", "/t", mode, false).unwrap();
        assert!(
            plan.readonly,
            "{mode:?} asked read-write still mounts read-only"
        );
    }
    assert!(
        node_publish(&none, "n1", "/t", MultiNodeMultiWriter, true)
            .unwrap()
            .readonly
    );
    let writer = pubs(&[("n1", "/t1", MultiNodeSingleWriter, false)]);
    let second = node_publish(&writer, "n2", "/t2", MultiNodeSingleWriter, false).unwrap();
    assert!(
        second.readonly,
        "the second publication of a single-writer volume is read-only"
    );
    let rwx = pubs(&[("n1", "/t1", MultiNodeMultiWriter, false)]);
    assert!(
        !node_publish(&rwx, "n2", "/t2", MultiNodeMultiWriter, false)
            .unwrap()
            .readonly
    );
}

#[test]
fn a_second_publish_at_the_same_target_with_other_settings_is_incompatible() {
    let ro = pubs(&[("n1", "/t1", MultiNodeMultiWriter, true)]);
    assert!(matches!(
        node_publish(&ro, "n1", "/t1", MultiNodeMultiWriter, false),
        Err(Refusal::Incompatible(_))
    ));
}

#[test]
fn volumes_belong_to_their_project() {
    assert!(may_mount(Some("shop"), &[], Some("shop")).is_ok());
    assert!(may_mount(Some("shop"), &[], Some("blog")).is_err());
    assert!(may_mount(Some("shop"), &[], None).is_err());
    assert!(may_mount(Some("shop"), &["blog".into()], Some("blog")).is_ok());
    assert!(may_mount(Some("shop"), &["*".into()], Some("ci")).is_ok());
    assert!(may_mount(None, &[], Some("ci")).is_ok());
}

#[test]
fn a_volume_is_used_only_in_the_modes_it_was_created_for() {
    let rox = [MultiNodeReaderOnly];
    assert!(allows(Kind::Image, &rox, &cap(MultiNodeReaderOnly, false)).is_ok());
    // A ReadOnlyMany volume asked for as ReadWriteOnce: refused, not mounted writable.
    let err = allows(Kind::Image, &rox, &cap(SingleNodeWriter, false)).unwrap_err();
    assert!(err.contains("created for [MultiNodeReaderOnly]"), "{err}");
    // ReadWriteOncePod is not widened to ReadWriteOnce for a second pod.
    assert!(allows(
        Kind::Image,
        &[SingleNodeSingleWriter],
        &cap(SingleNodeWriter, false)
    )
    .is_err());
    // Storage still decides first; a record without modes is judged by kind.
    assert!(allows(
        Kind::Image,
        &[MultiNodeMultiWriter],
        &cap(MultiNodeMultiWriter, false)
    )
    .is_err());
    assert!(allows(Kind::Dir, &[], &cap(MultiNodeMultiWriter, false)).is_ok());
}

#[test]
fn an_rwop_publication_excludes_any_other_whatever_the_new_mode() {
    let held = pubs(&[("n1", "/t1", SingleNodeSingleWriter, false)]);
    for mode in [
        SingleNodeWriter,
        SingleNodeMultiWriter,
        SingleNodeReaderOnly,
    ] {
        let r = node_publish(&held, "n1", "/t2", mode, false);
        assert!(matches!(r, Err(Refusal::Held(_))), "{mode:?}: {r:?}");
    }
}

fn stages(entries: &[(&str, Option<AccessMode>, bool)]) -> Vec<Stage> {
    entries
        .iter()
        .map(|(node, mode, released)| Stage {
            volume_id: "vol-x".into(),
            node_id: node.to_string(),
            staging_path: format!("/stage/{node}"),
            device: None,
            readonly: false,
            mode: *mode,
            released: *released,
            boot: String::new(),
        })
        .collect()
}

#[test]
fn a_single_node_volume_is_staged_on_one_node_at_a_time() {
    let held = |r: Result<(), Refusal>| matches!(r, Err(Refusal::Held(_)));
    let rwo = stages(&[("n1", Some(SingleNodeWriter), false)]);
    assert!(held(node_stage(&rwo, "n2", SingleNodeWriter)));
    assert!(
        held(node_stage(&rwo, "n2", MultiNodeReaderOnly)),
        "the RWO stage holds it"
    );
    assert!(
        node_stage(&rwo, "n1", SingleNodeWriter).is_ok(),
        "its own stage"
    );
    let rox = stages(&[("n1", Some(MultiNodeReaderOnly), false)]);
    assert!(node_stage(&rox, "n2", MultiNodeReaderOnly).is_ok());
    assert!(held(node_stage(&rox, "n2", SingleNodeSingleWriter)));
    // A record from before modes were kept judges by the request alone.
    let old = stages(&[("n1", None, false)]);
    assert!(node_stage(&old, "n2", MultiNodeMultiWriter).is_ok());
    assert!(held(node_stage(&old, "n2", SingleNodeWriter)));
    // Force-detached from n1: n1's stage no longer counts.
    let released = stages(&[("n1", Some(SingleNodeWriter), true)]);
    assert!(node_stage(&released, "n2", SingleNodeWriter).is_ok());
}
