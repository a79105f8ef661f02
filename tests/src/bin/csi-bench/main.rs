//! CSI benchmark (not a test): NodePublish + NodeUnpublish through the
//! driver's socket against the same bind mount done with the `mount` and
//! `umount` programs (what the reference hostpath driver runs), interleaved in
//! one run; then CreateVolume + DeleteVolume per volume kind. Prints a table.

use std::process::Command;
use std::time::{Duration, Instant};

use moat_csi_proto as csi;
use moat_csi_proto::node_client::NodeClient;
use moat_e2e::csi::{block_cap, create_req, mount_cap, publish_req, stage_req, Cluster, Mode, MIB};
use tonic::transport::Channel;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn run(program: &str, args: &[&str]) {
    let s = Command::new(program).args(args).status().expect("spawn");
    assert!(s.success(), "{program} {args:?}");
}

/// One connection, kept, as kubelet keeps its connection to the plugin.
async fn publish_pair(
    node: &mut NodeClient<Channel>,
    id: &str,
    staging: &str,
    target: &str,
) -> Duration {
    let cap = mount_cap(Mode::MultiNodeMultiWriter, "");
    let t = Instant::now();
    node.node_publish_volume(publish_req(id, staging, target, cap, false, "bench"))
        .await
        .unwrap();
    let unpub = csi::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
    };
    node.node_unpublish_volume(unpub).await.unwrap();
    t.elapsed()
}

fn program_pair(src: &str, target: &str) -> Duration {
    let t = Instant::now();
    std::fs::create_dir_all(target).unwrap();
    run("mount", &["--bind", src, target]);
    run("umount", &[target]);
    std::fs::remove_dir(target).unwrap();
    t.elapsed()
}

/// Two RPCs that do no work: the transport's share of a publish pair.
async fn rpc_floor(node: &mut NodeClient<Channel>) -> Duration {
    let t = Instant::now();
    for _ in 0..2 {
        node.node_get_info(csi::NodeGetInfoRequest {})
            .await
            .unwrap();
    }
    t.elapsed()
}

async fn publish_bench(samples: usize) -> (Duration, Duration, Duration) {
    let c = Cluster::new(&["bench-node"]);
    let cap = mount_cap(Mode::MultiNodeMultiWriter, "");
    let id = c.create("bench-rwx", 64 * MIB, cap.clone(), "bench").await;
    let staging = c.path(0, "staging");
    c.node(0)
        .await
        .node_stage_volume(stage_req(&id, &staging, cap))
        .await
        .unwrap();
    let src = c.pool.join("volumes").join(&id).display().to_string();
    let (mut moat, mut reference, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let mut node = c.node(0).await;
    for i in 0..samples {
        let target = c.path(0, &format!("t{i}"));
        // Alternate who goes first so both see the same machine state.
        if i % 2 == 0 {
            moat.push(publish_pair(&mut node, &id, &staging, &target).await);
            reference.push(program_pair(&src, &format!("{target}-ref")));
        } else {
            reference.push(program_pair(&src, &format!("{target}-ref")));
            moat.push(publish_pair(&mut node, &id, &staging, &target).await);
        }
    }
    // The floor is taken the way the pairs are: right after the reference's
    // programs ran, so both see the same (cold) caches and parked threads.
    for i in 0..samples {
        let target = c.path(0, &format!("f{i}"));
        program_pair(&src, &format!("{target}-ref"));
        floor.push(rpc_floor(&mut node).await);
    }
    (median(moat), median(reference), median(floor))
}

async fn create_delete_bench(samples: usize) -> Vec<(&'static str, Duration, Duration)> {
    let c = Cluster::new(&[]);
    let kinds: [(&str, csi::VolumeCapability, i64); 5] = [
        (
            "ext4 image",
            mount_cap(Mode::SingleNodeWriter, "ext4"),
            64 * MIB,
        ),
        (
            "xfs image",
            mount_cap(Mode::SingleNodeWriter, "xfs"),
            300 * MIB,
        ),
        (
            "btrfs image",
            mount_cap(Mode::SingleNodeWriter, "btrfs"),
            128 * MIB,
        ),
        (
            "rwx directory",
            mount_cap(Mode::MultiNodeMultiWriter, ""),
            64 * MIB,
        ),
        ("block", block_cap(Mode::SingleNodeWriter), 64 * MIB),
    ];
    let mut ctrl = c.ctrl().await;
    let mut out = Vec::new();
    for (label, cap, size) in kinds {
        let (mut creates, mut deletes) = (Vec::new(), Vec::new());
        for i in 0..samples {
            let t = Instant::now();
            let v = ctrl
                .create_volume(create_req(
                    &format!("{label}-{i}"),
                    size,
                    cap.clone(),
                    "bench",
                ))
                .await
                .unwrap();
            creates.push(t.elapsed());
            let id = v.into_inner().volume.unwrap().volume_id;
            let t = Instant::now();
            ctrl.delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .unwrap();
            deletes.push(t.elapsed());
        }
        out.push((label, median(creates), median(deletes)));
    }
    out
}

/// Ctrl-C or SIGTERM drops the running bench, so its cluster cleans up
/// (processes, mounts, loop devices, files) before the process exits.
async fn interruptible<T>(f: impl std::future::Future<Output = T>) -> T {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).unwrap();
    let done = tokio::select! {
        r = f => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
    };
    // The bench future, and its cluster, are dropped by now.
    done.unwrap_or_else(|| std::process::exit(130))
}

fn main() {
    let samples: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (moat, reference, floor) = rt.block_on(interruptible(publish_bench(samples)));
    println!("NodePublish + NodeUnpublish, median of {samples} (interleaved)\n");
    println!("| what | median |");
    println!("|---|---|");
    println!(
        "| moat-csi: NodePublish + NodeUnpublish over the socket | {} |",
        ms(moat)
    );
    println!(
        "| reference: `mount --bind` + `umount` programs | {} |",
        ms(reference)
    );
    println!(
        "| (two empty RPCs on the same connection, for scale) | {} |",
        ms(floor)
    );
    let ratio = moat.as_secs_f64() / reference.as_secs_f64();
    let verdict = if ratio <= 0.25 { "met" } else { "MISSED" };
    println!("| ratio (goal ≤ 0.25×) | {ratio:.3}× ({verdict}) |\n");
    let n = (samples / 10).max(5);
    println!("CreateVolume + DeleteVolume, median of {n} per kind\n");
    println!("| kind | CreateVolume | DeleteVolume |");
    println!("|---|---|---|");
    for (label, c, d) in rt.block_on(interruptible(create_delete_bench(n))) {
        println!("| {label} | {} | {} |", ms(c), ms(d));
    }
}
