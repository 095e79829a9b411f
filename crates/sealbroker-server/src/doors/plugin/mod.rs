//! OpenBao's KMS plugin front door: `sealbroker kms-plugin`.
//!
//! OpenBao (≥ 2.6) launches the plugin binary with a magic cookie in the
//! environment, the PEM of its own client certificate in
//! `PLUGIN_CLIENT_CERT`, and expects one handshake line on stdout naming a
//! unix socket where we serve gRPC over TLS ("AutoMTLS"), requiring exactly
//! that client certificate. It then speaks go-kms-wrapping's `pb.Wrapper`.
//!
//! Each `SetConfig` creates a wrapper instance from the seal stanza. An
//! instance reaches keys either through a sealbroker daemon (`endpoint`, the
//! sidecar case: the HSM credentials stay in the daemon) or through backends
//! built in-process from a sealbroker config file (`config_file`, the
//! standalone case). Either way the plugin is an adapter over [`Broker`]'s
//! API and holds no crypto of its own.
//!
//! In the standalone case the broker is built by [`Broker::from_config`],
//! like the daemon's: the file's ACLs, audit trail and `state_dir` apply.
//! OpenBao is the caller, identified by the peer credentials of its
//! connection to the plugin socket (`uid:N`, `gid:N`), and audit lines name
//! the door `kms-plugin`. Listener and metrics tables are refused: nothing
//! but OpenBao can reach this process.

mod handshake;
mod health;
mod kms;
mod stock;
mod wrapper;

use std::io::Write;

use std::time::Duration;

use sealbroker_proto::{metadata, pb, plugin};
use tokio::net::UnixStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::broker::registry::BackendRegistry;
use crate::net::accept::{Accepted, Conn, ConnLimits, accept_loop};

use self::handshake::{
    SocketDir, handshake_environment, handshake_line, parent_gone, server_identity, tls_config,
};

pub use handshake::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, NOT_LAUNCHED_BY_OPENBAO, PinnedClientCert};
pub use kms::KmsService;
pub use wrapper::WrapperService;

/// A connection on the plugin socket: TLS, with the peer credentials of the
/// unix socket beneath it, so requests know which process (OpenBao) calls.
type PluginConn = Conn<UnixStream, UdsConnectInfo>;

fn peer_credentials(_: &Accepted<UnixStream>, peer: UdsConnectInfo) -> UdsConnectInfo {
    peer
}

/// `metadata.Metadata`: which stanza fields are secret, so OpenBao censors
/// them when it displays configuration.
struct MetadataService;

#[tonic::async_trait]
impl metadata::metadata_server::Metadata for MetadataService {
    async fn get(&self, _: Request<metadata::Empty>) -> Result<Response<metadata::MetadataResponse>, Status> {
        Ok(Response::new(metadata::MetadataResponse {
            // sealbroker's own stanza, then the stock stanzas the drop-in reads.
            sensitive_kms_fields: [
                "tls_key_file",
                "pin",
                "access_key",
                "secret_key",
                "session_token",
                "credentials_json",
                "client_secret",
                "cert_bytes",
                "cert_password",
            ]
            .map(String::from)
            .to_vec(),
            sensitive_key_fields: vec!["aad".into()],
        }))
    }
}

/// go-plugin's `GRPCController`: `Shutdown` asks us to exit.
struct ControllerService {
    stop: watch::Sender<bool>,
}

#[tonic::async_trait]
impl plugin::grpc_controller_server::GrpcController for ControllerService {
    async fn shutdown(&self, _: Request<plugin::Empty>) -> Result<Response<plugin::Empty>, Status> {
        tracing::info!("OpenBao asked the plugin to shut down");
        let _ = self.stop.send(true);
        Ok(Response::new(plugin::Empty {}))
    }
}

/// Runs the plugin until OpenBao shuts it down (GRPCController.Shutdown),
/// SIGTERM arrives, or OpenBao exits. SIGINT is ignored: Ctrl-C reaches the
/// whole process group, and OpenBao still needs us to finish its shutdown.
///
/// With `stock` (e.g. `awskms`), the plugin stands in for OpenBao's official
/// plugin of that seal type: see [`stock`].
pub async fn run(registry: BackendRegistry, stock: Option<String>) -> Result<(), String> {
    let client_cert = handshake_environment()?;
    // A seal type we cannot stand in for is reported at SetConfig, where
    // OpenBao shows the message; an exit before the handshake shows none.
    let stock = stock.map(|seal_type| stock::stock_kind(&registry, &seal_type));
    if let Some(Err(refusal)) = &stock {
        tracing::error!("{refusal}");
    }
    let (server_cert, server_key) = server_identity()?;
    let tls = crate::net::tls::LiveTls::new(tls_config(client_cert, server_cert.clone(), server_key)?);
    let dir = SocketDir::create()?;
    let socket = dir.path().join("plugin.sock");
    let listener = crate::net::listen::bind_unix(&socket, 0o600).map_err(|e| e.to_string())?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut interrupts = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let stopper = stop_tx.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupts.recv() => tracing::debug!("SIGINT ignored; waiting for OpenBao to stop the plugin"),
                _ = terminate.recv() => { tracing::info!("SIGTERM received"); break; }
                _ = parent_gone() => break,
            }
        }
        let _ = stopper.send(true);
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let (conn_tx, conn_rx) = mpsc::channel::<PluginConn>(16);
    let accepting = tokio::spawn(accept_loop(
        listener,
        Some(tls),
        peer_credentials,
        conn_tx,
        stop_rx.clone(),
        "plugin socket",
        ConnLimits::default(),
    ));
    let incoming = ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>);
    let mut stopped = stop_rx.clone();
    let wrappers = std::sync::Arc::new(WrapperService::new(registry, stock));
    let server = Server::builder()
        .add_service(health_service)
        .add_service(pb::wrapper_server::WrapperServer::from_arc(wrappers.clone()))
        .add_service(sealbroker_proto::kms::kms_server::KmsServer::new(
            kms::KmsService::new(wrappers),
        ))
        .add_service(metadata::metadata_server::MetadataServer::new(MetadataService))
        .add_service(plugin::grpc_controller_server::GrpcControllerServer::new(
            ControllerService { stop: stop_tx },
        ))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.changed().await;
        });

    // The handshake must be the first line on stdout.
    let line = handshake_line(&socket, server_cert.as_ref());
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| format!("writing the handshake: {e}"))?;
    }
    tracing::info!(socket = %socket.display(), "KMS plugin serving");

    // OpenBao keeps its connection open and SIGKILLs us 2 s after Shutdown,
    // so do not wait for it to hang up: answer, then leave.
    let mut stopped = stop_rx;
    tokio::select! {
        result = server => result.map_err(|e| format!("plugin gRPC server failed: {e}"))?,
        _ = async {
            let _ = stopped.changed().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        } => {}
    }
    accepting.abort();
    tracing::info!("KMS plugin stopped");
    Ok(())
}
