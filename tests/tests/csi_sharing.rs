//! Who may hold a volume while someone else uses it: stages of single-node
//! volumes on several nodes, and a volume or snapshot deleted while a clone,
//! restore or snapshot still copies it.

use std::path::Path;
use std::time::{Duration, Instant};

use moat_csi_proto as csi;
use moat_e2e::csi::{create_req, mount_cap, refused, stage_req, Cluster, Mode, MIB};
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
        let unpublish = csi::ControllerUnpublishVolumeRequest {
            volume_id: src.clone(),
            node_id: node.clone(),
            ..Default::default()
        };
        ctrl.controller_unpublish_volume(unpublish).await.unwrap();
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
