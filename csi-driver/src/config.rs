//! Command line, with environment fallbacks as the sidecar manifests use.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "moat-csi",
    about = "Moat CSI driver: access modes enforced at the mount, volumes owned by their project"
)]
pub struct Args {
    /// gRPC endpoint: unix:///path/to/csi.sock
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's id (the Kubernetes node name).
    #[arg(long, env = "NODE_ID")]
    pub node_id: String,
    #[arg(long, env = "DRIVER_NAME", default_value = "csi.moat.dev")]
    pub driver_name: String,
    /// The storage pool: a shared filesystem mounted at this path on every node.
    #[arg(long, env = "MOAT_POOL", default_value = "/var/lib/moat/pool")]
    pub pool: PathBuf,
    /// Durable metadata, shared by all nodes [default: <pool>/.moat]
    #[arg(long, env = "MOAT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, env = "MOAT_MODE", value_enum, default_value = "both")]
    pub mode: Mode,
    /// JSON driver config, e.g. {"projectQuotas": {"shop": 10737418240}}
    #[arg(long, env = "MOAT_CSI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds in-flight RPCs may run on after SIGTERM before the driver exits.
    #[arg(long, env = "MOAT_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Controller,
    Node,
    Both,
}

impl Mode {
    pub fn controller(self) -> bool {
        self != Mode::Node
    }
    pub fn node(self) -> bool {
        self != Mode::Controller
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriverConfig {
    /// Bytes of volume capacity each project may hold.
    #[serde(default)]
    pub project_quotas: BTreeMap<String, u64>,
}

impl Args {
    pub fn socket_path(&self) -> anyhow::Result<PathBuf> {
        let p = self
            .endpoint
            .strip_prefix("unix://")
            .ok_or_else(|| anyhow::anyhow!("endpoint {} is not unix://", self.endpoint))?;
        anyhow::ensure!(
            p.starts_with('/'),
            "endpoint {} needs an absolute path",
            self.endpoint
        );
        Ok(PathBuf::from(p))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.pool.join(".moat"))
    }

    pub fn driver_config(&self) -> anyhow::Result<DriverConfig> {
        let Some(path) = &self.config else {
            return Ok(DriverConfig::default());
        };
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
