//! The driver killed or restarted: volumes, publications and mounts stay
//! consistent (SIGTERM restarts, SIGKILL at crash points and at random).

use moat_csi_proto as csi;
use moat_e2e::csi::{
    block_cap, create_req, is_mounted, mount_cap, refused, stage_req, write_in, Cluster, Mode, MIB,
};
use nix::sys::signal::Signal;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_volumes_and_publications() {
    let mut c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeSingleWriter, "ext4");
    let id = c.create("pvc-restart", 64 * MIB, cap.clone(), "shop").await;
    let target = c
        .attach(0, &id, cap.clone(), false, "shop", "pod")
        .await
        .unwrap();
    write_in(&target, "kept", "yes").unwrap();
    c.controller.stop(Signal::SIGTERM);
    c.nodes[0].stop(Signal::SIGTERM);
    c.start(None);
    c.start(Some(0));
    let list = c
        .ctrl()
        .await
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(
        list.entries[0].status.as_ref().unwrap().published_node_ids,
        ["n1"]
    );
    assert!(is_mounted(&target));
    assert_eq!(
        std::fs::read_to_string(format!("{target}/kept")).unwrap(),
        "yes"
    );
    // The publication is still known: RWOP still refuses a second target.
    refused(
        c.node_attach(0, &id, cap, false, "shop", "other"),
        Code::FailedPrecondition,
    )
    .await;
}

/// Start node 0 set to crash at `point`, publish `id` to `pod` there and
/// see the driver die.
async fn publish_killed_at(
    c: &mut Cluster,
    id: &str,
    cap: &csi::VolumeCapability,
    point: &str,
    pod: &str,
) {
    c.nodes[0].set_env("MOAT_CSI_CRASH_AT", Some(point));
    c.start(Some(0));
    let published = c.attach(0, id, cap.clone(), false, "shop", pod).await;
    assert!(published.is_err(), "{point}: the publish did not fail");
    assert!(!c.nodes[0].wait_exit().success(), "{point}: no crash");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_create_or_publish_then_restart_is_consistent() {
    let mut c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeSingleWriter, "ext4");
    c.controller.stop(Signal::SIGTERM);
    c.controller
        .set_env("MOAT_CSI_CRASH_AT", Some("create-after-data"));
    c.start(None);
    let req = create_req("pvc-crash", 64 * MIB, cap.clone(), "shop");
    assert!(
        c.ctrl().await.create_volume(req.clone()).await.is_err(),
        "the driver died mid-create"
    );
    assert!(!c.controller.wait_exit().success());
    c.controller.set_env("MOAT_CSI_CRASH_AT", None);
    c.start(None);
    let mut ctrl = c.ctrl().await;
    let list = ctrl
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.entries.is_empty(),
        "the half-made volume was rolled back"
    );
    let leftovers = std::fs::read_dir(c.pool.join("volumes")).unwrap().count();
    assert_eq!(leftovers, 0, "no orphan image");
    let id = c.create_from(req).await.volume_id;

    // Killed between the publication's record and its mount: the restart
    // drops the record, or RWOP would refuse the next target below.
    c.nodes[0].stop(Signal::SIGTERM);
    publish_killed_at(&mut c, &id, &cap, "publish-before-mount", "early").await;
    assert!(!is_mounted(&c.path(0, "early")));
    publish_killed_at(&mut c, &id, &cap, "publish-after-mount", "pod").await;
    c.nodes[0].set_env("MOAT_CSI_CRASH_AT", None);
    c.start(Some(0));
    let target = c.path(0, "pod");
    assert!(
        is_mounted(&target),
        "the mount made before the crash is there"
    );
    // And it is known after the restart.
    refused(
        c.node_attach(0, &id, cap, false, "shop", "second"),
        Code::FailedPrecondition,
    )
    .await;
    let unpub = csi::NodeUnpublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.clone(),
    };
    c.node(0).await.node_unpublish_volume(unpub).await.unwrap();
    assert!(!is_mounted(&target), "no orphan mount once unpublished");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_during_creates_loses_nothing() {
    let mut c = Cluster::new(&[]);
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    for round in 0..5u64 {
        let names: Vec<String> = (0..4).map(|i| format!("pvc-kill-{round}-{i}")).collect();
        let mut ctrl = c.ctrl().await;
        let creates = names.iter().map(|n| {
            let mut ctrl = ctrl.clone();
            let req = create_req(n, 32 * MIB, cap.clone(), "shop");
            tokio::spawn(async move { ctrl.create_volume(req).await })
        });
        let handles: Vec<_> = creates.collect();
        tokio::time::sleep(std::time::Duration::from_millis(5 + round * 7)).await;
        c.controller.stop(Signal::SIGKILL);
        for h in handles {
            let _ = h.await;
        }
        c.start(None);
        ctrl = c.ctrl().await;
        let listed = ctrl
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries;
        for e in &listed {
            let id = &e.volume.as_ref().unwrap().volume_id;
            assert!(
                c.pool.join(format!("volumes/{id}.img")).exists(),
                "listed volume {id} has its bytes"
            );
        }
        let images = std::fs::read_dir(c.pool.join("volumes")).unwrap().count();
        assert_eq!(
            images,
            listed.len(),
            "no image without a volume (round {round})"
        );
        for n in &names {
            // A retried create (what the provisioner does) always succeeds.
            ctrl.create_volume(create_req(n, 32 * MIB, cap.clone(), "shop"))
                .await
                .unwrap();
        }
    }
}

