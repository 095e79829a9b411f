//! Config validation and behaviour without an upstream: nothing here needs
//! OpenBao.

mod common;

use std::time::{Duration, Instant};

use common::{random_token, token_file};
use sealbroker_backend_transit::{BackendConfig, KeyConfig, TransitKey};
use sealbroker_core::{Backend, BackendErrorKind};
use sealbroker_testkit::{assert_no_secret, free_port};

fn parse(text: &str) -> Result<BackendConfig, toml::de::Error> {
    toml::from_str(text)
}

fn config_error(text: &str) -> (String, String) {
    let e = parse(text).unwrap().client().expect_err("config accepted");
    (e.path.clone(), e.to_string())
}

#[test]
fn defaults_follow_the_seal_stanza() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), "t", "s.x");
    let config = parse(&format!(
        "address = \"https://bao:8200\"\ntoken_file = \"{}\"",
        file.display()
    ))
    .unwrap();
    assert_eq!(config.mount_path, "transit");
    assert_eq!(config.timeout_secs, 10);
    assert_eq!((config.batch_max, config.batch_window_ms), (32, 1));
    assert!(!config.disable_renewal);
    let client = config.client().unwrap();
    assert!(client.uses_tls());
    assert_eq!(client.address(), "https://bao:8200");
}

#[test]
fn unknown_fields_are_refused() {
    let e = parse("address = \"https://bao\"\ntoken_file = \"/t\"\ntoken = \"s.inline\"").unwrap_err();
    assert!(e.to_string().contains("unknown field `token`"), "{e}");
    let e = toml::from_str::<KeyConfig>("key_name = \"k\"\nkey_label = \"x\"").unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
}

#[test]
fn every_bad_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), "t", "s.x");
    let file = file.display();
    let cases = [
        (
            format!("address = \"ftp://bao\"\ntoken_file = \"{file}\""),
            "address",
        ),
        (
            format!("address = \"https://user:pw@bao\"\ntoken_file = \"{file}\""),
            "address",
        ),
        (
            format!("address = \"not a url\"\ntoken_file = \"{file}\""),
            "address",
        ),
        (
            format!("address = \"https://bao\"\nmount_path = \"../sys\"\ntoken_file = \"{file}\""),
            "mount_path",
        ),
        (
            format!("address = \"https://bao\"\nnamespace = \"a b\"\ntoken_file = \"{file}\""),
            "namespace",
        ),
        ("address = \"https://bao\"".to_owned(), "token_file"),
        (
            format!("address = \"https://bao\"\ntoken_file = \"{file}\"\ntoken_env = \"X\""),
            "token_file",
        ),
        (
            "address = \"https://bao\"\ntoken_file = \"/nonexistent/token\"".to_owned(),
            "token_file",
        ),
        (
            "address = \"https://bao\"\ntoken_env = \"SEALBROKER_TEST_SURELY_UNSET\"".to_owned(),
            "token_env",
        ),
        (
            format!("address = \"https://bao\"\ntoken_file = \"{file}\"\ntimeout_secs = 0"),
            "timeout_secs",
        ),
        (
            format!("address = \"https://bao\"\ntoken_file = \"{file}\"\nbatch_max = 0"),
            "batch_max",
        ),
        (
            format!("address = \"https://bao\"\ntoken_file = \"{file}\"\nbatch_window_ms = 5000"),
            "batch_window_ms",
        ),
        (
            format!("address = \"http://bao\"\ntoken_file = \"{file}\"\ntls_ca_file = \"/ca.pem\""),
            "tls_ca_file",
        ),
        (
            format!(
                "address = \"https://bao\"\ntoken_file = \"{file}\"\ntls_ca_file = \"/nonexistent/ca.pem\""
            ),
            "tls_ca_file",
        ),
        (
            format!("address = \"https://bao\"\ntoken_file = \"{file}\"\ntls_client_cert = \"{file}\""),
            "tls_client_key",
        ),
        (
            format!("address = \"https://bao\"\ntoken_file = \"{file}\"\ntls_server_name = \"bad name!\""),
            "tls_server_name",
        ),
    ];
    for (text, field) in cases {
        let (got, message) = config_error(&text);
        assert_eq!(got, field, "{text}\n→ {message}");
    }
    let (_, message) = config_error("address = \"https://bao\"\ntoken_file = \"/nonexistent/token\"");
    assert!(message.contains("/nonexistent/token"), "{message}");
}

#[test]
fn key_names_that_would_escape_the_mount_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), "t", "s.x");
    let client = parse(&format!(
        "address = \"http://127.0.0.1:1\"\ntoken_file = \"{}\"",
        file.display()
    ))
    .unwrap()
    .client()
    .unwrap();
    for bad in ["", "../sys/seal", "a/b", "k?x=1"] {
        let e = TransitKey::new(
            client.clone(),
            &KeyConfig {
                key_name: bad.into(),
                ..Default::default()
            },
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "key_name", "{bad:?}");
    }
}

#[test]
fn key_identity_names_address_namespace_mount_and_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), "t", "s.x");
    let identity = |extra: &str, key: &str| {
        let config = parse(&format!(
            "address = \"https://bao.example:8200/\"\ntoken_file = \"{}\"\n{extra}",
            file.display()
        ))
        .unwrap();
        TransitKey::new(
            config.client().unwrap(),
            &KeyConfig {
                key_name: key.into(),
                ..Default::default()
            },
        )
        .unwrap()
        .key_identity()
    };
    let base = identity("", "k");
    assert_eq!(base, "transit:https://bao.example:8200:transit/keys/k");
    assert_eq!(
        identity("batch_max = 1\ntimeout_secs = 3", "k"),
        base,
        "tuning must not change the identity"
    );
    assert_ne!(identity("", "k2"), base);
    assert_ne!(identity("mount_path = \"team/transit\"", "k"), base);
    assert_ne!(identity("namespace = \"team\"", "k"), base);
}

#[tokio::test]
async fn constructing_contacts_nothing_and_an_absent_upstream_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let token = random_token("s.");
    let file = token_file(dir.path(), "t", &token);
    let port = free_port(); // nothing listens there
    let address = format!("http://127.0.0.1:{port}");
    let config = parse(&format!(
        "address = \"{address}\"\ntoken_file = \"{}\"",
        file.display()
    ))
    .unwrap();
    let client = config.client().unwrap();
    let key = TransitKey::new(
        client.clone(),
        &KeyConfig {
            key_name: "k".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!client.uses_tls());

    let err = key.encrypt(b"dek", b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(
        err.message
            .contains(&format!("cannot connect to upstream OpenBao at {address}")),
        "{err}"
    );
    assert_no_secret(&err.to_string(), &[("the token", &token)], "the error");

    let debug = format!("{client:?} {config:?}");
    assert!(debug.contains("token_file"), "{debug}");
    assert_no_secret(&debug, &[("the token", &token)], "the Debug output");
}

#[tokio::test]
async fn an_upstream_that_never_answers_times_out_naming_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    // Accept and hold connections without ever answering.
    let _holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(4) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), "t", "s.x");
    let config = parse(&format!(
        "address = \"{address}\"\ntoken_file = \"{}\"\ntimeout_secs = 1\ndisable_renewal = true",
        file.display()
    ))
    .unwrap();
    let key = TransitKey::new(
        config.client().unwrap(),
        &KeyConfig {
            key_name: "k".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let started = Instant::now();
    let err = key.encrypt(b"dek", b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Timeout, "{err}");
    assert!(
        err.message.contains(&address) && err.message.contains("within 1 s"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
