//! Connections to one KMIP server: mutual TLS (rustls, ring provider), a
//! bounded pool of idle connections, one request per connection at a time,
//! a deadline on every request, and reconnection with backoff.
//!
//! A request takes a permit (at most `max_connections` at once), reuses an
//! idle connection or opens one, and gives the connection back only after a
//! complete answer: a connection with an unread answer, or one whose request
//! was cut short by the deadline, is dropped, never reused. An idle connection
//! the server has closed meanwhile is noticed when the request meets end of
//! file before any answer byte; the request then goes once more on a fresh
//! connection (only operations that are safe to repeat). When opening a
//! connection fails, the pool waits 100 ms, then 200 ms, ... up to 5 s before
//! it tries again, and fails requests fast in between, so a dead server is
//! not hammered and callers learn at once that it is down.
//!
//! The protocol version is negotiated once per pool with DiscoverVersions.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, RootCertStore};
use sealbroker_core::{BackendError, BackendErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use crate::error::CallError;
use crate::protocol::{
    self, Cipher, Encrypted, KeyAttributes, Operation, ProtocolVersion, PublicKeyBlock, ResultReason,
};
use crate::ttlv::{self, HEADER_LEN, Item};
use crate::{BackendConfig, ConfigError};

/// Idle connections older than this are closed rather than reused: servers
/// and middleboxes drop quiet connections.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait after a failed connection attempt; it doubles per failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type Stream = TlsStream<TcpStream>;

/// A pool of mutual-TLS connections to one KMIP server. Cheap to clone; keys
/// on the same server share one pool.
#[derive(Clone)]
pub struct KmipPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    endpoint: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    timeout: Duration,
    permits: Semaphore,
    state: Mutex<PoolState>,
}

struct Idle {
    stream: Stream,
    since: Instant,
}

struct PoolState {
    idle: Vec<Idle>,
    /// Highest protocol version we offer.
    max_version: ProtocolVersion,
    /// What DiscoverVersions settled on; `None` until the first connection.
    version: Option<ProtocolVersion>,
    /// Connection attempts that failed in a row.
    failures: u32,
    /// No new connection attempt before this instant.
    retry_at: Option<Instant>,
    last_error: Option<String>,
    connections_opened: u64,
}

impl fmt::Debug for KmipPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmipPool")
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

fn config_error(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(field, reason)
}

/// Splits `host:port` (or `[v6]:port`) and checks both halves.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<(String, u16), ConfigError> {
    let bad = |why: &str| config_error("endpoint", format!("{endpoint:?} {why}; expected \"host:port\""));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if host.contains(':') && !endpoint.starts_with('[') {
        return Err(bad("has an IPv6 address without brackets"));
    }
    let port: u16 = port.parse().map_err(|_| bad("has no valid port"))?;
    if port == 0 {
        return Err(bad("has port 0"));
    }
    Ok((host.to_owned(), port))
}

