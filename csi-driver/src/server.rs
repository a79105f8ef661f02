//! The unix socket: a stale one removed at start, never world-writable, and a
//! graceful shutdown on SIGTERM / SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use moat_csi_proto::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::config::Mode;
use crate::ops::Driver;
use crate::service::controller::ControllerService;
use crate::service::identity::IdentityService;
use crate::service::node::NodeService;
use crate::service::{Ctx, InFlight};

pub async fn serve(
    socket: &Path,
    mode: Mode,
    grace: Duration,
    driver: Driver,
) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove stale socket {}", socket.display()))
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("bind {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    let name = driver.name.clone();
    let ctx = Ctx {
        driver: Arc::new(driver),
        inflight: Arc::new(InFlight::default()),
    };
    let mut router =
        tonic::transport::Server::builder().add_service(IdentityServer::new(IdentityService {
            name,
            controller: mode.controller(),
        }));
    if mode.controller() {
        router = router.add_service(ControllerServer::new(ControllerService(ctx.clone())));
    }
    if mode.node() {
        router = router.add_service(NodeServer::new(NodeService(ctx.clone())));
    }
    info!(socket = %socket.display(), ?mode, "serving");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        let _ = stopping_tx.send(());
    };
    let serving = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    // A graceful stop waits for clients to close their connections, and
    // kubelet keeps its own open: stop once no operation is in progress
    // (a mount, a copy, an mkfs get up to the grace), not when the client
    // hangs up.
    let inflight = ctx.inflight.clone();
    let deadline = async {
        if stopping.await.is_err() {
            return std::future::pending::<()>().await;
        }
        let start = tokio::time::Instant::now();
        while !inflight.is_idle() && start.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !inflight.is_idle() {
            warn!(
                grace_s = grace.as_secs(),
                "operations still running after the grace: stopping anyway"
            );
        }
        // The last answers reach their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::select! {
        r = serving => r?,
        _ = deadline => {}
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}
