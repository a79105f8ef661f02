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
    // A graceful stop waits for clients to close their connections; kubelet
    // keeps its own open, so in-flight RPCs get a bounded grace and no more.
    let deadline = async {
        if stopping.await.is_ok() {
            tokio::time::sleep(grace).await;
            warn!(
                grace_s = grace.as_secs(),
                "connections still open: stopping anyway"
            );
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = serving => r?,
        _ = deadline => {}
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}