fn read_certificates(
    field: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| config_error(field, format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(field, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

impl KmipPool {
    /// Loads the certificates and key and prepares the TLS client. Does not
    /// connect: the first request does, so the broker can start while the
    /// KMIP server is away.
    pub fn new(config: &BackendConfig) -> Result<Self, ConfigError> {
        let (host, _) = parse_endpoint(&config.endpoint)?;
        let server_name = match &config.server_name {
            Some(name) => ServerName::try_from(name.clone()).map_err(|_| {
                config_error("server_name", format!("{name:?} is not a DNS name or IP address"))
            })?,
            None => ServerName::try_from(host.clone()).map_err(|_| {
                config_error(
                    "endpoint",
                    format!("host {host:?} is not a DNS name or IP address; set server_name"),
                )
            })?,
        };
        if config.timeout_secs == 0 {
            return Err(config_error("timeout_secs", "must be at least 1"));
        }
        if config.max_connections == 0 {
            return Err(config_error("max_connections", "must be at least 1"));
        }

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in read_certificates("ca_cert", &config.ca_cert)? {
            roots.add(cert).map_err(|e| {
                config_error(
                    "ca_cert",
                    format!(
                        "{} holds a certificate rustls cannot use: {e}",
                        config.ca_cert.display()
                    ),
                )
            })?;
        }
        let chain = read_certificates("client_cert", &config.client_cert)?;
        let key = PrivateKeyDer::from_pem_file(&config.client_key).map_err(|e| {
            config_error(
                "client_key",
                format!(
                    "cannot read a PEM private key from {}: {e}",
                    config.client_key.display()
                ),
            )
        })?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("endpoint", format!("TLS setup failed: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                config_error(
                    "client_key",
                    format!(
                        "cannot use {} with {}: {e}",
                        config.client_key.display(),
                        config.client_cert.display()
                    ),
                )
            })?;

        Ok(KmipPool {
            inner: Arc::new(PoolInner {
                endpoint: config.endpoint.clone(),
                server_name,
                connector: TlsConnector::from(Arc::new(tls)),
                timeout: Duration::from_secs(config.timeout_secs),
                permits: Semaphore::new(config.max_connections),
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    max_version: ProtocolVersion::V2_0,
                    version: None,
                    failures: 0,
                    retry_at: None,
                    last_error: None,
                    connections_opened: 0,
                }),
            }),
        })
    }

    /// The server's `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Caps the protocol version offered to the server, for servers whose
    /// newer versions misbehave. The default offers 2.0, 1.4, 1.3 and 1.2 and
    /// uses the first the server accepts. Takes effect at the next request.
    pub fn set_max_protocol_version(&self, max: ProtocolVersion) {
        let mut state = self.inner.lock();
        state.max_version = max.max(ProtocolVersion::V1_2);
        state.version = None;
    }

    /// The version DiscoverVersions settled on, once a request has run.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.lock().version
    }

    /// How many TLS connections the pool has opened so far (for metrics and
    /// to show that connections are reused).
    pub fn connections_opened(&self) -> u64 {
        self.inner.lock().connections_opened
    }

    /// Unique Identifiers of the objects whose Name is `name`.
    pub async fn locate(&self, name: &str) -> Result<Vec<String>, BackendError> {
        let payload = self
            .call(Operation::Locate, &|version| {
                Ok(protocol::locate_by_name(version, name))
            })
            .await
            .map_err(|e| e.into_backend(Operation::Locate, &format!("name {name:?}"), self.endpoint()))?;
        protocol::parse_locate(&payload).map_err(|e| {
            CallError::from(e).into_backend(Operation::Locate, &format!("name {name:?}"), self.endpoint())
        })
    }

    pub(crate) async fn create_aes256(&self, name: &str) -> Result<String, CallError> {
        let payload = self
            .call(Operation::Create, &|version| {
                Ok(protocol::create_aes256(version, name))
            })
            .await?;
        Ok(protocol::parse_unique_identifier(&payload)?)
    }

    pub(crate) async fn activate(&self, unique_id: &str) -> Result<(), CallError> {
        self.call(Operation::Activate, &|_| {
            Ok(protocol::by_unique_identifier(unique_id))
        })
        .await
        .map(drop)
    }

    pub(crate) async fn get_attributes(&self, unique_id: &str) -> Result<KeyAttributes, CallError> {
        let payload = self
            .call(Operation::GetAttributes, &|version| {
                Ok(protocol::get_attributes(version, unique_id))
            })
            .await?;
        Ok(protocol::parse_get_attributes(&payload)?)
    }

    /// CreateKeyPair of an RSA pair; returns the private and the public
    /// key's Unique Identifiers.
    pub(crate) async fn create_rsa_key_pair(
        &self,
        bits: i32,
        private: (&str, i32),
        public: (&str, i32),
    ) -> Result<(String, String), CallError> {
        let payload = self
            .call(Operation::CreateKeyPair, &|version| {
                Ok(protocol::create_rsa_key_pair(version, bits, private, public))
            })
            .await?;
        Ok(protocol::parse_create_key_pair(&payload)?)
    }

    /// Get of a public key: its format and material.
    pub(crate) async fn get_public_key(&self, unique_id: &str) -> Result<PublicKeyBlock, CallError> {
        let payload = self
            .call(Operation::Get, &|_| Ok(protocol::by_unique_identifier(unique_id)))
            .await?;
        Ok(protocol::parse_get_public_key(&payload)?)
    }

    /// Sign with RSA PKCS#1 v1.5; the server hashes `message` with `hash`.
    pub(crate) async fn sign_pkcs1(
        &self,
        unique_id: &str,
        hash: u32,
        message: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let mut payload = self
            .call(Operation::Sign, &|_| {
                Ok(protocol::sign_pkcs1(unique_id, hash, message))
            })
            .await?;
        Ok(protocol::parse_sign(&mut payload)?)
    }

    fn aead_check(&self, cipher: Cipher, version: ProtocolVersion) -> Result<(), BackendError> {
        if cipher == Cipher::AesGcm && !version.has_aead_fields() {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "AES_GCM needs KMIP 1.4 or later (Authenticated Encryption Additional Data and Tag), \
                     but KMIP server {} speaks {version}; use encrypt_alg = \"AES_CBC_PAD\"",
                    self.endpoint()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) async fn encrypt(
        &self,
        unique_id: &str,
        cipher: Cipher,
        data: &[u8],
        iv: &[u8],
        aad: &[u8],
    ) -> Result<Encrypted, CallError> {
        let payload = self
            .call(Operation::Encrypt, &|version| {
                self.aead_check(cipher, version)?;
                Ok(protocol::encrypt(unique_id, cipher, data, iv, aad))
            })
            .await?;
        Ok(protocol::parse_encrypt(payload)?)
    }

    pub(crate) async fn decrypt(
        &self,
        unique_id: &str,
        cipher: Cipher,
        data: &[u8],
        iv: &[u8],
        aad: &[u8],
        auth_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CallError> {
        let payload = self
            .call(Operation::Decrypt, &|version| {
                self.aead_check(cipher, version)?;
                Ok(protocol::decrypt(unique_id, cipher, data, iv, aad, auth_tag))
            })
            .await?;
        Ok(protocol::parse_decrypt(payload)?)
    }

    /// Sends one request and returns the payload of its answer, within the
    /// pool's timeout. `payload` builds the request payload for the
    /// negotiated version.
    async fn call(
        &self,
        operation: Operation,
        payload: &(dyn Fn(ProtocolVersion) -> Result<Vec<Item>, BackendError> + Sync),
    ) -> Result<Vec<Item>, CallError> {
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, self.call_within_deadline(operation, payload)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Backend(BackendError::new(
                BackendErrorKind::Timeout,
                format!(
                    "KMIP {operation} to {} did not finish within {}s",
                    self.endpoint(),
                    timeout.as_secs()
                ),
            ))),
        }
    }

    async fn call_within_deadline(
        &self,
        operation: Operation,
        payload: &(dyn Fn(ProtocolVersion) -> Result<Vec<Item>, BackendError> + Sync),
    ) -> Result<Vec<Item>, CallError> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| CallError::Backend(BackendError::unavailable("KMIP connection pool closed")))?;
        let mut retried = false;
        loop {
            let (mut stream, reused) = match self.inner.take_idle() {
                Some(stream) => (stream, true),
                None => (self.inner.connect().await.map_err(CallError::Backend)?, false),
            };
            let result = self.call_on(&mut stream, operation, payload).await;
            match result {
                Ok(answer) => {
                    // The whole answer was read: the connection is clean.
                    self.inner.checkin(stream);
                    return answer.map_err(CallError::from);
                }
                Err(CallError::Connection {
                    error,
                    before_response: true,
                }) if reused && !retried && operation.is_idempotent() => {
                    tracing::debug!(
                        endpoint = %self.inner.endpoint, %operation, %error,
                        "pooled KMIP connection was closed by the server; retrying on a new connection"
                    );
                    // Connections idle as long as this one most likely died with it.
                    self.inner.lock().idle.clear();
                    retried = true;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Negotiates the version if needed, then sends the request on `stream`.
    /// The outer `Result` is the transport, the inner the server's verdict.
    async fn call_on(
        &self,
        stream: &mut Stream,
        operation: Operation,
        payload: &(dyn Fn(ProtocolVersion) -> Result<Vec<Item>, BackendError> + Sync),
    ) -> Result<Result<Vec<Item>, protocol::ResponseError>, CallError> {
        let known = self.inner.lock().version;
        let version = match known {
            Some(version) => version,
            None => self.negotiate(stream).await?,
        };
        let request = protocol::request(version, operation, payload(version).map_err(CallError::Backend)?);
        self.inner.round_trip(stream, &request, operation).await
    }

    async fn negotiate(&self, stream: &mut Stream) -> Result<ProtocolVersion, CallError> {
        let max = self.inner.lock().max_version;
        let offered: Vec<ProtocolVersion> = ProtocolVersion::SUPPORTED
            .into_iter()
            .filter(|v| *v <= max)
            .collect();
        // Sent as 1.2: every server with Encrypt and Decrypt understands it.
        let request = protocol::request(
            ProtocolVersion::V1_2,
            Operation::DiscoverVersions,
            protocol::discover_versions(&offered),
        );
        let endpoint = &self.inner.endpoint;
        let version = match self
            .inner
            .round_trip(stream, &request, Operation::DiscoverVersions)
            .await?
        {
            Ok(payload) => match protocol::parse_discover_versions(&payload, &offered)? {
                Some(version) => version,
                None => {
                    let offered: Vec<String> = offered.iter().map(ToString::to_string).collect();
                    return Err(CallError::Backend(BackendError::internal(format!(
                        "KMIP server {endpoint} supports none of the protocol versions {}",
                        offered.join(", ")
                    ))));
                }
            },
            Err(protocol::ResponseError::Failed(failure))
                if failure.reason == Some(ResultReason::OPERATION_NOT_SUPPORTED) =>
            {
                tracing::warn!(%endpoint, "KMIP server does not support DiscoverVersions; assuming KMIP 1.2");
                ProtocolVersion::V1_2
            }
            Err(other) => return Err(other.into()),
        };
        tracing::debug!(%endpoint, %version, "negotiated KMIP protocol version");
        let mut state = self.inner.lock();
        if state.max_version == max {
            state.version = Some(version);
        }
        Ok(version)
    }
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_idle(&self) -> Option<Stream> {
        let mut state = self.lock();
        while let Some(idle) = state.idle.pop() {
            if idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.stream);
            }
        }
        None
    }

    fn checkin(&self, stream: Stream) {
        self.lock().idle.push(Idle {
            stream,
            since: Instant::now(),
        });
    }

    /// Opens a connection, unless the last attempts failed and the backoff
    /// has not elapsed.
    async fn connect(&self) -> Result<Stream, BackendError> {
        {
            let state = self.lock();
            if let Some(at) = state.retry_at {
                let now = Instant::now();
                if now < at {
                    return Err(BackendError::unavailable(format!(
                        "KMIP server {} is unreachable ({}); next connection attempt in {} ms",
                        self.endpoint,
                        state.last_error.as_deref().unwrap_or("no details"),
                        (at - now).as_millis().max(1)
                    )));
                }
            }
        }
        let result = self.open().await;
        let mut state = self.lock();
        match &result {
            Ok(_) => {
                if state.failures > 0 {
                    tracing::info!(endpoint = %self.endpoint, "KMIP server reachable again");
                }
                state.failures = 0;
                state.retry_at = None;
                state.last_error = None;
                state.connections_opened += 1;
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let delay = BACKOFF_FIRST
                    .saturating_mul(1 << (state.failures - 1).min(10))
                    .min(BACKOFF_MAX);
                state.retry_at = Some(Instant::now() + delay);
                state.last_error = Some(error.message.clone());
                if state.failures == 1 {
                    tracing::warn!(endpoint = %self.endpoint, error = %error, "cannot reach KMIP server");
                }
            }
        }
        result
    }

    async fn open(&self) -> Result<Stream, BackendError> {
        let tcp = TcpStream::connect(&self.endpoint).await.map_err(|e| {
            BackendError::unavailable(format!("cannot connect to KMIP server {}: {e}", self.endpoint))
        })?;
        // Requests are small and answered one at a time.
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| tls_error(&self.endpoint, &e).unwrap_or_else(|| handshake_error(&self.endpoint, &e)))
    }

    /// Writes `request` and reads one whole answer.
    async fn round_trip(
        &self,
        stream: &mut Stream,
        request: &Item,
        operation: Operation,
    ) -> Result<Result<Vec<Item>, protocol::ResponseError>, CallError> {
        let bytes = request.encode().map_err(|e| {
            CallError::Backend(BackendError::internal(format!(
                "cannot encode the {operation} request: {e}"
            )))
        })?;
        let answer = exchange(stream, &bytes, &self.endpoint).await?;
        let message =
            Item::decode(&answer).map_err(|e| CallError::Malformed(format!("undecodable TTLV: {e}")))?;
        Ok(protocol::parse_response(message, operation))
    }
}

