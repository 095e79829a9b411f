//! Serving HTTP (the transit door, metrics and health) on connections from
//! the accept loop: HTTP/1.1 with a bound on how long a request's headers
//! may take, and HTTP/2 with a bound on streams per connection. Handlers
//! see the connection's [`TlsConnectInfo`] as a request extension.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::transport::server::Connected;

use crate::net::listen::ServeError;
use crate::net::tls::{ServerConn, TlsConnectInfo};

/// The bounds HTTP connections are served within.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers (HTTP/1).
    pub header_timeout: Duration,
    /// HTTP/2 streams open at once on one connection.
    pub max_concurrent_streams: u32,
}

/// One connection's view of the router: requests carry the connection's
/// [`TlsConnectInfo`] as an extension.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    info: TlsConnectInfo,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        // A Router is always ready, so calling without poll_ready is fine.
        tower::Service::call(&mut self.app.clone(), request)
    }
}

/// Serves HTTP/1.1 and HTTP/2 on connections from `conns` until `stop`,
/// then lets in-flight requests finish and closes idle connections.
pub async fn serve_http(
    app: Router,
    mut conns: mpsc::Receiver<ServerConn>,
    mut stop: watch::Receiver<bool>,
    limits: HttpLimits,
    what: &'static str,
) -> Result<(), ServeError> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that never finishes its headers must not hold a connection forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            conn = conns.recv() => {
                let Some(conn) = conn else { break };
                let service = ConnectionService { app: app.clone(), info: conn.connect_info() };
                let serving = graceful.watch(builder.serve_connection(TokioIo::new(conn), service).into_owned());
                connections.spawn(async move {
                    if let Err(error) = serving.await {
                        tracing::debug!(listener = what, %error, "HTTP connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    graceful.shutdown().await;
    Ok(())
}
