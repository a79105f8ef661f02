//! Malformed requests, hostile ids, quotas, identity and the socket itself.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use moat_csi_proto as csi;
use moat_e2e::csi::{create_req, mount_cap, publish_req, refused, stage_req, Cluster, Mode, MIB};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn malformed_creates_get_invalid_argument_or_out_of_range() {
    let c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let mut ctrl = c.ctrl().await;
    let no_name = create_req("", MIB, cap.clone(), "shop");
    let mut no_caps = create_req("pvc-x", MIB, cap.clone(), "shop");
    no_caps.volume_capabilities.clear();
    let mut no_mode = create_req("pvc-y", MIB, cap.clone(), "shop");
    no_mode.volume_capabilities[0].access_mode = None;
    let mut bad_fs = create_req(
        "pvc-z",
        64 * MIB,
        mount_cap(Mode::SingleNodeWriter, "vfat"),
        "shop",
    );
    bad_fs.volume_capabilities[0].access_mode =
        Some(csi::volume_capability::AccessMode { mode: 1 });
    for req in [no_name, no_caps, no_mode, bad_fs] {
        assert_eq!(
            ctrl.create_volume(req).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    let too_big = csi::CapacityRange {
        required_bytes: 10 * MIB,
        limit_bytes: MIB,
    };
    let mut req = create_req("pvc-range", 10 * MIB, cap.clone(), "shop");
    req.capacity_range = Some(too_big);
    assert_eq!(
        ctrl.create_volume(req).await.unwrap_err().code(),
        Code::OutOfRange
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_invalid_argument_before_any_lookup() {
    let c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let mut ctrl = c.ctrl().await;
    let mut node = c.node(0).await;
    let missing = [
        ctrl.delete_volume(csi::DeleteVolumeRequest::default())
            .await
            .unwrap_err(),
        ctrl.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: "vol-x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        ctrl.controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: "vol-x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        ctrl.create_snapshot(csi::CreateSnapshotRequest {
            name: "s".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        node.node_stage_volume(stage_req("vol-x", "relative/path", cap.clone()))
            .await
            .unwrap_err(),
        node.node_publish_volume(publish_req(
            "vol-x",
            "/s",
            "/a/../../etc",
            cap,
            false,
            "shop",
        ))
        .await
        .unwrap_err(),
        node.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: "vol-x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest::default())
            .await
            .unwrap_err(),
        node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "vol-x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    ];
    for e in missing {
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_ids_never_reach_the_filesystem() {
    let c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::MultiNodeMultiWriter, "");
    let canary = c.dir.join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    let mut ctrl = c.ctrl().await;
    for id in ["../../canary", "../canary", "vol-../../x", "/etc"] {
        let get = ctrl
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: id.into(),
            })
            .await;
        assert_eq!(get.unwrap_err().code(), Code::NotFound, "{id}");
        ctrl.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut node = c.node(0).await;
        let staging = c.path(0, "staging");
        let stage = node
            .node_stage_volume(stage_req(id, &staging, cap.clone()))
            .await;
        assert_eq!(stage.unwrap_err().code(), Code::NotFound, "{id}");
        let req = publish_req(
            id,
            &staging,
            &c.path(0, "target"),
            cap.clone(),
            false,
            "shop",
        );
        let publish = node.node_publish_volume(req).await;
        assert_eq!(publish.unwrap_err().code(), Code::NotFound, "{id}");
        // Unstage and unpublish build state paths from the id too.
        let unstage = node
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.clone(),
            })
            .await;
        assert_eq!(unstage.unwrap_err().code(), Code::NotFound, "{id}");
        let unpublish = node
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: c.path(0, "target"),
            })
            .await;
        assert_eq!(unpublish.unwrap_err().code(), Code::NotFound, "{id}");
    }
    assert!(canary.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn project_quota_is_resource_exhausted() {
    let c = Cluster::with_config(&[], Some(r#"{"projectQuotas": {"shop": 104857600}}"#));
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let mut ctrl = c.ctrl().await;
    ctrl.create_volume(create_req("pvc-q1", 64 * MIB, cap.clone(), "shop"))
        .await
        .unwrap();
    refused(
        ctrl.create_volume(create_req("pvc-q2", 64 * MIB, cap.clone(), "shop")),
        Code::ResourceExhausted,
    )
    .await;
    ctrl.create_volume(create_req("pvc-q3", 64 * MIB, cap, "blog"))
        .await
        .expect("other projects are not limited");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_capabilities_and_the_socket() {
    let c = Cluster::new(&["n1"]);
    let mut id = c.controller.identity().await;
    let info = id
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.moat.dev");
    assert_eq!(
        id.probe(csi::ProbeRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready,
        Some(true)
    );
    let caps = c
        .ctrl()
        .await
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap();
    let has = |t: csi::controller_service_capability::rpc::Type| {
        caps.get_ref().capabilities.iter().any(|c| {
            matches!(&c.r#type, Some(csi::controller_service_capability::Type::Rpc(r)) if r.r#type == t as i32)
        })
    };
    use csi::controller_service_capability::rpc::Type;
    assert!(
        has(Type::PublishReadonly)
            && has(Type::ListVolumesPublishedNodes)
            && has(Type::ExpandVolume)
    );
    let info = c
        .node(0)
        .await
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "n1");
    let cap = c
        .ctrl()
        .await
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0);
    // The node process serves no controller.
    let mut ctrl_of_node = c.nodes[0].controller().await;
    refused(
        ctrl_of_node.list_volumes(csi::ListVolumesRequest::default()),
        Code::Unimplemented,
    )
    .await;
    let meta = std::fs::metadata(&c.nodes[0].socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "not world-writable"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_is_replaced_and_sigterm_removes_it() {
    use nix::sys::signal::Signal;
    let mut c = Cluster::new(&["n1"]);
    let mut n = c.node(0).await;
    n.node_get_info(csi::NodeGetInfoRequest {}).await.unwrap();
    c.nodes[0].stop(Signal::SIGKILL);
    assert!(
        c.nodes[0].socket.exists(),
        "SIGKILL leaves the socket behind"
    );
    c.start(Some(0));
    let info = c
        .node(0)
        .await
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "n1");
    // kubelet keeps its connection open: an idle one must not hold the stop
    // for the grace (10 s by default), only an operation in progress may.
    let mut kept = c.node(0).await;
    kept.node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap();
    sigterm_stops_within(&mut c.nodes[0], 2);

    // A client that keeps its connection open and says nothing (a hung
    // kubelet) must not hold the driver past its grace.
    c.nodes[0].set_env("MOAT_SHUTDOWN_GRACE", Some("1"));
    c.start(Some(0));
    c.node(0).await;
    let _silent = std::os::unix::net::UnixStream::connect(&c.nodes[0].socket).unwrap();
    sigterm_stops_within(&mut c.nodes[0], 5);
}

/// SIGTERM: a clean exit within `secs`, and the socket removed.
fn sigterm_stops_within(driver: &mut moat_e2e::csi::Process, secs: u64) {
    let t = std::time::Instant::now();
    nix::sys::signal::kill(driver.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(driver.wait_exit().success());
    let took = t.elapsed();
    assert!(
        took < std::time::Duration::from_secs(secs),
        "stopped after {took:?}"
    );
    assert!(
        !driver.socket.exists(),
        "graceful shutdown removes the socket"
    );
}

/// A mount that waits (here on the pool's lock, held as another node or a
/// slow shared filesystem would hold it) blocks only its own RPC: on the same
/// connection, as kubelet's, the same volume answers ABORTED and other RPCs
/// are answered while it waits; released, it completes.
#[tokio::test(flavor = "multi_thread")]
async fn an_operation_that_waits_blocks_only_its_own_rpc() {
    use nix::fcntl::{Flock, FlockArg};
    let c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::MultiNodeMultiWriter, "");
    let id = c.create("pvc-wait", 64 * MIB, cap.clone(), "shop").await;
    let staging = c.path(0, "staging");
    let node = c.node(0).await;
    node.clone()
        .node_stage_volume(stage_req(&id, &staging, cap.clone()))
        .await
        .unwrap();
    let lock_path = c.pool.join(".moat/lock");
    let lock_file = std::fs::File::open(&lock_path).unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&lock_file.metadata().unwrap());
    let held = Flock::lock(lock_file, FlockArg::LockExclusive).unwrap();

    let target = c.path(0, "target");
    let first = tokio::spawn({
        let mut n = node.clone();
        let req = publish_req(&id, &staging, &target, cap.clone(), false, "shop");
        async move { n.node_publish_volume(req).await }
    });
    wait_for_lock_waiter(inode).await;
    // A driver that waited on the async worker would answer nothing now:
    // fail then, do not hang.
    let answered = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let again = publish_req(
            &id,
            &staging,
            &c.path(0, "other"),
            cap.clone(),
            false,
            "shop",
        );
        let code = node
            .clone()
            .node_publish_volume(again)
            .await
            .unwrap_err()
            .code();
        assert_eq!(code, Code::Aborted, "the volume's operation is in progress");
        let caps = csi::NodeGetCapabilitiesRequest {};
        node.clone().node_get_capabilities(caps).await.unwrap();
        let info = node.clone().node_get_info(csi::NodeGetInfoRequest {}).await;
        assert_eq!(info.unwrap().into_inner().node_id, "n1");
    })
    .await;
    assert!(answered.is_ok(), "no answer while a publish waited");
    assert!(!first.is_finished(), "the publish still waits for the lock");

    drop(held);
    first
        .await
        .unwrap()
        .expect("the publish completes once the lock is free");
    assert!(moat_e2e::csi::is_mounted(&target));
    let unpub = csi::NodeUnpublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.clone(),
    };
    node.clone().node_unpublish_volume(unpub).await.unwrap();
    assert!(!moat_e2e::csi::is_mounted(&target));
}

/// Until /proc/locks shows a process waiting for the flock on `inode`.
async fn wait_for_lock_waiter(inode: u64) {
    let suffix = format!(":{inode} ");
    for _ in 0..500 {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        if locks
            .lines()
            .any(|l| l.contains("->") && l.contains("FLOCK") && l.contains(&suffix))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no operation came to wait for the pool lock within 5 s");
}

/// NodeStage again at the same path with the other read-only setting (a
/// volume created for both ReadWriteOnce and ReadOnlyMany): ALREADY_EXISTS,
/// as the spec has it for a stage that is incompatible, not OK.
#[tokio::test(flavor = "multi_thread")]
async fn restaging_with_another_read_only_setting_already_exists() {
    let c = Cluster::new(&["n1"]);
    let rwo = mount_cap(Mode::SingleNodeWriter, "ext4");
    let rox = mount_cap(Mode::MultiNodeReaderOnly, "ext4");
    let mut req = create_req("pvc-two-modes", 64 * MIB, rwo.clone(), "shop");
    req.volume_capabilities.push(rox.clone());
    let id = c.create_from(req).await.volume_id;
    let staging = c.path(0, "staging");
    let mut node = c.node(0).await;
    node.node_stage_volume(stage_req(&id, &staging, rwo.clone()))
        .await
        .unwrap();
    node.node_stage_volume(stage_req(&id, &staging, rwo))
        .await
        .unwrap();
    let again = node.node_stage_volume(stage_req(&id, &staging, rox)).await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
}
