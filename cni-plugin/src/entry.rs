//! One CNI invocation from environment and stdin to stdout and exit code.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use serde_json::Value;

use crate::cmd::{dispatch, Ctx};
use crate::firewall::NftFirewall;
use crate::ipam::DiskStore;
use crate::linger::{self, Cleanup};
use crate::logging;
use crate::netlink::KernelWiring;
use crate::spec::version::{version_json, LATEST};
use crate::spec::{CniError, Code, Command, Invocation, NetConf};

pub const PLUGIN_TYPE: &str = "moat";

/// Run the invocation; returns the process exit code. Stdout gets exactly
/// the result or the error JSON; logs go to stderr and the configured file.
pub fn run() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let asked = serde_json::from_slice::<Value>(&stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let version = asked.clone().unwrap_or_else(|| LATEST.to_string());
    let mut lingering = None;
    let outcome = read
        .map_err(|e| CniError::new(Code::Io, "cannot read stdin").with_details(e.to_string()))
        .and_then(|_| run_inner(&stdin, asked.as_deref(), &mut lingering));
    let code = match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(code = e.code as u32, msg = %e.msg, details = %e.details, "failed");
            println!("{}", e.to_json(&version));
            1
        }
    };
    // After the answer is out: nothing of ours waits on the child, which only
    // has to exist before our copy of the socket is closed at exit.
    if let Some(fd) = lingering {
        if let Err(e) = linger::hand_off(&[fd.as_raw_fd()]) {
            tracing::warn!(error = %e, "cannot hand off the nf_tables socket; closing it here");
        }
        // Closed at exit; the child's copy makes that close cheap.
        std::mem::forget(fd);
    }
    code
}

/// `lingering` gets the nf_tables socket if one was opened, for [`linger`].
fn run_inner(
    stdin: &[u8],
    asked: Option<&str>,
    lingering: &mut Option<OwnedFd>,
) -> Result<Option<String>, CniError> {
    let inv = Invocation::from_env(|k| std::env::var(k).ok())?;
    if inv.command == Command::Version {
        return Ok(Some(version_json(asked)));
    }
    let conf = NetConf::parse(stdin, PLUGIN_TYPE)?;
    logging::init(conf.log_file.as_deref(), &conf.log_level);
    let _span =
        tracing::info_span!("cni", command = ?inv.command, container_id = %inv.container_id,
                                    ifname = %inv.ifname, network = %conf.name)
        .entered();
    let mut store =
        DiskStore::open(&conf.state_dir()).map_err(|e| CniError::from_error(Code::Io, &e))?;
    let mut wiring = KernelWiring::new(conf.kernel_cleanup)
        .map_err(|e| CniError::from_error(Code::Kernel, &e))?;
    let mut firewall = NftFirewall::new();
    let mut ctx = Ctx {
        conf: &conf,
        inv: &inv,
        store: &mut store,
        wiring: &mut wiring,
        firewall: &mut firewall,
    };
    let outcome = dispatch(&mut ctx);
    if conf.kernel_cleanup == Cleanup::Background {
        *lingering = firewall.into_socket();
    }
    Ok(outcome?.map(|v| v.to_string()))
}
