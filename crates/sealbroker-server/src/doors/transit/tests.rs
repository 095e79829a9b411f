//! The transit door against a real [`Broker`] on in-memory backend keys:
//! routing, auth order, wire shapes and the error table.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sealbroker_core::{
    Backend, BackendError, KeyRing, KeyVersion, LogicalKey, Mechanism, Sealed, SecretBytes,
};
use serde_json::{Value, json};

use super::throttle::{ManualClock, ThrottleLimits};
use super::*;
use crate::broker::metrics::Metrics;
use crate::config::{LimitsConfig, Profile};

const TOKEN: &str = "s.alice-token-9f2cRw7Kq3Xm8Lp";
const BOTH_KEYS_TOKEN: &str = "s.bob-token-41aaTz5Nc2Hv6Jd";

/// How a test backend key behaves.
enum Behaviour {
    Works(Box<LessSafeKey>),
    Unavailable,
    Hangs,
}

struct TestKey(Behaviour);

#[async_trait]
impl Backend for TestKey {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn key_identity(&self) -> String {
        "test".into()
    }
    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        match &self.0 {
            Behaviour::Works(key) => {
                let iv = [7u8; 12];
                let mut out = secret.to_vec();
                key.seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut out)
                    .map_err(|_| BackendError::internal("seal failed"))?;
                Ok(Sealed {
                    mechanism: Mechanism::Aes256Gcm,
                    iv: iv.to_vec(),
                    ciphertext: out,
                    ..Default::default()
                })
            }
            Behaviour::Unavailable => Err(BackendError::unavailable("token not present")),
            Behaviour::Hangs => std::future::pending().await,
        }
    }
    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        let Behaviour::Works(key) = &self.0 else {
            return Err(BackendError::unavailable("token not present"));
        };
        let mut buf = sealed.ciphertext.clone();
        let iv: [u8; 12] = sealed.iv.as_slice().try_into().unwrap();
        let len = key
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf)
            .map_err(|_| BackendError::not_authentic("bad tag"))?
            .len();
        buf.truncate(len);
        Ok(SecretBytes::new(buf))
    }
}

fn key(name: &str, behaviour: Behaviour) -> LogicalKey {
    let backend: Arc<dyn Backend> = Arc::new(TestKey(behaviour));
    LogicalKey::single(name, KeyVersion::new(name, 1, "mem", backend))
}

fn aes(byte: u8) -> Behaviour {
    let key = UnboundKey::new(&AES_256_GCM, &[byte; 32]).unwrap();
    Behaviour::Works(Box::new(LessSafeKey::new(key)))
}

/// Keys `unseal` and `other` work, `down` is unavailable, `slow` never
/// answers. Alice may use `unseal`, `down` and `slow`; Bob `unseal` and `other`.
fn app_with(mount: &str, max_plaintext_bytes: usize) -> Router {
    app_throttled(mount, max_plaintext_bytes, Arc::default(), None)
}

fn app_throttled(
    mount: &str,
    max_plaintext_bytes: usize,
    throttle: Arc<FailureThrottle>,
    metrics: Option<Arc<Metrics>>,
) -> Router {
    let ring = KeyRing::new([
        key("unseal", aes(1)),
        key("other", aes(2)),
        key("down", Behaviour::Unavailable),
        key("slow", Behaviour::Hangs),
    ]);
    let limits = LimitsConfig {
        max_plaintext_bytes,
        request_timeout_secs: 1,
        ..LimitsConfig::default()
    };
    let mut broker = Broker::new(ring, Profile::Hardened, limits);
    if let Some(metrics) = metrics {
        broker = broker.with_metrics(metrics);
    }
    let broker = Arc::new(broker);
    let mut tokens = TokenTable::default();
    tokens.insert(
        TOKEN.as_bytes(),
        "alice",
        ["unseal", "down", "slow"].map(String::from),
    );
    tokens.insert(
        BOTH_KEYS_TOKEN.as_bytes(),
        "bob",
        ["unseal", "other"].map(String::from),
    );
    build_router(broker, tokens::LiveTokens::new(tokens), throttle, mount)
}

fn app() -> Router {
    app_with("transit", 1024)
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    raw: String,
}

