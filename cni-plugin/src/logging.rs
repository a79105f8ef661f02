//! Logs go to stderr and, if configured, a file; never to stdout, which belongs to the runtime.

use std::fs::OpenOptions;
use std::path::Path;

use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

pub fn init(log_file: Option<&Path>, level: &str) {
    let filter = EnvFilter::try_from_env("MOAT_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let file = log_file.and_then(|p| {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        OpenOptions::new().create(true).append(true).open(p).ok()
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    // A second init (CLI paths that log before and after config) is harmless.
    let _ = match file {
        Some(f) => builder
            .with_writer(std::io::stderr.and(std::sync::Mutex::new(f)))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
