//! Who may hold a volume while someone else uses it: stages of single-node
//! volumes on several nodes, and a volume or snapshot deleted while a clone,
//! restore or snapshot still copies it.

use std::path::Path;
use std::time::{Duration, Instant};

use moat_csi_proto as csi;
use moat_e2e::csi::{
    block_cap, create_req, mount_cap, publish_req, refused, stage_req, write_in, Cluster, Mode, MIB,
};
use nix::sys::signal::Signal;
use tonic::Code;

/// A CO that skips ControllerPublish (nothing else stops it) still cannot
/// stage a single-node volume on a second node: the stage is refused before
/// anything is attached there, and allowed once the first node unstaged.
/// Multi-node volumes stage everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_node_volume_is_staged_on_one_node_at_a_time() {
    let c = Cluster::new(&["n1", "n2"]);
    let rwo = mount_cap(Mode::SingleNodeWriter, "ext4");
    let id = c
        .create("pvc-stage-once", 64 * MIB, rwo.clone(), "shop")
        .await;
    let first = c.path(0, "staging");
    c.node(0)
        .await
        .node_stage_volume(stage_req(&id, &first, rwo.clone()))
        .await
        .unwrap();
    let second = c.path(1, "staging");
    let status = refused(
        c.node(1)
            .await
            .node_stage_volume(stage_req(&id, &second, rwo.clone())),
        Code::FailedPrecondition,
    )
    .await;
    assert!(status.message().contains("n1"), "{status:?}");
    assert!(
        !moat_e2e::csi::is_mounted(&second),
        "nothing is mounted on the refused node"
    );
    c.node(0)
        .await
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: first,
        })
        .await
        .unwrap();
    c.node(1)
        .await
        .node_stage_volume(stage_req(&id, &second, rwo))
        .await
        .expect("free once n1 unstaged");

    let rox = mount_cap(Mode::MultiNodeReaderOnly, "ext4");
    let shared = c
        .create("pvc-stage-many", 64 * MIB, rox.clone(), "shop")
        .await;
    for i in 0..2 {
        let staging = c.path(i, "staging-rox");
        c.node(i)
            .await
            .node_stage_volume(stage_req(&shared, &staging, rox.clone()))
            .await
            .unwrap_or_else(|e| panic!("ROX on node {i}: {e:?}"));
    }
}

/// A force-detach from a node that is in fact still alive (ControllerUnpublish
/// from n1 while n1 has the volume staged and published) releases n1's
/// stage: n2 may stage and publish the volume, while n1 may neither publish
/// it again nor stage it while n2 holds it. n1's clean-up (unpublish,
/// unstage) then leaves n2's use alone, also for a block volume, whose loop
/// device the two simulated nodes share in one kernel.
#[tokio::test(flavor = "multi_thread")]
async fn a_released_stage_no_longer_serves_its_node() {
    let c = Cluster::new(&["n1", "n2"]);
    for (name, cap) in [
        ("pvc-released-fs", mount_cap(Mode::SingleNodeWriter, "ext4")),
        ("pvc-released-blk", block_cap(Mode::SingleNodeWriter)),
    ] {
        let id = c.create(name, 64 * MIB, cap.clone(), "shop").await;
        let first = c
            .attach(0, &id, cap.clone(), false, "shop", name)
            .await
            .unwrap();
        c.detach_from(0, &id).await;
        // Before n2 has it, only the released stage stands in n1's way.
        let staging = c.path(0, &format!("staging-{id}"));
        let again = publish_req(
            &id,
            &staging,
            &c.path(0, &format!("{name}-again")),
            cap.clone(),
            false,
            "shop",
        );
        let mut n1 = c.node(0).await;
        let status = refused(n1.node_publish_volume(again), Code::FailedPrecondition).await;
        assert!(status.message().contains("detached"), "{status:?}");
        let second = c
            .attach(1, &id, cap.clone(), false, "shop", name)
            .await
            .expect("the volume follows its pod to n2");
        let restage = stage_req(&id, &staging, cap.clone());
        refused(n1.node_stage_volume(restage), Code::FailedPrecondition).await;
        let unpublish = csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: first,
        };
        n1.node_unpublish_volume(unpublish).await.unwrap();
        let unstage = csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging,
        };
        n1.node_unstage_volume(unstage).await.unwrap();
        still_usable(&second, name);
    }
}

/// A published filesystem takes a write; a published block device is still
/// backed by its image (a detached loop device reads as empty).
fn still_usable(target: &str, name: &str) {
    use std::io::Read;
    if Path::new(target).is_dir() {
        write_in(target, "still", "yes").unwrap_or_else(|e| panic!("{name}: {e}"));
        return;
    }
    let mut first = [0u8; 512];
    let n = std::fs::File::open(target)
        .and_then(|mut f| f.read(&mut first))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(n, 512, "{name}: the device lost its image");
}

