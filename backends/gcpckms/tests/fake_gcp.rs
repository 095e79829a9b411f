//! The Cloud KMS backend driven through the real `google-cloud-kms-v1` client
//! against a local stand-in that speaks the documented REST surface over TLS:
//! `POST /v1/{cryptoKey}:encrypt` (or on a `cryptoKeyVersions/N`),
//! `POST /v1/{cryptoKey}:decrypt`, `GET /v1/{cryptoKey}`,
//! `POST /v1/{cryptoKey}/cryptoKeyVersions`, `GET` of a version, Google's JSON
//! error body, and an OAuth token endpoint for `authorized_user` credentials.
//! There is no Cloud KMS emulator. Where the client relies on the service,
//! the stand-in behaves as Cloud KMS does: enums come back as integers when
//! the request asks `$alt=json;enum-encoding=int` (as the SDK does) and as
//! names otherwise; every CRC32C the client sends is checked and a mismatch
//! is refused `INVALID_ARGUMENT`; throttling says how long to wait in a
//! `google.rpc.RetryInfo` error detail, not in `Retry-After`.
//!
//! Harness-less (see Cargo.toml): `main` trusts the test CA through
//! `SSL_CERT_FILE` before any thread starts, then hands the tests to
//! libtest-mimic, which speaks the libtest command line (`--list --format
//! terse`, `--exact NAME`, filters) so cargo-nextest can list and run them
//! one per process.
//!
//! The OpenBao drop-in end-to-end test (`tests/tests/openbao_dropin.rs`)
//! includes this file for its stand-in (`start_fake`, `pki` and the
//! credentials constants are `pub(crate)` for it).

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sealbroker_backend_gcpckms::{
    BackendConfig, GcpKmsKey, KeyConfig, KmsClient, METADATA_KEY_VERSION, RetryConfig, connect, crc32c,
};
use sealbroker_core::{Backend, BackendErrorKind, Mechanism};
use sealbroker_testkit::https_stub::{HttpsStub, StubResponse};
use sealbroker_testkit::pki::{Leaf, TestCa};
use sealbroker_testkit::{assert_no_secret, free_port};
use serde_json::{Value, json};

pub(crate) const KEY: &str = "projects/p/locations/global/keyRings/sealbroker/cryptoKeys/unseal";
const TOKEN: &str = "ya29.sealbroker-test-token";
pub(crate) const CLIENT_ID: &str = "1234567890-sealbroker.apps.googleusercontent.com";
/// Must never show up in any error message.
pub(crate) const REFRESH_TOKEN: &str = "1//sealbroker-refresh-DO-NOT-LEAK";
pub(crate) const CLIENT_SECRET: &str = "sealbroker-client-secret-DO-NOT-LEAK";
const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
/// What no error may show: every secret the tests hand out carries the
/// DO-NOT-LEAK marker.
const SECRETS: &[(&str, &str)] = &[
    ("the refresh token", REFRESH_TOKEN),
    ("the client secret", CLIENT_SECRET),
    ("a secret marked not to leak", "DO-NOT-LEAK"),
];

// ---------------------------------------------------------------- fake service

struct Version {
    state: &'static str,
    key: [u8; 32],
}

/// A canned reply served before normal handling (failure injection).
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

#[derive(Default)]
struct State {
    /// Versions of [`KEY`], 1-based.
    versions: Vec<Version>,
    /// The primary version's number.
    primary: usize,
    canned: VecDeque<Canned>,
    /// Every KMS request (not token requests).
    requests: usize,
    /// 403 for this principal's calls, as when IAM denies the role.
    deny: bool,
    /// Versions created through the API answer PENDING_GENERATION this many
    /// more times before they are ENABLED.
    pending_reads: usize,
    /// The resource every `encrypt` was called on.
    encrypt_targets: Vec<String>,
    /// KMS requests that asked for integer enums (`$alt=json;enum-encoding=int`).
    int_enum_requests: usize,
    /// Data fields sent without their CRC32C (`plaintext` of an encrypt,
    /// `ciphertext` of a decrypt): the service accepts that, sealbroker must not.
    unchecksummed: Vec<&'static str>,
}

pub(crate) struct FakeKms {
    pub(crate) endpoint: String,
    state: Arc<Mutex<State>>,
    tokens: Arc<AtomicUsize>,
    _server: HttpsStub,
}

