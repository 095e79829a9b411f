//! HTTPS to a real OpenBao 2.7.2 listener that requires client certificates
//! and whose certificate names only `bao.test`, reached at 127.0.0.1.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Bao, free_port, random_token, transit_key};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use sealbroker_core::{Backend, BackendErrorKind};

const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki(dir: &Path) -> Pki {
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        fs::write(&path, pem).unwrap();
        path
    };
    let issuer = ca("sealbroker transit test CA");
    let other = ca("some other CA");

    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["bao.test".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.distinguished_name.push(DnType::CommonName, "sealbroker");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    let key_file = |name: &str, key: &KeyPair| {
        let path = write(name, key.serialize_pem());
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", issuer.pem()),
        other_ca: write("other-ca.pem", other.pem()),
        client_cert: write("client.pem", client_cert.pem()),
        client_key: key_file("client.key", &client_key),
        server_cert: write("server.pem", server_cert.pem()),
        server_key: key_file("server.key", &server_key),
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
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
}
