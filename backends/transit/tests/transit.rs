//! The transit backend against a real OpenBao 2.7.2 `bao server -dev`.

mod common;

use std::sync::Arc;

use common::{Bao, transit_key};
use sealbroker_backend_transit::{METADATA_CONTEXT, METADATA_KEY_VERSION, TransitKey};
use sealbroker_core::{
    Backend, BackendErrorKind, Error, KeyRing, KeyVersion, LogicalKey, Mechanism, Sealed, WrappedBlob,
};
use sealbroker_testkit::assert_no_secret;

const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn version_of(sealed: &Sealed) -> &str {
    sealed
        .metadata
        .get(METADATA_KEY_VERSION)
        .map(String::as_str)
        .unwrap_or("")
}

/// A dev server with transit key `k` and a token limited to it.
fn server_with_key(key: &str, key_args: &[&str]) -> (Bao, String, std::path::PathBuf) {
    let bao = Bao::dev();
    bao.transit_key(key, key_args);
    let token = bao.limited_token(key, &[]);
    let file = bao.token_file(&token);
    (bao, token, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_binds_aad_and_wrong_aad_is_not_authentic() {
    let (bao, _token, file) = server_with_key("k", &["type=aes256-gcm96"]);
    for extra in ["", "batch_max = 1"] {
        let (_, key) = transit_key(&bao.backend_config(&file, extra), "k");
        assert_eq!(key.kind(), "transit");

        let sealed = key.encrypt(DEK, b"aad-1").await.unwrap();
        assert_eq!(sealed.mechanism, Mechanism::ServiceDefined);
        assert!(sealed.iv.is_empty());
        assert!(sealed.ciphertext.starts_with(b"vault:v1:"), "{extra}");
        assert_eq!(version_of(&sealed), "1");
        assert!(!sealed.metadata.contains_key(METADATA_CONTEXT));
        assert_eq!(key.decrypt(&sealed, b"aad-1").await.unwrap().expose(), DEK);

        for wrong in [&b"aad-2"[..], b""] {
            let err = key.decrypt(&sealed, wrong).await.err().unwrap();
            assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
            assert!(err.message.contains("message authentication failed"), "{err}");
        }

        let mut tampered = sealed.clone();
        let last = tampered.ciphertext.len() - 3;
        tampered.ciphertext[last] = if tampered.ciphertext[last] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let err = key.decrypt(&tampered, b"aad-1").await.err().unwrap();
        assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");

        let mut foreign = sealed.clone();
        foreign.ciphertext = b"not a transit ciphertext".to_vec();
        let err = key.decrypt(&foreign, b"aad-1").await.err().unwrap();
        assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");

        key.health().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rotation_keeps_old_blobs_and_rewrap_moves_them_to_the_new_version() {
    let (bao, _token, file) = server_with_key("k", &[]);
    let (_, key) = transit_key(&bao.backend_config(&file, ""), "k");
    let identity = key.key_identity();

    // Backend level.
    let old = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(version_of(&old), "1");
    bao.must(&["write", "-f", "transit/keys/k/rotate"]);

    assert_eq!(key.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    let upstream = key.upstream_key().await.unwrap();
    assert_eq!((upstream.latest_version, upstream.min_decryption_version), (2, 1));
    assert_eq!(TransitKey::sealed_key_version(&old), Some(1));
    // What the broker's Rewrap does: open, then seal again.
    let dek = key.decrypt(&old, b"aad").await.unwrap();
    let rewrapped = key.encrypt(dek.expose(), b"aad").await.unwrap();
    assert_eq!(version_of(&rewrapped), "2");
    assert!(rewrapped.ciphertext.starts_with(b"vault:v2:"));
    assert_eq!(key.decrypt(&rewrapped, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(
        key.key_identity(),
        identity,
        "identity must not follow the upstream version"
    );

    // Broker level: a key ring over this backend.
    let backend: Arc<dyn Backend> = key.clone();
    let ring = KeyRing::new([LogicalKey::single(
        "unseal",
        KeyVersion::new("unseal", 1, "upstream", backend),
    )]);
    let blob = ring
        .wrap("unseal", b"root key share", b"caller aad")
        .await
        .unwrap();
    let upstream_version = |blob: &[u8]| {
        WrappedBlob::from_bytes(blob).unwrap().deks[0]
            .backend_metadata
            .get(METADATA_KEY_VERSION)
            .cloned()
    };
    assert_eq!(upstream_version(&blob.blob).as_deref(), Some("2"));
    bao.must(&["write", "-f", "transit/keys/k/rotate"]);
    let opened = ring
        .unwrap(Some("unseal"), &blob.blob, b"caller aad")
        .await
        .unwrap();
    assert_eq!(opened.plaintext.expose(), b"root key share");
    let again = ring
        .wrap("unseal", opened.plaintext.expose(), b"caller aad")
        .await
        .unwrap();
    assert_eq!(upstream_version(&again.blob).as_deref(), Some("3"));
    assert_eq!(
        again.key_id, blob.key_id,
        "the broker key version is separate from the upstream one"
    );
    let opened = ring
        .unwrap(Some("unseal"), &again.blob, b"caller aad")
        .await
        .unwrap();
    assert_eq!(opened.plaintext.expose(), b"root key share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_version_rotates_the_upstream_key_and_needs_the_rotate_capability() {
    let (bao, _token, limited) = server_with_key("k", &[]);
    let (_, key) = transit_key(&bao.backend_config(&limited, ""), "k");
    let old = key.encrypt(DEK, b"aad").await.unwrap();

    let err = key.create_version(2).await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("rotate"), "{err}");
    assert_eq!(key.upstream_key().await.unwrap().latest_version, 1);

    let root = bao.token_file(&bao.root);
    let (_, key) = transit_key(&bao.backend_config(&root, ""), "k");
    let created = key.create_version(2).await.unwrap();
    assert!(created.settings.is_empty(), "{:?}", created.settings);
    assert_eq!(key.upstream_key().await.unwrap().latest_version, 2);
    let new = created.backend.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(version_of(&new), "2");
    assert_eq!(created.backend.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raised_min_decryption_version_retires_old_blobs_with_a_clear_error() {
    let (bao, _token, file) = server_with_key("k", &[]);
    let (_, key) = transit_key(&bao.backend_config(&file, ""), "k");
    let old = key.encrypt(DEK, b"aad").await.unwrap();
    bao.must(&["write", "-f", "transit/keys/k/rotate"]);
    let new = key.encrypt(DEK, b"aad").await.unwrap();
    bao.must(&["write", "transit/keys/k/config", "min_decryption_version=2"]);

    let err = key.decrypt(&old, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    for needle in [
        "sealed under version 1 of upstream transit key \"k\"",
        "min_decryption_version (2)",
        "disallowed by policy (too old)",
        &bao.addr,
    ] {
        assert!(err.message.contains(needle), "{needle:?} missing from: {err}");
    }
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_permission_denied_and_a_rotated_token_file_recovers() {
    let (bao, token, file) = server_with_key("k", &[]);
    let (_, key) = transit_key(&bao.backend_config(&file, ""), "k");
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();

    bao.must(&["token", "revoke", &token]);
    let enc = key.encrypt(DEK, b"aad").await.err().unwrap();
    let dec = key.decrypt(&sealed, b"aad").await.err().unwrap();
    for err in [&enc, &dec] {
        assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
        let expected = format!(
            "upstream OpenBao at {} refused the token (revoked or expired?)",
            bao.addr
        );
        assert!(err.message.contains(&expected), "{err}");
        assert!(err.message.contains("permission denied"), "{err}");
        assert_no_secret(&err.to_string(), &[("the token", &token)], "the error");
    }
    // Through the key ring the code is PermissionDenied too.
    let backend: Arc<dyn Backend> = key.clone();
    let ring = KeyRing::new([LogicalKey::single(
        "k",
        KeyVersion::new("k", 1, "upstream", backend),
    )]);
    let err = ring.wrap("k", b"x", b"").await.err().unwrap();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert_eq!(err.code(), sealbroker_core::Code::PermissionDenied);

    // An agent writes a fresh token to the same file: the next call picks it up.
    let fresh = bao.limited_token("k", &[]);
    std::fs::write(&file, format!("{fresh}\n")).unwrap();
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
    key.encrypt(DEK, b"aad").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_or_mount_is_key_not_found_and_nothing_is_created_upstream() {
    let bao = Bao::dev();
    bao.transit_key("k", &[]);
    // The root token may create keys: encrypt must still not create "nope".
    let root_file = bao.token_file(&bao.root);
    let (_, k) = transit_key(&bao.backend_config(&root_file, ""), "k");
    let (_, nope) = transit_key(&bao.backend_config(&root_file, ""), "nope");

    let err = nope.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(
        err.message
            .contains("has no transit key \"nope\" under mount \"transit\""),
        "{err}"
    );
    assert!(
        !bao.cli(&["read", "transit/keys/nope"], Some(&bao.root))
            .status
            .success(),
        "key was created"
    );

    let sealed = k.encrypt(DEK, b"aad").await.unwrap();
    let err = nope.decrypt(&sealed, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("encryption key not found"), "{err}");

    let (_, wrong_mount) = transit_key(&bao.backend_config(&root_file, "mount_path = \"elsewhere\""), "k");
    let err = wrong_mount.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("under mount \"elsewhere\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_keys_bind_the_aad_as_context_too() {
    let (bao, _token, file) = server_with_key("d", &["derived=true"]);
    let (_, key) = transit_key(&bao.backend_config(&file, ""), "d");
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(
        sealed.metadata.get(METADATA_CONTEXT).map(String::as_str),
        Some("aad")
    );
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
    let err = key.decrypt(&sealed, b"other").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    let err = key.encrypt(DEK, b"").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_aead_upstream_key_is_refused_with_the_types_that_work() {
    let (bao, _token, file) = server_with_key("r", &["type=rsa-2048"]);
    let (_, key) = transit_key(&bao.backend_config(&file, ""), "r");
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(
        err.message.contains("has type rsa-2048") && err.message.contains("aes256-gcm96"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_share_batch_requests_and_all_round_trip() {
    let (bao, _token, file) = server_with_key("k", &[]);
    let (client, key) = transit_key(&bao.backend_config(&file, "batch_window_ms = 5"), "k");
    key.encrypt(DEK, b"warm-up").await.unwrap(); // reads keys/k once

    let dek = |i: usize| {
        let mut dek = *DEK;
        dek[0] = i as u8;
        dek
    };
    let before = client.requests_sent();
    let mut wraps = tokio::task::JoinSet::new();
    for i in 0..64 {
        let key = key.clone();
        wraps.spawn(async move { (i, key.encrypt(&dek(i), format!("aad-{i}").as_bytes()).await) });
    }
    let mut sealed = vec![None; 64];
    while let Some(done) = wraps.join_next().await {
        let (i, result) = done.unwrap();
        sealed[i] = Some(result.unwrap());
    }
    let wrap_requests = client.requests_sent() - before;
    println!("64 concurrent wraps took {wrap_requests} HTTP requests");
    assert!(
        wrap_requests < 64,
        "{wrap_requests} requests for 64 wraps: no batching"
    );
    assert!(
        wrap_requests <= 16,
        "{wrap_requests} requests for 64 wraps: batches too small"
    );

    // Decrypt them all at once; one carries the wrong AAD and fails alone.
    let before = client.requests_sent();
    let mut unwraps = tokio::task::JoinSet::new();
    for (i, blob) in sealed.into_iter().enumerate() {
        let key = key.clone();
        let blob = blob.unwrap();
        let aad = if i == 17 {
            "wrong".to_owned()
        } else {
            format!("aad-{i}")
        };
        unwraps.spawn(async move { (i, key.decrypt(&blob, aad.as_bytes()).await) });
    }
    while let Some(done) = unwraps.join_next().await {
        let (i, result) = done.unwrap();
        if i == 17 {
            let err = result.err().unwrap();
            assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
        } else {
            assert_eq!(result.unwrap().expose(), &dek(i), "item {i}");
        }
    }
    let unwrap_requests = client.requests_sent() - before;
    println!("64 concurrent unwraps took {unwrap_requests} HTTP requests");
    assert!(unwrap_requests <= 16, "{unwrap_requests} requests for 64 unwraps");

    // batch_max = 1 turns batching off: one request per operation.
    let (client, key) = transit_key(&bao.backend_config(&file, "batch_max = 1"), "k");
    key.encrypt(DEK, b"warm-up").await.unwrap();
    let before = client.requests_sent();
    let mut wraps = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let key = key.clone();
        wraps.spawn(async move { key.encrypt(DEK, b"aad").await.unwrap() });
    }
    wraps.join_all().await;
    assert_eq!(client.requests_sent() - before, 8);
}
