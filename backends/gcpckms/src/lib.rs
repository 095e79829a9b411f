//! Google Cloud KMS backend: the broker's 32-byte data key is wrapped by a
//! Cloud KMS symmetric `CryptoKey` with `Encrypt` and unwrapped with
//! `Decrypt`, through the official `google-cloud-kms-v1` client (REST/JSON
//! over HTTPS, authenticated by `google-cloud-auth`).
//!
//! # Design
//!
//! The broker seals the payload locally; Cloud KMS only sees the data key.
//! The caller's AAD is passed as Cloud KMS `additional_authenticated_data`, so
//! Cloud KMS refuses to unwrap under another AAD (Cloud KMS answers
//! `INVALID_ARGUMENT`; reported as [`BackendErrorKind::NotAuthentic`]).
//! Requests and answers carry CRC32C checksums, checked both ways, as Google
//! recommends for integrity end to end.
//!
//! `Encrypt` answers with the `CryptoKeyVersion` it used; that name is
//! recorded in the blob ([`Sealed::metadata`] key `gcp_key_version`). Cloud KMS
//! ciphertexts name their version themselves, so blobs sealed before a
//! rotation open as long as that version stays enabled; the recorded name tells
//! an operator which versions still guard data before disabling one.
//!
//! A key encrypts with the `CryptoKey`'s primary version unless `key_version`
//! pins one. `sealbroker keys rotate` ([`Backend::create_version`]) creates a
//! new `CryptoKeyVersion` in Cloud KMS and pins the broker's new key version
//! to it; the key's primary in Cloud KMS is left alone. A pinned key has its
//! own key identity (`gcpckms:<key>/cryptoKeyVersions/<id>`), so each broker
//! version has its own key id.
//!
//! The client's own retry loop is off. `RESOURCE_EXHAUSTED` (HTTP 429) and
//! transient failures (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, 5xx,
//! connection errors, timeouts) are retried a bounded number of times with
//! full-jitter exponential backoff that honours the delay the service asks
//! for (a `google.rpc.RetryInfo` detail, else `Retry-After`)
//! ([`RetryConfig`]); then the call fails as [`BackendErrorKind::Throttled`] or
//! `Unavailable`. `UNAUTHENTICATED`/`PERMISSION_DENIED` and credential failures
//! are [`BackendErrorKind::PermissionDenied`] and name the principal (service
//! account e-mail, or where the credentials came from), never a secret.
//!
//! Credentials come from Application Default Credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, the metadata server),
//! or, with `credentials_file`, only from that JSON file (`service_account`,
//! `authorized_user`, `external_account` or `impersonated_service_account`).
//!
//! An `algorithm` makes a key asymmetric (External Keys, [`signing`]): an
//! `ASYMMETRIC_SIGN` key pair (RSA PKCS#1 v1.5 and PSS, ECDSA P-256 and
//! P-384, Ed25519) or, with `mechanism = "RSA_PKCS_OAEP"`, an
//! `ASYMMETRIC_DECRYPT` RSA pair (RSA-OAEP with SHA-256, SHA-1 or, on
//! 4096-bit keys, SHA-512). Such a key always names its `key_version`:
//! asymmetric keys have no primary. Cloud KMS signs and decrypts; signatures
//! are verified and OAEP encryption done here with the version's public key.
//!
//! # IAM permissions
//!
//! On the key: `cloudkms.cryptoKeyVersions.useToEncrypt`,
//! `cloudkms.cryptoKeyVersions.useToDecrypt` (role
//! `roles/cloudkms.cryptoKeyEncrypterDecrypter`) and `cloudkms.cryptoKeys.get`
//! (used by the health check; role `roles/cloudkms.viewer`). A pinned
//! `key_version` is also read with `cloudkms.cryptoKeyVersions.get`.
//! `sealbroker keys rotate` needs `cloudkms.cryptoKeyVersions.create` (role
//! `roles/cloudkms.admin`, or a custom role with that permission and `.get`).
//! Signing key pairs need `cloudkms.cryptoKeyVersions.useToSign` and
//! `cloudkms.cryptoKeyVersions.viewPublicKey` (roles
//! `roles/cloudkms.signerVerifier`); RSA encryption pairs
//! `cloudkms.cryptoKeyVersions.useToDecrypt` and `.viewPublicKey` (role
//! `roles/cloudkms.cryptoKeyDecrypter` plus `roles/cloudkms.publicKeyViewer`);
//! both `cloudkms.cryptoKeys.get` and `cloudkms.cryptoKeyVersions.get` for
//! the health check. `sealbroker keygen` needs `cloudkms.cryptoKeys.create`.
//!
//! # Configuration
//!
//! ```toml
//! [backends.gcp]
//! type = "gcpckms"
//! # endpoint = "https://cloudkms.googleapis.com"    # regional / Private Service Connect / a test server
//! # credentials_file = "/etc/sealbroker/gcp-sa.json" # else Application Default Credentials
//! # timeout_ms = 10000                               # per attempt
//! # [backends.gcp.retry]
//! # max_retries = 4
//! # initial_backoff_ms = 100
//! # max_backoff_ms = 5000
//!
//! [keys.openbao-unseal]
//! backend = "gcp"
//! key_name = "projects/my-project/locations/europe-west1/keyRings/sealbroker/cryptoKeys/openbao-unseal"
//! # key_version = "3"                              # encrypt with this CryptoKeyVersion, not the primary
//!
//! [keys.pki-root]                                   # an asymmetric key (External Keys)
//! backend = "gcp"
//! key_name = "projects/my-project/locations/europe-west1/keyRings/sealbroker/cryptoKeys/pki-root"
//! key_version = "1"                                 # required: asymmetric keys have no primary
//! algorithm = "ecdsa-p256"                          # rsa-2048/3072/4096, ecdsa-p256/p384, ed25519
//! # mechanism = "RSA_PKCS_OAEP"                    # an RSA encryption pair instead of a signing one
//! # rsa_oaep_hash = "sha256"                       # or "sha1", or "sha512" (rsa-4096)
//! ```

