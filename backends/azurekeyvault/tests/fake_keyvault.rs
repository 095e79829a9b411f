//! The Key Vault backend driven through the real `azure_security_keyvault_keys`
//! and `azure_identity` clients against the local stand-in in `standin/`,
//! which speaks the documented REST surface over TLS. There is no Key Vault
//! emulator, and this is not Azure.
//!
//! The vault is named `sealbroker.vault.azure.test` and reached through
//! `vault_address = "127.0.0.1"`; the client trusts the test CA through
//! `ca_file`, so no process-wide state is touched and the tests run under the
//! ordinary harness (and cargo-nextest).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sealbroker_backend_azurekeyvault::{
    BackendConfig, CredentialKind, KeyConfig, KeyVaultKey, METADATA_KEY_VERSION, OAEP_HASH, RetryConfig,
    connect,
};
use sealbroker_core::{Backend, BackendErrorKind, Code, Error, KeyRing, KeyVersion, LogicalKey, Mechanism};
use sealbroker_testkit::{assert_no_secret, free_port};

mod standin;
use standin::*;

const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
/// What no error may show: every secret the tests hand out carries the
/// DO-NOT-LEAK marker, the refused one too.
const SECRETS: &[(&str, &str)] = &[
    ("the client secret", CLIENT_SECRET),
    ("the federated token", FEDERATED_TOKEN),
    ("a secret marked not to leak", "DO-NOT-LEAK"),
];

// ---------------------------------------------------------------- fixtures

struct Env {
    dir: tempfile::TempDir,
    ca: PathBuf,
    tls: Arc<rustls::ServerConfig>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = pki(dir.path());
    Env { dir, ca, tls }
}

impl Env {
    /// A client-secret backend pointed at `fake`.
    fn config(&self, fake: &FakeVault) -> BackendConfig {
        let secret = self.dir.path().join("client-secret");
        std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
        BackendConfig {
            vault_url: fake.vault_url.clone(),
            vault_address: Some("127.0.0.1".parse().unwrap()),
            ca_file: Some(self.ca.clone()),
            credential: CredentialKind::ClientSecret,
            tenant_id: Some(TENANT.into()),
            client_id: Some(CLIENT_ID.into()),
            object_id: None,
            resource_id: None,
            client_secret_file: Some(secret),
            token_file: None,
            authority_host: Some(fake.authority.clone()),
            timeout_ms: 5_000,
            retry: RetryConfig {
                max_retries: 2,
                initial_backoff_ms: 10,
                max_backoff_ms: 2_000,
            },
        }
    }

