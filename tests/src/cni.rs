//! Driving the built `moat` binary exactly as a runtime does: CNI_* env,
//! config on stdin, result on stdout, run inside a test-made "node" netns.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bins::{bin_path, require_root};
use crate::netns::{unique, Netns};

/// What one invocation printed and how it exited.
#[derive(Debug)]
pub struct CniOut {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOut {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The spec error code, asserting the call failed.
    pub fn code(&self) -> u64 {
        assert!(!self.success, "expected failure, got {self:?}");
        self.json()["code"].as_u64().expect("error code")
    }

    pub fn ok(self) -> Self {
        assert!(self.success, "plugin failed: {self:?}");
        self
    }
}

/// One invocation's variable part.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub command: &'static str,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
}

/// A CLI process that keeps running.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: BufReader<ChildStderr>,
}

impl Running {
    /// Its next line on stderr (where it says it is ready, or why it stopped).
    pub fn stderr_line(&mut self) -> String {
        let mut line = String::new();
        self.stderr.read_line(&mut line).expect("read stderr");
        line
    }

    /// The lines it printed on stdout within `window`.
    pub fn lines_within(&self, window: Duration) -> Vec<String> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulated node: its own netns (the "host" side), state dir and config.
pub struct Node {
    pub ns: Netns,
    pub data_dir: PathBuf,
    pub conf: Value,
    pub bin: PathBuf,
}

pub fn dual_stack_conf(version: &str) -> Value {
    json!({
        "cniVersion": version, "name": "moat-test", "type": "moat",
        "ipam": {"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]},
        "isolation": {"globalProjects": ["kube-system"]},
    })
}

/// [`dual_stack_conf`] logging drops to NFLOG group `group`.
pub fn drop_log_conf(group: u16) -> Value {
    let mut conf = dual_stack_conf("1.1.0");
    conf["isolation"]["logGroup"] = group.into();
    conf
}

impl Node {
    pub fn new(mut conf: Value) -> Self {
        require_root();
        let ns = Netns::new("node");
        // The node's own address, as a real node has on its uplink.
        ns.ip(&["addr", "add", "10.255.0.1/32", "dev", "lo"]);
        ns.ip(&["addr", "add", "fdff::1/128", "dev", "lo"]);
        let data_dir = std::env::temp_dir().join(unique("state"));
        conf["dataDir"] = json!(data_dir);
        conf["runDir"] = json!(data_dir.join("run"));
        Self {
            ns,
            data_dir,
            conf,
            bin: bin_path("moat"),
        }
    }

    /// The operator CLI in the node netns against this node's config.
    fn cli_command(&self, args: &[&str]) -> Command {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let conf_path = self.data_dir.join("moat.conf");
        // Atomic: parallel CLI calls must never read a half-written file.
        let tmp = self.data_dir.join(unique("conf"));
        std::fs::write(&tmp, self.conf.to_string()).unwrap();
        std::fs::rename(&tmp, &conf_path).unwrap();
        let mut cmd = self.ns.exec(self.bin.to_str().unwrap());
        cmd.arg("--config")
            .arg(&conf_path)
            .args(args)
            .env_remove("CNI_COMMAND");
        cmd
    }

    /// The operator CLI, run to its end.
    pub fn cli(&self, args: &[&str]) -> CniOut {
        let out = self.cli_command(args).output().expect("run moat cli");
        CniOut {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The operator CLI left running (`drops --follow`), its output read
    /// line by line; killed when dropped.
    pub fn cli_running(&self, args: &[&str]) -> Running {
        let mut child = self
            .cli_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moat cli");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = BufReader::new(child.stderr.take().unwrap());
        Running {
            child,
            lines,
            stderr,
        }
    }

    /// An nft script run in the node netns (a test's stand-in for
    /// kube-proxy or an admin, in a table of its own), asserting it loaded.
    pub fn nft_script(&self, rules: &str) {
        let mut nft = self
            .ns
            .exec("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft");
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft refused: {rules}");
    }

    /// `moat drops --follow`, once it is reading (its NFLOG group bound).
    pub fn follow_drops(&self) -> Running {
        let mut follower = self.cli_running(&["drops", "--follow"]);
        let ready = follower.stderr_line();
        assert!(
            ready.contains("following NFLOG group"),
            "moat drops --follow: {ready}"
        );
        follower
    }

    /// `nft -j list table inet <table>` in the node netns.
    pub fn nft_table(&self) -> Option<Value> {
        self.nft_table_named(self.conf["isolation"]["table"].as_str().unwrap_or("moat"))
    }

    /// `nft -j list table inet <table>` in the node netns, any table.
    pub fn nft_table_named(&self, table: &str) -> Option<Value> {
        let out = self
            .ns
            .exec("nft")
            .args(["-j", "list", "table", "inet", table])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Our table's handle: a rebuild deletes and re-adds the table, a change
    /// in place keeps it.
    pub fn table_handle(&self) -> Value {
        self.nft_table().expect("table")["nftables"][1]["table"]["handle"].clone()
    }

    /// The fast path's epoch: the one rule of the `epoch` chain, as listed.
    pub fn epoch(&self) -> String {
        let listing = self.nft_table().expect("table");
        let rules: Vec<Value> = listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r["chain"] == "epoch")
            .map(|r| r["expr"].clone())
            .collect();
        assert_eq!(rules.len(), 1, "one epoch: {rules:?}");
        rules[0].to_string()
    }

    pub fn node_ip(v6: bool) -> IpAddr {
        if v6 { "fdff::1" } else { "10.255.0.1" }.parse().unwrap()
    }

    pub fn command(&self, call: &Call) -> Command {
        let mut c = self.ns.exec(self.bin.to_str().unwrap());
        c.env("CNI_COMMAND", call.command)
            .env("CNI_CONTAINERID", &call.container_id)
            .env(
                "CNI_NETNS",
                call.netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            )
            .env("CNI_IFNAME", &call.ifname)
            .env("CNI_ARGS", &call.args)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    pub fn spawn(&self, call: &Call, conf: &Value) -> Child {
        let mut child = self.command(call).spawn().expect("spawn moat");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child
    }

    pub fn call_with(&self, call: &Call, conf: &Value) -> CniOut {
        let out = self
            .spawn(call, conf)
            .wait_with_output()
            .expect("wait moat");
        CniOut {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn call(&self, call: &Call) -> CniOut {
        self.call_with(call, &self.conf)
    }

    pub fn add(&self, pod: &Pod) -> CniOut {
        self.call(&pod.call("ADD"))
    }

    pub fn del(&self, pod: &Pod) -> CniOut {
        self.call(&pod.call("DEL"))
    }

    /// Host links of ours still present in the node netns.
    pub fn moat_links(&self) -> Vec<String> {
        let out = self.ns.ip(&["-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap().to_string())
            })
            .filter(|n| n.starts_with("moat"))
            .collect()
    }

    /// The network's attachment state and lock (`<runDir>/<name>`).
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir
            .join("run")
            .join(self.conf["name"].as_str().unwrap())
    }

    /// Addresses still reserved in the IPAM store.
    pub fn reserved(&self) -> Vec<String> {
        let dir = self.state_dir().join("ips");
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A pod: its netns plus the identity the runtime passes.
pub struct Pod {
    pub ns: Netns,
    pub container_id: String,
    pub project: String,
    pub ips: Vec<IpAddr>,
    /// The ADD result, for CHECK's prevResult.
    pub result: Value,
}

impl Pod {
    pub fn new(project: &str) -> Self {
        let ns = Netns::new("pod");
        let container_id = format!("c{}", ns.name.replace('-', ""));
        Self {
            ns,
            container_id,
            project: project.to_string(),
            ips: Vec::new(),
            result: Value::Null,
        }
    }

    pub fn call(&self, command: &'static str) -> Call {
        Call {
            command,
            container_id: self.container_id.clone(),
            netns: Some(self.ns.path()),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                self.project, self.ns.name, self.container_id
            ),
        }
    }

    /// Record the addresses from an ADD result.
    pub fn set_result(&mut self, result: &Value) {
        self.result = result.clone();
        self.ips = result["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .map(|ip| {
                ip["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
    }

    pub fn ip(&self, v6: bool) -> IpAddr {
        *self
            .ips
            .iter()
            .find(|ip| ip.is_ipv6() == v6)
            .expect("pod has an address of that family")
    }
}

/// Create and ADD pods; panics if any ADD fails.
pub fn attach(node: &Node, projects: &[&str]) -> Vec<Pod> {
    projects
        .iter()
        .map(|p| {
            let mut pod = Pod::new(p);
            let out = node.add(&pod).ok();
            pod.set_result(&out.json());
            pod
        })
        .collect()
}
