//! AWS KMS backend: the broker's 32-byte data key is wrapped by a KMS key with
//! `Encrypt` and unwrapped with `Decrypt`, through the official `aws-sdk-kms`.
//!
//! # Design
//!
//! The broker already seals the payload locally (AES-256-GCM); KMS only ever
//! sees the data key. The caller's AAD is bound to the wrapped key as the KMS
//! *encryption context* `{"sealbroker-aad": base64(aad)}`, so KMS itself refuses
//! to unwrap under a different AAD (reported as [`BackendErrorKind::NotAuthentic`]).
//! An empty AAD sends no encryption context.
//!
//! `Encrypt` answers with the concrete key ARN it used; that ARN is recorded in
//! the blob ([`Sealed::metadata`] key `aws_key_arn`) and sent back as `KeyId` on
//! `Decrypt`. So a `key_id` that is an alias can be re-pointed (`UpdateAlias`)
//! and blobs sealed under the old target still open, as long as that key stays
//! enabled. KMS automatic or on-demand rotation keeps the key ARN and needs no
//! broker action: KMS ciphertexts name their backing key material themselves.
//!
//! The SDK's own retry loop is off. Throttling (`ThrottlingException`, HTTP
//! 429) and transient failures (5xx, `KMSInternalException`,
//! `DependencyTimeoutException`, `KeyUnavailableException`, connection errors,
//! timeouts) are retried a bounded number of times with full-jitter
//! exponential backoff that honours `Retry-After` ([`RetryConfig`]); then the
//! call fails as [`BackendErrorKind::Throttled`] or `Unavailable`. Credential
//! and authorization failures are [`BackendErrorKind::PermissionDenied`] and
//! name the identity used (the access key id prefix and where it came from),
//! never a secret.
//!
//! Credentials come from the SDK's standard chain (environment, shared
//! profile, web identity, ECS/EC2 roles), or, with `credentials_file`, only
//! from that file (the `profile` section, `default` when unset).
//!
//! An `algorithm` makes a key asymmetric (External Keys, [`signing`]): a
//! signing key pair (`SIGN_VERIFY`: RSA PKCS#1 v1.5 and PSS, ECDSA P-256
//! and P-384) or, with `mechanism = "RSA_PKCS_OAEP"`, an RSA encryption
//! pair (`ENCRYPT_DECRYPT`, RSA-OAEP with SHA-256 or SHA-1). KMS signs and
//! decrypts; the private half never leaves it.
//!
//! # IAM permissions
//!
//! On the key (key policy or IAM policy): `kms:Encrypt`, `kms:Decrypt` and
//! `kms:DescribeKey` (used by the health check). To pin the encryption
//! context, add a condition on `kms:EncryptionContextKeys` = `sealbroker-aad`.
//! Signing keys need `kms:Sign`, `kms:Verify`, `kms:GetPublicKey` and
//! `kms:DescribeKey`; RSA encryption pairs `kms:Encrypt`, `kms:Decrypt`,
//! `kms:GetPublicKey` and `kms:DescribeKey`. `sealbroker keygen` and new
//! versions of asymmetric keys need `kms:CreateKey`, `kms:CreateAlias` and
//! `kms:ScheduleKeyDeletion` (for a key made twice in a race).
//!
//! # Configuration
//!
//! ```toml
//! [backends.aws]
//! type = "awskms"
//! region = "eu-west-1"                    # else AWS_REGION / the profile / the key ARN's region
//! # endpoint = "https://kms-fips.eu-west-1.amazonaws.com"   # VPC endpoint, FIPS, or a test server
//! # credentials_file = "/etc/sealbroker/aws-credentials"    # else the SDK's standard chain
//! # profile = "sealbroker"
//! # timeout_ms = 10000                    # per attempt
//! # [backends.aws.retry]
//! # max_retries = 4
//! # initial_backoff_ms = 100
//! # max_backoff_ms = 5000
//!
//! [keys.openbao-unseal]
//! backend = "aws"
//! key_id = "alias/openbao-unseal"         # or a key ARN, alias ARN or key id
//!
//! [keys.pki-root]                         # an asymmetric key (External Keys)
//! backend = "aws"
//! key_id = "alias/pki-root"
//! algorithm = "ecdsa-p256"                # rsa-2048/3072/4096, ecdsa-p256/p384
//! # mechanism = "RSA_PKCS_OAEP"           # an RSA encryption pair instead of a signing one
//! # rsa_oaep_hash = "sha256"              # or "sha1"
//! ```

