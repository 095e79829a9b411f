//! Test PKI shared by the integration tests: a CA, a server certificate for
//! 127.0.0.1 and localhost, client certificates with and without the
//! clientAuth usage, and a client certificate from another CA.

#![allow(dead_code)] // each test crate uses a different part

use std::path::PathBuf;
use std::sync::Arc;

use sealbroker_backend_kmip::BackendConfig;
use sealbroker_testkit::pki::{IssuedCert, Leaf, TestCa, Usage};

/// The client certificates' common name, which PyKMIP takes as the client's
/// identity: it owns the objects the client creates.
const CLIENT_IDENTITY: &str = "sealbroker-test-client";

pub struct Pki {
    dir: tempfile::TempDir,
    server: IssuedCert,
}

impl Pki {
    /// `ca.pem`, and `NAME.pem` with `NAME.key` for: `server` (127.0.0.1 and
    /// localhost), `client`, `server-auth-only` and `no-eku` (client
    /// certificates without the clientAuth usage), and `rogue-client` from
    /// another CA (`rogue-ca.pem`).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("sealbroker test CA");
        ca.write(&dir.path().join("ca.pem"));
        let server = ca.issue(&Leaf::server(&["127.0.0.1", "localhost"]).common_name("pykmip test server"));
        server.write(dir.path(), "server");
        let client = Leaf::client(CLIENT_IDENTITY);
        ca.issue(&client).write(dir.path(), "client");
        ca.issue(&client.clone().usage(Usage::ServerAuth))
            .write(dir.path(), "server-auth-only");
        ca.issue(&client.clone().usage(Usage::Unstated))
            .write(dir.path(), "no-eku");
        let rogue_ca = TestCa::new("rogue CA");
        rogue_ca.write(&dir.path().join("rogue-ca.pem"));
        rogue_ca.issue(&client).write(dir.path(), "rogue-client");
        Pki { dir, server }
    }

    /// The `server` certificate as a rustls config, for in-process servers.
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        self.server.server_config()
    }

    /// The `server` certificate's files, and `ca.pem` for clients.
    pub fn files(&self) -> sealbroker_testkit::pykmip::ServerFiles {
        sealbroker_testkit::pykmip::ServerFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: self.path("ca.pem"),
        }
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