    fn key_with(&self, config: &BackendConfig, version: Option<&str>) -> KeyVaultKey {
        let client = connect(config).unwrap();
        KeyVaultKey::new(
            &client,
            &KeyConfig {
                key_name: KEY.into(),
                key_version: version.map(str::to_owned),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn key(&self, fake: &FakeVault) -> KeyVaultKey {
        self.key_with(&self.config(fake), None)
    }
}

fn throttled(retry_after: &str) -> Canned {
    Canned {
        status: 429,
        headers: vec![("Retry-After", retry_after.into())],
        body: error_body(
            "Throttled",
            "Request was not processed because too many requests were received. \
             Reason: VaultRequestTypeLimitReached",
            None,
        ),
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_over_tls_answers_the_challenge_and_records_the_key_version() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let key = env.key(&fake);
    key.health().await.unwrap();
    let sealed = key.encrypt(DEK, b"dek-aad").await.unwrap();
    assert_eq!(sealed.mechanism, Mechanism::RsaOaep);
    assert_eq!(sealed.oaep_hash, OAEP_HASH);
    assert_eq!(sealed.ciphertext.len(), 256, "one RSA-2048 block");
    assert_eq!(sealed.metadata[METADATA_KEY_VERSION], fake.version_id(1));
    assert_eq!(key.decrypt(&sealed, b"dek-aad").await.unwrap().expose(), DEK);

    let state = fake.state.lock().unwrap();
    assert_eq!(state.challenged, 1, "one challenge, then the scope is known");
    assert_eq!(
        state.bodies_before_auth, 0,
        "nothing is sent before the client is authenticated"
    );
    drop(state);
    assert_eq!(
        fake.tokens.load(Ordering::SeqCst),
        1,
        "the token is fetched once and cached"
    );
    assert_eq!(
        key.key_identity(),
        format!("azurekeyvault:{}/keys/{KEY}", fake.vault_url)
    );
    assert!(
        fake.log()
            .contains(&format!("POST /keys/{KEY}/{}/unwrapkey", fake.version_id(1))),
        "unwrap names the recorded version: {:?}",
        fake.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_blobs_unwrap_after_the_vault_key_rotates() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let key = env.key(&fake);
    let old = key.encrypt(DEK, b"aad").await.unwrap();
    let v2 = fake.rotate();
    let new = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(old.metadata[METADATA_KEY_VERSION], fake.version_id(1));
    assert_eq!(
        new.metadata[METADATA_KEY_VERSION], v2,
        "new wraps use the current version"
    );
    assert_eq!(key.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);

    fake.disable(1);
    let err = key.decrypt(&old, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("disabled"), "{err}");
    assert!(err.message.contains(&fake.version_id(1)), "{err}");
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_version_rotates_the_key_and_pins_the_new_version() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let config = env.config(&fake);
    let key = env.key_with(&config, None);
    let old = key.encrypt(DEK, b"aad").await.unwrap();

    let created = key.create_version(2).await.unwrap();
    assert_eq!(fake.state.lock().unwrap().versions.len(), 2);
    let v2 = fake.version_id(2);
    assert_eq!(created.settings["key_version"], v2);
    assert_eq!(created.settings.len(), 1);
    let pinned = created.backend;
    assert_eq!(
        pinned.key_identity(),
        format!("azurekeyvault:{}/keys/{KEY}/{v2}", fake.vault_url)
    );
    assert_ne!(pinned.key_identity(), key.key_identity());

    let new = pinned.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(new.metadata[METADATA_KEY_VERSION], v2);
    assert_eq!(
        fake.log().last().unwrap(),
        &format!("POST /keys/{KEY}/{v2}/wrapkey"),
        "wraps with the pinned version"
    );
    assert_eq!(pinned.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    let err = pinned.decrypt(&old, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");

    // The recorded settings rebuild the same key after a restart.
    let rebuilt = env.key_with(&config, Some(&created.settings["key_version"]));
    assert_eq!(rebuilt.key_identity(), pinned.key_identity());
    rebuilt.health().await.unwrap();
    assert_eq!(rebuilt.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_honouring_retry_after_then_succeeds() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let key = env.key(&fake);
    key.encrypt(DEK, b"warm-up").await.unwrap();
    fake.push(throttled("1"));
    let before = fake.requests();
    let started = Instant::now();
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After ignored: {:?}",
        started.elapsed()
    );
    assert_eq!(fake.requests() - before, 2);
    assert_eq!(key.throttling_retries(), 1);
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_throttling_gives_up_after_bounded_retries_as_unavailable() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let key = env.key(&fake);
    key.encrypt(DEK, b"warm-up").await.unwrap();
    for _ in 0..3 {
        fake.push(throttled("0"));
    }
    let before = fake.requests();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Throttled, "{err}");
    assert_eq!(err.kind.code(), Code::Unavailable);
    assert!(err.message.contains("gave up after 2 retries"), "{err}");
    assert!(err.message.contains("429"), "{err}");
    assert_eq!(fake.requests() - before, 3, "one attempt and two retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_unauthorized_are_permission_denied_naming_the_identity() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let key = env.key(&fake);
    key.encrypt(DEK, b"warm-up").await.unwrap();

    fake.state.lock().unwrap().deny = true;
    let before = fake.requests();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("403"), "{err}");
    assert!(err.message.contains(CLIENT_ID), "{err}");
    assert!(err.message.contains(TENANT), "{err}");
    assert_eq!(fake.requests() - before, 1, "not retried");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
    fake.state.lock().unwrap().deny = false;

    // A token the vault no longer accepts, and no challenge to recover with.
    fake.push(Canned {
        status: 401,
        headers: vec![],
        body: error_body("Unauthorized", "AKV10022: Invalid audience.", None),
    });
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains(CLIENT_ID), "{err}");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_secret_is_permission_denied_without_the_secret() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let mut config = env.config(&fake);
    let wrong = env.dir.path().join("wrong-secret");
    std::fs::write(&wrong, "wrong-DO-NOT-LEAK").unwrap();
    config.client_secret_file = Some(wrong);
    let key = env.key_with(&config, None);
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("AADSTS7000215"), "{err}");
    assert!(err.message.contains(CLIENT_ID), "{err}");
    assert!(err.message.contains("wrong-secret"), "names the file: {err}");
    assert_eq!(fake.tokens.load(Ordering::SeqCst), 1, "a refusal is not retried");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_exchanges_the_federated_token() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let token_file = env.dir.path().join("azure-identity-token");
    std::fs::write(&token_file, FEDERATED_TOKEN).unwrap();
    let config = BackendConfig {
        credential: CredentialKind::WorkloadIdentity,
        client_secret_file: None,
        token_file: Some(token_file),
        ..env.config(&fake)
    };
    let key = env.key_with(&config, None);
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(fake.tokens.load(Ordering::SeqCst), 1);

    fake.state.lock().unwrap().deny = true;
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("workload identity"), "{err}");
    assert!(err.message.contains(CLIENT_ID), "{err}");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_aad_and_a_tampered_dek_are_rejected_through_the_key_ring() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let key: Arc<dyn Backend> = Arc::new(env.key(&fake));
    let ring = KeyRing::new([LogicalKey::single(
        "unseal",
        KeyVersion::new("unseal", 1, "azure", key),
    )]);
    let wrapped = ring.wrap("unseal", b"root key", b"vault/unseal").await.unwrap();
    let opened = ring.unwrap(None, &wrapped.blob, b"vault/unseal").await.unwrap();
    assert_eq!(opened.plaintext.expose(), b"root key");

    let err = ring.unwrap(None, &wrapped.blob, b"other").await.err().unwrap();
    assert!(matches!(err, Error::NotAuthentic), "{err}");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let mut blob = sealbroker_core::WrappedBlob::from_bytes(&wrapped.blob).unwrap();
    blob.deks[0].wrapped_dek[7] ^= 1;
    let err = ring
        .unwrap(None, &blob.to_bytes(), b"vault/unseal")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotAuthentic), "{err}");
    assert!(
        fake.log().iter().any(|l| l.ends_with("/unwrapkey")),
        "the vault was asked and refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_key_not_found_naming_it() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let client = connect(&env.config(&fake)).unwrap();
    let key = KeyVaultKey::new(
        &client,
        &KeyConfig {
            key_name: "missing".into(),
            key_version: None,
            ..Default::default()
        },
    )
    .unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("missing"), "{err}");
    let err = key.health().await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_token_endpoint_is_unavailable_after_retries() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let port = free_port(); // nothing listens there
    let config = BackendConfig {
        authority_host: Some(format!("https://localhost:{port}")),
        ..env.config(&fake)
    };
    let key = env.key_with(&config, None);
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("gave up after 2 retries"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused() {
    let env = env();
    let other = tempfile::tempdir().unwrap();
    let (_, untrusted) = pki(other.path());
    let fake = start_fake(untrusted).await;
    let key = env.key(&fake);
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("certificate"), "{err}");
    assert!(!err.message.contains("gave up"), "not retried: {err}");
    assert_eq!(fake.requests(), 0);
    assert_eq!(fake.tokens.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_without_rsa_oaep_256_is_refused_without_a_call() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let key = env.key(&fake);
    let mut sealed = key.encrypt(DEK, b"aad").await.unwrap();
    let before = fake.requests();
    sealed.oaep_hash = "sha1".into();
    let err = key.decrypt(&sealed, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    sealed.oaep_hash = OAEP_HASH.into();
    sealed
        .metadata
        .insert(METADATA_KEY_VERSION.into(), "../../secrets/x".into());
    let err = key.decrypt(&sealed, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    assert_eq!(fake.requests(), before);
}

/// A vault that accepts the connection and never answers: each attempt ends
/// at `timeout_ms` as `Timeout`, naming the setting, and the call ends
/// within its bounded retries instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_that_never_answers_times_out_at_timeout_ms() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let hung = sealbroker_testkit::silent::SilentListener::bind().await;
    let config = BackendConfig {
        vault_url: format!("https://{VAULT_HOST}:{}", hung.port()),
        timeout_ms: 400,
        retry: RetryConfig {
            max_retries: 2,
            initial_backoff_ms: 10,
            max_backoff_ms: 50,
        },
        ..env.config(&fake)
    };
    let key = env.key_with(&config, None);
    let started = Instant::now();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    let took = started.elapsed();
    eprintln!("{err} after {took:?}");
    // The attempt bound or the connect bound (both 400 ms here; the TLS
    // handshake never completes) ends it: a timeout either way.
    assert_eq!(err.kind, BackendErrorKind::Timeout, "{err}");
    assert!(
        err.message.contains("timeout_ms = 400")
            || err.message.contains("no connection within 400 ms (timeout_ms"),
        "{err}"
    );
    assert!(hung.accepted() >= 1, "the call reached the hung vault");
    // At most three attempts of 400 ms and two short backoffs, with slack.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(3 * 450 + 1_500),
        "ended after {took:?}, not at timeout_ms"
    );
    assert_eq!(fake.requests(), 0, "nothing reached the working vault");
}