mod kind;
pub mod signing;
mod stock;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::timeout::TimeoutConfig;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_kms::config::ProvideCredentials;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::KeyState;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, KeyAlgorithm, Mechanism, NewVersion, PublicKey, Sealed,
    SecretBytes, SignInput, SignScheme,
};
use serde::Deserialize;

pub use sealbroker_retry::RetryConfig;
use sealbroker_retry::{Attempt, parse_retry_after};

/// Encryption-context key that carries the base64 of the caller's AAD.
pub const AAD_CONTEXT_KEY: &str = "sealbroker-aad";
/// [`Sealed::metadata`] key holding the key ARN that `Encrypt` used.
pub const METADATA_KEY_ARN: &str = "aws_key_arn";

fn default_timeout_ms() -> u64 {
    10_000
}

/// `[backends.NAME]` with `type = "awskms"`: one AWS account, region and identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// AWS region, e.g. `eu-west-1`. When unset: `AWS_REGION`, the profile, then EC2 metadata.
    pub region: Option<String>,
    /// Endpoint override (VPC endpoint, FIPS endpoint, or a test server).
    pub endpoint: Option<String>,
    /// Shared-credentials file to take credentials from instead of the standard chain.
    pub credentials_file: Option<PathBuf>,
    /// Profile to use (in `credentials_file`, or in the standard AWS files).
    pub profile: Option<String>,
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
    /// The KMS key: key ARN, key id, alias ARN or `alias/NAME`. Without
    /// `algorithm`, a symmetric `ENCRYPT_DECRYPT` key that seals data keys.
    pub key_id: String,
    /// Makes this an asymmetric key (External Keys): `rsa-2048`,
    /// `rsa-3072`, `rsa-4096`, `ecdsa-p256` or `ecdsa-p384`. A signing key
    /// pair (`SIGN_VERIFY`) unless `mechanism` says otherwise.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// `RSA_PKCS_OAEP`: with an RSA `algorithm`, an encryption key pair
    /// (`ENCRYPT_DECRYPT`) for RSA-OAEP instead of a signing one.
    #[serde(default)]
    pub mechanism: Option<MechanismName>,
    /// RSA-OAEP's hash (and MGF1's): `sha256` (the default) or `sha1`.
    #[serde(default)]
    pub rsa_oaep_hash: Option<String>,
}

/// Config errors name fields relative to this backend's tables; the broker places them under
/// `backends.NAME` or `keys.NAME`.
pub use sealbroker_core::ConfigError;

pub use kind::{AwsKmsKind, KIND};
pub use signing::{MechanismName, OaepHash, Purpose};

fn config_error(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(field, reason)
}