impl FakeKms {
    fn rotate(&self) {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).unwrap();
        let mut state = self.state.lock().unwrap();
        state.versions.push(Version {
            state: "ENABLED",
            key,
        });
        state.primary = state.versions.len();
    }
    fn set_state(&self, version: usize, state: &'static str) {
        self.state.lock().unwrap().versions[version - 1].state = state;
    }
    fn push(&self, canned: Canned) {
        self.state.lock().unwrap().canned.push_back(canned);
    }
    pub(crate) fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}

fn error_body(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// Cloud KMS's quota refusal: HTTP 429 with the delay in a `RetryInfo` detail.
fn resource_exhausted(retry_delay: &str) -> Canned {
    let mut body = error_body(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Cryptographic requests'.",
    );
    body["error"]["details"] = json!([{
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": retry_delay,
    }]);
    Canned {
        status: 429,
        headers: vec![],
        body,
    }
}

/// The refusal Cloud KMS sends when a CRC32C does not match its field.
fn checksum_mismatch(field: &str) -> (u16, Vec<(&'static str, String)>, Value) {
    (
        400,
        vec![],
        error_body(
            400,
            "INVALID_ARGUMENT",
            &format!("The checksum in field {field}_crc32c did not match the data in field {field}."),
        ),
    )
}

/// Whether the request's query asks for integer enums, as the SDK's
/// `$alt=json;enum-encoding=int` does (percent-encoded or not).
fn asks_int_enums(query: &str) -> bool {
    query.split('&').any(|pair| {
        let decoded = pair
            .replace("%24", "$")
            .replace("%3B", ";")
            .replace("%3b", ";")
            .replace("%3D", "=")
            .replace("%3d", "=");
        decoded
            .strip_prefix("$alt=")
            .is_some_and(|alt| alt.split(';').any(|p| p == "enum-encoding=int"))
    })
}

/// Rewrites the enum fields the stand-in sends (`state`, `protectionLevel`,
/// `algorithm`, `purpose`, at any depth) from names to Cloud KMS's numbers.
fn int_enums(value: &mut Value) {
    const NUMBERS: &[(&str, &str, i64)] = &[
        ("state", "ENABLED", 1),
        ("state", "DISABLED", 2),
        ("state", "DESTROYED", 3),
        ("state", "DESTROY_SCHEDULED", 4),
        ("state", "PENDING_GENERATION", 5),
        ("protectionLevel", "SOFTWARE", 1),
        ("algorithm", "GOOGLE_SYMMETRIC_ENCRYPTION", 1),
        ("purpose", "ENCRYPT_DECRYPT", 1),
    ];
    match value {
        Value::Object(map) => {
            for (field, v) in map.iter_mut() {
                match v {
                    Value::String(name) if NUMBERS.iter().any(|(f, _, _)| f == field) => {
                        let number = NUMBERS
                            .iter()
                            .find(|(f, known, _)| f == field && known == name)
                            .map(|&(_, _, number)| number)
                            .unwrap_or_else(|| panic!("the stand-in has no number for {field} {name:?}"));
                        *v = json!(number);
                    }
                    _ => int_enums(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(int_enums),
        _ => {}
    }
}

/// Whether `field_crc32c` in `body`, when present, is the CRC32C of `data`;
/// Google's JSON sends int64 as a decimal string.
fn crc_matches(body: &Value, field: &str, data: &[u8]) -> Option<bool> {
    let sent = body.get(field)?;
    let sent = sent
        .as_str()
        .and_then(|s| s.parse::<u32>().ok())
        .or_else(|| sent.as_u64().and_then(|n| u32::try_from(n).ok()));
    Some(sent == Some(crc32c(data)))
}

fn version_name(n: usize) -> String {
    format!("{KEY}/cryptoKeyVersions/{n}")
}

fn version_json(n: usize, state: &str) -> Value {
    json!({
        "name": version_name(n),
        "state": state,
        "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION",
        "protectionLevel": "SOFTWARE",
    })
}

fn key_config(name: &str) -> KeyConfig {
    KeyConfig {
        key_name: name.into(),
        key_version: None,
    }
}

fn b64(v: &Value, field: &str) -> Vec<u8> {
    B64.decode(v.get(field).and_then(Value::as_str).unwrap_or(""))
        .unwrap()
}

fn handle(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &Value,
) -> (u16, Vec<(&'static str, String)>, Value) {
    let mut state = state.lock().unwrap();
    state.requests += 1;
    if let Some(canned) = state.canned.pop_front() {
        return (canned.status, canned.headers, canned.body);
    }
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return (
            401,
            vec![],
            error_body(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            ),
        );
    }
    if state.deny {
        return (
            403,
            vec![],
            error_body(
                403,
                "PERMISSION_DENIED",
                &format!(
                    "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource '{KEY}' (or it may not exist)."
                ),
            ),
        );
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return (404, vec![], error_body(404, "NOT_FOUND", "no such path"));
    };
    let (name, verb) = rest.split_once(':').unwrap_or((rest, ""));
    let (name, sub) = match name.split_once("/cryptoKeyVersions") {
        Some((key, tail)) => (key, Some(tail.trim_start_matches('/'))),
        None => (name, None),
    };
    if name != KEY {
        return (
            404,
            vec![],
            error_body(404, "NOT_FOUND", &format!("CryptoKey {name} not found.")),
        );
    }
    let primary = state.primary;
    // The version `encrypt` uses: the primary, or the one named.
    let mut target = primary;
    match (method, sub, verb) {
        ("POST", Some(""), "") => {
            let mut key = [0u8; 32];
            SystemRandom::new().fill(&mut key).unwrap();
            state.versions.push(Version {
                state: "PENDING_GENERATION",
                key,
            });
            state.pending_reads = 1;
            let n = state.versions.len();
            return (200, vec![], version_json(n, "PENDING_GENERATION"));
        }
        ("GET", Some(id), "") => {
            let Some(n) = id
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=state.versions.len()).contains(n))
            else {
                return (404, vec![], error_body(404, "NOT_FOUND", "no such version"));
            };
            if state.versions[n - 1].state == "PENDING_GENERATION" {
                if state.pending_reads > 0 {
                    state.pending_reads -= 1;
                } else {
                    state.versions[n - 1].state = "ENABLED";
                }
            }
            return (200, vec![], version_json(n, state.versions[n - 1].state));
        }
        ("POST", Some(id), "encrypt") => {
            let Some(n) = id
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=state.versions.len()).contains(n))
            else {
                return (404, vec![], error_body(404, "NOT_FOUND", "no such version"));
            };
            target = n;
        }
        (_, None, _) => {}
        _ => return (404, vec![], error_body(404, "NOT_FOUND", "no such method")),
    }
    match (method, verb) {
        ("GET", "") => {
            let p = &state.versions[primary - 1];
            (
                200,
                vec![],
                json!({
                    "name": KEY,
                    "purpose": "ENCRYPT_DECRYPT",
                    "primary": {"name": version_name(primary), "state": p.state, "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION", "protectionLevel": "SOFTWARE"},
                }),
            )
        }
        ("POST", "encrypt") => {
            let plaintext = b64(body, "plaintext");
            let aad = b64(body, "additionalAuthenticatedData");
            match crc_matches(body, "plaintextCrc32c", &plaintext) {
                Some(false) => return checksum_mismatch("plaintext"),
                Some(true) => {}
                None => state.unchecksummed.push("plaintext"),
            }
            let aad_verified = crc_matches(body, "additionalAuthenticatedDataCrc32c", &aad);
            if aad_verified == Some(false) {
                return checksum_mismatch("additional_authenticated_data");
            }
            state
                .encrypt_targets
                .push(name.to_owned() + &sub.map(|s| format!("/cryptoKeyVersions/{s}")).unwrap_or_default());
            let version = &state.versions[target - 1];
            if version.state != "ENABLED" {
                return (
                    400,
                    vec![],
                    error_body(
                        400,
                        "FAILED_PRECONDITION",
                        &format!(
                            "{} is not enabled, current state is: {}.",
                            version_name(target),
                            version.state
                        ),
                    ),
                );
            }
            let mut iv = [0u8; 12];
            SystemRandom::new().fill(&mut iv).unwrap();
            let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &version.key).unwrap());
            let mut sealed = plaintext.clone();
            sealing
                .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(&aad), &mut sealed)
                .unwrap();
            let mut ciphertext = (target as u32).to_be_bytes().to_vec();
            ciphertext.extend_from_slice(&iv);
            ciphertext.extend_from_slice(&sealed);
            (
                200,
                vec![],
                json!({
                    "name": version_name(target),
                    "ciphertext": B64.encode(&ciphertext),
                    "ciphertextCrc32c": crc32c(&ciphertext).to_string(),
                    "verifiedPlaintextCrc32c": true,
                    "verifiedAdditionalAuthenticatedDataCrc32c": aad_verified == Some(true),
                    "protectionLevel": "SOFTWARE",
                }),
            )
        }
        ("POST", "decrypt") => {
            let ciphertext = b64(body, "ciphertext");
            let aad = b64(body, "additionalAuthenticatedData");
            match crc_matches(body, "ciphertextCrc32c", &ciphertext) {
                Some(false) => return checksum_mismatch("ciphertext"),
                Some(true) => {}
                None => state.unchecksummed.push("ciphertext"),
            }
            if crc_matches(body, "additionalAuthenticatedDataCrc32c", &aad) == Some(false) {
                return checksum_mismatch("additional_authenticated_data");
            }
            let invalid = || {
                (
                    400,
                    vec![],
                    error_body(
                        400,
                        "INVALID_ARGUMENT",
                        "Decryption failed: the ciphertext is invalid.",
                    ),
                )
            };
            if ciphertext.len() < 4 + 12 + 16 {
                return invalid();
            }
            let n = u32::from_be_bytes(ciphertext[..4].try_into().unwrap()) as usize;
            let Some(version) = n.checked_sub(1).and_then(|i| state.versions.get(i)) else {
                return invalid();
            };
            if version.state != "ENABLED" {
                return (
                    400,
                    vec![],
                    error_body(
                        400,
                        "FAILED_PRECONDITION",
                        &format!(
                            "{} is not enabled, current state is: {}.",
                            version_name(n),
                            version.state
                        ),
                    ),
                );
            }
            let opening = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &version.key).unwrap());
            let mut data = ciphertext[16..].to_vec();
            let iv: [u8; 12] = ciphertext[4..16].try_into().unwrap();
            let Ok(plaintext) =
                opening.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(&aad), &mut data)
            else {
                return invalid();
            };
            (
                200,
                vec![],
                json!({
                    "plaintext": B64.encode(&*plaintext),
                    "plaintextCrc32c": crc32c(plaintext).to_string(),
                    "usedPrimary": n == primary,
                    "protectionLevel": "SOFTWARE",
                }),
            )
        }
        _ => (404, vec![], error_body(404, "NOT_FOUND", "no such method")),
    }
}

