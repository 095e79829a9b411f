//! The daemon: every door the config names, each on its listener, over one
//! broker, with gRPC health following the broker's readiness, live reload
//! ([`reload`]) and a graceful shutdown that lets in-flight operations finish.

mod reload;
pub mod report;

pub use reload::ReloadSource;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sealbroker_proto::sealbroker::v1::seal_service_server::SealServiceServer;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use crate::broker::Broker;
use crate::broker::caller::Door;
use crate::config::Config;
use crate::doors::grpc::SealGrpc;
use crate::doors::transit;
use crate::net::accept::{AuthorityUnixListener, Conn, ConnLimits, OnLimit, accept_loop};
use crate::net::authority::{RefuseLayer, UnixAuthority};
use crate::net::http::{HttpLimits, serve_http};
use crate::net::listen::{ServeError, bind_unix, listen_tcp};
use crate::net::tls::{self, LiveTls};

/// A running daemon's bound addresses.
#[derive(Debug, Clone)]
pub struct Bound {
    pub unix_socket: Option<PathBuf>,
    pub tcp: Option<std::net::SocketAddr>,
    /// The transit HTTP(S) listener.
    pub transit: Option<SocketAddr>,
    /// The KMIP listener.
    pub kmip: Option<SocketAddr>,
    /// The metrics and health listener.
    pub metrics: Option<SocketAddr>,
}