/// A second mount stacked on a target (what a publish retried after a crash
/// between its mount and its answer can leave) goes with NodeUnpublish too,
/// for a directory target and for a block volume's device-node file.
#[tokio::test(flavor = "multi_thread")]
async fn unpublish_removes_a_target_with_mounts_stacked_on_it() {
    let c = Cluster::new(&["n1"]);
    for (name, cap) in [
        ("pvc-stacked", mount_cap(Mode::SingleNodeWriter, "ext4")),
        ("pvc-stacked-block", block_cap(Mode::SingleNodeWriter)),
    ] {
        let id = c.create(name, 32 * MIB, cap.clone(), "shop").await;
        let target = c.attach(0, &id, cap, false, "shop", name).await.unwrap();
        let stacked = std::process::Command::new("mount")
            .args(["--bind", &target, &target])
            .status()
            .unwrap();
        assert!(stacked.success());
        let unpub = csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.clone(),
        };
        c.node(0).await.node_unpublish_volume(unpub).await.unwrap();
        assert!(!is_mounted(&target), "{name}: no mount left");
        assert!(
            !std::path::Path::new(&target).exists(),
            "{name}: target removed"
        );
    }
}

/// A NodePublish that fails before its mount (here: the target cannot be
/// made) leaves no record behind: the CO saw it fail and will never
/// unpublish it, so a record would hold a ReadWriteOncePod volume forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_publish_does_not_hold_the_volume() {
    let c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeSingleWriter, "ext4");
    let id = c
        .create("pvc-failed-pub", 64 * MIB, cap.clone(), "shop")
        .await;
    let blocker = c.path(0, "not-a-dir");
    std::fs::create_dir_all(std::path::Path::new(&blocker).parent().unwrap()).unwrap();
    std::fs::write(&blocker, "a file where the target's parent should be").unwrap();
    let bad = refused(
        c.node_attach(0, &id, cap.clone(), false, "shop", "not-a-dir/pod-a"),
        Code::Internal,
    )
    .await;
    assert!(bad.message().contains("not-a-dir"), "{bad:?}");
    let target = c
        .node_attach(0, &id, cap, false, "shop", "pod-b")
        .await
        .expect("the volume is free for the next pod");
    write_in(&target, "b", "ok").unwrap();
    assert!(is_mounted(&target));
}

