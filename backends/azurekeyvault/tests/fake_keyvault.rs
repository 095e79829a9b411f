//! The Key Vault backend driven through the real `azure_security_keyvault_keys`
//! and `azure_identity` clients against a local stand-in that speaks the
//! documented REST surface over TLS. There is no Key Vault emulator, and this
//! is not Azure: it is a small server written from the REST reference.
//!
//! - `POST /keys/{name}/{version}/wrapkey` and `/unwrapkey` with real
//!   RSA-OAEP-256 (the `rsa` crate, test-only), `GET /keys/{name}[/{version}]`,
//!   `POST /keys/{name}/rotate`, Key Vault's JSON error body;
//! - the bearer challenge: a request without a token gets 401 and
//!   `WWW-Authenticate: Bearer authorization="…/{tenant}", resource="…"`;
//! - an Entra token endpoint (`/{tenant}/oauth2/v2.0/token`) for the client
//!   secret and workload identity (client assertion) grants, reached through
//!   `authority_host`.
//!
//! The vault is named `sealbroker.vault.azure.test` and reached through
//! `vault_address = "127.0.0.1"`; the client trusts the test CA through
//! `ca_file`, so no process-wide state is touched and the tests run under the
//! ordinary harness (and cargo-nextest).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use sealbroker_backend_azurekeyvault::{
    BackendConfig, CredentialKind, KeyConfig, KeyVaultKey, METADATA_KEY_VERSION, OAEP_HASH, RetryConfig,
    connect,
};
use sealbroker_core::{Backend, BackendErrorKind, Code, Error, KeyRing, KeyVersion, LogicalKey, Mechanism};
use sealbroker_testkit::https_stub::{HttpsStub, StubListener, StubResponse};
use sealbroker_testkit::pki::{Leaf, TestCa};
use sealbroker_testkit::{assert_no_secret, free_port};
use serde_json::{Value, json};

const VAULT_HOST: &str = "sealbroker.vault.azure.test";
const RESOURCE: &str = "https://vault.azure.test";
const KEY: &str = "unseal";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJzZWFsYnJva2VyIjoidGVzdCJ9.access";
/// Must never show up in any error message.
const CLIENT_SECRET: &str = "sealbroker-client-secret-DO-NOT-LEAK";
/// The workload identity's federated token; must never show up either.
const FEDERATED_TOKEN: &str = "federated-DO-NOT-LEAK";
const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
/// What no error may show: every secret the tests hand out carries the
/// DO-NOT-LEAK marker, the refused one too.
const SECRETS: &[(&str, &str)] = &[
    ("the client secret", CLIENT_SECRET),
    ("the federated token", FEDERATED_TOKEN),
    ("a secret marked not to leak", "DO-NOT-LEAK"),
];

// ---------------------------------------------------------------- fake service

struct Version {
    id: String,
    key: RsaPrivateKey,
    enabled: bool,
}

/// A canned reply served before normal handling (failure injection).
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

#[derive(Default)]
struct State {
    /// Versions of [`KEY`]; the last one is current.
    versions: Vec<Version>,
    canned: VecDeque<Canned>,
    /// Vault requests (not token requests), including challenged ones.
    requests: usize,
    /// Vault requests that came without a token.
    challenged: usize,
    /// Unauthenticated requests that carried a body (the DEK must not leave
    /// before the client is authenticated).
    bodies_before_auth: usize,
    /// `METHOD /path` of every authenticated vault request.
    log: Vec<String>,
    /// 403 for every call, as when RBAC denies the role.
    deny: bool,
}

struct FakeVault {
    /// `https://sealbroker.vault.azure.test:PORT`
    vault_url: String,
    /// `https://localhost:PORT`, the Entra authority.
    authority: String,
    state: Arc<Mutex<State>>,
    tokens: Arc<AtomicUsize>,
    _server: HttpsStub,
}

fn new_version() -> Version {
    let mut rng = rand_core::OsRng;
    let key = RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).unwrap();
    Version {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        key,
        enabled: true,
    }
}

