//! TLS for the TCP listener: rustls with the ring provider, mutual TLS
//! against a configured client CA, ALPN h2.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;

use crate::config::{ConfigError, TlsConfig};
use crate::net::accept::{Accepted, Conn};

/// A listener's TLS settings, replaceable while it serves: a reload swaps
/// in a renewed certificate, key or client CA, and every connection
/// accepted from then on gets it. Connections already open keep theirs.
#[derive(Clone)]
pub struct LiveTls {
    acceptor: Arc<RwLock<tokio_rustls::TlsAcceptor>>,
    refused: Option<RefusedHandshake>,
}

/// Told the peer of every handshake refused (a bad or missing client
/// certificate, say): doors use it to audit refusals.
pub type RefusedHandshake = Arc<dyn Fn(&str) + Send + Sync>;

impl LiveTls {
    pub fn new(config: rustls::ServerConfig) -> Self {
        LiveTls {
            acceptor: Arc::new(RwLock::new(Arc::new(config).into())),
            refused: None,
        }
    }

    /// Calls `hook` with the peer of each refused handshake.
    pub fn on_refused(mut self, hook: RefusedHandshake) -> Self {
        self.refused = Some(hook);
        self
    }

    /// The acceptor for the next connection.
    pub fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What to tell of a refused handshake, if anything.
    pub fn refused_hook(&self) -> Option<RefusedHandshake> {
        self.refused.clone()
    }

    pub fn replace(&self, config: rustls::ServerConfig) {
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config).into();
    }
}

/// The crypto provider every TLS config in this crate uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::new(
                field,
                format!("cannot read certificates from {}: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path, field: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        ConfigError::new(
            field,
            format!("cannot read a private key from {}: {e}", path.display()),
        )
    })
}

/// Builds the gRPC listener's config: our certificate, client certificates
/// required and verified against `client_ca_file`, HTTP/2 only.
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, ConfigError> {
    if tls.client_ca_file.is_none() {
        return Err(ConfigError::new("server.tcp.tls.client_ca_file", "is missing"));
    }
    server_config_at(tls, "server.tcp.tls", &[b"h2"])
}

/// Builds a server config from the `[...tls]` table at `field` (named in
/// errors), offering `alpn`. Client certificates are required and verified
/// when `client_ca_file` is set; config checks decide where it may be absent.
pub fn server_config_at(
    tls: &TlsConfig,
    field: &str,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, ConfigError> {
    let provider = provider();
    let certs = load_certs(&tls.cert_file, &format!("{field}.cert_file"))?;
    let key = load_key(&tls.key_file, &format!("{field}.key_file"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(field, e.to_string()))?;
    let builder = match &tls.client_ca_file {
        Some(ca_path) => {
            let ca_field = format!("{field}.client_ca_file");
            let mut roots = rustls::RootCertStore::empty();
            for ca in load_certs(ca_path, &ca_field)? {
                roots
                    .add(ca)
                    .map_err(|e| ConfigError::new(&ca_field, format!("bad CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ConfigError::new(&ca_field, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        ConfigError::new(
            format!("{field}.key_file"),
            format!("does not match cert_file: {e}"),
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What the TCP listener learned about a connection; reaches handlers as a
/// request extension.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub remote_addr: SocketAddr,
    /// SHA-256 of the client's leaf certificate (hex), when TLS was used.
    pub client_fingerprint: Option<String>,
    /// The client certificate's names, as ACL principals (`uri:`, `dns:`, `cn:`).
    pub client_names: Vec<String>,
}

/// A certificate's URI and DNS SANs and its CN, as ACL principals.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => names.push(format!("uri:{uri}")),
                GeneralName::DNSName(dns) => names.push(format!("dns:{dns}")),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(format!("cn:{cn}"));
        }
    }
    names
}

/// A TCP connection, TLS or (development only) plaintext, that tonic and
/// hyper can serve.
pub type ServerConn = Conn<TcpStream, TlsConnectInfo>;

impl TlsConnectInfo {
    /// What a TCP door knows of a connection: its address and, over mutual
    /// TLS, the client certificate's fingerprint and names.
    pub fn of(accepted: &Accepted<TcpStream>, remote_addr: SocketAddr) -> Self {
        let leaf = accepted.client_certificate();
        TlsConnectInfo {
            remote_addr,
            client_fingerprint: leaf
                .map(|leaf| hex::encode(ring::digest::digest(&ring::digest::SHA256, leaf.as_ref()))),
            client_names: leaf
                .map(|leaf| certificate_names(leaf.as_ref()))
                .unwrap_or_default(),
        }
    }
}