mod kind;
pub mod signing;
mod stock;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::{Code, StatusDetails};
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::CryptoKeyVersion;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState;
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, KeyAlgorithm, Mechanism, NewVersion, PublicKey, Sealed,
    SecretBytes, SignInput, SignScheme,
};
use serde::Deserialize;

pub use sealbroker_retry::RetryConfig;
use sealbroker_retry::{Attempt, parse_retry_after};

/// [`Sealed::metadata`] key holding the `CryptoKeyVersion` that `Encrypt` used.
pub const METADATA_KEY_VERSION: &str = "gcp_key_version";
/// How long [`Backend::create_version`] waits for a new version to leave
/// `PENDING_GENERATION` (HSM keys take a moment).
const GENERATION_WAIT: Duration = Duration::from_secs(60);

fn default_timeout_ms() -> u64 {
    10_000
}

/// `[backends.NAME]` with `type = "gcpckms"`: one Google identity and endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Endpoint override, e.g. a regional or Private Service Connect endpoint.
    pub endpoint: Option<String>,
    /// Credentials JSON file to use instead of Application Default Credentials.
    pub credentials_file: Option<PathBuf>,
    /// Time bound of one attempt of one call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of throttled and transiently failing calls.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// Per-key settings under `[keys.NAME]`. `algorithm`, `mechanism` and
/// `rsa_oaep_hash` are spelled as the PKCS#11 backend spells them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// `projects/P/locations/L/keyRings/R/cryptoKeys/K`: a symmetric
    /// `ENCRYPT_DECRYPT` key. Cloud KMS picks its primary version unless
    /// `key_version` is set.
    pub key_name: String,
    /// A `CryptoKeyVersion` id (the number after `cryptoKeyVersions/`) to
    /// encrypt with instead of the primary. `keys rotate` sets it. Required
    /// for asymmetric keys, which have no primary.
    #[serde(default)]
    pub key_version: Option<String>,
    /// Makes this an asymmetric key (External Keys): `rsa-2048`,
    /// `rsa-3072`, `rsa-4096`, `ecdsa-p256`, `ecdsa-p384` or `ed25519`. An
    /// `ASYMMETRIC_SIGN` key pair unless `mechanism` says otherwise.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// `RSA_PKCS_OAEP`: with an RSA `algorithm`, an `ASYMMETRIC_DECRYPT`
    /// pair for RSA-OAEP instead of a signing one.
    #[serde(default)]
    pub mechanism: Option<MechanismName>,
    /// RSA-OAEP's hash (and MGF1's): `sha256` (the default), `sha1`, or
    /// `sha512` on rsa-4096.
    #[serde(default)]
    pub rsa_oaep_hash: Option<String>,
}

/// Config errors name fields relative to this backend's tables; the broker places them under
/// `backends.NAME` or `keys.NAME`.
pub use sealbroker_core::ConfigError;

pub use kind::{GcpKmsKind, KIND};
pub use signing::{MechanismName, Purpose};

