//! A real container runtime drives `moat`: containerd + `ctr run --cni` start two
//! busybox containers whose networking ctr sets up by executing the plugin, the
//! containers reach each other, and ctr's own DEL releases everything.
//!
//! The work is done by `tests/ctr/run.sh` (private mount namespace, test-made node
//! netns, containerd with its own root and socket, an OCI image made by hand from
//! busybox-static). With moat it also checks that isolation is on where it belongs:
//! table `inet moat` in the node netns holds both pods (and neither after DEL), and
//! no such table appears in the host's root netns. This test locates the built
//! `moat`, runs the script and fails with the script's full output when anything
//! goes wrong.
//!
//! Needs root, containerd, runc and busybox-static. `MOAT_CTR_PLUGIN=ptp` runs the
//! same script against Debian's reference plugins instead (harness self-check).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `$MOAT_BIN_DIR/moat`, else `target/<profile>/moat` found by walking up from
/// this test executable (`target/<profile>/deps/runtime_ctr-…`).
fn moat_binary() -> PathBuf {
    if let Some(dir) = std::env::var_os("MOAT_BIN_DIR") {
        let bin = Path::new(&dir).join("moat");
        assert!(
            bin.is_file(),
            "MOAT_BIN_DIR is set but {} does not exist",
            bin.display()
        );
        return bin;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let found = exe
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("moat"))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "the `moat` binary was not found above {}: run `cargo build --workspace --bins` first \
             or set MOAT_BIN_DIR",
            exe.display()
        )
    })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn ctr_run_cni_attaches_two_containers_that_reach_each_other() {
    assert!(
        is_root(),
        "this test needs root (network and mount namespaces, containerd); run the test suite as root"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ctr/run.sh");
    let plugin = std::env::var("MOAT_CTR_PLUGIN").unwrap_or_else(|_| "moat".to_owned());

    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg("--plugin").arg(&plugin);
    if plugin == "moat" {
        cmd.arg("--moat-bin").arg(moat_binary());
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} --plugin {plugin} failed ({})\n----- stdout -----\n{stdout}\n----- stderr -----\n{stderr}",
        script.display(),
        out.status
    );
    assert!(
        stderr.contains(&format!("PASS ({plugin})")),
        "script exited 0 but did not report PASS\n----- stderr -----\n{stderr}"
    );
    // Visible with `cargo test -- --nocapture`.
    eprintln!("{stderr}");
}