pub(crate) async fn start_fake(tls: Arc<rustls::ServerConfig>) -> FakeKms {
    let state = Arc::new(Mutex::new(State::default()));
    let tokens = Arc::new(AtomicUsize::new(0));
    let (shared, token_count) = (state.clone(), tokens.clone());
    let server = HttpsStub::start(tls, move |request| {
        let (status, headers, reply) = if request.path == "/token" {
            token_count.fetch_add(1, Ordering::SeqCst);
            // The refresh grant (JSON or form encoded) must carry our refresh token.
            let grant = String::from_utf8_lossy(&request.body).to_string();
            if grant.contains(REFRESH_TOKEN) {
                (
                    200,
                    vec![],
                    json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}),
                )
            } else {
                (400, vec![], json!({"error": "invalid_grant"}))
            }
        } else {
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            let ints = asks_int_enums(&request.query);
            if ints {
                shared.lock().unwrap().int_enum_requests += 1;
            }
            let (status, headers, mut reply) = handle(
                &shared,
                &request.method,
                &request.path,
                request.header("authorization"),
                &body,
            );
            if ints {
                int_enums(&mut reply);
            }
            (status, headers, reply)
        };
        StubResponse::json(status, &reply).with_headers(headers)
    })
    .await;
    let fake = FakeKms {
        endpoint: format!("https://localhost:{}", server.port()),
        state,
        tokens,
        _server: server,
    };
    fake.rotate();
    fake
}

