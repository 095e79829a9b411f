//! Upstream down, sealed, and back: a raft-backed OpenBao 2.7.2 that keeps
//! its keys and tokens across a restart, and one `TransitKey` throughout.

mod common;

use std::time::{Duration, Instant};

use common::{Bao, transit_key};
use sealbroker_core::{Backend, BackendErrorKind};
use sealbroker_testkit::assert_no_secret;

const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_unavailable_sealed_is_unavailable_and_the_same_key_recovers() {
    let mut bao = Bao::raft();
    bao.transit_key("k", &[]);
    let token = bao.limited_token("k", &[]);
    let file = bao.token_file(&token);
    let (_, key) = transit_key(&bao.backend_config(&file, "timeout_secs = 3"), "k");
    let before = key.encrypt(DEK, b"aad").await.unwrap();

    bao.stop();
    let enc = key.encrypt(DEK, b"aad").await.err().unwrap();
    let dec = key.decrypt(&before, b"aad").await.err().unwrap();
    for err in [&enc, &dec] {
        assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
        assert!(
            err.message
                .contains(&format!("cannot connect to upstream OpenBao at {}", bao.addr)),
            "{err}"
        );
        assert_no_secret(&err.to_string(), &[("the token", &token)], "the error");
    }

    bao.start(); // comes back sealed
    let err = key.decrypt(&before, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("is sealed"), "{err}");

    bao.unseal();
    // Raft may need a moment after unseal before it serves requests.
    let deadline = Instant::now() + Duration::from_secs(30);
    let opened = loop {
        match key.decrypt(&before, b"aad").await {
            Ok(opened) => break opened,
            Err(e) if e.kind == BackendErrorKind::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    };
    assert_eq!(opened.expose(), DEK);
    let after = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(key.decrypt(&after, b"aad").await.unwrap().expose(), DEK);
    key.health().await.unwrap();
}

/// The dev-server variant of recovery: a new dev server on the same port
/// (same root token, key created again) serves the same `TransitKey`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_dev_server_on_the_same_port_serves_the_same_key() {
    let mut bao = Bao::dev();
    bao.transit_key("k", &[]);
    let file = bao.token_file(&bao.root);
    let (_, key) = transit_key(&bao.backend_config(&file, "timeout_secs = 3"), "k");
    key.health().await.unwrap();

    let (port, root) = (bao.port, bao.root.clone());
    bao.stop();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    drop(bao);

    let bao = Bao::dev_on(port, &root, None);
    bao.transit_key("k", &[]);
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
}
