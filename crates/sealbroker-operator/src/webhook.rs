//! The admission webhook's HTTPS server (rustls with ring, HTTP/1.1).
//!
//! Paths: `/mutate-pods`, `/validate-pods`, `/validate-sealbrokers`
//! (AdmissionReview JSON in and out) and `/healthz`. Decisions are made by
//! [`crate::admission`]; this module only carries them. When the namespace's
//! SealBrokers cannot be read, Pod requests are denied (fail closed).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sealbroker_bounds::{ConnLimits, IdleTimeout, Slots};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, Hook};
use crate::crd::SealBroker;

/// Largest AdmissionReview accepted (the apiserver's own limit is 3 MiB per object).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// The webhook listener's bounds. It fails closed, so a client that holds
/// connections open must not be able to stall every Pod creation.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections held at once; when full, the oldest still in its TLS
    /// handshake is dropped for a new one.
    pub max_connections: usize,
    /// For the TLS handshake, and for each request's headers.
    pub header_timeout: Duration,
    /// An established connection that sends nothing this long is closed.
    pub idle: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            idle: Duration::from_secs(120),
        }
    }
}

/// Where the webhook finds the SealBrokers of a namespace.
pub trait SealBrokerSource: Send + Sync + 'static {
    fn list(&self, namespace: &str) -> impl Future<Output = Result<Vec<SealBroker>, String>> + Send;
}

/// The live cluster, through the controller's client.
impl SealBrokerSource for kube::Client {
    async fn list(&self, namespace: &str) -> Result<Vec<SealBroker>, String> {
        Api::<SealBroker>::namespaced(self.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|e| format!("cannot list SealBrokers in {namespace}: {e}"))
    }
}

/// A fixed set (tests, and `sealbroker-operator webhook --static`).
impl SealBrokerSource for Vec<SealBroker> {
    async fn list(&self, namespace: &str) -> Result<Vec<SealBroker>, String> {
        Ok(self
            .iter()
            .filter(|sb| sb.metadata.namespace.as_deref().unwrap_or("default") == namespace)
            .cloned()
            .collect())
    }
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls server config from PEM files (certificate chain and private key).
pub fn tls_config(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, TlsError> {
    let file_err = |path: &Path, reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_err(cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err(cert_file, "holds no PEM certificate".into()));
    }
    // The error names the file, never its contents.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|_| file_err(key_file, "holds no usable PEM private key".into()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves until `shutdown` completes.
pub async fn serve<S: SealBrokerSource>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    source: Arc<S>,
    bounds: Bounds,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Slots::new(
        "webhook",
        ConnLimits {
            max_connections: bounds.max_connections,
            handshake: bounds.header_timeout,
            idle: bounds.idle,
            on_limit: None,
        },
    );
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !slots.admit(&peer.to_string()) {
            drop(tcp);
            continue;
        }
        let acceptor = acceptor.clone();
        let source = source.clone();
        let handshake = slots.start_handshake();
        tokio::spawn(async move {
            let tls = match handshake.run(acceptor.accept(tcp), &peer.to_string()).await {
                Some(Ok(tls)) => tls,
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                // Timed out or evicted: counted and logged by the bounds.
                None => return,
            };
            let io = IdleTimeout::new(tls, handshake.established());
            let service = service_fn(move |req| handle(req, source.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

async fn handle<S: SealBrokerSource>(
    req: Request<Incoming>,
    source: Arc<S>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/healthz" {
        return Ok(reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()));
    }
    let Some(hook) = Hook::from_path(req.uri().path()) else {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"not found\n".to_vec(),
        ));
    };
    if req.method() != Method::POST {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"POST only\n".to_vec(),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                b"body too large\n".to_vec(),
            ));
        }
    };
    let review = answer(hook, &body, source.as_ref()).await;
    let json = serde_json::to_vec(&wire_form(&review)).unwrap_or_default();
    Ok(reply(StatusCode::OK, "application/json", json))
}

/// The review as `admission.k8s.io/v1` specifies it on the wire: `patch` is
/// a base64 string (Go's `[]byte`), where kube-core serialises a byte array.
pub fn wire_form(review: &AdmissionReview<DynamicObject>) -> serde_json::Value {
    use base64::Engine as _;
    let mut value = serde_json::to_value(review).unwrap_or_default();
    if let Some(patch) = value.pointer_mut("/response/patch")
        && let Some(bytes) = patch.as_array()
    {
        let raw: Vec<u8> = bytes.iter().filter_map(|b| b.as_u64()).map(|b| b as u8).collect();
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(raw));
    }
    value
}

/// The AdmissionReview answering `body`.
pub async fn answer<S: SealBrokerSource>(
    hook: Hook,
    body: &[u8],
    source: &S,
) -> AdmissionReview<DynamicObject> {
    let req = match admission::parse(body) {
        Ok(req) => req,
        Err(review) => return *review,
    };
    let namespace = req.namespace.clone().unwrap_or_default();
    let brokers = if hook.needs_sealbrokers() {
        match source.list(&namespace).await {
            Ok(brokers) => brokers,
            Err(e) => {
                tracing::warn!(uid = %req.uid, error = %e, "denying: SealBrokers unavailable");
                return AdmissionResponse::from(&req)
                    .deny(format!("sealbroker webhook cannot decide: {e}"))
                    .into_review();
            }
        }
    } else {
        Vec::new()
    };
    let response = admission::decide(hook, &req, &brokers);
    tracing::info!(
        uid = %req.uid,
        hook = ?hook,
        namespace = %namespace,
        name = %req.name,
        allowed = response.allowed,
        patched = response.patch.is_some(),
        "admission"
    );
    response.into_review()
}