impl FakeVault {
    /// Rotates the key out of band, as the portal or a rotation policy would.
    fn rotate(&self) -> String {
        let version = new_version();
        let id = version.id.clone();
        self.state.lock().unwrap().versions.push(version);
        id
    }
    fn version_id(&self, n: usize) -> String {
        self.state.lock().unwrap().versions[n - 1].id.clone()
    }
    fn disable(&self, n: usize) {
        self.state.lock().unwrap().versions[n - 1].enabled = false;
    }
    fn push(&self, canned: Canned) {
        self.state.lock().unwrap().canned.push_back(canned);
    }
    fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

fn error_body(code: &str, message: &str, inner: Option<&str>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner {
        error["innererror"] = json!({"code": inner});
    }
    json!({ "error": error })
}

fn key_json(vault_url: &str, version: &Version) -> Value {
    let public = version.key.to_public_key();
    json!({
        "key": {
            "kid": format!("{vault_url}/keys/{KEY}/{}", version.id),
            "kty": "RSA",
            "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
            "n": B64URL.encode(public.n().to_bytes_be()),
            "e": B64URL.encode(public.e().to_bytes_be()),
        },
        "attributes": {
            "enabled": version.enabled,
            "created": 1_700_000_000,
            "updated": 1_700_000_000,
            "recoveryLevel": "Recoverable+Purgeable",
        },
    })
}

fn b64url(v: &Value, field: &str) -> Option<Vec<u8>> {
    let text = v.get(field)?.as_str()?;
    B64URL.decode(text.trim_end_matches('=')).ok()
}

type Reply = (u16, Vec<(&'static str, String)>, Value);

fn handle_vault(
    fake: &Shared,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut state = fake.state.lock().unwrap();
    state.requests += 1;
    if auth != Some(&format!("Bearer {TOKEN}")) {
        state.challenged += 1;
        if !body.is_empty() {
            state.bodies_before_auth += 1;
        }
        let challenge = format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{TENANT}\", resource=\"{RESOURCE}\""
        );
        return (
            401,
            vec![("WWW-Authenticate", challenge)],
            error_body(
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                None,
            ),
        );
    }
    state.log.push(format!("{method} {path}"));
    if let Some(canned) = state.canned.pop_front() {
        return (canned.status, canned.headers, canned.body);
    }
    if !query.split('&').any(|p| p.starts_with("api-version=")) {
        return (
            400,
            vec![],
            error_body("BadParameter", "api-version is missing", None),
        );
    }
    if state.deny {
        return (
            403,
            vec![],
            error_body(
                "Forbidden",
                &format!(
                    "Caller is not authorized to perform action on resource. Caller: appid={CLIENT_ID}; \
                     Action: 'Microsoft.KeyVault/vaults/keys/wrap/action'"
                ),
                Some("ForbiddenByRbac"),
            ),
        );
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (name, rest) = match segments.as_slice() {
        ["keys", name, rest @ ..] => (*name, rest),
        _ => return (404, vec![], error_body("NotFound", "no such path", None)),
    };
    if !name.eq_ignore_ascii_case(KEY) {
        return (
            404,
            vec![],
            error_body(
                "KeyNotFound",
                &format!("A key with (name/id) {name} was not found in this key vault."),
                None,
            ),
        );
    }
    let find = |state: &State, id: Option<&str>| match id {
        None => state.versions.len().checked_sub(1),
        Some(id) => state.versions.iter().position(|v| v.id == id),
    };
    let not_found = |id: &str| {
        (
            404,
            vec![],
            error_body(
                "KeyNotFound",
                &format!("A key with (name/id) {name}/{id} was not found in this key vault."),
                None,
            ),
        )
    };
    let (version, operation) = match (method, rest) {
        ("GET", []) => (None, "get"),
        ("GET", [v]) => (Some(*v), "get"),
        ("POST", ["rotate"]) => {
            let version = new_version();
            let reply = key_json(&fake.vault_url, &version);
            state.versions.push(version);
            return (200, vec![], reply);
        }
        ("POST", [op]) => (None, *op),
        ("POST", [v, op]) => (Some(*v), *op),
        _ => return (405, vec![], error_body("BadRequest", "no such operation", None)),
    };
    let Some(index) = find(&state, version) else {
        return not_found(version.unwrap_or(""));
    };
    let entry = &state.versions[index];
    if operation == "get" {
        return (200, vec![], key_json(&fake.vault_url, entry));
    }
    if !entry.enabled {
        return (
            403,
            vec![],
            error_body(
                "Forbidden",
                &format!("Operation {operation} is not allowed on a disabled key."),
                Some("KeyDisabled"),
            ),
        );
    }
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if request.get("alg").and_then(Value::as_str) != Some("RSA-OAEP-256") {
        return (
            400,
            vec![],
            error_body("BadParameter", "Invalid algorithm.", None),
        );
    }
    let Some(value) = b64url(&request, "value") else {
        return (
            400,
            vec![],
            error_body("BadParameter", "Property value is required.", None),
        );
    };
    let kid = format!("{}/keys/{KEY}/{}", fake.vault_url, entry.id);
    let mut rng = rand_core::OsRng;
    match operation {
        "wrapkey" => {
            let wrapped = entry
                .key
                .to_public_key()
                .encrypt(&mut rng, Oaep::new::<sha2::Sha256>(), &value)
                .unwrap();
            (200, vec![], json!({"kid": kid, "value": B64URL.encode(wrapped)}))
        }
        "unwrapkey" => match entry.key.decrypt(Oaep::new::<sha2::Sha256>(), &value) {
            Ok(key) => (200, vec![], json!({"kid": kid, "value": B64URL.encode(key)})),
            Err(_) => (
                400,
                vec![],
                error_body("BadParameter", "Error while decrypting with key.", None),
            ),
        },
        _ => (405, vec![], error_body("BadRequest", "no such operation", None)),
    }
}

fn handle_token(fake: &Shared, path: &str, body: &[u8]) -> Reply {
    fake.tokens.fetch_add(1, Ordering::SeqCst);
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let refused = |code: u32, description: &str| {
        (
            401,
            vec![],
            json!({"error": "invalid_client", "error_description": description, "error_codes": [code]}),
        )
    };
    if path != format!("/{TENANT}/oauth2/v2.0/token") {
        return refused(90002, "AADSTS90002: Tenant not found.");
    }
    if field("client_id") != CLIENT_ID || field("grant_type") != "client_credentials" {
        return refused(700016, "AADSTS700016: Application not found in the directory.");
    }
    if field("scope") != format!("{RESOURCE}/.default") {
        return refused(500011, "AADSTS500011: The resource principal was not found.");
    }
    let secret_ok = field("client_secret") == CLIENT_SECRET;
    let assertion_ok = field("client_assertion") == FEDERATED_TOKEN
        && field("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    if !(secret_ok || assertion_ok) {
        return refused(7000215, "AADSTS7000215: Invalid client secret provided.");
    }
    (
        200,
        vec![],
        json!({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": TOKEN}),
    )
}

struct Shared {
    vault_url: String,
    state: Arc<Mutex<State>>,
    tokens: Arc<AtomicUsize>,
}

async fn start_fake(tls: Arc<rustls::ServerConfig>) -> FakeVault {
    let listener = StubListener::bind().await;
    let port = listener.port();
    let vault_url = format!("https://{VAULT_HOST}:{port}");
    let shared = Arc::new(Shared {
        vault_url: vault_url.clone(),
        state: Arc::new(Mutex::new(State {
            versions: vec![new_version()],
            ..Default::default()
        })),
        tokens: Arc::new(AtomicUsize::new(0)),
    });
    let server = shared.clone();
    let stub = listener.serve(tls, move |request| {
        // Which name the client asked for decides who answers.
        let (status, headers, reply) = if request.server_name.as_deref() == Some(VAULT_HOST) {
            handle_vault(
                &server,
                &request.method,
                &request.path,
                &request.query,
                request.header("authorization"),
                &request.body,
            )
        } else {
            handle_token(&server, &request.path, &request.body)
        };
        StubResponse::json(status, &reply).with_headers(headers)
    });
    FakeVault {
        vault_url,
        authority: format!("https://localhost:{port}"),
        state: shared.state.clone(),
        tokens: shared.tokens.clone(),
        _server: stub,
    }
}

// ---------------------------------------------------------------- fixtures

struct Env {
    dir: tempfile::TempDir,
    ca: PathBuf,
    tls: Arc<rustls::ServerConfig>,
}

/// Makes a CA (its PEM in `dir/ca.pem`) and a server certificate for the
/// vault's name and `localhost`.
fn pki(dir: &Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let ca = TestCa::new("sealbroker azure test CA");
    let tls = ca
        .issue(&Leaf::server(&[VAULT_HOST, "localhost"]))
        .server_config();
    (ca.write(&dir.join("ca.pem")), tls)
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