// ---------------------------------------------------------------- fixtures

struct Env {
    tls: Arc<rustls::ServerConfig>,
    dir: tempfile::TempDir,
}

/// Makes a CA (its PEM in `dir/ca.pem`) and a `localhost` server certificate.
pub(crate) fn pki(dir: &std::path::Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let ca = TestCa::new("sealbroker gcp test CA");
    let tls = ca.issue(&Leaf::server(&["localhost"])).server_config();
    (ca.write(&dir.join("ca.pem")), tls)
}

impl Env {
    /// `authorized_user` credentials whose token endpoint is the fake server.
    fn credentials(&self, fake: &FakeKms) -> PathBuf {
        let path = self.dir.path().join(format!(
            "creds-{}.json",
            fake.endpoint.rsplit(':').next().unwrap()
        ));
        let json = json!({
            "type": "authorized_user",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
            "token_uri": format!("{}/token", fake.endpoint),
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    fn config(&self, fake: &FakeKms) -> BackendConfig {
        BackendConfig {
            endpoint: Some(fake.endpoint.clone()),
            credentials_file: Some(self.credentials(fake)),
            timeout_ms: 5_000,
            retry: RetryConfig {
                max_retries: 2,
                initial_backoff_ms: 10,
                max_backoff_ms: 200,
            },
        }
    }

    async fn key(&self, fake: &FakeKms) -> (KmsClient, GcpKmsKey) {
        let client = connect(&self.config(fake)).await.unwrap();
        let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
        (client, key)
    }
}

// ---------------------------------------------------------------- tests

async fn round_trip_over_tls_records_the_version_and_binds_aad(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    key.health().await.unwrap();
    let sealed = key.encrypt(DEK, b"vault/unseal").await.unwrap();
    assert_eq!(sealed.mechanism, Mechanism::ServiceDefined);
    assert_eq!(sealed.metadata[METADATA_KEY_VERSION], version_name(1));
    assert_eq!(key.decrypt(&sealed, b"vault/unseal").await.unwrap().expose(), DEK);
    let empty_aad = key.encrypt(DEK, b"").await.unwrap();
    assert_eq!(key.decrypt(&empty_aad, b"").await.unwrap().expose(), DEK);
    assert_eq!(
        fake.tokens.load(Ordering::SeqCst),
        1,
        "the token is fetched once and cached"
    );
    {
        let state = fake.state.lock().unwrap();
        assert_eq!(
            state.int_enum_requests, state.requests,
            "every call asked for integer enums, and got them"
        );
        assert!(
            state.unchecksummed.is_empty(),
            "sent without a CRC32C: {:?}",
            state.unchecksummed
        );
    }

    let err = key.decrypt(&sealed, b"other").await.err().unwrap();

    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    assert!(
        err.message.contains("INVALID_ARGUMENT") || err.message.contains("InvalidArgument"),
        "{err}"
    );
    assert_eq!(key.key_identity(), format!("gcpckms:{KEY}"));
}

async fn old_blobs_open_after_rotation_until_their_version_is_disabled(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    let old = key.encrypt(DEK, b"aad").await.unwrap();
    fake.rotate();
    let new = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(old.metadata[METADATA_KEY_VERSION], version_name(1));
    assert_eq!(new.metadata[METADATA_KEY_VERSION], version_name(2));
    assert_eq!(key.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);

    fake.set_state(1, "DISABLED");
    let err = key.decrypt(&old, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("cryptoKeyVersions/1"), "{err}");
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);

    fake.set_state(2, "DISABLED");
    let err = key.health().await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(
        err.message.contains("Disabled") || err.message.contains("DISABLED"),
        "{err}"
    );
}

async fn a_blob_from_another_key_is_refused(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    let mut sealed = key.encrypt(DEK, b"aad").await.unwrap();
    sealed.metadata.insert(
        METADATA_KEY_VERSION.into(),
        "projects/p/locations/global/keyRings/r/cryptoKeys/other/cryptoKeyVersions/1".into(),
    );
    let before = fake.requests();
    let err = key.decrypt(&sealed, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    assert_eq!(fake.requests(), before, "refused without a call");
}

async fn resource_exhausted_is_retried_honouring_retry_info(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    key.encrypt(DEK, b"warm-up").await.unwrap();
    // The service asks for 1 s; the backoff cap (max_backoff_ms = 200) bounds it.
    fake.push(resource_exhausted("1s"));
    let before = fake.requests();
    let started = Instant::now();
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "RetryInfo ignored: {:?}",
        started.elapsed()
    );
    assert_eq!(fake.requests() - before, 2);
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);

    for _ in 0..3 {
        fake.push(resource_exhausted("1s"));
    }
    let before = fake.requests();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Throttled, "{err}");
    assert!(err.message.contains("gave up after 2 retries"), "{err}");
    assert_eq!(fake.requests() - before, 3, "one attempt and two retries");
    assert_eq!(key.throttling_retries(), 3, "one retry, then two more");
}