impl Reply {
    /// The single message of a Vault error body.
    fn error(&self) -> &str {
        let errors = self.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no `errors` list in {} reply: {}", self.status, self.raw));
        assert_eq!(errors.len(), 1, "{}", self.raw);
        errors[0].as_str().unwrap()
    }
}

async fn call(app: &Router, method: &str, path: &str, token: Option<&str>, body: impl Into<Body>) -> Reply {
    call_from(app, None, method, path, token, body).await
}

/// [`call`] over a connection from `peer`, as the transit listener marks it.
async fn call_from(
    app: &Router,
    peer: Option<&str>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("X-Vault-Token", token);
    }
    let mut request = request
        .header("X-Vault-Request", "true")
        .body(body.into())
        .unwrap();
    if let Some(peer) = peer {
        request.extensions_mut().insert(TlsConnectInfo {
            remote_addr: peer.parse().unwrap(),
            client_fingerprint: None,
            client_names: Vec::new(),
        });
    }
    let response = tower::Service::call(&mut app.clone(), request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{status} reply is not JSON ({e}): {raw}"));
    Reply {
        status,
        headers,
        body,
        raw,
    }
}

async fn encrypt(app: &Router, token: &str, key: &str, body: Value) -> Reply {
    call(
        app,
        "PUT",
        &format!("/v1/transit/encrypt/{key}"),
        Some(token),
        body.to_string(),
    )
    .await
}

async fn decrypt(app: &Router, token: &str, key: &str, body: Value) -> Reply {
    call(
        app,
        "PUT",
        &format!("/v1/transit/decrypt/{key}"),
        Some(token),
        body.to_string(),
    )
    .await
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[tokio::test]
async fn encrypt_then_decrypt_round_trips_with_vault_shapes() {
    let app = app();
    let sealed = encrypt(
        &app,
        TOKEN,
        "unseal",
        json!({"plaintext": b64(b"root key"), "associated_data": b64(b"cluster-a")}),
    )
    .await;
    assert_eq!(sealed.status, StatusCode::OK, "{}", sealed.raw);
    let ciphertext = sealed.body["data"]["ciphertext"].as_str().unwrap();
    assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");
    assert_eq!(ciphertext.split(':').count(), 3, "the transit seal splits on ':'");
    assert_eq!(sealed.body["data"]["key_version"], 1);
    assert!(
        !sealed.raw.contains(&b64(b"root key")),
        "the plaintext came back: {}",
        sealed.raw
    );

    let opened = decrypt(
        &app,
        TOKEN,
        "unseal",
        json!({"ciphertext": ciphertext, "associated_data": b64(b"cluster-a")}),
    )
    .await;
    assert_eq!(opened.status, StatusCode::OK, "{}", opened.raw);
    assert_eq!(opened.body["data"]["plaintext"], b64(b"root key"));

    // POST works like PUT (hvac posts), and so does Authorization: Bearer.
    let request = Request::builder()
        .method("POST")
        .uri("/v1/transit/decrypt/unseal")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(
            json!({"ciphertext": ciphertext, "associated_data": b64(b"cluster-a")}).to_string(),
        ))
        .unwrap();
    let response = tower::Service::call(&mut app.clone(), request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_transit_seal_probe_round_trips_without_aad() {
    // OpenBao encrypts "a" at configuration time and on init.
    let app = app();
    let sealed = encrypt(&app, TOKEN, "unseal", json!({"plaintext": b64(b"a")})).await;
    let ciphertext = sealed.body["data"]["ciphertext"].as_str().unwrap();
    let opened = decrypt(&app, TOKEN, "unseal", json!({"ciphertext": ciphertext})).await;
    assert_eq!(opened.body["data"]["plaintext"], b64(b"a"), "{}", opened.raw);
}

#[tokio::test]
async fn missing_or_wrong_token_is_403_before_anything_about_keys() {
    let app = app();
    let junk = "{not json";
    for (token, path) in [
        (None, "/v1/transit/encrypt/unseal"),
        (None, "/v1/transit/encrypt/no-such-key"),
        (Some("wrong"), "/v1/transit/encrypt/unseal"),
        (Some("wrong"), "/v1/transit/decrypt/no-such-key"),
        (Some(""), "/v1/transit/decrypt/unseal"),
        (Some(&TOKEN[..TOKEN.len() - 1]), "/v1/transit/decrypt/unseal"),
    ] {
        let reply = call(&app, "PUT", path, token, junk).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{token:?} {path}: {}",
            reply.raw
        );
        assert_eq!(reply.error(), "permission denied", "{token:?} {path}");
    }
    for path in [
        "/v1/transit/keys/unseal",
        "/v1/transit/keys/no-such-key",
        "/v1/auth/token/lookup-self",
    ] {
        let reply = call(&app, "GET", path, Some("wrong"), "").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}: {}", reply.raw);
        assert_eq!(reply.error(), "permission denied");
    }
    let reply = call(&app, "PUT", "/v1/auth/token/renew-self", None, "").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_outside_its_scope_gets_403_naming_operation_and_key() {
    let app = app();
    let reply = encrypt(&app, TOKEN, "other", json!({"plaintext": b64(b"x")})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.raw);
    let message = reply.error();
    assert!(
        message.contains("encrypt") && message.contains("\"other\"") && message.contains("alice"),
        "{message}"
    );

    // A key that does not exist looks exactly like one out of scope.
    let reply = decrypt(&app, TOKEN, "no-such-key", json!({"ciphertext": "vault:v1:QUJD"})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.raw);
    assert!(
        reply.error().contains("decrypt on key \"no-such-key\""),
        "{}",
        reply.raw
    );

    let reply = call(&app, "GET", "/v1/transit/keys/other", Some(TOKEN), "").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.raw);
}

