//! Logs go to stderr and, if configured, a file; never to stdout, which belongs to the runtime.

use std::fs::OpenOptions;
use std::path::Path;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::durable::open_creating_dir;

type Filter = Box<dyn Layer<Registry> + Send + Sync>;

/// `MOAT_LOG` (directives) wins over the config's level. A plain level is a
/// `LevelFilter`: building an `EnvFilter` costs about 0.1 ms, a tenth of a
/// whole ADD's own work.
fn filter(level: &str) -> Filter {
    if let Ok(f) = EnvFilter::try_from_env("MOAT_LOG") {
        return Box::new(f);
    }
    match level.parse::<LevelFilter>() {
        Ok(l) => Box::new(l),
        Err(_) => Box::new(EnvFilter::new(level)),
    }
}

pub fn init(log_file: Option<&Path>, level: &str) {
    let file = log_file
        .and_then(|p| open_creating_dir(OpenOptions::new().create(true).append(true), p).ok());
    let writer = match file {
        Some(f) => BoxMakeWriter::new(std::io::stderr.and(std::sync::Mutex::new(f))),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(writer);
    // A second init (CLI paths that log before and after config) is harmless.
    let _ = tracing_subscriber::registry()
        .with(filter(level))
        .with(fmt)
        .try_init();
}