/// The stand-in's own faithfulness: integer enums exactly when asked as the
/// SDK asks, and RetryInfo (not Retry-After) on throttling.
async fn the_stand_in_answers_as_cloud_kms_does(_env: Arc<Env>) {
    assert!(asks_int_enums("%24alt=json%3Benum-encoding%3Dint"));
    assert!(asks_int_enums("$alt=json;enum-encoding=int"));
    assert!(!asks_int_enums(""));
    assert!(!asks_int_enums("%24alt=json"));
    let mut version = version_json(2, "PENDING_GENERATION");
    int_enums(&mut version);
    assert_eq!(
        (
            &version["state"],
            &version["protectionLevel"],
            &version["algorithm"]
        ),
        (&json!(5), &json!(1), &json!(1)),
        "{version}"
    );
    assert_eq!(version["name"], version_name(2), "names stay strings");
    let quota = resource_exhausted("1s");
    assert!(quota.headers.is_empty(), "Cloud KMS sends no Retry-After");
    assert_eq!(
        quota.body["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
}

/// Cloud KMS checks the CRC32C of each field it is sent and refuses a
/// mismatch; so does the stand-in (driven here through the SDK directly,
/// since sealbroker always sends the right CRC).
async fn a_crc32c_mismatch_is_refused_invalid_argument(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (client, key) = env.key(&fake).await;
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    let ciphertext = sealed.ciphertext.clone();
    let wrong = i64::from(crc32c(&ciphertext) ^ 1);
    let err = client
        .sdk()
        .decrypt()
        .set_name(KEY)
        .set_ciphertext(ciphertext.clone())
        .set_ciphertext_crc32c(wrong)
        .send()
        .await
        .expect_err("a ciphertext whose CRC32C does not match is refused");
    let status = err.status().expect("a service error");
    // By name: this file is also included by tests/tests/openbao_dropin.rs,
    // which does not link google-cloud-gax.
    assert_eq!(format!("{:?}", status.code), "InvalidArgument", "{err}");
    assert!(status.message.contains("ciphertext_crc32c"), "{err}");
    let err = client
        .sdk()
        .encrypt()
        .set_name(KEY)
        .set_plaintext(DEK.to_vec())
        .set_plaintext_crc32c(i64::from(crc32c(DEK) ^ 1))
        .send()
        .await
        .expect_err("a plaintext whose CRC32C does not match is refused");
    assert!(
        err.status()
            .is_some_and(|s| s.message.contains("plaintext_crc32c")),
        "{err}"
    );
    // The same blob with its true CRC32C opens.
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
}

/// A CRC32C mismatch reported by the service means the request was damaged
/// on the way: a Decrypt is tried again, not reported as a forged blob.
async fn a_checksum_refusal_on_decrypt_is_retried_not_called_tampering(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    let (status, headers, body) = checksum_mismatch("ciphertext");
    fake.push(Canned {
        status,
        headers,
        body,
    });
    let before = fake.requests();
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(fake.requests() - before, 2, "refused once, then tried again");
}

/// A service that accepts the connection and never answers: each attempt
/// ends at `timeout_ms`, and the call ends as `Timeout`, naming the setting,
/// after its bounded retries instead of hanging.
async fn a_service_that_never_answers_times_out_at_timeout_ms(env: Arc<Env>) {
    let token_server = start_fake(env.tls.clone()).await;
    let hung = sealbroker_testkit::silent::SilentListener::bind().await;
    let mut config = env.config(&token_server);
    config.endpoint = Some(format!("https://localhost:{}", hung.port()));
    config.timeout_ms = 400;
    let client = connect(&config).await.unwrap();
    let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
    let sealed = sealbroker_core::Sealed {
        mechanism: Mechanism::ServiceDefined,
        iv: Vec::new(),
        ciphertext: vec![0; 48],
        oaep_hash: String::new(),
        metadata: Default::default(),
    };
    for operation in ["Encrypt", "Decrypt"] {
        let started = Instant::now();
        let err = match operation {
            "Encrypt" => key.encrypt(DEK, b"aad").await.err().unwrap(),
            _ => key.decrypt(&sealed, b"aad").await.err().unwrap(),
        };
        let took = started.elapsed();
        eprintln!("{err} after {took:?}");
        assert_eq!(err.kind, BackendErrorKind::Timeout, "{err}");
        assert!(
            err.message.contains(operation) && err.message.contains("timeout_ms = 400"),
            "{err}"
        );
        assert!(err.message.contains("gave up after 2 retries"), "{err}");
        // Three attempts of 400 ms and two backoffs of at most 200 ms, with slack.
        assert!(
            took >= Duration::from_millis(1_200) && took < Duration::from_millis(3 * 400 + 2 * 200 + 1_500),
            "{operation} ended after {took:?}, not after three attempts of timeout_ms"
        );
    }
    assert!(hung.accepted() >= 1, "the calls reached the hung service");
    assert_eq!(token_server.requests(), 0, "nothing reached a working KMS");
}

async fn unauthenticated_and_denied_are_permission_denied_naming_the_principal(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    fake.push(Canned {
        status: 401,
        headers: vec![],
        body: error_body(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ),
    });
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains(CLIENT_ID), "{err}");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");

    fake.state.lock().unwrap().deny = true;
    let before = fake.requests();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("useToEncrypt"), "{err}");
    assert!(err.message.contains(CLIENT_ID), "{err}");
    assert_eq!(fake.requests() - before, 1, "not retried");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

async fn a_refused_token_request_is_permission_denied(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let path = env.dir.path().join("revoked-creds.json");
    // A well-formed refresh token that the token endpoint refuses
    // (`invalid_grant`), as Google refuses a revoked one.
    std::fs::write(
        &path,
        json!({
            "type": "authorized_user",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": "1//revoked-refresh-DO-NOT-LEAK",
            "token_uri": format!("{}/token", fake.endpoint),
        })
        .to_string(),
    )
    .unwrap();
    let mut config = env.config(&fake);
    config.credentials_file = Some(path);
    let client = connect(&config).await.unwrap();
    let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains(CLIENT_ID), "names the principal: {err}");
    assert!(
        fake.tokens.load(Ordering::SeqCst) >= 1,
        "the token endpoint was asked"
    );
    assert_eq!(fake.requests(), 0, "no KMS call without a token");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

async fn unknown_key_is_key_not_found(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let client = connect(&env.config(&fake)).await.unwrap();
    let name = "projects/p/locations/global/keyRings/sealbroker/cryptoKeys/missing";
    let key = GcpKmsKey::new(&client, &key_config(name)).unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains(name), "{err}");
}