#[tokio::test]
async fn blob_sealed_under_another_key_is_refused() {
    let app = app();
    let sealed = encrypt(&app, BOTH_KEYS_TOKEN, "unseal", json!({"plaintext": b64(b"s")})).await;
    let ciphertext = sealed.body["data"]["ciphertext"].as_str().unwrap();
    let reply = decrypt(&app, BOTH_KEYS_TOKEN, "other", json!({"ciphertext": ciphertext})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.raw);
    assert!(
        reply
            .error()
            .contains("sealed under key \"unseal\", not \"other\""),
        "{}",
        reply.raw
    );
}

#[tokio::test]
async fn wrong_aad_altered_blob_and_edited_version_are_400() {
    let app = app();
    let sealed = encrypt(
        &app,
        TOKEN,
        "unseal",
        json!({"plaintext": b64(b"s"), "associated_data": b64(b"A")}),
    )
    .await;
    let ciphertext = sealed.body["data"]["ciphertext"].as_str().unwrap().to_owned();

    let reply = decrypt(
        &app,
        TOKEN,
        "unseal",
        json!({"ciphertext": ciphertext, "associated_data": b64(b"B")}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.raw);
    assert!(reply.error().contains("does not authenticate"), "{}", reply.raw);

    let mut blob = STANDARD
        .decode(ciphertext.trim_start_matches("vault:v1:"))
        .unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    let altered = VaultCiphertext::format(1, &blob);
    let reply = decrypt(
        &app,
        TOKEN,
        "unseal",
        json!({"ciphertext": altered, "associated_data": b64(b"A")}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.raw);

    let edited = ciphertext.replacen("vault:v1:", "vault:v2:", 1);
    let reply = decrypt(
        &app,
        TOKEN,
        "unseal",
        json!({"ciphertext": edited, "associated_data": b64(b"A")}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.raw);
    assert!(reply.error().contains("says v2"), "{}", reply.raw);
    assert!(!reply.raw.contains(&b64(b"s")), "{}", reply.raw);
}

#[tokio::test]
async fn malformed_requests_are_400_naming_the_field() {
    let app = app();
    let cases = [
        ("encrypt", "{not json".to_owned(), "`body`"),
        ("encrypt", "".to_owned(), "`body`"),
        ("encrypt", json!({"plaintext": "***"}).to_string(), "`plaintext`"),
        ("encrypt", json!({}).to_string(), "`plaintext`"),
        (
            "encrypt",
            json!({"plaintext": "YQ==", "associated_data": "*"}).to_string(),
            "`associated_data`",
        ),
        (
            "encrypt",
            json!({"plaintext": "YQ==", "context": "Y3R4"}).to_string(),
            "`context` is not supported",
        ),
        (
            "encrypt",
            json!({"batch_input": [{"plaintext": "YQ=="}]}).to_string(),
            "`batch_input` is not supported",
        ),
        (
            "decrypt",
            json!({"ciphertext": "vault:v1"}).to_string(),
            "`ciphertext`",
        ),
        (
            "decrypt",
            json!({"ciphertext": "vault:v1:***"}).to_string(),
            "`ciphertext`",
        ),
        (
            "decrypt",
            json!({"ciphertext": "vault:v1:QUJD", "batch_input": []}).to_string(),
            "`batch_input`",
        ),
    ];
    for (operation, body, expected) in cases {
        let reply = call(
            &app,
            "PUT",
            &format!("/v1/transit/{operation}/unseal"),
            Some(TOKEN),
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.raw);
        assert!(reply.error().contains(expected), "{body}: {}", reply.raw);
    }
    // Our blob format is checked by the broker: garbage that is valid base64.
    let reply = decrypt(&app, TOKEN, "unseal", json!({"ciphertext": "vault:v1:QUJD"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.raw);
    assert!(reply.error().contains("malformed blob"), "{}", reply.raw);
}

#[tokio::test]
async fn payload_over_the_limit_is_400_and_a_huge_body_is_413() {
    let app = app_with("transit", 1024);
    let reply = encrypt(&app, TOKEN, "unseal", json!({"plaintext": b64(&[0u8; 1025])})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.raw);
    assert!(reply.error().contains("the limit is 1024 bytes"), "{}", reply.raw);

    let huge = json!({"plaintext": "A".repeat(body_limit(1024) + 4)}).to_string();
    let reply = call(&app, "PUT", "/v1/transit/encrypt/unseal", Some(TOKEN), huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.raw);
    assert!(reply.error().contains("larger than"), "{}", reply.raw);

    // Unauthenticated callers learn nothing, not even the size limit.
    let huge = "A".repeat(body_limit(1024) + 4);
    let reply = call(&app, "PUT", "/v1/transit/encrypt/unseal", None, huge).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.raw);
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_as_json() {
    let app = app();
    for path in [
        "/v1/transit/encrypt",
        "/v1/transit/encrypt/unseal/extra",
        "/v1/secret/data/x",
        "/",
        "/v1/sys/seal-status",
    ] {
        let reply = call(&app, "GET", path, Some(TOKEN), "").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {}", reply.raw);
        assert!(reply.error().contains(path), "{}", reply.raw);
    }
    for (method, path) in [
        ("GET", "/v1/transit/encrypt/unseal"),
        ("DELETE", "/v1/transit/keys/unseal"),
        ("POST", "/v1/sys/health"),
        ("GET", "/v1/auth/token/renew-self"),
    ] {
        let reply = call(&app, method, path, Some(TOKEN), "").await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            reply.raw
        );
        assert!(reply.error().contains(method), "{}", reply.raw);
    }
}

#[tokio::test]
async fn another_mount_path_moves_the_key_routes() {
    let app = app_with("kms/transit", 1024);
    let reply = call(
        &app,
        "PUT",
        "/v1/kms/transit/encrypt/unseal",
        Some(TOKEN),
        json!({"plaintext": "YQ=="}).to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    let reply = call(
        &app,
        "PUT",
        "/v1/transit/encrypt/unseal",
        Some(TOKEN),
        json!({"plaintext": "YQ=="}).to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.raw);
}

#[tokio::test]
async fn backend_unavailable_is_503_and_timeout_is_504() {
    let app = app();
    let reply = encrypt(&app, TOKEN, "down", json!({"plaintext": "YQ=="})).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.raw);
    assert!(reply.error().contains("token not present"), "{}", reply.raw);

    let started = std::time::Instant::now();
    let reply = encrypt(&app, TOKEN, "slow", json!({"plaintext": "YQ=="})).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.raw);
    assert!(
        reply.error().contains("did not finish within 1s"),
        "{}",
        reply.raw
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn key_read_is_vault_shaped() {
    let app = app();
    let reply = call(&app, "GET", "/v1/transit/keys/unseal", Some(TOKEN), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    let data = &reply.body["data"];
    assert_eq!(data["name"], "unseal");
    assert_eq!(data["type"], "aes256-gcm96");
    assert_eq!(data["latest_version"], 1);
    assert_eq!(data["min_decryption_version"], 1);
    assert_eq!(data["min_encryption_version"], 0);
    assert_eq!(data["deletion_allowed"], false);
    assert_eq!(data["exportable"], false);
    assert_eq!(data["supports_encryption"], true);
    assert_eq!(data["supports_decryption"], true);
    assert!(
        data["keys"]["1"].as_u64().unwrap() > 1_600_000_000,
        "{}",
        reply.raw
    );
}

#[tokio::test]
async fn token_endpoints_describe_the_token_without_echoing_it() {
    let app = app();
    let reply = call(&app, "GET", "/v1/auth/token/lookup-self", Some(TOKEN), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["display_name"], "alice");
    assert_eq!(reply.body["data"]["meta"]["keys"], "down,slow,unseal");
    assert_eq!(reply.body["data"]["renewable"], false);
    assert!(!reply.raw.contains(TOKEN), "{}", reply.raw);

    // The Go client sends {"increment":0}; hvac may send nothing.
    for body in [r#"{"increment":0}"#, ""] {
        let reply = call(&app, "PUT", "/v1/auth/token/renew-self", Some(TOKEN), body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
        assert_eq!(reply.body["auth"]["renewable"], false);
        assert_eq!(reply.body["auth"]["lease_duration"], 0);
        assert!(!reply.raw.contains(TOKEN), "{}", reply.raw);
    }
}

#[tokio::test]
async fn health_needs_no_token() {
    let app = app();
    let reply = call(&app, "GET", "/v1/sys/health", None, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["initialized"], true);
    assert_eq!(reply.body["sealed"], false);
    assert!(reply.body["version"].as_str().unwrap().starts_with("sealbroker "));
}

const THROTTLE: ThrottleLimits = ThrottleLimits {
    max_failures: 3,
    window: Duration::from_secs(60),
    max_peers: 64,
};

/// The app with [`THROTTLE`] on a clock the test moves, and its metrics.
fn throttled_app() -> (Router, Arc<ManualClock>, Arc<Metrics>) {
    let clock = Arc::new(ManualClock::new());
    let metrics = Arc::new(Metrics::new(false));
    let throttle = Arc::new(FailureThrottle::new(THROTTLE, clock.clone()));
    let app = app_throttled("transit", 1024, throttle, Some(metrics.clone()));
    (app, clock, metrics)
}

fn throttled_count(metrics: &Metrics) -> String {
    metrics
        .encode()
        .lines()
        .find(|line| line.starts_with("sealbroker_transit_throttled_requests_total "))
        .unwrap_or_else(|| panic!("no throttled counter in\n{}", metrics.encode()))
        .to_owned()
}

const ATTACKER: &str = "192.0.2.66:40000";
const BYSTANDER: &str = "198.51.100.7:40000";
const WRONG: &str = "s.not-a-configured-token-Kp4Xz9Qm2Lw7";

#[tokio::test]
async fn a_peer_with_too_many_failed_tokens_gets_429_and_another_peer_does_not() {
    let (app, clock, metrics) = throttled_app();
    let lookup = "/v1/auth/token/lookup-self";
    for attempt in 1..=THROTTLE.max_failures {
        let reply = call_from(&app, Some(ATTACKER), "GET", lookup, Some(WRONG), "").await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "attempt {attempt}: {}",
            reply.raw
        );
        clock.advance(Duration::from_secs(10));
    }
    // 30 s into the window: refused unchecked, even with a valid token, and
    // from another port of the same address.
    for token in [Some(WRONG), Some(TOKEN), None] {
        let reply = call_from(&app, Some("192.0.2.66:50001"), "GET", lookup, token, "").await;
        assert_eq!(
            reply.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{token:?}: {}",
            reply.raw
        );
        assert!(
            reply.error().contains("too many failed token attempts"),
            "{}",
            reply.raw
        );
        assert_eq!(reply.headers["retry-after"], "30", "{token:?}");
        assert!(
            !reply.raw.contains(TOKEN) && !reply.raw.contains(WRONG),
            "{}",
            reply.raw
        );
    }
    let sealed = encrypt(&app, TOKEN, "unseal", json!({"plaintext": b64(b"x")})).await;
    assert_eq!(
        sealed.status,
        StatusCode::OK,
        "requests without a peer are counted apart"
    );
    assert_eq!(
        throttled_count(&metrics),
        "sealbroker_transit_throttled_requests_total 3"
    );

    // Another peer is unaffected: its token is checked, and right or wrong it gets the usual answer.
    let reply = call_from(&app, Some(BYSTANDER), "GET", lookup, Some(TOKEN), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["display_name"], "alice");
    let reply = call_from(&app, Some(BYSTANDER), "GET", lookup, Some(WRONG), "").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.raw);

    // Health needs no token and is never throttled.
    let reply = call_from(&app, Some(ATTACKER), "GET", "/v1/sys/health", None, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);

    // The window ends 60 s after the first failure: the token is checked again.
    clock.advance(Duration::from_secs(29));
    let reply = call_from(&app, Some(ATTACKER), "GET", lookup, Some(TOKEN), "").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.raw);
    assert_eq!(reply.headers["retry-after"], "1");
    clock.advance(Duration::from_secs(1));
    let reply = call_from(&app, Some(ATTACKER), "GET", lookup, Some(TOKEN), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(
        throttled_count(&metrics),
        "sealbroker_transit_throttled_requests_total 4"
    );
}

#[tokio::test]
async fn successes_between_failures_do_not_earn_a_peer_more_guesses() {
    let (app, _clock, _metrics) = throttled_app();
    let lookup = "/v1/auth/token/lookup-self";
    for _ in 1..THROTTLE.max_failures {
        let reply = call_from(&app, Some(ATTACKER), "GET", lookup, Some(WRONG), "").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.raw);
        let reply = call_from(&app, Some(ATTACKER), "GET", lookup, Some(TOKEN), "").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    }
    let reply = call_from(&app, Some(ATTACKER), "GET", lookup, Some(WRONG), "").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.raw);
    let reply = call_from(&app, Some(ATTACKER), "GET", lookup, Some(TOKEN), "").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.raw);
}

#[tokio::test]
async fn a_flood_of_distinct_peers_keeps_the_throttle_table_bounded() {
    let throttle = Arc::new(FailureThrottle::new(THROTTLE, Arc::new(ManualClock::new())));
    let app = app_throttled("transit", 1024, throttle.clone(), None);
    let lookup = "/v1/auth/token/lookup-self";
    for n in 0..1000u32 {
        let [_, _, c, d] = n.to_be_bytes();
        let peer = format!("10.9.{c}.{d}:1234");
        let reply = call_from(&app, Some(&peer), "GET", lookup, Some(WRONG), "").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{peer}: {}", reply.raw);
        assert!(throttle.tracked_peers() <= THROTTLE.max_peers, "after {peer}");
    }
    assert_eq!(throttle.tracked_peers(), THROTTLE.max_peers);
    let reply = call_from(&app, Some(BYSTANDER), "GET", lookup, Some(TOKEN), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
}

/// Log lines written while `body` runs on this thread, as text.
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || LogWriter(writer.clone()))
        .finish();
    (CapturedLogs(buffer), tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_throttled_peer_is_logged_once_per_window_without_tokens() {
    let (logs, _guard) = capture_logs();
    let (app, clock, _metrics) = throttled_app();
    let lookup = "/v1/auth/token/lookup-self";
    let throttled_lines = || logs.text().matches("refused with 429").count();
    for window in 1..=2 {
        for _ in 0..THROTTLE.max_failures {
            call_from(&app, Some(ATTACKER), "GET", lookup, Some(WRONG), "").await;
        }
        for token in [WRONG, TOKEN, WRONG, TOKEN] {
            let reply = call_from(&app, Some(ATTACKER), "GET", lookup, Some(token), "").await;
            assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.raw);
        }
        assert_eq!(throttled_lines(), window, "{}", logs.text());
        clock.advance(THROTTLE.window);
    }
    let text = logs.text();
    assert!(text.contains("peer=192.0.2.66 "), "{text}");
    assert!(!text.contains(WRONG) && !text.contains(TOKEN), "{text}");
}

#[test]
fn body_limit_fits_a_maximum_plaintext_and_aad() {
    let limit = body_limit(65536);
    let b64_len = 65536usize.div_ceil(3) * 4;
    assert!(limit > 2 * b64_len + 100, "{limit}");
    assert!(limit < 1024 * 1024, "{limit}");
}