fn config_error(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(field, reason)
}

impl BackendConfig {
    /// Checks the fields that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
        {
            return Err(config_error(
                "endpoint",
                format!("{endpoint:?} is not an http(s) URL"),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(config_error("timeout_ms", "must be at least 1"));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            return Err(config_error(
                "retry.initial_backoff_ms",
                "must not exceed retry.max_backoff_ms",
            ));
        }
        Ok(())
    }
}

struct ClientInner {
    kms: KeyManagementService,
    /// Who calls are made as, for permission errors.
    principal: String,
    endpoint: String,
    timeout: Duration,
    retry: RetryConfig,
    throttling_retries: AtomicU64,
}

/// A configured Cloud KMS client for one `[backends.NAME]`, shared by its
/// keys. Cheap to clone. Tokens are fetched lazily, on the first call.
#[derive(Clone)]
pub struct KmsClient(Arc<ClientInner>);

impl fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsClient")
            .field("endpoint", &self.0.endpoint)
            .field("principal", &self.0.principal)
            .finish()
    }
}

/// Reads a credentials JSON file, builds credentials from it and names the
/// principal. The file's secrets (private key, refresh token) stay inside the
/// credentials object.
fn file_credentials(
    path: &PathBuf,
) -> Result<(google_cloud_auth::credentials::Credentials, String), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error("credentials_file", format!("{}: {e}", path.display())))?;
    json_credentials(&text, &path.display().to_string(), "credentials_file")
}

/// Builds credentials from a credentials JSON document found at `source`
/// (a file name, or where in a stanza it was given), and names the principal.
fn json_credentials(
    text: &str,
    source: &str,
    field: &'static str,
) -> Result<(google_cloud_auth::credentials::Credentials, String), ConfigError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| config_error(field, format!("{source}: not JSON ({e})")))?;
    let kind = json.get("type").and_then(|t| t.as_str()).unwrap_or("").to_owned();
    let text_field = |name: &str| json.get(name).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
    use google_cloud_auth::credentials::{external_account, impersonated, service_account, user_account};
    let (built, principal) = match kind.as_str() {
        "service_account" => (
            service_account::Builder::new(json.clone()).build(),
            format!("service account {}", text_field("client_email")),
        ),
        "authorized_user" => (
            user_account::Builder::new(json.clone()).build(),
            format!("user credentials of OAuth client {}", text_field("client_id")),
        ),
        "external_account" => (
            external_account::Builder::new(json.clone()).build(),
            format!(
                "workload identity federation (audience {})",
                text_field("audience")
            ),
        ),
        "impersonated_service_account" => (
            impersonated::Builder::new(json.clone()).build(),
            format!(
                "impersonated service account via {}",
                text_field("service_account_impersonation_url")
            ),
        ),
        other => {
            return Err(config_error(
                field,
                format!(
                    "{}: credential type {other:?} is not supported (service_account, authorized_user, \
                     external_account, impersonated_service_account)",
                    source
                ),
            ));
        }
    };
    let credentials = built.map_err(|e| config_error(field, format!("{source}: {e}")))?;
    Ok((credentials, format!("{principal} from {source}")))
}

/// Names the ADC principal without fetching a token: the file that
/// `GOOGLE_APPLICATION_CREDENTIALS` points at, or the metadata server.
fn adc_principal() -> String {
    match std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
        Some(path) => {
            let email = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|j| j.get("client_email").and_then(|e| e.as_str()).map(str::to_owned));
            match email {
                Some(email) => format!("service account {email} from {}", PathBuf::from(path).display()),
                None => format!(
                    "Application Default Credentials from {}",
                    PathBuf::from(path).display()
                ),
            }
        }
        None => "Application Default Credentials (gcloud ADC file or the metadata server's service account)"
            .into(),
    }
}

/// Builds the Cloud KMS client for `backend`. Makes no KMS call; with
/// `credentials_file` it reads that file.
pub async fn connect(backend: &BackendConfig) -> Result<KmsClient, ConfigError> {
    connect_with(backend, None).await
}