impl BackendConfig {
    /// Checks the fields that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(region) = &self.region
            && (region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(config_error(
                "region",
                format!("{region:?} is not an AWS region name"),
            ));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
        {
            return Err(config_error(
                "endpoint",
                format!("{endpoint:?} is not an http(s) URL"),
            ));
        }
        if let Some(file) = &self.credentials_file
            && let Err(e) = std::fs::metadata(file)
        {
            return Err(config_error(
                "credentials_file",
                format!("{}: {e}", file.display()),
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

/// Where credentials come from, for error messages.
#[derive(Debug, Clone)]
enum CredentialSource {
    /// Given in the seal stanza (OpenBao's stock `awskms` keys).
    Static,
    File {
        path: PathBuf,
        profile: String,
    },
    DefaultChain {
        profile: Option<String>,
    },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Static => f.write_str("the seal stanza's access_key"),
            CredentialSource::File { path, profile } => {
                write!(f, "credentials file {} (profile {profile:?})", path.display())
            }
            CredentialSource::DefaultChain { profile: Some(p) } => {
                write!(f, "the AWS default credential chain (profile {p:?})")
            }
            CredentialSource::DefaultChain { profile: None } => {
                write!(f, "the AWS default credential chain")
            }
        }
    }
}

struct ClientInner {
    kms: aws_sdk_kms::Client,
    credentials: Option<aws_sdk_kms::config::SharedCredentialsProvider>,
    source: CredentialSource,
    region: String,
    endpoint: String,
    /// `timeout_ms`: the bound of one attempt, named when it ends a call.
    timeout: Duration,
    retry: RetryConfig,
    throttling_retries: AtomicU64,
}

/// A configured KMS client for one `[backends.NAME]`, shared by its keys.
/// Cheap to clone. Holds no credentials itself: the SDK resolves them lazily.
#[derive(Clone)]
pub struct KmsClient(Arc<ClientInner>);

impl fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsClient")
            .field("region", &self.0.region)
            .field("endpoint", &self.0.endpoint)
            .field("credentials", &self.0.source.to_string())
            .finish()
    }
}

/// Builds the SDK client for `backend`. Makes no KMS call; it may read the
/// AWS config files, and looks the region up in EC2 metadata only when no
/// region is configured anywhere else.
pub async fn connect(backend: &BackendConfig) -> Result<KmsClient, ConfigError> {
    connect_with(backend, None).await
}

/// As [`connect`], with credentials given in code (OpenBao's stock stanza
/// may carry `access_key`/`secret_key`); they win over the file and chain.
pub(crate) async fn connect_with(
    backend: &BackendConfig,
    credentials: Option<aws_sdk_kms::config::Credentials>,
) -> Result<KmsClient, ConfigError> {
    backend.validate()?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(backend.timeout_ms.min(5_000)))
                .operation_attempt_timeout(Duration::from_millis(backend.timeout_ms))
                .build(),
        );
    if let Some(region) = &backend.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &backend.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(profile) = &backend.profile {
        loader = loader.profile_name(profile);
    }
    let source = match (&credentials, &backend.credentials_file) {
        (Some(credentials), _) => {
            loader = loader.credentials_provider(credentials.clone());
            CredentialSource::Static
        }
        (None, Some(path)) => {
            let profile = backend.profile.clone().unwrap_or_else(|| "default".to_owned());
            let files = EnvConfigFiles::builder()
                .with_file(EnvConfigFileKind::Credentials, path)
                .build();
            let provider = ProfileFileCredentialsProvider::builder()
                .profile_files(files)
                .profile_name(&profile)
                .build();
            loader = loader.credentials_provider(provider);
            CredentialSource::File {
                path: path.clone(),
                profile,
            }
        }
        (None, None) => CredentialSource::DefaultChain {
            profile: backend.profile.clone(),
        },
    };
    let sdk = loader.load().await;
    let region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
        config_error(
            "region",
            "no region configured and none found in AWS_REGION or the AWS profile; set `region`",
        )
    })?;
    let endpoint = backend
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("the AWS KMS endpoint of {region}"));
    if endpoint.starts_with("http://") {
        tracing::warn!(%endpoint, "AWS KMS endpoint is plaintext HTTP; use it for tests only");
    }
    Ok(KmsClient(Arc::new(ClientInner {
        kms: aws_sdk_kms::Client::new(&sdk),
        credentials: sdk.credentials_provider(),
        source,
        region,
        endpoint,
        timeout: Duration::from_millis(backend.timeout_ms),
        retry: backend.retry,
        throttling_retries: AtomicU64::new(0),
    })))
}

impl KmsClient {
    /// The region calls go to.
    pub fn region(&self) -> &str {
        &self.0.region
    }

    /// The underlying SDK client, for tooling (key creation in tests, admin CLIs).
    pub fn sdk(&self) -> &aws_sdk_kms::Client {
        &self.0.kms
    }

    /// Names the identity calls are made as: the access key id prefix and
    /// where it came from. Never the secret key or session token.
    async fn caller(&self) -> String {
        let Some(provider) = &self.0.credentials else {
            return format!("no credentials provider ({})", self.0.source);
        };
        let lookup = tokio::time::timeout(Duration::from_secs(2), provider.provide_credentials()).await;
        match lookup {
            Ok(Ok(creds)) => format!(
                "access key id {} from {}",
                access_key_prefix(creds.access_key_id()),
                self.0.source
            ),
            Ok(Err(e)) => format!(
                "no usable credentials from {} ({})",
                self.0.source,
                error_chain(&e)
            ),
            Err(_) => format!("credentials from {} (lookup timed out)", self.0.source),
        }
    }
}

