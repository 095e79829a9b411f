//! Token renewal against a real OpenBao 2.7.2: a short-TTL renewable token
//! stays alive; the same token with renewal disabled expires.

mod common;

use std::time::Duration;

use common::{Bao, transit_key};
use sealbroker_core::{Backend, BackendErrorKind};
use sealbroker_testkit::assert_no_secret;

const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const TTL_SECS: u64 = 4;

fn ttl_of(bao: &Bao, token: &str) -> Option<u64> {
    let out = bao.cli(&["token", "lookup", "-format=json", token], Some(&bao.root));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    json["data"]["ttl"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ttl_token_is_renewed_and_keeps_working_past_twice_its_ttl() {
    let bao = Bao::dev();
    bao.transit_key("k", &[]);
    let token = bao.limited_token("k", &[&format!("-ttl={TTL_SECS}s"), "-explicit-max-ttl=1h"]);
    let (_, key) = transit_key(&bao.backend_config(&bao.token_file(&token), ""), "k");
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();

    tokio::time::sleep(Duration::from_secs(TTL_SECS * 2 + 2)).await;
    assert!(
        ttl_of(&bao, &token).is_some_and(|ttl| ttl > 0),
        "token is gone upstream"
    );
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
    key.encrypt(DEK, b"aad").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_renewal_the_token_expires_into_a_clear_permission_denied() {
    let bao = Bao::dev();
    bao.transit_key("k", &[]);
    let token = bao.limited_token("k", &[&format!("-ttl={TTL_SECS}s"), "-explicit-max-ttl=1h"]);
    let config = bao.backend_config(&bao.token_file(&token), "disable_renewal = true");
    let (_, key) = transit_key(&config, "k");
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();

    tokio::time::sleep(Duration::from_secs(TTL_SECS * 2 + 2)).await;
    let err = key.decrypt(&sealed, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(
        err.message.contains("refused the token (revoked or expired?)"),
        "{err}"
    );
    assert_no_secret(&err.to_string(), &[("the token", &token)], "the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_its_max_ttl_expires_clearly_and_a_replacement_file_recovers() {
    let bao = Bao::dev();
    bao.transit_key("k", &[]);
    let token = bao.limited_token("k", &["-ttl=2s", "-explicit-max-ttl=4s"]);
    let file = bao.token_file(&token);
    let (_, key) = transit_key(&bao.backend_config(&file, ""), "k");
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();

    // Renewal carries it to its max TTL, and no further.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let err = key.decrypt(&sealed, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(
        err.message.contains("refused the token (revoked or expired?)"),
        "{err}"
    );

    std::fs::write(&file, bao.limited_token("k", &[])).unwrap();
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
}
