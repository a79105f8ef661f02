//! The local single-node demo: Moat's isolation and access-mode rules shown
//! with real namespaces, packets, sockets and mounts, no cluster needed.
//! Exits non-zero if anything differs from what the rules promise.

mod network;

use std::io::Write;

fn main() -> anyhow::Result<()> {
    moat_e2e::bins::require_root();
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let mut out = std::io::stdout().lock();
    if matches!(which.as_str(), "all" | "network") {
        network::run(&mut out)?;
    }
    if matches!(which.as_str(), "all" | "storage") {
        writeln!(out)?;
        moat_e2e::demo_storage::run_storage_demo(&mut out)?;
    }
    writeln!(
        out,
        "\nDemo finished: every rule held, everything it made is gone."
    )?;
    Ok(())
}