/// `AKIAIOSF…`: enough to tell identities apart in a log, not the whole id.
fn access_key_prefix(id: &str) -> String {
    let prefix: String = id.chars().take(8).collect();
    format!("{prefix}…")
}

/// One KMS key used through one [`KmsClient`].
pub struct AwsKmsKey {
    client: KmsClient,
    key_id: String,
    purpose: Purpose,
    identity: String,
}

impl fmt::Debug for AwsKmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKey")
            .field("identity", &self.identity)
            .finish()
    }
}

impl AwsKmsKey {
    /// Binds `key` to `client`. Makes no network call: the key is first used
    /// (and checked) by [`Backend::health`] or the first wrap.
    pub fn new(client: &KmsClient, key: &KeyConfig) -> Result<Self, ConfigError> {
        let key_id = key.key_id.trim();
        if key_id.is_empty() || key_id.chars().any(char::is_whitespace) {
            return Err(config_error(
                "key_id",
                format!(
                    "{:?} is not a KMS key id, key ARN, alias ARN or alias/NAME",
                    key.key_id
                ),
            ));
        }
        if let Some(rest) = key_id.strip_prefix("arn:") {
            // arn:PARTITION:kms:REGION:ACCOUNT:key/ID or alias/NAME
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            if parts.len() != 5
                || parts[1] != "kms"
                || !(parts[4].starts_with("key/") || parts[4].starts_with("alias/"))
            {
                return Err(config_error(
                    "key_id",
                    format!("{key_id:?} is not a KMS key or alias ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"),
                ));
            }
            if parts[2] != client.region() {
                return Err(config_error(
                    "key_id",
                    format!(
                        "the ARN is in region {} but the backend uses region {}; set the backend's `region`",
                        parts[2],
                        client.region()
                    ),
                ));
            }
        }
        let purpose = Purpose::from_config(key)?;
        Ok(AwsKmsKey::with_purpose(client, key_id, purpose))
    }

    /// A key already checked. The identity of an asymmetric key names its
    /// algorithm (and RSA-OAEP), as the PKCS#11 backend's does.
    fn with_purpose(client: &KmsClient, key_id: &str, purpose: Purpose) -> AwsKmsKey {
        let region = client.region();
        let identity = match purpose {
            Purpose::Seal => format!("awskms:{region}:{key_id}"),
            Purpose::Sign(algorithm) => format!("awskms:{region}:{key_id}:{algorithm}"),
            Purpose::Oaep(algorithm, _) => format!("awskms:{region}:{key_id}:{algorithm}:RSA_PKCS_OAEP"),
        };
        AwsKmsKey {
            client: client.clone(),
            key_id: key_id.to_owned(),
            purpose,
            identity,
        }
    }