/// Killed between detaching the loop device and dropping the stage record:
/// the retried NodeUnstage must not detach the recorded number again (free
/// now, or another volume's) but finish, and a new stage works.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_unstage_then_retry_finishes_it() {
    let mut c = Cluster::new(&["n1"]);
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = c.create("pvc-unstage", 16 * MIB, cap.clone(), "shop").await;
    let staging = c.path(0, &format!("staging-{id}"));
    c.node_attach(0, &id, cap.clone(), false, "shop", "dev")
        .await
        .unwrap();
    let unpub = csi::NodeUnpublishVolumeRequest {
        volume_id: id.clone(),
        target_path: c.path(0, "dev"),
    };
    c.node(0).await.node_unpublish_volume(unpub).await.unwrap();
    c.nodes[0].stop(Signal::SIGTERM);
    c.nodes[0].set_env("MOAT_CSI_CRASH_AT", Some("unstage-after-detach"));
    c.start(Some(0));
    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.clone(),
    };
    let killed = c.node(0).await.node_unstage_volume(unstage.clone()).await;
    assert!(killed.is_err(), "the driver died mid-unstage");
    assert!(!c.nodes[0].wait_exit().success());
    c.nodes[0].set_env("MOAT_CSI_CRASH_AT", None);
    c.start(Some(0));
    c.node(0)
        .await
        .node_unstage_volume(unstage)
        .await
        .expect("the retry finishes");
    let target = c
        .node_attach(0, &id, cap, false, "shop", "dev2")
        .await
        .expect("staged again");
    assert!(std::fs::metadata(&target).is_ok());
}

/// A node gone for good (its driver dead) and the volume force-detached by
/// the CO (ControllerUnpublish for that node): its publication records no
/// longer hold a ReadWriteOnce volume, which another node can now use.
#[tokio::test(flavor = "multi_thread")]
async fn a_force_detach_from_a_dead_node_frees_the_volume() {
    let mut c = Cluster::new(&["n1", "n2"]);
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let id = c
        .create("pvc-dead-node", 64 * MIB, cap.clone(), "shop")
        .await;
    c.attach(0, &id, cap.clone(), false, "shop", "pod")
        .await
        .unwrap();
    c.nodes[0].stop(Signal::SIGKILL);
    refused(
        c.attach(1, &id, cap.clone(), false, "shop", "pod"),
        Code::FailedPrecondition,
    )
    .await;
    c.detach_from(0, &id).await;
    let target = c
        .attach(1, &id, cap, false, "shop", "pod")
        .await
        .expect("the volume follows the pod to n2");
    write_in(&target, "moved", "yes").unwrap();
}

/// A NodeStage whose mount fails (here: the image's filesystem destroyed)
/// detaches the loop device it attached, rather than leaving it for a retry
/// that may never come.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_stage_leaves_no_loop_device() {
    use std::os::unix::fs::FileExt;
    let c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let id = c.create("pvc-bad-fs", 64 * MIB, cap.clone(), "shop").await;
    let image = c.pool.join(format!("volumes/{id}.img"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.write_all_at(&[0u8; 65536], 0).unwrap();
    drop(f);
    refused(
        c.node_attach(0, &id, cap, false, "shop", "pod"),
        Code::Internal,
    )
    .await;
    assert_eq!(c.loops_of(&id), [], "no loop device left");
}

/// A NodeStage killed after its mount, before its record had the loop
/// device: the retried NodeStage completes the record rather than take the
/// mount for a finished stage, so the volume can still be grown on the node
/// and its device goes at NodeUnstage.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_killed_after_its_mount_is_completed_by_the_retry() {
    let mut c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeWriter, "btrfs");
    let id = c
        .create("pvc-stage-kill", 128 * MIB, cap.clone(), "shop")
        .await;
    c.nodes[0].stop(Signal::SIGTERM);
    c.nodes[0].set_env("MOAT_CSI_CRASH_AT", Some("stage-after-mount"));
    c.start(Some(0));
    let staging = c.path(0, "staging");
    let stage = stage_req(&id, &staging, cap.clone());
    assert!(c
        .node(0)
        .await
        .node_stage_volume(stage.clone())
        .await
        .is_err());
    assert!(!c.nodes[0].wait_exit().success(), "no crash");
    c.nodes[0].set_env("MOAT_CSI_CRASH_AT", None);
    c.start(Some(0));
    let mut node = c.node(0).await;
    node.node_stage_volume(stage)
        .await
        .expect("the retry finishes the stage");
    let grow = csi::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 256 * MIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    c.ctrl().await.controller_expand_volume(grow).await.unwrap();
    let grow_here = csi::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: staging.clone(),
        staging_target_path: staging.clone(),
        ..Default::default()
    };
    node.node_expand_volume(grow_here)
        .await
        .expect("the stage knows its device");
    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging,
    };
    node.node_unstage_volume(unstage).await.unwrap();
    assert_eq!(c.loops_of(&id), [], "no loop device left");
}