/// Serves every configured listener until `shutdown` resolves, then lets in-flight requests finish
/// for up to `server.shutdown_grace_secs` and removes the socket file.
/// `on_bound` is called once every listener is bound. With `reload`, SIGHUP
/// and changes to the config's files reload it (see [`reload`]).
pub async fn serve(
    broker: Arc<Broker>,
    config: &Config,
    reload: Option<ReloadSource>,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(&Bound),
) -> Result<(), ServeError> {
    let server = &config.server;
    let socket_mode = config.unix_socket_mode();
    let mut live = reload::Live::default();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<SealServiceServer<SealGrpc>>().await;
    // Reflection in both versions: v1, and v1alpha for the clients that
    // know only it (grpcurl before 1.8.8, older Postman and evans).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sealbroker_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Only what this door serves (the set also holds the plugin's
            // and KMS v2's services).
            .with_service_name("sealbroker.v1.SealService")
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection_error = |e: tonic_reflection::server::Error| ServeError::Io {
        what: format!("reflection: {e}"),
        source: std::io::Error::other("reflection"),
    };
    let reflection = reflection_builder().build_v1().map_err(reflection_error)?;
    let reflection_alpha = reflection_builder().build_v1alpha().map_err(reflection_error)?;
    let seal = SealGrpc::new(broker.clone()).into_server();
    let limits = &config.limits;
    let on_limit: Option<OnLimit> = broker.metrics_handle().map(|metrics| {
        Arc::new(move |listener: &'static str, hit: crate::net::accept::LimitHit| {
            metrics.connection_limited(listener, hit.as_str())
        }) as OnLimit
    });
    let conn_limits = ConnLimits {
        max_connections: limits.max_connections,
        handshake: Duration::from_secs(limits.handshake_timeout_secs),
        idle: Duration::from_secs(limits.idle_timeout_secs),
        on_limit,
    };
    let http_limits = HttpLimits {
        header_timeout: Duration::from_secs(limits.header_timeout_secs),
        max_concurrent_streams: limits.max_concurrent_streams,
    };
    let max_streams = limits.max_concurrent_streams;
    // Every door refuses a request whose unix-socket :authority was refused
    // (see net::authority); on TCP no request carries the mark.
    let router = || {
        Server::builder()
            .max_concurrent_streams(Some(max_streams))
            .layer(RefuseLayer)
            .add_service(health_service.clone())
            .add_service(reflection.clone())
            .add_service(reflection_alpha.clone())
            .add_service(seal.clone())
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    // Refused before anything listens, naming the field.
    let reporter = report::PodReporter::from_config(&config.report)?;
    // gRPC health follows the same cached deep probe as /readyz.
    {
        let reporter = health_reporter.clone();
        let broker = broker.clone();
        let mut stop = stop_rx.clone();
        let period = Duration::from_secs(broker.limits().health_cache_secs.max(1));
        tokio::spawn(async move {
            loop {
                if broker.status(false).await.unready_keys().is_empty() {
                    reporter.set_serving::<SealServiceServer<SealGrpc>>().await;
                } else {
                    reporter.set_not_serving::<SealServiceServer<SealGrpc>>().await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut tasks: JoinSet<Result<(), ServeError>> = JoinSet::new();
    let mut bound = Bound {
        unix_socket: None,
        tcp: None,
        transit: None,
        kmip: None,
        metrics: None,
    };

    if let Some(path) = &server.unix_socket {
        let incoming = unix_incoming(
            bind_unix(path, socket_mode)?,
            "grpc-unix",
            conn_limits.clone(),
            stop_rx.clone(),
            &mut tasks,
        );
        let serving = router().serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
        tasks.spawn(async move { Ok(serving.await?) });
        bound.unix_socket = Some(path.clone());
        tracing::info!(socket = %path.display(), mode = format!("{socket_mode:04o}"), "gRPC listening on unix socket");
    }

    if let Some(tcp) = &server.tcp {
        let acceptor = match &tcp.tls {
            Some(tls_config) => Some(
                LiveTls::new(tls::server_config(tls_config)?).on_refused(audit_refusals(&broker, Door::Grpc)),
            ),
            None => None,
        };
        let is_tls = acceptor.is_some();
        live.tcp_tls = acceptor.clone();
        let (local, conn_rx) = listen_tcp(
            tcp.listen,
            acceptor,
            stop_rx.clone(),
            &mut tasks,
            "grpc-tcp",
            conn_limits.clone(),
        )
        .await?;
        let incoming = ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>);
        let serving = router().serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
        tasks.spawn(async move { Ok(serving.await?) });
        bound.tcp = Some(local);
        if is_tls {
            tracing::info!(address = %local, "gRPC listening on TCP with mutual TLS");
        } else {
            tracing::warn!(address = %local, security_risk = true, "gRPC listening on PLAINTEXT TCP (development profile)");
        }
    }

    if let Some(transit_config) = &server.transit {
        // Tokens and certificates load before binding, so a bad file stops
        // start-up before anything listens.
        let (app, tokens) = transit::live_router(broker.clone(), transit_config)?;
        live.transit_tokens = Some(tokens);
        let acceptor = match &transit_config.tls {
            Some(tls_config) => Some(
                LiveTls::new(tls::server_config_at(
                    tls_config,
                    "server.transit.tls",
                    transit::ALPN,
                )?)
                .on_refused(audit_refusals(&broker, Door::Transit)),
            ),
            None => None,
        };
        live.transit_tls = acceptor.clone();
        let client_certs = transit_config
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        let is_tls = acceptor.is_some();
        let (local, conn_rx) = listen_tcp(
            transit_config.listen,
            acceptor,
            stop_rx.clone(),
            &mut tasks,
            "transit",
            conn_limits.clone(),
        )
        .await?;
        tasks.spawn(serve_http(app, conn_rx, stop_rx.clone(), http_limits, "transit"));
        bound.transit = Some(local);
        let mount = transit_config.mount();
        match (is_tls, client_certs) {
            (true, true) => {
                tracing::info!(address = %local, mount, "transit listening on HTTPS with mutual TLS")
            }
            (true, false) => {
                tracing::warn!(address = %local, mount, security_risk = true, "transit listening on HTTPS WITHOUT client certificates (development profile)")
            }
            _ => {
                tracing::warn!(address = %local, mount, security_risk = true, "transit listening on PLAINTEXT HTTP (development profile)")
            }
        }
    }
    if let Some(kmip) = &server.kmip {
        // Config::check made sure both are there.
        let tls_config = kmip
            .tls
            .as_ref()
            .ok_or_else(|| crate::config::ConfigError::new("server.kmip.tls", "is missing"))?;
        let acceptor = LiveTls::new(tls::server_config_at(tls_config, "server.kmip.tls", &[])?)
            .on_refused(audit_refusals(&broker, Door::Kmip));
        live.kmip_tls = Some(acceptor.clone());
        let (local, conn_rx) = listen_tcp(
            kmip.listen,
            Some(acceptor),
            stop_rx.clone(),
            &mut tasks,
            "kmip",
            conn_limits.clone(),
        )
        .await?;
        let door = Arc::new(crate::doors::kmip::KmipDoor::new(broker.clone()));
        tasks.spawn(door.serve(conn_rx, stop_rx.clone()));
        bound.kmip = Some(local);
        tracing::info!(address = %local, "KMIP listening with mutual TLS");
    }
    if let Some(metrics) = &server.metrics {
        let (local, conn_rx) = listen_tcp(
            metrics.listen,
            None,
            stop_rx.clone(),
            &mut tasks,
            "metrics",
            conn_limits.clone(),
        )
        .await?;
        let app = crate::broker::metrics::router(broker.clone());
        tasks.spawn(serve_http(app, conn_rx, stop_rx.clone(), http_limits, "metrics"));
        bound.metrics = Some(local);
        tracing::info!(address = %local, "metrics, /livez and /readyz listening");
    }
    if let Some(kms) = &server.kms_v2 {
        let mode = crate::config::parse_mode(&kms.socket_mode).unwrap_or(0o600);
        let incoming = unix_incoming(
            bind_unix(&kms.socket, mode)?,
            "kms-v2",
            conn_limits.clone(),
            stop_rx.clone(),
            &mut tasks,
        );
        let (kms_health, kms_health_service) = tonic_health::server::health_reporter();
        kms_health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let service = crate::doors::kmsv2::KmsV2::new(broker.clone(), kms.key_name.clone()).into_server();
        let serving = Server::builder()
            .max_concurrent_streams(Some(max_streams))
            .layer(RefuseLayer)
            .add_service(kms_health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
        tasks.spawn(async move { serving.await.map_err(ServeError::from) });
        tracing::info!(socket = %kms.socket.display(), key = %kms.key_name, "Kubernetes KMS v2 listening");
    }
    if let Some(source) = reload {
        let reloader = Arc::new(reload::Reloader::new(
            source,
            broker.clone(),
            live,
            config.clone(),
        ));
        tokio::spawn(reloader.run(stop_rx.clone()));
    } else {
        drop(live);
    }
    if let Some(reporter) = reporter {
        tokio::spawn(reporter.run(broker.clone(), stop_rx.clone()));
    }
    on_bound(&bound);

    shutdown.await;
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let _ = stop_tx.send(true);
    health_reporter
        .set_not_serving::<SealServiceServer<SealGrpc>>()
        .await;
    // Wait for operations already running to finish; idle connections do
    // not hold the shutdown up.
    let grace = Duration::from_secs(server.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async {
        while broker.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            in_flight = broker.in_flight(),
            "in-flight requests did not finish within the grace period; aborting them"
        );
    }
    // Let the servers send their last responses, then close what is left.
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::warn!(error = %e, "listener ended with an error");
            }
        }
    })
    .await;
    tasks.abort_all();
    for path in server
        .unix_socket
        .iter()
        .chain(server.kms_v2.as_ref().map(|k| &k.socket))
    {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Audits each TLS handshake `door`'s listener refuses.
fn audit_refusals(broker: &Arc<Broker>, door: Door) -> crate::net::tls::RefusedHandshake {
    let broker = broker.clone();
    Arc::new(move |peer: &str| broker.audit_refused_connection(door, peer))
}

/// A unix gRPC socket's connections, through the one accept loop (with its
/// bounds) and the `:authority` rewriter, as tonic's incoming stream.
fn unix_incoming(
    listener: tokio::net::UnixListener,
    what: &'static str,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
    tasks: &mut JoinSet<Result<(), ServeError>>,
) -> impl tokio_stream::Stream<Item = Result<UnixConn, std::io::Error>> + use<> {
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel::<UnixConn>(64);
    tasks.spawn(async move {
        accept_loop(
            AuthorityUnixListener(listener),
            None,
            |_, peer| peer,
            conn_tx,
            stop,
            what,
            limits,
        )
        .await;
        Ok(())
    });
    ReceiverStream::new(conn_rx).map(Ok)
}

/// A connection on a unix gRPC socket.
type UnixConn = Conn<UnixAuthority<tokio::net::UnixStream>, tonic::transport::server::UdsConnectInfo>;