    /// What this key is for: sealing, signing, or RSA-OAEP.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    fn refuse_unless_sealing(&self) -> Result<(), BackendError> {
        match self.purpose {
            Purpose::Seal => Ok(()),
            Purpose::Sign(algorithm) => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!("this AWS KMS key is an {algorithm} signing key pair; it does not seal"),
            )),
            Purpose::Oaep(algorithm, _) => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "this AWS KMS key is an {algorithm} encryption key pair; it does RSA-OAEP (EncryptAsymmetric), \
                     not sealing"
                ),
            )),
        }
    }

    /// Refuses a recorded key ARN this key could not have produced, so a
    /// tampered blob cannot steer `Decrypt` to some other key the broker's
    /// identity may use. An alias may have pointed anywhere in its account and
    /// region, so only those are checked for aliases.
    fn check_recorded_arn(&self, recorded: &str) -> Result<(), BackendError> {
        let refuse = |why: &str| {
            Err(BackendError::not_authentic(format!(
                "the blob names KMS key {recorded:?}, which {why} (configured key_id {})",
                self.key_id
            )))
        };
        if recorded == self.key_id {
            return Ok(());
        }
        let region = self.client.region();
        let mut parts = recorded.splitn(6, ':');
        let (Some("arn"), Some(_), Some("kms"), Some(arn_region), Some(account), Some(resource)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return refuse("is not a KMS key ARN");
        };
        if arn_region != region || !resource.starts_with("key/") {
            return refuse(&format!("is not a key in region {region}"));
        }
        if self.key_id.starts_with("arn:") {
            let configured_account = self.key_id.split(':').nth(4).unwrap_or_default();
            if self.key_id.contains(":key/") {
                return refuse("is not the configured key");
            }
            if configured_account != account {
                return refuse(&format!("is not in account {configured_account}"));
            }
        } else if !self.key_id.starts_with("alias/") && resource != format!("key/{}", self.key_id) {
            return refuse("is not the configured key");
        }
        Ok(())
    }

    fn context(aad: &[u8]) -> Option<HashMap<String, String>> {
        (!aad.is_empty()).then(|| HashMap::from([(AAD_CONTEXT_KEY.to_owned(), BASE64.encode(aad))]))
    }

    /// Runs one KMS call with retries and turns its failure into a [`BackendError`].
    async fn call<T, E, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        mut op: F,
    ) -> Result<T, BackendError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let retry = self.client.0.retry;
        let timeout = self.client.0.timeout;
        let result = retry
            .run(
                || {
                    let fut = op();
                    async move { fut.await.map_err(|e| classify(&e, timeout)) }
                },
                |failure| {
                    if failure.kind == BackendErrorKind::Throttled {
                        self.client.0.throttling_retries.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await;
        match result {
            Ok(value) => Ok(value),
            Err(failure) => {
                let mut message = format!(
                    "AWS KMS {operation} with key {key} at {}: {}",
                    self.client.0.endpoint, failure.message
                );
                if failure.retryable && retry.max_retries > 0 {
                    message.push_str(&format!(" (gave up after {} retries)", retry.max_retries));
                }
                if failure.kind == BackendErrorKind::PermissionDenied {
                    message.push_str(&format!("; calling as {}", self.client.caller().await));
                }
                Err(BackendError::new(failure.kind, message))
            }
        }
    }
}

/// A classified SDK failure, before the key and caller are named.
#[derive(Debug)]
struct Failure {
    kind: BackendErrorKind,
    message: String,
    retryable: bool,
}

/// `timeout` is the attempt bound (`timeout_ms`), named when it ends a call.
fn classify<E>(error: &SdkError<E, HttpResponse>, timeout: Duration) -> Attempt<Failure>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
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
    match error {
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            let status = raw.status().as_u16();
            let retry_after = raw.headers().get("retry-after").and_then(parse_retry_after);
            let err = service.err();
            let code = err.code().unwrap_or("");
            let text = match (code, err.message()) {
                ("", Some(m)) => format!("HTTP {status}: {m}"),
                ("", None) => format!("HTTP {status}"),
                (c, Some(m)) => format!("{c}: {m}"),
                (c, None) => c.to_owned(),
            };
            match code {
                "ThrottlingException"
                | "ThrottledException"
                | "TooManyRequestsException"
                | "RequestLimitExceeded" => retryable(BackendErrorKind::Throttled, text, retry_after),
                _ if status == 429 => retryable(BackendErrorKind::Throttled, text, retry_after),
                "KMSInternalException"
                | "DependencyTimeoutException"
                | "KeyUnavailableException"
                | "ServiceUnavailable"
                | "ServiceUnavailableException"
                | "InternalFailure" => retryable(BackendErrorKind::Unavailable, text, retry_after),
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "IncompleteSignature"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "MissingAuthenticationToken"
                | "SignatureDoesNotMatch"
                | "AuthFailure" => fatal(BackendErrorKind::PermissionDenied, text),
                "DisabledException" => fatal(
                    BackendErrorKind::KeyNotFound,
                    format!("the key is disabled; enable it or point key_id at an enabled key ({text})"),
                ),
                "KMSInvalidStateException" => fatal(
                    BackendErrorKind::KeyNotFound,
                    format!("the key's state does not allow this call, e.g. it is pending deletion ({text})"),
                ),
                "NotFoundException" => fatal(BackendErrorKind::KeyNotFound, text),
                "InvalidCiphertextException" | "IncorrectKeyException" => fatal(
                    BackendErrorKind::NotAuthentic,
                    format!("the wrapped data key does not open under this key and AAD ({text})"),
                ),
                "InvalidKeyUsageException" => fatal(
                    BackendErrorKind::InvalidInput,
                    format!(
                        "the KMS key's usage does not allow this call; check the key's `algorithm` and `mechanism` \
                         against the KMS key's KeySpec and KeyUsage ({text})"
                    ),
                ),
                "ValidationException" => fatal(BackendErrorKind::InvalidInput, text),
                _ if status == 401 || status == 403 => fatal(BackendErrorKind::PermissionDenied, text),
                _ if status >= 500 => retryable(BackendErrorKind::Unavailable, text, retry_after),
                _ => fatal(BackendErrorKind::Internal, text),
            }
        }
        SdkError::TimeoutError(_) => retryable(
            BackendErrorKind::Timeout,
            format!(
                "no answer within timeout_ms = {} (the per-attempt bound)",
                timeout.as_millis()
            ),
            None,
        ),
        SdkError::DispatchFailure(dispatch) => {
            let text = error_chain(error);
            if dispatch.is_timeout() {
                retryable(
                    BackendErrorKind::Timeout,
                    format!(
                        "no connection within {} ms (timeout_ms, at most 5000 for connecting): {text}",
                        timeout.as_millis().min(5_000)
                    ),
                    None,
                )
            } else if dispatch.is_io() {
                retryable(
                    BackendErrorKind::Unavailable,
                    format!("cannot reach the service: {text}"),
                    None,
                )
            } else if mentions_credentials(error) {
                fatal(BackendErrorKind::PermissionDenied, text)
            } else {
                retryable(BackendErrorKind::Unavailable, text, None)
            }
        }
        SdkError::ResponseError(_) => retryable(
            BackendErrorKind::Unavailable,
            format!("unreadable response: {}", error_chain(error)),
            None,
        ),
        _ => {
            let text = error_chain(error);
            if mentions_credentials(error) {
                fatal(BackendErrorKind::PermissionDenied, text)
            } else {
                fatal(BackendErrorKind::Internal, text)
            }
        }
    }
}

