//! The HTTPS client every Key Vault and Entra ID call goes through: reqwest
//! over rustls with the ring provider (no OpenSSL, no process-wide provider
//! needed), the platform's roots plus an optional extra CA bundle, and an
//! optional fixed address for the vault's host name.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::Transport;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sealbroker_core::ConfigError;

/// What shapes the transport, taken from the backend config.
pub(crate) struct TransportConfig<'a> {
    pub ca_file: Option<&'a Path>,
    /// The vault's host name and the address to connect to for it.
    pub pinned_address: Option<(&'a str, IpAddr)>,
    pub connect_timeout: Duration,
}

/// Reads every certificate in a PEM bundle.
fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let error = |reason: String| ConfigError::new("ca_file", format!("{}: {reason}", path.display()));
    let roots = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if roots.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    Ok(roots)
}

pub(crate) fn build(config: &TransportConfig<'_>) -> Result<Transport, ConfigError> {
    let extra_roots = match config.ca_file {
        Some(path) => read_roots(path)?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
        .map_err(|e| ConfigError::new("ca_file", format!("cannot set up certificate verification: {e}")))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("vault_url", format!("cannot set up TLS: {e}")))?
        .dangerous()
        // Not dangerous: the platform verifier does full WebPKI validation.
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(config.connect_timeout)
        // Key Vault and Entra ID do not redirect; following one could send a
        // bearer token somewhere unexpected.
        .redirect(reqwest::redirect::Policy::none());
    if let Some((host, address)) = config.pinned_address {
        // The port comes from the URL; reqwest ignores this one.
        builder = builder.resolve(host, SocketAddr::new(address, 0));
    }
    let client = builder
        .build()
        .map_err(|e| ConfigError::new("vault_url", format!("cannot build the HTTPS client: {e}")))?;
    Ok(Transport::new(Arc::new(client)))
}
