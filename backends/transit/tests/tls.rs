//! HTTPS to a real OpenBao 2.7.2 listener that requires client certificates
//! and whose certificate names only `bao.test`, reached at 127.0.0.1.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Bao, random_token, transit_key};
use sealbroker_core::{Backend, BackendErrorKind};
use sealbroker_testkit::pki::{Leaf, TestCa};
use sealbroker_testkit::{assert_no_secret, free_port};

const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A CA with a `bao.test` server certificate and a `sealbroker` client
/// certificate, and another CA that issued neither.
fn pki(dir: &Path) -> Pki {
    let issuer = TestCa::new("sealbroker transit test CA");
    let other = TestCa::new("some other CA");
    let server = issuer.issue(&Leaf::server(&["bao.test"])).write(dir, "server");
    let client = issuer.issue(&Leaf::client("sealbroker")).write(dir, "client");
    Pki {
        ca: issuer.write(&dir.join("ca.pem")),
        other_ca: other.write(&dir.join("other-ca.pem")),
        client_cert: client.cert,
        client_key: client.key,
        server_cert: server.cert,
        server_key: server.key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_ca_client_certificate_and_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let tls_port = free_port();
    let listener = dir.path().join("tls-listener.hcl");
    fs::write(
        &listener,
        format!(
            r#"listener "tcp" {{
  address                            = "127.0.0.1:{tls_port}"
  tls_cert_file                      = "{}"
  tls_key_file                       = "{}"
  tls_client_ca_file                 = "{}"
  tls_require_and_verify_client_cert = true
}}
"#,
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
    )
    .unwrap();
    let bao = Bao::dev_on(free_port(), &random_token("root-"), Some(listener));
    bao.transit_key("k", &[]);
    let token = bao.limited_token("k", &[]);
    let file = bao.token_file(&token);

    let config = |extra: &str| -> sealbroker_backend_transit::BackendConfig {
        toml::from_str(&format!(
            "address = \"https://127.0.0.1:{tls_port}\"\ntoken_file = \"{}\"\ntimeout_secs = 5\n{extra}",
            file.display()
        ))
        .unwrap()
    };
    let full = format!(
        "tls_ca_file = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"\ntls_server_name = \"bao.test\"",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );

    let (client, key) = transit_key(&config(&full), "k");
    assert!(client.uses_tls());
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);

    // The certificate does not name 127.0.0.1: without tls_server_name it fails.
    let (_, key) = transit_key(&config(&full.replace("tls_server_name = \"bao.test\"", "")), "k");
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(
        err.message.contains("certificate") && err.message.contains("tls_server_name"),
        "{err}"
    );

    // A name the certificate does not carry.
    let (_, key) = transit_key(&config(&full.replace("bao.test", "other.test")), "k");
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");

    // Another CA.
    let (_, key) = transit_key(
        &config(&full.replace(pki.ca.to_str().unwrap(), pki.other_ca.to_str().unwrap())),
        "k",
    );
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(
        err.message.contains("UnknownIssuer") || err.message.contains("unknown issuer"),
        "{err}"
    );

    // No client certificate: the listener requires one.
    let no_client = format!(
        "tls_ca_file = \"{}\"\ntls_server_name = \"bao.test\"",
        pki.ca.display()
    );
    let (_, key) = transit_key(&config(&no_client), "k");
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(
        err.message.contains(&format!("https://127.0.0.1:{tls_port}")),
        "{err}"
    );
    println!("without a client certificate: {err}");
}

#[test]
fn a_client_key_that_is_not_pem_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let garbage = dir.path().join("garbage.key");
    fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let token = common::token_file(dir.path(), "t", "s.x");
    let config: sealbroker_backend_transit::BackendConfig = toml::from_str(&format!(
        "address = \"https://bao\"\ntoken_file = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"",
        token.display(),
        pki.client_cert.display(),
        garbage.display()
    ))
    .unwrap();
    let e = config.client().err().unwrap();
    assert_eq!(e.path, "tls_client_key");
    assert_no_secret(
        &e.to_string(),
        &[("the key file's contents", "c2VjcmV0")],
        "the config error",
    );
}
