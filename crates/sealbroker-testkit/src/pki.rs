//! A throwaway PKI: a CA made for one test, and the server and client
//! certificates it issues. Keys are ECDSA P-256 (rcgen's default), made with
//! ring.
//!
//! Peers that read files (OpenBao, PyKMIP, the daemon) get PEM files through
//! [`TestCa::write`] and [`IssuedCert::write`]; in-process servers get a
//! rustls config through [`IssuedCert::server_config`].
//!
//! ```no_run
//! use sealbroker_testkit::pki::{Leaf, TestCa};
//! let dir = std::env::temp_dir();
//! let ca = TestCa::new("sealbroker test CA");
//! let ca_file = ca.write(&dir.join("ca.pem"));
//! let server = ca.issue(&Leaf::server(&["127.0.0.1", "localhost"]));
//! let tls = server.server_config();
//! let client = ca.issue(&Leaf::client("sealbroker")).write(&dir, "client");
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority that lives as long as the test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: rcgen::Certificate,
}

impl TestCa {
    /// A self-signed CA named `common_name`, allowed to sign certificates
    /// and CRLs and nothing else.
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("a CA has no names to parse");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("cannot generate the CA key");
        let cert = params.self_signed(&key).expect("cannot self-sign the CA");
        TestCa {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER, for an in-process root store.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Writes the CA certificate as PEM to `path`; returns `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        write_file(path, &self.pem());
        path.to_owned()
    }

    /// Issues `leaf` under this CA.
    pub fn issue(&self, leaf: &Leaf) -> IssuedCert {
        let mut params = CertificateParams::new(leaf.names.clone())
            .unwrap_or_else(|e| panic!("bad certificate names {:?}: {e}", leaf.names));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, &leaf.common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match leaf.usage {
            Usage::ServerAuth => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::ClientAuth => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Unstated => Vec::new(),
        };
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("cannot generate a leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("cannot sign the leaf certificate");
        IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

/// What a leaf certificate's extendedKeyUsage says it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (`serverAuth`).
    ServerAuth,
    /// A TLS client (`clientAuth`), as mutual-TLS servers require.
    ClientAuth,
    /// No extendedKeyUsage extension at all.
    Unstated,
}

/// What to put in a leaf certificate; see [`TestCa::issue`].
#[derive(Clone, Debug)]
pub struct Leaf {
    names: Vec<String>,
    common_name: String,
    usage: Usage,
    expired: bool,
}

impl Leaf {
    /// A server certificate for `names` (DNS names, or IP addresses such as
    /// `127.0.0.1`), with the `serverAuth` usage.
    pub fn server(names: &[&str]) -> Leaf {
        Leaf {
            names: names.iter().map(|n| n.to_string()).collect(),
            common_name: "sealbroker test server".to_owned(),
            usage: Usage::ServerAuth,
            expired: false,
        }
    }

    /// A client certificate with no SAN and `common_name` (a peer's idea of
    /// the client's identity, e.g. PyKMIP's object owner), with the
    /// `clientAuth` usage.
    pub fn client(common_name: &str) -> Leaf {
        Leaf {
            names: Vec::new(),
            common_name: common_name.to_owned(),
            usage: Usage::ClientAuth,
            expired: false,
        }
    }

    /// Replaces the subject alternative names (an ACL principal such as
    /// `dns:openbao.test` comes from here).
    pub fn names(mut self, names: &[&str]) -> Leaf {
        self.names = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Replaces the subject's common name.
    pub fn common_name(mut self, common_name: &str) -> Leaf {
        self.common_name = common_name.to_owned();
        self
    }

    /// Replaces the extendedKeyUsage, e.g. a client certificate that says
    /// nothing of client use, to see it refused.
    pub fn usage(mut self, usage: Usage) -> Leaf {
        self.usage = usage;
        self
    }

    /// Valid in 2020 only, so expired now: to see it refused as expired.
    pub fn expired(mut self) -> Leaf {
        self.expired = true;
        self
    }
}

/// A certificate and its private key.
pub struct IssuedCert {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
}

/// Where [`IssuedCert::write`] put a certificate and its key.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IssuedCert {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `dir/STEM.pem` (the certificate) and `dir/STEM.key` (the key,
    /// mode 0600, as a key file should be).
    pub fn write(&self, dir: &Path, stem: &str) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        write_file(&files.cert, &self.cert_pem);
        write_file(&files.key, &self.key_pem);
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot restrict {}: {e}", files.key.display()));
        files
    }

    /// A rustls (ring) server config presenting this certificate, asking
    /// clients for none.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("rustls refused the test certificate");
        Arc::new(config)
    }
}

fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_files_are_pem_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("kit CA");
        let ca_file = ca.write(&dir.path().join("ca.pem"));
        let files = ca.issue(&Leaf::client("kit client")).write(dir.path(), "client");
        assert!(
            fs::read_to_string(ca_file)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(
            fs::read_to_string(&files.cert)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(
            fs::read_to_string(&files.key)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        let mode = fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_server_certificate_makes_a_rustls_config() {
        let ca = TestCa::new("kit CA");
        let _ = ca
            .issue(&Leaf::server(&["127.0.0.1", "localhost"]))
            .server_config();
    }
}