async fn server_down_is_unavailable(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let mut config = env.config(&fake);
    let port = free_port(); // nothing listens there
    config.endpoint = Some(format!("https://localhost:{port}"));
    let client = connect(&config).await.unwrap();
    let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("gave up after 2 retries"), "{err}");
}

async fn an_untrusted_server_certificate_is_refused(env: Arc<Env>) {
    // A certificate from a CA the client does not trust, on the KMS endpoint
    // only: tokens still come from a trusted server.
    let other = tempfile::tempdir().unwrap();
    let (_, untrusted) = pki(other.path());
    let fake = start_fake(untrusted).await;
    let token_server = start_fake(env.tls.clone()).await;
    let mut config = env.config(&token_server);
    config.endpoint = Some(fake.endpoint.clone());
    let client = connect(&config).await.unwrap();
    let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("certificate"), "{err}");
    assert_eq!(fake.requests(), 0);
    assert_eq!(token_server.tokens.load(Ordering::SeqCst), 1);
}

async fn create_version_makes_a_cloud_version_and_pins_the_new_key_to_it(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (client, key) = env.key(&fake).await;
    let old = key.encrypt(DEK, b"aad").await.unwrap();

    let created = key.create_version(2).await.unwrap();
    assert_eq!(created.settings["key_version"], "2");
    assert_eq!(created.settings.len(), 1);
    assert_eq!(fake.state.lock().unwrap().versions.len(), 2);
    assert_eq!(fake.state.lock().unwrap().versions[1].state, "ENABLED");
    let pinned = created.backend;
    assert_eq!(
        pinned.key_identity(),
        format!("gcpckms:{KEY}/cryptoKeyVersions/2")
    );
    assert_ne!(pinned.key_identity(), key.key_identity());

    let new = pinned.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(new.metadata[METADATA_KEY_VERSION], version_name(2));
    assert_eq!(
        fake.state.lock().unwrap().encrypt_targets.last().unwrap(),
        &version_name(2),
        "encrypts with the pinned version"
    );
    assert_eq!(pinned.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
    let err = pinned.decrypt(&old, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");

    // The primary in Cloud KMS is left alone: the unpinned key stays on it.
    let again = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(again.metadata[METADATA_KEY_VERSION], version_name(1));

    // The recorded settings rebuild the same key after a restart.
    let rebuilt = GcpKmsKey::new(
        &client,
        &KeyConfig {
            key_name: KEY.into(),
            key_version: Some(created.settings["key_version"].clone()),
        },
    )
    .unwrap();
    assert_eq!(rebuilt.key_identity(), pinned.key_identity());
    rebuilt.health().await.unwrap();
    fake.set_state(2, "DISABLED");
    let err = rebuilt.health().await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("pinned version"), "{err}");
    key.health().await.unwrap();
}

async fn create_version_is_permission_denied_without_the_create_permission(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    fake.state.lock().unwrap().deny = true;
    let before = fake.requests();
    let err = key.create_version(2).await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("CreateCryptoKeyVersion"), "{err}");
    assert_eq!(fake.requests() - before, 1, "not retried");
    assert_eq!(fake.state.lock().unwrap().versions.len(), 1);
}

