//! The rustls configuration for HTTPS upstreams, built here (ring provider)
//! and handed to reqwest, so neither OpenSSL nor aws-lc-rs is linked.
//!
//! - `tls_ca_file` replaces the system roots, as in OpenBao's transit seal.
//!   Without it the platform verifier (system roots) is used.
//! - `tls_client_cert` + `tls_client_key` present a client certificate.
//! - `tls_server_name` is the name the upstream's certificate must carry. It
//!   changes verification only: reqwest sends SNI from the address host (and
//!   none for an IP address), which it gives no way to override. Upstreams
//!   that pick their certificate by SNI must be addressed by that name.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{BackendConfig, ConfigError};

/// The rustls client configuration for `config`.
pub fn client_config(config: &BackendConfig) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("address", format!("TLS setup: {e}")))?;

    let verifier: Arc<dyn ServerCertVerifier> = match &config.tls_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("tls_ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    ConfigError::new(
                        "tls_ca_file",
                        format!("{}: not a usable CA certificate: {e}", path.display()),
                    )
                })?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| ConfigError::new("tls_ca_file", format!("{}: {e}", path.display())))?
        }
        None => Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| {
                ConfigError::new(
                    "tls_ca_file",
                    format!("cannot use the system roots ({e}); set tls_ca_file"),
                )
            })?,
        ),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match &config.tls_server_name {
        Some(name) => Arc::new(ExpectedName {
            name: ServerName::try_from(name.clone()).map_err(|_| {
                ConfigError::new(
                    "tls_server_name",
                    format!("{name:?} is not a DNS name or IP address"),
                )
            })?,
            inner: verifier,
        }),
        None => verifier,
    };
    // `dangerous()` only because the verifier is ours; it delegates every
    // check to webpki (or the platform) and changes just the expected name.
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);

    let mut tls = match (&config.tls_client_cert, &config.tls_client_key) {
        (Some(cert_path), Some(key_path)) => {
            let certs = read_certs("tls_client_cert", cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                ConfigError::new(
                    "tls_client_key",
                    format!(
                        "{}: {}",
                        key_path.display(),
                        pem_problem(&e, "private key (PKCS#8, PKCS#1 or SEC1)")
                    ),
                )
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                ConfigError::new(
                    "tls_client_key",
                    format!(
                        "{} does not match {}: {e}",
                        key_path.display(),
                        cert_path.display()
                    ),
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "tls_client_key",
                "is required with tls_client_cert",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "tls_client_cert",
                "is required with tls_client_key",
            ));
        }
    };
    // reqwest is built without HTTP/2, which OpenBao does not need.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::new(
                field,
                format!("{}: {}", path.display(), pem_problem(&e, "certificate")),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{}: holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// A PEM error in words that never quote the file (it may be a key).
fn pem_problem(error: &rustls::pki_types::pem::Error, expected: &str) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => format!("holds no PEM {expected}"),
        _ => format!("is not a valid PEM {expected}"),
    }
}

/// Verifies the upstream certificate for `name` instead of the address host.
struct ExpectedName {
    name: ServerName<'static>,
    inner: Arc<dyn ServerCertVerifier>,
}

impl fmt::Debug for ExpectedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectedName").field("name", &self.name).finish()
    }
}

impl ServerCertVerifier for ExpectedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
