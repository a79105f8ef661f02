//! Access modes enforced at the mount, and volumes owned by their project:
//! the built driver over its socket, real mounts checked with real writes.

use moat_e2e::csi::{block_cap, is_mounted, mount_cap, refused, write_in, Cluster, Mode, MIB};
use tonic::Code;

const EROFS: i32 = 30;

fn assert_erofs(r: std::io::Result<()>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.raw_os_error(), Some(EROFS), "{what}: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rwo_writes_on_one_node_and_refuses_a_second_node() {
    let c = Cluster::new(&["n1", "n2"]);
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let id = c.create("pvc-rwo", 64 * MIB, cap.clone(), "shop").await;
    let target = c
        .attach(0, &id, cap.clone(), false, "shop", "pod-a")
        .await
        .unwrap();
    write_in(&target, "hello", "from n1").expect("write into an RWO volume");
    let second = refused(
        c.attach(1, &id, cap.clone(), false, "shop", "pod-b"),
        Code::FailedPrecondition,
    )
    .await;
    assert!(
        second.message().contains("n1"),
        "names the holder: {}",
        second.message()
    );
    // A CO that skips ControllerPublish meets the same rule at the node.
    refused(
        c.node_attach(1, &id, cap, false, "shop", "pod-c"),
        Code::FailedPrecondition,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rox_and_readonly_publications_refuse_writes_with_erofs() {
    let c = Cluster::new(&["n1", "n2"]);
    let rwo = mount_cap(Mode::SingleNodeWriter, "ext4");
    let id = c.create("pvc-seed", 64 * MIB, rwo.clone(), "shop").await;
    let rw = c
        .attach(0, &id, rwo.clone(), false, "shop", "writer")
        .await
        .unwrap();
    write_in(&rw, "data", "seed").unwrap();
    // PUBLISH_READONLY on the same node: a read-only bind of a writable volume.
    let ro = c
        .node_attach(0, &id, rwo, true, "shop", "reader")
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("{ro}/data")).unwrap(),
        "seed"
    );
    assert_erofs(write_in(&ro, "x", "y"), "readonly publish");

    let rox = mount_cap(Mode::MultiNodeReaderOnly, "ext4");
    let id = c.create("pvc-rox", 64 * MIB, rox.clone(), "shop").await;
    for (i, t) in [(0, "rox-a"), (1, "rox-b")] {
        // Asked read-write: the mount is read-only all the same.
        let target = c
            .attach(i, &id, rox.clone(), false, "shop", t)
            .await
            .unwrap();
        assert_erofs(write_in(&target, "x", "y"), "ROX publish");
    }
    // The same volume asked for as ReadWriteOnce (a PV edited, another CO):
    // refused at ControllerPublish, and at NodeStage and NodePublish for a CO
    // that skips it; nothing writable is mounted.
    let rwo = mount_cap(Mode::SingleNodeWriter, "ext4");
    let widened = refused(
        c.attach(1, &id, rwo.clone(), false, "shop", "rox-as-rwo"),
        Code::InvalidArgument,
    )
    .await;
    assert!(widened.message().contains("created for"), "{widened:?}");
    refused(
        c.node_attach(1, &id, rwo, false, "shop", "rox-as-rwo"),
        Code::InvalidArgument,
    )
    .await;
    assert!(!is_mounted(&c.path(1, "rox-as-rwo")));
}

