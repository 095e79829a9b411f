//! Test PKI shared by the integration tests: a CA, a server certificate for
//! 127.0.0.1 and localhost, client certificates with and without the
//! clientAuth usage, and a client certificate from another CA.

#![allow(dead_code)] // each test crate uses a different part

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use sealbroker_backend_kmip::BackendConfig;

pub struct Pki {
    dir: tempfile::TempDir,
}

fn new_ca(common_name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

impl Pki {
    pub fn new() -> Self {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let (ca_cert, ca) = new_ca("sealbroker test CA");
        pki.write("ca.pem", &ca_cert.pem());
        pki.leaf(
            &ca,
            "server",
            &["127.0.0.1", "localhost"],
            &[ExtendedKeyUsagePurpose::ServerAuth],
        );
        pki.leaf(&ca, "client", &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
        pki.leaf(
            &ca,
            "server-auth-only",
            &[],
            &[ExtendedKeyUsagePurpose::ServerAuth],
        );
        pki.leaf(&ca, "no-eku", &[], &[]);
        let (rogue_ca_cert, rogue_ca) = new_ca("rogue CA");
        pki.write("rogue-ca.pem", &rogue_ca_cert.pem());
        pki.leaf(
            &rogue_ca,
            "rogue-client",
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        pki
    }

    /// Writes `NAME.pem` and `NAME.key`. The common name doubles as PyKMIP's
    /// client identity, which owns the objects the client creates.
    fn leaf(
        &self,
        issuer: &Issuer<'static, KeyPair>,
        name: &str,
        sans: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = DistinguishedName::new();
        let common_name = if name == "server" {
            "pykmip test server"
        } else {
            "sealbroker-test-client"
        };
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    fn write(&self, file: &str, contents: &str) {
        std::fs::write(self.path(file), contents).unwrap();
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A backend config for `endpoint`, authenticating with `client` (a
    /// certificate name from [`Pki::new`]).
    pub fn backend(&self, endpoint: &str, client: &str) -> BackendConfig {
        BackendConfig {
            endpoint: endpoint.to_owned(),
            client_cert: self.path(&format!("{client}.pem")),
            client_key: self.path(&format!("{client}.key")),
            ca_cert: self.path("ca.pem"),
            server_name: None,
            timeout_secs: 10,
            max_connections: 4,
        }
    }
}