/// Alerts by which a server says it does not accept our certificate.
fn refuses_our_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// Classifies TLS failures that are not transient, whether they surface
/// during the handshake or (TLS 1.3) at the first read.
fn tls_error(endpoint: &str, error: &io::Error) -> Option<BackendError> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::AlertReceived(alert) if refuses_our_certificate(*alert) => BackendError::new(
            BackendErrorKind::PermissionDenied,
            format!(
                "TLS: KMIP server {endpoint} refused our client certificate (alert {alert:?}); \
                 check that client_cert is issued by a CA the server trusts and is valid for clientAuth"
            ),
        ),
        rustls::Error::InvalidCertificate(why) => BackendError::unavailable(format!(
            "TLS: the certificate of KMIP server {endpoint} is not valid: {why}; check ca_cert and server_name"
        )),
        other => BackendError::unavailable(format!(
            "TLS handshake with KMIP server {endpoint} failed: {other}"
        )),
    })
}

fn handshake_error(endpoint: &str, error: &io::Error) -> BackendError {
    BackendError::unavailable(format!(
        "TLS handshake with KMIP server {endpoint} failed: {error} (the server may have refused our \
         client certificate or protocol version)"
    ))
}

/// Writes a request and reads exactly one message back. Allocates the answer
/// only after checking its declared length against the cap.
async fn exchange(
    stream: &mut Stream,
    request: &[u8],
    endpoint: &str,
) -> Result<Zeroizing<Vec<u8>>, CallError> {
    let lost = |error: io::Error, before_response: bool| match tls_error(endpoint, &error) {
        Some(refused) if refused.kind == BackendErrorKind::PermissionDenied => CallError::Backend(refused),
        _ => CallError::Connection {
            error: error.to_string(),
            before_response,
        },
    };
    stream.write_all(request).await.map_err(|e| lost(e, true))?;
    stream.flush().await.map_err(|e| lost(e, true))?;
    let mut header = [0u8; HEADER_LEN];
    let first = stream.read(&mut header).await.map_err(|e| lost(e, true))?;
    if first == 0 {
        return Err(CallError::Connection {
            error: "the server closed the connection".into(),
            before_response: true,
        });
    }
    stream
        .read_exact(&mut header[first..])
        .await
        .map_err(|e| lost(e, false))?;
    let len =
        ttlv::message_len(&header).map_err(|e| CallError::Malformed(format!("response header: {e}")))?;
    let mut answer = Zeroizing::new(vec![0u8; len]);
    answer[..HEADER_LEN].copy_from_slice(&header);
    stream
        .read_exact(&mut answer[HEADER_LEN..])
        .await
        .map_err(|e| lost(e, false))?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_say_why_not() {
        assert_eq!(
            parse_endpoint("kms.example:5696").unwrap(),
            ("kms.example".into(), 5696)
        );
        assert_eq!(parse_endpoint("127.0.0.1:1").unwrap(), ("127.0.0.1".into(), 1));
        assert_eq!(parse_endpoint("[::1]:5696").unwrap(), ("::1".into(), 5696));
        for (bad, why) in [
            ("kms.example", "has no port"),
            (":5696", "has no host"),
            ("kms:http", "has no valid port"),
            ("kms:0", "has port 0"),
            ("::1:5696", "without brackets"),
        ] {
            let err = parse_endpoint(bad).unwrap_err();
            assert_eq!(err.path, "endpoint");
            assert!(err.message.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn certificate_refusals_are_permission_denied() {
        let err = io::Error::other(rustls::Error::AlertReceived(AlertDescription::UnknownCA));
        let mapped = tls_error("kms:1", &err).unwrap();
        assert_eq!(mapped.kind, BackendErrorKind::PermissionDenied);
        assert!(
            mapped
                .message
                .starts_with("TLS: KMIP server kms:1 refused our client certificate")
        );

        let err = io::Error::other(rustls::Error::AlertReceived(AlertDescription::HandshakeFailure));
        assert_eq!(
            tls_error("kms:1", &err).unwrap().kind,
            BackendErrorKind::Unavailable
        );

        let err = io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let mapped = tls_error("kms:1", &err).unwrap();
        assert_eq!(mapped.kind, BackendErrorKind::Unavailable);
        assert!(mapped.message.contains("check ca_cert"), "{}", mapped.message);

        let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(tls_error("kms:1", &plain).is_none());
    }
}
