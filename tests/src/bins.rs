//! Finding the workspace's built binaries from a test or the demo.

use std::path::PathBuf;

/// `MOAT_BIN_DIR`, else the nearest ancestor of this executable holding
/// `name` (target/<profile>/ for tests in target/<profile>/deps/).
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("MOAT_BIN_DIR") {
        let p = PathBuf::from(dir).join(name);
        assert!(p.exists(), "{} does not exist (MOAT_BIN_DIR)", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "binary {name} not found above {}: run `cargo build --workspace --bins` first",
        exe.display()
    );
}

/// Fail loudly, never skip: these tests need root for namespaces and mounts.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, nftables, mounts)"
    );
}