/// The controller paused in the middle of copying a source (the pause file
/// exists): returns once the pause point was reached.
async fn wait_paused(marker: &Path) {
    let reached = marker.with_extension("reached");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reached.exists() {
        assert!(Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::remove_file(&reached).unwrap();
}

/// Start `call` (a copy the controller will pause in), wait until it is
/// copying, run `meanwhile`, let the copy finish and return its answer.
async fn while_copying<T, M>(
    marker: &Path,
    call: impl std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    meanwhile: M,
) -> T
where
    T: Send + 'static,
    M: std::future::Future<Output = ()>,
{
    std::fs::write(marker, "").unwrap();
    let copying = tokio::spawn(call);
    wait_paused(marker).await;
    meanwhile.await;
    std::fs::remove_file(marker).unwrap();
    copying.await.unwrap().expect("the copy finishes")
}

async fn delete_volume(c: &Cluster, id: &str) -> Result<(), tonic::Status> {
    let req = csi::DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    };
    c.ctrl().await.delete_volume(req).await.map(drop)
}

async fn delete_snapshot(c: &Cluster, id: &str) -> Result<(), tonic::Status> {
    let req = csi::DeleteSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    c.ctrl().await.delete_snapshot(req).await.map(drop)
}

/// While a clone or a snapshot copies its source volume, DeleteVolume of the
/// source is ABORTED (the CO retries) instead of removing the file being
/// read, while publishing the source is not held up; while a restore copies
/// its snapshot, DeleteSnapshot is ABORTED. Once the copies are done both
/// deletes go through.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_being_copied_cannot_be_deleted() {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let mut c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let src = c.create("pvc-golden", 64 * MIB, cap.clone(), "shop").await;
    let marker = c.dir.join("pause-copy");
    c.controller.stop(Signal::SIGTERM);
    c.controller.set_env(
        "MOAT_CSI_PAUSE_AT",
        Some(&format!("copy:{}", marker.display())),
    );
    c.start(None);
    let node = c.nodes[0].node_id.clone();

    let mut clone = create_req("pvc-clone", 64 * MIB, cap.clone(), "shop");
    clone.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(Type::Volume(VolumeSource {
            volume_id: src.clone(),
        })),
    });
    let mut ctrl = c.ctrl().await;
    let meanwhile = async {
        refused(delete_volume(&c, &src), Code::Aborted).await;
        let mut ctrl = c.ctrl().await;
        let publish = csi::ControllerPublishVolumeRequest {
            volume_id: src.clone(),
            node_id: node.clone(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        };
        ctrl.controller_publish_volume(publish)
            .await
            .expect("publishing the source goes on");
        c.detach_from(0, &src).await;
    };
    while_copying(
        &marker,
        async move { ctrl.create_volume(clone).await },
        meanwhile,
    )
    .await;

    let snap = csi::CreateSnapshotRequest {
        source_volume_id: src.clone(),
        name: "snap-golden".into(),
        ..Default::default()
    };
    let mut ctrl = c.ctrl().await;
    let meanwhile = async {
        refused(delete_volume(&c, &src), Code::Aborted).await;
    };
    let taken = while_copying(
        &marker,
        async move { ctrl.create_snapshot(snap).await },
        meanwhile,
    );
    let sid = taken.await.into_inner().snapshot.unwrap().snapshot_id;

    let mut restore = create_req("pvc-restore", 64 * MIB, cap, "shop");
    restore.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: sid.clone(),
        })),
    });
    let mut ctrl = c.ctrl().await;
    let meanwhile = async {
        refused(delete_snapshot(&c, &sid), Code::Aborted).await;
    };
    while_copying(
        &marker,
        async move { ctrl.create_volume(restore).await },
        meanwhile,
    )
    .await;

    delete_snapshot(&c, &sid)
        .await
        .expect("the restore is done");
    delete_volume(&c, &src).await.expect("the copies are done");
}

/// What a reboot leaves of a stage is its record alone (no mount, no loop
/// device). The node's start-up reconcile drops such a record: a stale one
/// would hold a single-node volume against every other node for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_restarted_without_its_mounts_drops_its_stage_records() {
    let mut c = Cluster::new(&["n1", "n2"]);
    let rwo = mount_cap(Mode::SingleNodeWriter, "ext4");
    let id = c
        .create("pvc-rebooted", 64 * MIB, rwo.clone(), "shop")
        .await;
    let staging = c.path(0, "staging");
    c.node(0)
        .await
        .node_stage_volume(stage_req(&id, &staging, rwo.clone()))
        .await
        .unwrap();
    c.nodes[0].stop(Signal::SIGKILL);
    let run = |prog: &str, args: &[&str]| {
        let ok = std::process::Command::new(prog)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "{prog} {args:?}");
    };
    run("umount", &[&staging]);
    for (dev, _) in c.loops_of(&id) {
        run("losetup", &["--detach", &dev]);
    }
    let elsewhere = c.path(1, "staging");
    let stale = stage_req(&id, &elsewhere, rwo.clone());
    refused(
        c.node(1).await.node_stage_volume(stale),
        Code::FailedPrecondition,
    )
    .await;
    c.start(Some(0));
    c.node(0).await; // serving: its start-up reconcile is done
    c.node(1)
        .await
        .node_stage_volume(stage_req(&id, &elsewhere, rwo))
        .await
        .expect("the stale stage no longer holds the volume");
}

/// A stage record from an earlier boot is dropped at the node's start, even
/// one with nothing mounted to check (a shared-directory volume's).
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_record_of_an_earlier_boot_is_dropped_at_start() {
    let mut c = Cluster::new(&["n1"]);
    let rwx = mount_cap(Mode::MultiNodeMultiWriter, "");
    let id = c
        .create("pvc-earlier-boot", 64 * MIB, rwx.clone(), "shop")
        .await;
    c.node(0)
        .await
        .node_stage_volume(stage_req(&id, &c.path(0, "staging"), rwx))
        .await
        .unwrap();
    c.nodes[0].stop(Signal::SIGTERM);
    let records: Vec<_> = std::fs::read_dir(c.pool.join(".moat/stages"))
        .unwrap()
        .map(|d| d.unwrap().path().join(format!("{id}.json")))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(records.len(), 1);
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap();
    assert!(
        record["boot"].is_string(),
        "stages record their boot: {record}"
    );
    record["boot"] = "an-earlier-boot".into();
    std::fs::write(&records[0], record.to_string()).unwrap();
    c.start(Some(0));
    c.node(0).await; // serving: its start-up reconcile is done
    assert!(!records[0].exists(), "the earlier boot's record is gone");
}
