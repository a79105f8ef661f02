//! The CSI driver as the sidecars see it: the built `moat-csi` binary on a
//! unix socket, a controller and any number of node processes (simulated
//! nodes) sharing one pool, talked to by a real gRPC client. Everything made
//! (processes, mounts, loop devices, files) is removed on drop, also when a
//! test fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use moat_csi_proto as csi;
use moat_csi_proto::controller_client::ControllerClient;
use moat_csi_proto::identity_client::IdentityClient;
use moat_csi_proto::node_client::NodeClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::bins::{bin_path, require_root};
use crate::netns::unique;

pub use csi::volume_capability::access_mode::Mode;

/// One `moat-csi` process.
pub struct Process {
    pub node_id: String,
    pub socket: PathBuf,
    mode: &'static str,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

/// A controller and nodes over one pool in a temp dir of their own.
pub struct Cluster {
    pub dir: PathBuf,
    pub pool: PathBuf,
    pub controller: Process,
    pub nodes: Vec<Process>,
    config: Option<PathBuf>,
}

async fn channel(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = path.clone();
        let connected = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await;
        match connected {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("no driver at {}: {e}", path.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl Process {
    fn start(&mut self, cluster_pool: &Path, config: Option<&Path>) {
        let mut cmd = Command::new(bin_path("moat-csi"));
        cmd.arg(format!("--endpoint=unix://{}", self.socket.display()))
            .arg(format!("--node-id={}", self.node_id))
            .arg(format!("--mode={}", self.mode))
            .arg(format!("--pool={}", cluster_pool.display()))
            .env("MOAT_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(c) = config {
            cmd.arg(format!("--config={}", c.display()));
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // If the test process dies without running its drops, the driver goes too.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        self.child = Some(cmd.spawn().expect("start moat-csi"));
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// SIGTERM (graceful) or SIGKILL, then reap.
    pub fn stop(&mut self, sig: Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
    }

    /// Wait for the process to exit by itself (a crash point), with a deadline.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = self.child.as_mut().expect("running");
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(Instant::now() < deadline, "driver did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Environment for the next start (e.g. MOAT_CSI_CRASH_AT).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(channel(&self.socket).await)
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(channel(&self.socket).await)
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(channel(&self.socket).await)
    }
}

impl Cluster {
    pub fn new(nodes: &[&str]) -> Self {
        Self::with_config(nodes, None)
    }

    /// `config`: the driver's JSON config (e.g. project quotas).
    pub fn with_config(nodes: &[&str], config: Option<&str>) -> Self {
        Self::build(nodes, config, false)
    }

    /// The pool on an ext4 filesystem of its own, mounted with project quotas
    /// (what a pool must offer for directory volumes to have hard capacity).
    pub fn with_quota_pool(nodes: &[&str]) -> Self {
        Self::build(nodes, None, true)
    }

    fn build(nodes: &[&str], config: Option<&str>, quota_pool: bool) -> Self {
        require_root();
        let dir = std::env::temp_dir().join(unique("csi"));
        let pool = dir.join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        if quota_pool {
            mount_quota_pool(&dir, &pool);
        }
        let config = config.map(|c| {
            let p = dir.join("driver.json");
            std::fs::write(&p, c).unwrap();
            p
        });
        let proc_ = |node_id: &str, mode| Process {
            node_id: node_id.into(),
            socket: dir.join(format!("{node_id}.sock")),
            mode,
            child: None,
            env: Vec::new(),
        };
        let mut c = Self {
            controller: proc_("controller", "controller"),
            nodes: nodes.iter().map(|n| proc_(n, "node")).collect(),
            dir,
            pool,
            config,
        };
        c.start_all();
        c
    }

    fn start_all(&mut self) {
        let (pool, config) = (self.pool.clone(), self.config.clone());
        self.controller.start(&pool, config.as_deref());
        for n in &mut self.nodes {
            n.start(&pool, config.as_deref());
        }
    }

    /// Start a stopped process again (index None: the controller).
    pub fn start(&mut self, which: Option<usize>) {
        let (pool, config) = (self.pool.clone(), self.config.clone());
        let p = match which {
            None => &mut self.controller,
            Some(i) => &mut self.nodes[i],
        };
        p.start(&pool, config.as_deref());
    }

    pub async fn ctrl(&self) -> ControllerClient<Channel> {
        self.controller.controller().await
    }

    pub async fn node(&self, i: usize) -> NodeClient<Channel> {
        self.nodes[i].node().await
    }

    /// A path for a staging or target directory of node `i`.
    pub fn path(&self, i: usize, name: &str) -> String {
        self.dir
            .join(&self.nodes[i].node_id)
            .join(name)
            .display()
            .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.controller.stop(Signal::SIGTERM);
        for n in &mut self.nodes {
            n.stop(Signal::SIGTERM);
        }
        cleanup(&self.dir);
    }
}

fn mount_quota_pool(dir: &Path, pool: &Path) {
    let image = dir.join("pool.img");
    let run = |prog: &str, args: &[&str]| {
        let out = Command::new(prog).args(args).output().expect(prog);
        assert!(
            out.status.success(),
            "{prog} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let img = image.to_str().unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-O",
            "quota,project",
            "-E",
            "quotatype=prjquota",
            img,
        ],
    );
    run(
        "mount",
        &["-o", "loop,prjquota", img, pool.to_str().unwrap()],
    );
}

/// Unmount everything under `dir` (deepest first), detach loop devices over
/// files under it, remove it.
pub fn cleanup(dir: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut mounts: Vec<String> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(|m| m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    if let Ok(out) = Command::new("losetup")
        .args(["--noheadings", "--output", "NAME,BACK-FILE", "--list"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut parts = line.split_whitespace();
            if let (Some(dev), Some(file)) = (parts.next(), parts.next()) {
                if file.starts_with(&prefix) {
                    let _ = Command::new("losetup").args(["--detach", dev]).status();
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

pub fn mount_cap(mode: Mode, fs_type: &str) -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn block_cap(mode: Mode) -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, BlockVolume};
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub const MIB: i64 = 1 << 20;

/// A CreateVolumeRequest owned by `project`, as external-provisioner sends it.
pub fn create_req(
    name: &str,
    size: i64,
    cap: csi::VolumeCapability,
    project: &str,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        parameters: [(
            "csi.storage.k8s.io/pvc/namespace".to_string(),
            project.to_string(),
        )]
        .into(),
        ..Default::default()
    }
}

pub fn stage_req(
    id: &str,
    staging: &str,
    cap: csi::VolumeCapability,
) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

/// A NodePublishVolumeRequest for a pod of `project` (podInfoOnMount).
pub fn publish_req(
    id: &str,
    staging: &str,
    target: &str,
    cap: csi::VolumeCapability,
    readonly: bool,
    project: &str,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        target_path: target.into(),
        volume_capability: Some(cap),
        readonly,
        volume_context: [(
            "csi.storage.k8s.io/pod.namespace".to_string(),
            project.to_string(),
        )]
        .into(),
        ..Default::default()
    }
}

/// Whether something is mounted at `path` (this process's mount table).
pub fn is_mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

/// Try to write a file in a published directory: the OS error, if any.
pub fn write_in(dir: &str, name: &str, content: &str) -> Result<(), std::io::Error> {
    std::fs::write(Path::new(dir).join(name), content)
}

impl Cluster {
    /// CreateVolume as `project`; panics on error.
    pub async fn create(
        &self,
        name: &str,
        size: i64,
        cap: csi::VolumeCapability,
        project: &str,
    ) -> String {
        self.create_from(create_req(name, size, cap, project))
            .await
            .volume_id
    }

    /// CreateVolume of a request the caller shaped; it must succeed.
    pub async fn create_from(&self, req: csi::CreateVolumeRequest) -> csi::Volume {
        let v = self.ctrl().await.create_volume(req).await.expect("create");
        v.into_inner().volume.expect("a volume")
    }

    /// ControllerPublish (when `ctrl`), NodeStage and NodePublish on node `i`
    /// for a pod of `project`; returns the target path or the first error.
    pub async fn attach(
        &self,
        i: usize,
        id: &str,
        cap: csi::VolumeCapability,
        readonly: bool,
        project: &str,
        target: &str,
    ) -> Result<String, tonic::Status> {
        let node = self.nodes[i].node_id.clone();
        self.ctrl()
            .await
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: id.into(),
                node_id: node,
                volume_capability: Some(cap.clone()),
                readonly,
                ..Default::default()
            })
            .await?;
        self.node_attach(i, id, cap, readonly, project, target)
            .await
    }

    /// The loop devices over volume `id`'s image, and whether each is
    /// read-only.
    pub fn loops_of(&self, id: &str) -> Vec<(String, bool)> {
        let out = Command::new("losetup")
            .args(["--noheadings", "--output", "NAME,RO", "--associated"])
            .arg(self.pool.join(format!("volumes/{id}.img")))
            .output()
            .expect("losetup");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().split_once(char::is_whitespace))
            .map(|(name, ro)| (name.to_string(), ro.trim() == "1"))
            .collect()
    }

    /// ControllerUnpublish of `id` from node `i`: the end of a detach, or a
    /// force-detach from a node taken for gone.
    pub async fn detach_from(&self, i: usize, id: &str) {
        let req = csi::ControllerUnpublishVolumeRequest {
            volume_id: id.into(),
            node_id: self.nodes[i].node_id.clone(),
            ..Default::default()
        };
        let mut ctrl = self.ctrl().await;
        ctrl.controller_unpublish_volume(req)
            .await
            .unwrap_or_else(|e| panic!("ControllerUnpublish {id} from node {i}: {e:?}"));
    }

    /// NodeStage + NodePublish only (a CO that skipped ControllerPublish).
    pub async fn node_attach(
        &self,
        i: usize,
        id: &str,
        cap: csi::VolumeCapability,
        readonly: bool,
        project: &str,
        target: &str,
    ) -> Result<String, tonic::Status> {
        let staging = self.path(i, &format!("staging-{id}"));
        let target = self.path(i, target);
        let mut node = self.node(i).await;
        node.node_stage_volume(stage_req(id, &staging, cap.clone()))
            .await?;
        node.node_publish_volume(publish_req(id, &staging, &target, cap, readonly, project))
            .await?;
        Ok(target)
    }
}

/// Await a call (an RPC, an attach) that must be refused, check that the
/// refusal carries `code`, and return it for further checks.
pub async fn refused<T: std::fmt::Debug>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    code: tonic::Code,
) -> tonic::Status {
    let status = call.await.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    status
}