async fn a_key_version_must_be_a_number(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let client = connect(&env.config(&fake)).await.unwrap();
    for bad in ["v2", "2/../3", "projects/p"] {
        let err = GcpKmsKey::new(
            &client,
            &KeyConfig {
                key_name: KEY.into(),
                key_version: Some(bad.into()),
            },
        )
        .err()
        .unwrap();
        assert_eq!(err.path, "key_version", "{bad}");
    }
    let empty = GcpKmsKey::new(
        &client,
        &KeyConfig {
            key_name: KEY.into(),
            key_version: Some(String::new()),
        },
    )
    .unwrap();
    assert_eq!(empty.key_identity(), format!("gcpckms:{KEY}"));
}

// ---------------------------------------------------------------- runner

type Test = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|env| Box::pin($name(env))) as Test)),*]
    };
}

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = pki(dir.path());
    // SAFETY: no other thread exists yet; the client's verifier reads this.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca) };
    unsafe { std::env::remove_var("SSL_CERT_DIR") };
    let env = Arc::new(Env { tls, dir });
    let all = tests![
        round_trip_over_tls_records_the_version_and_binds_aad,
        old_blobs_open_after_rotation_until_their_version_is_disabled,
        a_blob_from_another_key_is_refused,
        resource_exhausted_is_retried_honouring_retry_info,
        the_stand_in_answers_as_cloud_kms_does,
        a_crc32c_mismatch_is_refused_invalid_argument,
        a_checksum_refusal_on_decrypt_is_retried_not_called_tampering,
        a_service_that_never_answers_times_out_at_timeout_ms,
        unauthenticated_and_denied_are_permission_denied_naming_the_principal,
        a_refused_token_request_is_permission_denied,
        unknown_key_is_key_not_found,
        server_down_is_unavailable,
        an_untrusted_server_certificate_is_refused,
        create_version_makes_a_cloud_version_and_pins_the_new_key_to_it,
        create_version_is_permission_denied_without_the_create_permission,
        a_key_version_must_be_a_number,
    ];
    let trials = all
        .into_iter()
        .map(|(name, test)| {
            let env = env.clone();
            libtest_mimic::Trial::test(name, move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let outcome = runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(60), tokio::spawn(test(env))).await
                });
                match outcome {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(panic)) => Err(format!("the test panicked: {panic}").into()),
                    Err(_) => Err("the test timed out after 60 s".into()),
                }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