/// An error and its sources on one line, without the SDK's debug dumps.
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

/// Whether a non-service failure came from resolving credentials (the SDK
/// reports that as a dispatch or construction failure).
fn mentions_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("credential") || text.contains("identity") {
            return true;
        }
        current = e.source();
    }
    false
}

#[async_trait]
impl Backend for AwsKmsKey {
    fn kind(&self) -> &'static str {
        "awskms"
    }

    fn key_identity(&self) -> String {
        self.identity.clone()
    }

    fn throttling_retries(&self) -> u64 {
        self.client.0.throttling_retries.load(Ordering::Relaxed)
    }

    fn algorithm(&self) -> Option<KeyAlgorithm> {
        self.purpose.algorithm()
    }

    fn oaep_hash(&self) -> Option<sealbroker_core::OaepHash> {
        match self.purpose {
            Purpose::Oaep(_, OaepHash::Sha1) => Some(sealbroker_core::OaepHash::Sha1),
            Purpose::Oaep(_, OaepHash::Sha256) => Some(sealbroker_core::OaepHash::Sha256),
            _ => None,
        }
    }

    async fn public_key(&self) -> Result<PublicKey, BackendError> {
        self.public_key_asymmetric().await
    }

    /// KMS `Sign`: a digest as `DIGEST`, a message as `RAW` (hashed once
    /// here into a `DIGEST` when longer than KMS takes).
    async fn sign(&self, scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        self.sign_asymmetric(scheme, input).await
    }

    /// KMS `Verify`, for messages and digests alike.
    async fn verify(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        self.verify_asymmetric(scheme, input, signature).await
    }

    async fn encrypt_asymmetric(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.encrypt_oaep(plaintext).await
    }

    async fn decrypt_asymmetric(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        self.decrypt_oaep(ciphertext).await
    }

    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        self.refuse_unless_sealing()?;
        let context = Self::context(aad);
        let kms = &self.client.0.kms;
        let output = self
            .call("Encrypt", &self.key_id, || {
                kms.encrypt()
                    .key_id(&self.key_id)
                    .plaintext(Blob::new(secret))
                    .set_encryption_context(context.clone())
                    .send()
            })
            .await?;
        let ciphertext = output
            .ciphertext_blob
            .ok_or_else(|| BackendError::internal("AWS KMS Encrypt answered without a CiphertextBlob"))?
            .into_inner();
        let arn = output
            .key_id
            .ok_or_else(|| BackendError::internal("AWS KMS Encrypt answered without the KeyId it used"))?;
        Ok(Sealed {
            mechanism: Mechanism::ServiceDefined,
            ciphertext,
            metadata: [(METADATA_KEY_ARN.to_owned(), arn)].into(),
            ..Default::default()
        })
    }

    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        self.refuse_unless_sealing()?;
        if sealed.mechanism != Mechanism::ServiceDefined {
            return Err(BackendError::not_authentic(
                "the data key was not sealed by AWS KMS (mechanism is not service-defined)",
            ));
        }
        // The key that sealed it, not what an alias points at today.
        let key = sealed
            .metadata
            .get(METADATA_KEY_ARN)
            .map(String::as_str)
            .unwrap_or(&self.key_id);
        self.check_recorded_arn(key)?;
        let context = Self::context(aad);
        let kms = &self.client.0.kms;
        let output = self
            .call("Decrypt", key, || {
                kms.decrypt()
                    .key_id(key)
                    .ciphertext_blob(Blob::new(sealed.ciphertext.clone()))
                    .set_encryption_context(context.clone())
                    .send()
            })
            .await?;
        let plaintext = output
            .plaintext
            .ok_or_else(|| BackendError::internal("AWS KMS Decrypt answered without a Plaintext"))?;
        Ok(SecretBytes::new(plaintext.into_inner()))
    }

    /// Sealing keys: the same KMS key. AWS keeps every generation of its
    /// key material and picks the right one from the ciphertext, so every
    /// broker version after a rotation is served by the key the alias
    /// points at. Asymmetric keys: the key under `alias/NAME-v<version>`.
    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        if self.purpose != Purpose::Seal {
            return self.asymmetric_version(version).ok();
        }
        Some(NewVersion {
            backend: Arc::new(AwsKmsKey::with_purpose(&self.client, &self.key_id, self.purpose)),
            settings: Default::default(),
        })
    }

    /// Sealing keys: rotates the key material on demand
    /// (`RotateKeyOnDemand`, needing `kms:RotateKeyOnDemand` and
    /// `kms:DescribeKey`). The key id stays the same, and KMS keeps every
    /// older backing key, so blobs under earlier broker versions still open;
    /// new broker versions wrap under the new material.
    ///
    /// Asymmetric keys (whose material KMS cannot rotate): a new KMS key of
    /// the same spec and usage under `alias/NAME-v<version>` (needing
    /// `kms:CreateKey`, `kms:CreateAlias` and `kms:DescribeKey`), or the
    /// one already there.
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        if self.purpose != Purpose::Seal {
            return self.create_asymmetric_version(version).await;
        }
        let kms = &self.client.0.kms;
        // On-demand rotation takes a key id or ARN, never an alias.
        let described = self
            .call("DescribeKey", &self.key_id, || {
                kms.describe_key().key_id(&self.key_id).send()
            })
            .await?;
        let arn = described
            .key_metadata
            .and_then(|meta| meta.arn)
            .ok_or_else(|| BackendError::internal("AWS KMS DescribeKey answered without the key ARN"))?;
        self.call("RotateKeyOnDemand", &arn, || {
            kms.rotate_key_on_demand().key_id(&arn).send()
        })
        .await?;
        tracing::info!(key = %arn, broker_version = version, "rotated the AWS KMS key material on demand");
        Ok(NewVersion {
            backend: Arc::new(AwsKmsKey::with_purpose(&self.client, &self.key_id, self.purpose)),
            settings: Default::default(),
        })
    }

    /// Describes the key first, so a disabled key, or one of another spec
    /// or usage than the config says, is named plainly; then makes a real
    /// round trip: a seal and open, a signature made and verified by KMS,
    /// or an RSA-OAEP encryption and decryption.
    async fn health(&self) -> Result<(), BackendError> {
        let kms = &self.client.0.kms;
        let described = self
            .call("DescribeKey", &self.key_id, || {
                kms.describe_key().key_id(&self.key_id).send()
            })
            .await?;
        if let Some(meta) = described.key_metadata {
            if meta.key_state != Some(KeyState::Enabled) {
                let state = meta.key_state.map(|s| s.as_str().to_owned()).unwrap_or_default();
                return Err(BackendError::new(
                    BackendErrorKind::KeyNotFound,
                    format!("AWS KMS key {} is in state {state}, not Enabled", self.key_id),
                ));
            }
            self.purpose
                .check_shape(&self.key_id, meta.key_spec.as_ref(), meta.key_usage.as_ref())?;
        }
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

    fn parse(text: &str) -> Result<BackendConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let err = parse("region = \"eu-west-1\"\nsecret_key = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("secret_key"), "{err}");
    }

    #[test]
    fn config_defaults_and_validation_name_the_field() {
        let config = parse("region = \"eu-west-1\"").unwrap();
        assert_eq!(config.timeout_ms, 10_000);
        assert_eq!(config.retry, RetryConfig::default());
        config.validate().unwrap();

        let err = parse("endpoint = \"kms.example\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.path, "endpoint");
        let err = parse("credentials_file = \"/nonexistent/creds\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.path, "credentials_file");
        assert!(err.message.contains("/nonexistent/creds"), "{err}");
        let err = parse("[retry]\ninitial_backoff_ms = 10\nmax_backoff_ms = 1")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.path, "retry.initial_backoff_ms");
    }

    #[tokio::test]
    async fn key_arn_in_another_region_is_refused() {
        let client = connect(&parse("region = \"eu-west-1\"").unwrap()).await.unwrap();
        let key = |id: &str| {
            AwsKmsKey::new(
                &client,
                &KeyConfig {
                    key_id: id.into(),
                    ..Default::default()
                },
            )
        };
        let err = key("arn:aws:kms:us-east-1:111122223333:key/abc").unwrap_err();
        assert_eq!(err.path, "key_id");
        assert!(err.message.contains("us-east-1"), "{err}");
        assert!(key("arn:aws:s3:eu-west-1:111122223333:bucket/x").is_err());
        assert!(key("").is_err());
        let ok = key("arn:aws:kms:eu-west-1:111122223333:alias/unseal").unwrap();
        assert_eq!(
            ok.key_identity(),
            "awskms:eu-west-1:arn:aws:kms:eu-west-1:111122223333:alias/unseal"
        );
        assert_eq!(ok.kind(), "awskms");
    }

    #[test]
    fn empty_aad_sends_no_context_and_aad_is_base64() {
        assert_eq!(AwsKmsKey::context(b""), None);
        let context = AwsKmsKey::context(b"\x00\xffaad").unwrap();
        assert_eq!(context[AAD_CONTEXT_KEY], "AP9hYWQ=");
    }

    #[tokio::test]
    async fn recorded_arn_must_fit_the_configured_key() {
        let client = connect(&parse("region = \"eu-west-1\"").unwrap()).await.unwrap();
        let key = |id: &str| {
            AwsKmsKey::new(
                &client,
                &KeyConfig {
                    key_id: id.into(),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        key(arn).check_recorded_arn(arn).unwrap();
        key("1234abcd-12ab-34cd-56ef-1234567890ab")
            .check_recorded_arn(arn)
            .unwrap();
        key("alias/unseal").check_recorded_arn(arn).unwrap();
        key("arn:aws:kms:eu-west-1:111122223333:alias/unseal")
            .check_recorded_arn(arn)
            .unwrap();

        let other = "arn:aws:kms:eu-west-1:111122223333:key/ffffffff-12ab-34cd-56ef-1234567890ab";
        let err = key(arn).check_recorded_arn(other).unwrap_err();
        assert_eq!(err.kind, BackendErrorKind::NotAuthentic);
        assert!(
            key("1234abcd-12ab-34cd-56ef-1234567890ab")
                .check_recorded_arn(other)
                .is_err()
        );
        assert!(
            key("arn:aws:kms:eu-west-1:999999999999:alias/unseal")
                .check_recorded_arn(arn)
                .is_err()
        );
        assert!(
            key("alias/unseal")
                .check_recorded_arn("arn:aws:kms:us-east-1:111122223333:key/x")
                .is_err()
        );
        assert!(key("alias/unseal").check_recorded_arn("not-an-arn").is_err());
    }

    #[test]
    fn access_key_prefix_keeps_eight_characters() {
        assert_eq!(access_key_prefix("AKIAIOSFODNN7EXAMPLE"), "AKIAIOSF…");
        assert_eq!(access_key_prefix("AK"), "AK…");
    }
}