#[tokio::test(flavor = "multi_thread")]
async fn rwop_refuses_a_second_target() {
    let c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::SingleNodeSingleWriter, "ext4");
    let id = c.create("pvc-rwop", 64 * MIB, cap.clone(), "shop").await;
    let first = c
        .attach(0, &id, cap.clone(), false, "shop", "pod-a")
        .await
        .unwrap();
    write_in(&first, "a", "b").unwrap();
    let second = refused(
        c.attach(0, &id, cap, false, "shop", "pod-b"),
        Code::FailedPrecondition,
    )
    .await;
    assert!(second.message().contains(&first), "{}", second.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn rwx_on_two_nodes_both_write_and_see_each_other() {
    let c = Cluster::new(&["n1", "n2"]);
    let cap = mount_cap(Mode::MultiNodeMultiWriter, "");
    let id = c.create("pvc-rwx", 64 * MIB, cap.clone(), "shop").await;
    let a = c
        .attach(0, &id, cap.clone(), false, "shop", "pod-a")
        .await
        .unwrap();
    let b = c.attach(1, &id, cap, false, "shop", "pod-b").await.unwrap();
    write_in(&a, "from-n1", "1").unwrap();
    write_in(&b, "from-n2", "2").unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("{b}/from-n1")).unwrap(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{a}/from-n2")).unwrap(),
        "2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_node_single_writer_makes_the_rest_read_only() {
    let c = Cluster::new(&["n1", "n2"]);
    let cap = mount_cap(Mode::MultiNodeSingleWriter, "");
    let id = c.create("pvc-mnsw", 64 * MIB, cap.clone(), "shop").await;
    let w = c
        .node_attach(0, &id, cap.clone(), false, "shop", "writer")
        .await
        .unwrap();
    write_in(&w, "f", "1").unwrap();
    let r = c
        .node_attach(1, &id, cap, false, "shop", "reader")
        .await
        .unwrap();
    assert_erofs(
        write_in(&r, "g", "2"),
        "second publication of a single-writer volume",
    );
    assert_eq!(std::fs::read_to_string(format!("{r}/f")).unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_project_is_denied_unless_the_class_shares_the_volume() {
    let c = Cluster::new(&["n1"]);
    let cap = mount_cap(Mode::MultiNodeMultiWriter, "");
    let id = c.create("pvc-private", 64 * MIB, cap.clone(), "shop").await;
    refused(
        c.node_attach(0, &id, cap.clone(), false, "blog", "blog-pod"),
        Code::PermissionDenied,
    )
    .await;
    // volume_context is the PV author's to write: it must not grant access.
    let mut forged = moat_e2e::csi::publish_req(
        &id,
        &c.path(0, "s"),
        &c.path(0, "forged"),
        cap.clone(),
        false,
        "blog",
    );
    forged
        .volume_context
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "blog".into());
    let mut node = c.node(0).await;
    refused(node.node_publish_volume(forged), Code::PermissionDenied).await;

    let mut req = moat_e2e::csi::create_req("pvc-shared", 64 * MIB, cap.clone(), "shop");
    req.parameters
        .insert("moat.dev/shared-with".into(), "blog".into());
    let shared = c.create_from(req).await.volume_id;
    let t = c
        .node_attach(0, &shared, cap.clone(), false, "blog", "blog-ok")
        .await
        .unwrap();
    write_in(&t, "x", "y").unwrap();
    refused(
        c.node_attach(0, &shared, cap, false, "ci", "ci-pod"),
        Code::PermissionDenied,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn block_volume_is_a_writable_device_node() {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::FileTypeExt;
    let c = Cluster::new(&["n1"]);
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = c.create("pvc-block", 32 * MIB, cap.clone(), "shop").await;
    let target = c
        .attach(0, &id, cap.clone(), false, "shop", "dev")
        .await
        .unwrap();
    assert!(std::fs::metadata(&target)
        .unwrap()
        .file_type()
        .is_block_device());
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&target)
        .unwrap();
    dev.seek(SeekFrom::Start(20 * MIB as u64)).unwrap();
    dev.write_all(b"moat-block").unwrap();
    dev.sync_all().unwrap();
    dev.seek(SeekFrom::Start(20 * MIB as u64)).unwrap();
    let mut buf = [0u8; 10];
    dev.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"moat-block");
    assert_eq!(dev.seek(SeekFrom::End(0)).unwrap(), 32 * MIB as u64);

    // A read-only publication of the same volume (readOnly: true in the pod)
    // reads the data and refuses writes: a read-only bind alone would not
    // (the kernel ignores it for device nodes), its own read-only loop does.
    let ro = c
        .node_attach(0, &id, cap, true, "shop", "dev-ro")
        .await
        .unwrap();
    let mut reader = std::fs::File::open(&ro).unwrap();
    reader.seek(SeekFrom::Start(20 * MIB as u64)).unwrap();
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"moat-block");
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(&ro)
        .and_then(|mut f| f.write_all(b"x").and_then(|()| f.sync_all()));
    let err = write.expect_err("a read-only block publication took a write");
    assert!(
        [Some(EROFS), Some(1), Some(13)].contains(&err.raw_os_error()),
        "{err:?}"
    );
    drop(reader);
    let unpub = moat_csi_proto::NodeUnpublishVolumeRequest {
        volume_id: id.clone(),
        target_path: ro.clone(),
    };
    c.node(0).await.node_unpublish_volume(unpub).await.unwrap();
    let ro_loops = c.loops_of(&id).into_iter().filter(|(_, ro)| *ro).count();
    assert_eq!(ro_loops, 0, "the publication's own device is detached");
}
