//! moat-csi: the CSI driver binary (controller, node, or both).

mod backend;
mod config;
mod mount;
mod ops;
mod server;
mod service;
mod state;
mod volume;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = config::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let socket = args.socket_path()?;
    let driver = ops::Driver {
        name: args.driver_name.clone(),
        node_id: args.node_id.clone(),
        store: state::Store::open(&args.state_dir())?,
        pool: backend::Pool::open(&args.pool)?,
        mounter: Box::new(mount::LinuxMounter),
        loops: Box::new(backend::LosetupLoops),
        quotas: args.driver_config()?.project_quotas,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        crash_at: std::env::var("MOAT_CSI_CRASH_AT").ok(),
        pause_at: std::env::var("MOAT_CSI_PAUSE_AT").ok(),
    };
    if args.mode.controller() {
        ops::reconcile::controller(&driver)?;
    }
    if args.mode.node() {
        ops::reconcile::node(&driver)?;
    }
    // One async worker: it only decodes requests; every mount, file and tool
    // call runs in `block_in_place` (service::Ctx::run), which needs the
    // multi-thread scheduler to hand the worker's tasks to another thread
    // while it blocks. A second worker would only add cross-thread wake-ups.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(server::serve(
            &socket,
            args.mode,
            std::time::Duration::from_secs(args.shutdown_grace),
            driver,
        ))
}