/// As [`connect`], with a credentials JSON document given in code (OpenBao's
/// stock `credentials_json`): `(json, where it came from)`. A
/// `credentials_file` in `backend` wins over it.
async fn connect_with(backend: &BackendConfig, json: Option<(&str, &str)>) -> Result<KmsClient, ConfigError> {
    backend.validate()?;
    let mut builder = KeyManagementService::builder().with_retry_policy(NeverRetry);
    if let Some(endpoint) = &backend.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let principal = match &backend.credentials_file {
        Some(path) => {
            let (credentials, principal) = file_credentials(path)?;
            builder = builder.with_credentials(credentials);
            principal
        }
        None => match json {
            Some((text, source)) => {
                let (credentials, principal) = json_credentials(text, source, "credentials_json")?;
                builder = builder.with_credentials(credentials);
                principal
            }
            None => adc_principal(),
        },
    };
    let kms = builder.build().await.map_err(|e| {
        config_error(
            if backend.credentials_file.is_some() {
                "credentials_file"
            } else {
                "endpoint"
            },
            format!("cannot build the Cloud KMS client: {e}"),
        )
    })?;
    let endpoint = backend
        .endpoint
        .clone()
        .unwrap_or_else(|| "https://cloudkms.googleapis.com".into());
    Ok(KmsClient(Arc::new(ClientInner {
        kms,
        principal,
        endpoint,
        timeout: Duration::from_millis(backend.timeout_ms),
        retry: backend.retry,
        throttling_retries: AtomicU64::new(0),
    })))
}

impl KmsClient {
    /// The underlying client, for tooling (admin CLIs, tests).
    pub fn sdk(&self) -> &KeyManagementService {
        &self.0.kms
    }
}

/// One Cloud KMS `CryptoKey` (optionally pinned to one of its versions)
/// used through one [`KmsClient`].
pub struct GcpKmsKey {
    client: KmsClient,
    key_name: String,
    /// `<key_name>/cryptoKeyVersions/<id>` when pinned.
    version: Option<String>,
    purpose: Purpose,
    /// An asymmetric version's public key and algorithm, once read.
    version_key: Mutex<Option<Arc<signing::VersionKey>>>,
}

impl fmt::Debug for GcpKmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpKmsKey")
            .field("key_name", &self.key_name)
            .field("version", &self.version)
            .field("purpose", &self.purpose)
            .finish()
    }
}

/// Checks `projects/P/locations/L/keyRings/R/cryptoKeys/K`.
fn valid_key_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 8
        && parts[0] == "projects"
        && parts[2] == "locations"
        && parts[4] == "keyRings"
        && parts[6] == "cryptoKeys"
        && parts
            .iter()
            .all(|p| !p.is_empty() && !p.contains(char::is_whitespace))
}

