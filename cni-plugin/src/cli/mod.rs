//! The operator's side of the same binary: `moat project join a b`, `moat pods`, …

mod follow;
mod report;

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::cmd::isolation::{
    load_peers, load_policy, peers_changed, peers_path, policy_changed, rebuild,
};
use crate::firewall::nflog::NflogGroup;
use crate::firewall::NftFirewall;
use crate::ipam::DiskStore;
use crate::lock::StateLock;
use crate::policy::peers::{self, Peer};
use crate::policy::{Policy, Project};
use crate::spec::{CniError, Code, NetConf};

#[derive(Parser, Debug)]
#[command(
    name = "moat",
    about = "Moat tenant isolation: operator commands (run by a runtime, moat is a CNI plugin)"
)]
pub struct Cli {
    /// The network's conflist (or single plugin config).
    #[arg(
        long,
        env = "MOAT_CONFIG",
        default_value = "/etc/cni/net.d/10-moat.conflist"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Change who may talk to whom; takes effect for running pods at once.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Show the policy: global projects, tenants, egress rules.
    Policy,
    /// Attached pods with project, tenant and addresses.
    Pods,
    /// Dropped packets: cross-tenant by project pair, forged sources by
    /// sender, denied egress by project.
    Drops {
        /// Print dropped packets as they are logged instead (needs
        /// `isolation.logGroup`; at most the log's rate per rule).
        #[arg(long)]
        follow: bool,
        /// With --follow: stop after this many.
        #[arg(long, requires = "follow")]
        count: Option<u64>,
    },
    /// Rebuild the nftables table from persisted state.
    Reconcile,
    /// Pods of other nodes (address → project), kept in step by the node agent.
    #[command(subcommand)]
    Peers(PeersCmd),
}

#[derive(Subcommand, Debug)]
enum PeersCmd {
    /// Replace the peer list with FILE's JSON (`-` for stdin:
    /// `[{"ip": "10.244.2.7", "project": "shop"}, …]`) and apply it at once.
    Sync { file: PathBuf },
    /// Show the synced peers.
    List,
}

#[derive(Subcommand, Debug)]
enum ProjectCmd {
    /// Join projects (and whatever they are already joined with) into one tenant.
    Join { projects: Vec<String> },
    /// Let a project reach, and be reached by, every pod.
    Global { project: String },
    /// Make a project its own tenant again (not global, not joined).
    Isolate { project: String },
    /// Allow or deny a project's pods traffic to addresses outside the cluster.
    Egress { mode: EgressMode, project: String },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum EgressMode {
    Allow,
    Deny,
}

/// Run the operator CLI; returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    crate::logging::init(None, "warn");
    match execute(&cli) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("moat: {e}");
            1
        }
    }
}

fn execute(cli: &Cli) -> Result<String, CniError> {
    let bytes = std::fs::read(&cli.config).map_err(|e| {
        CniError::new(Code::Io, format!("cannot read {}", cli.config.display()))
            .with_details(e.to_string())
    })?;
    let conf = NetConf::parse(&bytes, crate::entry::PLUGIN_TYPE)?;
    if let Top::Drops {
        follow: true,
        count,
    } = cli.command
    {
        // Runs for as long as the operator watches: it must not hold the
        // lock that every ADD and DEL takes.
        follow_drops(&conf, count)?;
        return Ok(String::new());
    }
    // Read before the lock: a writer that stalls (the agent's pipe) must not
    // hold up every ADD and DEL on the node.
    let synced = match &cli.command {
        Top::Peers(PeersCmd::Sync { file }) => Some(read_peers(file)?),
        _ => None,
    };
    let _lock =
        StateLock::acquire(&conf.state_dir()).map_err(|e| CniError::from_error(Code::Io, &e))?;
    let store =
        DiskStore::open(&conf.state_dir()).map_err(|e| CniError::from_error(Code::Io, &e))?;
    let mut fw = NftFirewall::new();
    match &cli.command {
        Top::Project(cmd) => {
            let old = load_policy(&conf)?;
            let mut policy = old.clone();
            change(&mut policy, cmd)?;
            policy_changed(&conf, &store, &mut fw, &old, &policy)?;
            Ok(report::policy(&policy, &store)?)
        }
        Top::Policy => report::policy(&load_policy(&conf)?, &store),
        Top::Pods => report::pods(&load_policy(&conf)?, &store),
        Top::Drops { .. } => report::drops(&conf, &store, &mut fw),
        Top::Peers(PeersCmd::List) => report::peers(&load_policy(&conf)?, &load_peers(&conf)?),
        Top::Peers(PeersCmd::Sync { .. }) => {
            let peers = synced.expect("read above");
            peers_changed(&conf, &store, &mut fw, &peers)?;
            Ok(format!("{} peers synced\n", peers.len()))
        }
        Top::Reconcile => {
            rebuild(&conf, &store, &mut fw, &load_policy(&conf)?)?;
            Ok(format!("table inet {} rebuilt\n", conf.isolation.table))
        }
    }
}

fn follow_drops(conf: &NetConf, count: Option<u64>) -> Result<(), CniError> {
    let group = conf.isolation.log_group.ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "drops --follow reads the NFLOG group that isolation.logGroup names; this network has none",
        )
    })?;
    let mut feed = NflogGroup::bind(group).map_err(|e| CniError::from_error(Code::Firewall, &e))?;
    eprintln!("moat: following NFLOG group {group}");
    let state = conf.state_dir();
    let load = || {
        let _lock = StateLock::acquire(&state).map_err(|e| CniError::from_error(Code::Io, &e))?;
        let store = DiskStore::open(&state).map_err(|e| CniError::from_error(Code::Io, &e))?;
        report::owners(conf, &store)
    };
    let watched = vec![DiskStore::records_dir(&state), peers_path(conf)];
    let mut owners = follow::StateOwners::new(load, watched);
    follow::follow(&mut feed, &mut owners, count, &mut std::io::stdout().lock())
}

fn read_peers(file: &Path) -> Result<Vec<Peer>, CniError> {
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).map(|_| b)
    } else {
        std::fs::read(file)
    }
    .map_err(|e| {
        CniError::new(Code::Io, format!("cannot read {}", file.display()))
            .with_details(e.to_string())
    })?;
    peers::parse(&bytes, file).map_err(|e| CniError::from_error(Code::Decode, &e))
}

fn project(s: &str) -> Result<Project, CniError> {
    Project::new(s).map_err(|e| CniError::from_error(Code::InvalidConfig, &e))
}

fn change(policy: &mut Policy, cmd: &ProjectCmd) -> Result<(), CniError> {
    match cmd {
        ProjectCmd::Join { projects } => {
            let ps = projects
                .iter()
                .map(|p| project(p))
                .collect::<Result<Vec<_>, _>>()?;
            policy
                .join(&ps)
                .map_err(|e| CniError::from_error(Code::InvalidConfig, &e))
        }
        ProjectCmd::Global { project: p } => {
            policy.make_global(&project(p)?);
            Ok(())
        }
        ProjectCmd::Isolate { project: p } => {
            policy.isolate(&project(p)?);
            Ok(())
        }
        ProjectCmd::Egress { mode, project: p } => {
            policy.set_egress(&project(p)?, matches!(mode, EgressMode::Allow));
            Ok(())
        }
    }
}
