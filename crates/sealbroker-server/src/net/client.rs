//! A gRPC client for a running broker, over its unix socket or over mTLS.
//! Used by the CLI, by `kms-plugin` in endpoint mode, and by tests.

use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::net::tls;

/// Where the broker is.
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp { address: String, tls: Option<ClientTls> },
}

/// Client-side TLS: the CA that signed the broker's certificate, and our
/// own certificate and key.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Name to verify in the broker's certificate; defaults to the host part of the address.
    pub server_name: Option<String>,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot connect to the broker at {target}: {source}")]
    Connect {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Tcp {
                address,
                tls: Some(_),
            } => write!(f, "https://{address}"),
            Target::Tcp { address, tls: None } => write!(f, "http://{address}"),
        }
    }
}

fn client_tls_config(config: &ClientTls) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::load_certs(&config.ca_file, "ca_file")? {
        roots
            .add(ca)
            .map_err(|e| ClientError::Invalid(format!("bad CA certificate: {e}")))?;
    }
    let certs = tls::load_certs(&config.cert_file, "cert_file")?;
    let key = tls::load_key(&config.key_file, "key_file")?;
    let mut client = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| ClientError::Invalid(format!("client certificate and key do not match: {e}")))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(client)
}

/// How often an idle connection is pinged, and how long a ping may go unanswered.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects `endpoint` through `connector`, now or on first use.
async fn finish<C>(
    endpoint: Endpoint,
    connector: C,
    lazy: bool,
    target: &Target,
) -> Result<Channel, ClientError>
where
    C: tower::Service<Uri> + Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Send + Unpin,
    C::Future: Send,
    Box<dyn std::error::Error + Send + Sync>: From<C::Error> + Send,
{
    // HTTP/2 pings find a broker that accepts and never answers (or a dead
    // peer): without them a caller such as OpenBao's plugin waits forever.
    let endpoint = endpoint
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    if lazy {
        return Ok(endpoint.connect_with_connector_lazy(connector));
    }
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ClientError::Connect {
            target: target.to_string(),
            source,
        })
}

async fn open(target: &Target, lazy: bool) -> Result<Channel, ClientError> {
    let endpoint = |address: &str| {
        Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ClientError::Invalid(format!("bad address {address:?}: {e}")))
    };
    match target {
        Target::Unix(path) => {
            let path = path.clone();
            let connector = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
            });
            finish(Endpoint::from_static("http://localhost"), connector, lazy, target).await
        }
        Target::Tcp { address, tls: None } => {
            let address = address.clone();
            let connector = tower::service_fn(move |_: Uri| {
                let address = address.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(&address).await?;
                    let _ = tcp.set_nodelay(true);
                    Ok::<_, std::io::Error>(TokioIo::new(tcp))
                }
            });
            finish(endpoint(address_of(target))?, connector, lazy, target).await
        }
        Target::Tcp {
            address,
            tls: Some(tls_config),
        } => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls_config(tls_config)?));
            let host = tls_config.server_name.clone().unwrap_or_else(|| {
                address
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                    .unwrap_or_default()
            });
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| ClientError::Invalid(format!("{host:?} is not a valid TLS server name")))?;
            let address = address.clone();
            let tls_connect = tower::service_fn(move |_: Uri| {
                let connector = connector.clone();
                let server_name = server_name.clone();
                let address = address.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(&address).await?;
                    let _ = tcp.set_nodelay(true);
                    let tls = connector.connect(server_name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            });
            finish(endpoint(address_of(target))?, tls_connect, lazy, target).await
        }
    }
}

fn address_of(target: &Target) -> &str {
    match target {
        Target::Tcp { address, .. } => address,
        Target::Unix(_) => "localhost",
    }
}

/// Opens a channel to the broker.
pub async fn channel(target: &Target) -> Result<Channel, ClientError> {
    open(target, false).await
}

/// A `SealService` client for the broker at `target`.
pub async fn connect(target: &Target) -> Result<SealServiceClient<Channel>, ClientError> {
    Ok(SealServiceClient::new(channel(target).await?))
}

/// A client that connects on first use (and reconnects after failures), so
/// it can be created while the broker is down.
pub async fn connect_lazy(target: &Target) -> Result<SealServiceClient<Channel>, ClientError> {
    Ok(SealServiceClient::new(open(target, true).await?))
}