impl GcpKmsKey {
    /// Binds `key` to `client`. Makes no network call.
    pub fn new(client: &KmsClient, key: &KeyConfig) -> Result<Self, ConfigError> {
        if !valid_key_name(&key.key_name) {
            let hint = if key.key_name.contains("/cryptoKeyVersions/") {
                "; name the CryptoKey, not a version: Cloud KMS encrypts with the primary version"
            } else {
                ""
            };
            return Err(config_error(
                "key_name",
                format!(
                    "{:?} is not projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY{hint}",
                    key.key_name
                ),
            ));
        }
        let version = match key.key_version.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(id) if id.bytes().all(|b| b.is_ascii_digit()) && id.len() <= 20 => {
                Some(format!("{}/cryptoKeyVersions/{id}", key.key_name))
            }
            Some(other) => {
                return Err(config_error(
                    "key_version",
                    format!("{other:?} is not a CryptoKeyVersion id (the number after cryptoKeyVersions/)"),
                ));
            }
        };
        let purpose = Purpose::from_config(key)?;
        Ok(GcpKmsKey::with_purpose(client, &key.key_name, version, purpose))
    }

    fn with_purpose(client: &KmsClient, key_name: &str, version: Option<String>, purpose: Purpose) -> Self {
        GcpKmsKey {
            client: client.clone(),
            key_name: key_name.to_owned(),
            version,
            purpose,
            version_key: Mutex::new(None),
        }
    }

    async fn get_version(&self, name: &str) -> Result<CryptoKeyVersion, BackendError> {
        let kms = &self.client.0.kms;
        self.call("GetCryptoKeyVersion", || {
            kms.get_crypto_key_version()
                .set_name(name)
                .with_attempt_timeout(self.client.0.timeout)
                .send()
        })
        .await
    }

    /// Polls a version until it leaves `PENDING_GENERATION` (HSM and
    /// asymmetric keys take a moment); it must then be ENABLED.
    async fn wait_enabled(&self, mut version: CryptoKeyVersion) -> Result<CryptoKeyVersion, BackendError> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(200);
        while version.state == CryptoKeyVersionState::PendingGeneration {
            if started.elapsed() > GENERATION_WAIT {
                return Err(BackendError::unavailable(format!(
                    "Cloud KMS version {} is still PENDING_GENERATION after {}s",
                    version.name,
                    GENERATION_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            version = self.get_version(&version.name).await?;
        }
        if version.state != CryptoKeyVersionState::Enabled {
            return Err(BackendError::new(
                BackendErrorKind::KeyNotFound,
                format!(
                    "Cloud KMS version {} is {:?}, not ENABLED",
                    version.name, version.state
                ),
            ));
        }
        Ok(version)
    }

    /// The resource `Encrypt` is called on: the pinned version, else the key.
    fn encrypt_target(&self) -> &str {
        self.version.as_deref().unwrap_or(&self.key_name)
    }

    /// Runs one idempotent call with retries and turns its failure into a [`BackendError`].
    async fn call<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GaxError>>,
    {
        self.call_with(operation, true, op).await
    }

    /// Runs one call with retries. A call that is not idempotent is retried
    /// only when the service refused it outright (throttling), never after a
    /// timeout or a 5xx, which may have taken effect.
    async fn call_with<T, F, Fut>(
        &self,
        operation: &'static str,
        idempotent: bool,
        mut op: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GaxError>>,
    {
        let retry = self.client.0.retry;
        let timeout = self.client.0.timeout;
        let result = retry
            .run(
                || {
                    let fut = op();
                    async move {
                        fut.await.map_err(|e| match classify(operation, &e, timeout) {
                            Attempt::Retryable { error, .. }
                                if !idempotent && error.kind != BackendErrorKind::Throttled =>
                            {
                                Attempt::Fatal(Failure {
                                    retryable: false,
                                    ..error
                                })
                            }
                            other => other,
                        })
                    }
                },
                |failure| {
                    if failure.kind == BackendErrorKind::Throttled {
                        self.client.0.throttling_retries.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await;
        result.map_err(|failure| {
            let mut message = format!(
                "Cloud KMS {operation} with key {} at {}: {}",
                self.key_name, self.client.0.endpoint, failure.message
            );
            if failure.retryable && retry.max_retries > 0 {
                message.push_str(&format!(" (gave up after {} retries)", retry.max_retries));
            }
            if failure.kind == BackendErrorKind::PermissionDenied {
                message.push_str(&format!("; calling as {}", self.client.0.principal));
            }
            BackendError::new(failure.kind, message)
        })
    }
}

/// A classified failure, before the key and principal are named.
#[derive(Debug)]
struct Failure {
    kind: BackendErrorKind,
    message: String,
    retryable: bool,
}

/// `timeout` is the attempt bound (`timeout_ms`), named when it ends a call.
fn classify(operation: &str, error: &GaxError, timeout: Duration) -> Attempt<Failure> {
    let fatal = |kind, message: String| {
        Attempt::Fatal(Failure {
            kind,
            message,
            retryable: false,
        })
    };
    let retryable = |kind, message: String, retry_after| Attempt::Retryable {
        error: Failure {
            kind,
            message,
            retryable: true,
        },
        retry_after,
    };
    let retry_after = retry_delay(error);
    if error.is_authentication() {
        if credentials_error_is_transient(error) {
            // The token endpoint could not be reached: not a refusal.
            return retryable(
                BackendErrorKind::Unavailable,
                format!("cannot obtain an access token right now: {}", error_chain(error)),
                None,
            );
        }
        return fatal(
            BackendErrorKind::PermissionDenied,
            format!("cannot obtain an access token: {}", error_chain(error)),
        );
    }
    if let Some(status) = error.status() {
        let text = format!("{:?}: {}", status.code, status.message);
        return match status.code {
            Code::ResourceExhausted => retryable(BackendErrorKind::Throttled, text, retry_after),
            Code::Unavailable | Code::Internal | Code::DeadlineExceeded | Code::Aborted => {
                retryable(BackendErrorKind::Unavailable, text, retry_after)
            }
            Code::Unauthenticated | Code::PermissionDenied => fatal(BackendErrorKind::PermissionDenied, text),
            Code::NotFound => fatal(BackendErrorKind::KeyNotFound, text),
            // Cloud KMS checks the CRC32C we send with each field: a mismatch
            // means the request was damaged on the way, not a forged blob.
            Code::InvalidArgument if status.message.contains("_crc32c did not match") => retryable(
                BackendErrorKind::Unavailable,
                format!("the service saw a CRC32C mismatch, so the request was damaged in transit ({text})"),
                None,
            ),
            Code::FailedPrecondition => fatal(
                BackendErrorKind::KeyNotFound,
                format!(
                    "the key or key version is not usable (disabled, destroyed or wrong purpose?): {text}"
                ),
            ),
            // Cloud KMS says INVALID_ARGUMENT when a ciphertext does not open
            // (wrong AAD, altered, or under another key).
            Code::InvalidArgument if operation == "Decrypt" || operation == "AsymmetricDecrypt" => fatal(
                BackendErrorKind::NotAuthentic,
                format!("the wrapped data key does not open under this key and AAD ({text})"),
            ),
            Code::InvalidArgument => fatal(BackendErrorKind::InvalidInput, text),
            _ => fatal(BackendErrorKind::Internal, text),
        };
    }
    if let Some(code) = error.http_status_code() {
        let text = format!("HTTP {code}: {}", error_chain(error));
        return match code {
            429 => retryable(BackendErrorKind::Throttled, text, retry_after),
            401 | 403 => fatal(BackendErrorKind::PermissionDenied, text),
            404 => fatal(BackendErrorKind::KeyNotFound, text),
            500.. => retryable(BackendErrorKind::Unavailable, text, retry_after),
            _ => fatal(BackendErrorKind::Internal, text),
        };
    }
    if error.is_timeout() {
        return retryable(
            BackendErrorKind::Timeout,
            format!(
                "no answer within timeout_ms = {} (the per-attempt bound)",
                timeout.as_millis()
            ),
            None,
        );
    }
    if error.is_connect() || error.is_io() || error.is_transport() {
        return retryable(
            BackendErrorKind::Unavailable,
            format!("cannot reach the service: {}", error_chain(error)),
            None,
        );
    }
    fatal(BackendErrorKind::Internal, error_chain(error))
}

/// How long the service asked us to wait: Cloud KMS says so in a
/// `google.rpc.RetryInfo` error detail; a `Retry-After` header (from a proxy
/// in front of it) is honoured when there is none.
fn retry_delay(error: &GaxError) -> Option<Duration> {
    let from_details = error.status().and_then(|status| {
        status.details.iter().find_map(|detail| match detail {
            StatusDetails::RetryInfo(info) => {
                info.retry_delay.and_then(|delay| Duration::try_from(delay).ok())
            }
            _ => None,
        })
    });
    from_details.or_else(|| {
        error
            .http_headers()
            .and_then(|h| h.get("retry-after"))
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
    })
}

/// Whether a credentials failure says that trying again may work (the token
/// endpoint was unreachable or failed), as opposed to a refusal.
fn credentials_error_is_transient(error: &GaxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(credentials) = e.downcast_ref::<google_cloud_gax::error::CredentialsError>() {
            return credentials.is_transient();
        }
        source = e.source();
    }
    false
}

/// An error and its sources on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// CRC32C (Castagnoli), as Cloud KMS uses for request and response integrity.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub(crate) fn corrupted(what: &str) -> BackendError {
    BackendError::new(
        BackendErrorKind::Unavailable,
        format!("Cloud KMS answer failed its CRC32C check ({what}); the data was corrupted in transit"),
    )
}

#[async_trait]
impl Backend for GcpKmsKey {
    fn kind(&self) -> &'static str {
        "gcpckms"
    }

    fn key_identity(&self) -> String {
        format!("gcpckms:{}", self.encrypt_target())
    }

    fn throttling_retries(&self) -> u64 {
        self.client.0.throttling_retries.load(Ordering::Relaxed)
    }

    fn algorithm(&self) -> Option<KeyAlgorithm> {
        self.purpose.algorithm()
    }

    fn oaep_hash(&self) -> Option<sealbroker_core::OaepHash> {
        match self.purpose {
            Purpose::Oaep(_, hash) => Some(hash),
            _ => None,
        }
    }

    /// `GetPublicKey` of the pinned version (read once).
    async fn public_key(&self) -> Result<PublicKey, BackendError> {
        Ok(self.version_key().await?.public.clone())
    }

    /// `AsymmetricSign` with the version's one scheme: a digest (the
    /// caller's, or the message hashed once here) for RSA and ECDSA, the
    /// message for Ed25519.
    async fn sign(&self, scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        self.sign_asymmetric(scheme, input).await
    }

    /// Checked here with the version's public key (Cloud KMS has no
    /// Verify); whole messages only.
    async fn verify(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        self.verify_asymmetric(scheme, input, signature).await
    }

    /// RSA-OAEP to the version's public key, here (Cloud KMS has no
    /// asymmetric Encrypt).
    async fn encrypt_asymmetric(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.encrypt_oaep(plaintext).await
    }

    /// `AsymmetricDecrypt`.
    async fn decrypt_asymmetric(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        self.decrypt_oaep(ciphertext).await
    }

    /// Creates a new `CryptoKeyVersion` of the same `CryptoKey` and pins the
    /// new broker version to it. Cloud KMS numbers versions itself, so the
    /// broker's `version` is not part of the name. The key's primary in Cloud
    /// KMS is not changed.
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let kms = &self.client.0.kms;
        // Not retried after a timeout or 5xx: that could leave a second,
        // unused version behind.
        let created = self
            .call_with("CreateCryptoKeyVersion", false, || {
                kms.create_crypto_key_version()
                    .set_parent(&self.key_name)
                    .set_crypto_key_version(CryptoKeyVersion::new())
                    .with_attempt_timeout(self.client.0.timeout)
                    .send()
            })
            .await?;
        let id = created
            .name
            .strip_prefix(&format!("{}/cryptoKeyVersions/", self.key_name))
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
            .ok_or_else(|| {
                BackendError::internal(format!(
                    "Cloud KMS CreateCryptoKeyVersion answered with {:?}, not a version of {}",
                    created.name, self.key_name
                ))
            })?;
        let created = self.wait_enabled(created).await?;
        tracing::info!(
            key = %self.key_name,
            cloud_version = %created.name,
            version,
            "created a Cloud KMS key version"
        );
        // An asymmetric version takes the key's version template, so it is
        // of the same purpose and algorithm.
        let key = GcpKmsKey::with_purpose(&self.client, &self.key_name, Some(created.name), self.purpose);
        Ok(NewVersion {
            backend: Arc::new(key),
            settings: [("key_version".to_owned(), id)].into(),
        })
    }

    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        self.refuse_unless_sealing()?;
        let kms = &self.client.0.kms;
        let plaintext = Bytes::copy_from_slice(secret);
        let aad_bytes = Bytes::copy_from_slice(aad);
        // No AAD, no AAD checksum: the service only verifies what it is sent.
        let aad_crc = (!aad.is_empty()).then(|| i64::from(crc32c(aad)));
        let output = self
            .call("Encrypt", || {
                kms.encrypt()
                    .set_name(self.encrypt_target())
                    .set_plaintext(plaintext.clone())
                    .set_plaintext_crc32c(i64::from(crc32c(secret)))
                    .set_additional_authenticated_data(aad_bytes.clone())
                    .set_or_clear_additional_authenticated_data_crc32c(aad_crc)
                    .with_attempt_timeout(self.client.0.timeout)
                    .send()
            })
            .await?;
        if !output.verified_plaintext_crc32c
            || (aad_crc.is_some() && !output.verified_additional_authenticated_data_crc32c)
        {
            return Err(corrupted("the service did not verify our request checksums"));
        }
        if output.ciphertext_crc32c != Some(i64::from(crc32c(&output.ciphertext))) {
            return Err(corrupted("ciphertext"));
        }
        let expected = match &self.version {
            Some(version) => output.name == *version,
            None => output
                .name
                .starts_with(&format!("{}/cryptoKeyVersions/", self.key_name)),
        };
        if !expected {
            return Err(BackendError::internal(format!(
                "Cloud KMS Encrypt answered with version {:?}, not {}",
                output.name,
                self.version
                    .clone()
                    .unwrap_or_else(|| format!("a version of {}", self.key_name))
            )));
        }
        Ok(Sealed {
            mechanism: Mechanism::ServiceDefined,
            ciphertext: output.ciphertext.to_vec(),
            metadata: [(METADATA_KEY_VERSION.to_owned(), output.name)].into(),
            ..Default::default()
        })
    }

    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        self.refuse_unless_sealing()?;
        if sealed.mechanism != Mechanism::ServiceDefined {
            return Err(BackendError::not_authentic(
                "the data key was not sealed by Cloud KMS (mechanism is not service-defined)",
            ));
        }
        if let Some(version) = sealed.metadata.get(METADATA_KEY_VERSION) {
            if !version.starts_with(&format!("{}/cryptoKeyVersions/", self.key_name)) {
                return Err(BackendError::not_authentic(format!(
                    "the blob was sealed by {version:?}, which is not a version of {}",
                    self.key_name
                )));
            }
            if let Some(pinned) = &self.version
                && version != pinned
            {
                return Err(BackendError::not_authentic(format!(
                    "the blob was sealed by {version:?}, not by {pinned} which this key is pinned to"
                )));
            }
        }
        let kms = &self.client.0.kms;
        let ciphertext = Bytes::from(sealed.ciphertext.clone());
        let aad_bytes = Bytes::copy_from_slice(aad);
        // No AAD, no AAD checksum: the service only verifies what it is sent.
        let aad_crc = (!aad.is_empty()).then(|| i64::from(crc32c(aad)));
        let output = self
            .call("Decrypt", || {
                kms.decrypt()
                    .set_name(&self.key_name)
                    .set_ciphertext(ciphertext.clone())
                    .set_ciphertext_crc32c(i64::from(crc32c(&sealed.ciphertext)))
                    .set_additional_authenticated_data(aad_bytes.clone())
                    .set_or_clear_additional_authenticated_data_crc32c(aad_crc)
                    .with_attempt_timeout(self.client.0.timeout)
                    .send()
            })
            .await?;
        let plaintext = SecretBytes::new(output.plaintext.to_vec());
        if output.plaintext_crc32c != Some(i64::from(crc32c(plaintext.expose()))) {
            return Err(corrupted("plaintext"));
        }
        Ok(plaintext)
    }

    /// Reads the key first, so a disabled primary or a wrong purpose is named
    /// plainly, then makes a real round trip.
    async fn health(&self) -> Result<(), BackendError> {
        let kms = &self.client.0.kms;
        let key = self
            .call("GetCryptoKey", || {
                kms.get_crypto_key()
                    .set_name(&self.key_name)
                    .with_attempt_timeout(self.client.0.timeout)
                    .send()
            })
            .await?;
        if key.purpose != self.purpose.key_purpose() {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "Cloud KMS key {} has purpose {:?}, not {:?}",
                    self.key_name,
                    key.purpose,
                    self.purpose.key_purpose()
                ),
            ));
        }
        let used = match &self.version {
            Some(name) => Some(
                self.call("GetCryptoKeyVersion", || {
                    kms.get_crypto_key_version()
                        .set_name(name)
                        .with_attempt_timeout(self.client.0.timeout)
                        .send()
                })
                .await?,
            ),
            None => key.primary,
        };
        let role = if self.version.is_some() {
            "pinned"
        } else {
            "primary"
        };
        match used {
            Some(version) if version.state == CryptoKeyVersionState::Enabled => {}
            Some(version) => {
                return Err(BackendError::new(
                    BackendErrorKind::KeyNotFound,
                    format!(
                        "Cloud KMS key {}: {role} version {} is {:?}, not ENABLED",
                        self.key_name, version.name, version.state
                    ),
                ));
            }
            None => {
                return Err(BackendError::new(
                    BackendErrorKind::KeyNotFound,
                    format!("Cloud KMS key {} has no primary version", self.key_name),
                ));
            }
        }
        // A key pair is probed by signing or by OAEP, never by sealing.
        if self.purpose != Purpose::Seal {
            return self.probe_asymmetric().await;
        }
        let probe = b"sealbroker health probe";
        let sealed = self.encrypt(probe, b"health").await?;
        let opened = self.decrypt(&sealed, b"health").await?;
        if opened.expose() == probe {
            Ok(())
        } else {
            Err(BackendError::internal(
                "health probe round trip returned different bytes",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn key_names_are_checked_with_a_hint_for_versions() {
        assert!(valid_key_name(
            "projects/p/locations/global/keyRings/r/cryptoKeys/k"
        ));
        assert!(!valid_key_name(
            "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"
        ));
        assert!(!valid_key_name(
            "projects//locations/global/keyRings/r/cryptoKeys/k"
        ));
        assert!(!valid_key_name("k"));
    }

    #[test]
    fn config_rejects_unknown_fields_and_names_fields() {
        let err = toml::from_str::<BackendConfig>("private_key = \"x\"").unwrap_err();
        assert!(err.to_string().contains("private_key"), "{err}");
        let config: BackendConfig = toml::from_str("endpoint = \"kms.example\"").unwrap();
        assert_eq!(config.validate().unwrap_err().path, "endpoint");
        let config: BackendConfig = toml::from_str("").unwrap();
        assert_eq!(config.timeout_ms, 10_000);
        config.validate().unwrap();
    }

    #[test]
    fn unsupported_credential_type_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        std::fs::write(&path, r#"{"type":"api_key","key":"secret"}"#).unwrap();
        let err = file_credentials(&path).err().unwrap();
        assert_eq!(err.path, "credentials_file");
        assert!(err.message.contains("api_key"), "{err}");
        assert!(!err.message.contains("secret"), "{err}");
    }
}
