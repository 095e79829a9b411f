//! go-plugin's side of the launch: the environment OpenBao sets, the
//! handshake line we print, the AutoMTLS certificates both ways, and the
//! private directory the plugin socket lives in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// go-kms-wrapping's handshake cookie for KMS plugins.
pub const MAGIC_COOKIE_KEY: &str = "OPENBAO_KMS_PLUGIN";
pub const MAGIC_COOKIE_VALUE: &str = "39704a18-7da7-4bda-9a2d-f7c488d70328";
/// go-plugin core protocol version, and the KMS plugin set version we serve.
pub(super) const CORE_PROTOCOL_VERSION: u32 = 1;
pub(super) const APP_PROTOCOL_VERSION: &str = "1";

/// What `sealbroker kms-plugin` prints when run by hand.
pub const NOT_LAUNCHED_BY_OPENBAO: &str = "\
This is sealbroker's OpenBao KMS plugin. It is not meant to be run by hand:
OpenBao starts it, as configured in OpenBao's server config:

  plugin_directory = \"/openbao/plugins\"
  plugin \"kms\" \"sealbroker\" {
    command   = \"sealbroker\"
    args      = [\"kms-plugin\"]
    sha256sum = \"<sha256 of the sealbroker binary>\"
  }
  seal \"sealbroker\" {
    endpoint = \"unix:///run/sealbroker/sealbroker.sock\"   # or config_file = \"...\"
    key_name = \"openbao-unseal\"
  }

See docs/openbao.md. To run the broker itself, use `sealbroker serve`.";

/// Requires the client to present exactly OpenBao's AutoMTLS certificate and
/// to prove it holds the key. OpenBao's certificate is a self-signed CA:TRUE
/// P-521 certificate, which webpki would reject as a leaf, so it is pinned
/// by its bytes instead of chain-validated. The handshake signature is
/// verified with aws-lc-rs, which (unlike ring) supports P-521.
#[derive(Debug)]
pub struct PinnedClientCert {
    expected: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl PinnedClientCert {
    pub fn new(expected: CertificateDer<'static>) -> Self {
        let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        PinnedClientCert { expected, algorithms }
    }
}

impl ClientCertVerifier for PinnedClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // Must include ECDSA_NISTP521_SHA512, or Go silently sends no certificate.
        self.algorithms.supported_schemes()
    }
}

/// Our server certificate: fresh and self-signed for each run, SAN
/// `localhost` (Go refuses a CN-only certificate), serverAuth.
pub(super) fn server_identity() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key))
}

pub(super) fn tls_config(
    client_cert: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, String> {
    // ring runs the handshake (key exchange, our P-256 signature, the
    // record cipher); aws-lc-rs only verifies OpenBao's P-521 signature, in
    // PinnedClientCert. aws-lc seeds its random generator with CPU jitter
    // entropy on first use, which cost about 25 ms of CPU at every plugin
    // start, on OpenBao's unseal path (docs/performance.md, run C).
    let mut provider = rustls::crypto::ring::default_provider();
    provider.signature_verification_algorithms =
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(PinnedClientCert::new(client_cert)))
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()]; // Go's gRPC client insists on ALPN h2
    Ok(config)
}

/// Checks the environment OpenBao sets; returns the client certificate.
pub(super) fn handshake_environment() -> Result<CertificateDer<'static>, String> {
    if std::env::var(MAGIC_COOKIE_KEY).ok().as_deref() != Some(MAGIC_COOKIE_VALUE) {
        return Err(NOT_LAUNCHED_BY_OPENBAO.to_owned());
    }
    let versions = std::env::var("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default();
    if !versions.split(',').any(|v| v.trim() == APP_PROTOCOL_VERSION) {
        return Err(format!(
            "OpenBao offered KMS plugin protocol version(s) {versions:?}; this sealbroker speaks version {APP_PROTOCOL_VERSION}"
        ));
    }
    let pem = std::env::var("PLUGIN_CLIENT_CERT").map_err(|_| {
        "PLUGIN_CLIENT_CERT is not set: OpenBao must launch the plugin with AutoMTLS".to_owned()
    })?;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("PLUGIN_CLIENT_CERT is not a PEM certificate: {e}"))
}

/// The go-plugin handshake line.
pub(super) fn handshake_line(socket: &Path, server_cert: &[u8]) -> String {
    let cert = base64::engine::general_purpose::STANDARD_NO_PAD.encode(server_cert);
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc|{cert}",
        socket.display()
    )
}

/// Resolves when OpenBao (our parent) has gone away: the plugin must not
/// outlive it as an orphan.
pub(super) async fn parent_gone() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(parent, "OpenBao exited; stopping the plugin");
            return;
        }
    }
}

/// A private directory for the plugin socket, removed on drop. Its name
/// is random (128 bits), so no other local user can predict it, create it
/// first or squat on it; an existing directory is never reused or removed.
pub(super) struct SocketDir(PathBuf);

impl SocketDir {
    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    pub(super) fn create() -> Result<Self, String> {
        Self::create_in(&std::env::temp_dir())
    }

    fn create_in(base: &Path) -> Result<Self, String> {
        use ring::rand::SecureRandom;
        use std::os::unix::fs::DirBuilderExt;
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..16 {
            let mut suffix = [0u8; 16];
            rng.fill(&mut suffix)
                .map_err(|_| "the system random number generator failed".to_owned())?;
            let dir = base.join(format!("sealbroker-plugin-{}", hex::encode(suffix)));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(SocketDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        Err(format!(
            "cannot create a socket directory under {}",
            base.display()
        ))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn socket_directories_are_private_unpredictable_and_removed_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let a = SocketDir::create_in(base.path()).unwrap();
        let b = SocketDir::create_in(base.path()).unwrap();
        assert_ne!(a.path(), b.path());
        for dir in [&a, &b] {
            let name = dir.path().file_name().unwrap().to_str().unwrap();
            let suffix = name.strip_prefix("sealbroker-plugin-").unwrap();
            assert_eq!(suffix.len(), 32, "{name}");
            assert!(suffix.bytes().all(|c| c.is_ascii_hexdigit()), "{name}");
            let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{name}");
        }
        let gone = a.path().to_owned();
        drop(a);
        assert!(!gone.exists());
        assert!(b.path().exists());
    }
}
