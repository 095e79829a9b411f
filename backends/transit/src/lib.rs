//! OpenBao (or Vault) transit as a sealbroker backend: the broker becomes a
//! client of an upstream transit key, so a shared transit engine sits behind
//! the broker's ACLs and audit.
//!
//! Design, in one paragraph: the key ring hands this backend a 32-byte DEK and
//! its AAD, and the upstream only ever sees DEKs. The DEK goes to
//! `POST <mount>/encrypt/<key>` as `plaintext`, the AAD as `associated_data`
//! (and also as `context` when the upstream key is derived). The upstream's
//! `vault:vN:...` string is stored as the sealed ciphertext with
//! [`Mechanism::ServiceDefined`], and `N` is recorded in
//! `Sealed.metadata["transit_key_version"]`. Upstream rotation needs nothing
//! from us: old ciphertexts still decrypt, and the broker's Rewrap (unwrap,
//! then wrap) lands on the upstream's latest version. Concurrent calls are
//! combined into `batch_input` requests ([`batch`]); the token is renewed in
//! the background ([`token`]); HTTPS uses rustls with the ring provider
//! ([`tls`]).
//!
//! The upstream's own `rewrap` endpoint is deliberately not used: OpenBao
//! 2.7.2 rejects `associated_data` on `rewrap` ("cipher: message
//! authentication failed"), so it cannot rewrap AAD-bound DEKs.
//!
//! The token needs this policy (plus the `default` policy, for
//! `lookup-self`/`renew-self`):
//!
//! ```hcl
//! path "transit/encrypt/KEY" { capabilities = ["update"] }
//! path "transit/decrypt/KEY" { capabilities = ["update"] }
//! path "transit/keys/KEY"    { capabilities = ["read"] }
//! ```
//!
//! `sealbroker keys rotate` also needs
//! `path "transit/keys/KEY/rotate" { capabilities = ["update"] }`.

pub mod batch;
pub mod client;
mod kind;
pub mod signing;
pub mod tls;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::{Method, StatusCode};
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, KeyAlgorithm, Mechanism, NewVersion, OaepHash, PublicKey,
    Sealed, SecretBytes, SignInput, SignScheme,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use batch::BatchSettings;
pub use client::TransitClient;

use batch::Batcher;
use client::{Call, ClientInner};
use signing::Purpose;

/// `Sealed.metadata` key holding the upstream key version that sealed the DEK.
pub const METADATA_KEY_VERSION: &str = "transit_key_version";
/// `Sealed.metadata` key present (value `"aad"`) when the AAD was also sent as
/// the derivation `context`, because the upstream key is derived.
pub const METADATA_CONTEXT: &str = "transit_context";

/// How long a `GET keys/<name>` answer is trusted before encrypting again.
const KEY_INFO_MAX_AGE: Duration = Duration::from_secs(60);

fn default_mount_path() -> String {
    "transit".into()
}
fn default_timeout_secs() -> u64 {
    10
}
fn default_batch_max() -> usize {
    32
}
fn default_batch_window_ms() -> u64 {
    1
}

/// `[backends.NAME]` with `type = "transit"`: one upstream OpenBao transit
/// mount. Field names follow OpenBao's `transit` seal stanza where one exists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Upstream API address, e.g. `https://openbao.internal:8200`.
    pub address: String,
    /// Where the transit engine is mounted.
    #[serde(default = "default_mount_path")]
    pub mount_path: String,
    /// OpenBao namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// File holding the token; re-read when the upstream refuses the current one.
    pub token_file: Option<PathBuf>,
    /// Name of an environment variable holding the token.
    pub token_env: Option<String>,
    /// PEM CA bundle that replaces the system roots for the upstream's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for upstreams that require mTLS.
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of `tls_client_cert`.
    pub tls_client_key: Option<PathBuf>,
    /// Name the upstream's certificate must carry, when it differs from the
    /// address host. Used for verification only; see [`tls`].
    pub tls_server_name: Option<String>,
    /// Bound on each HTTP request, connect included.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Most operations combined into one `batch_input` request; 1 disables batching.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long the first operation of a batch waits for company.
    #[serde(default = "default_batch_window_ms")]
    pub batch_window_ms: u64,
    /// Do not renew the token in the background (an agent renews it).
    #[serde(default)]
    pub disable_renewal: bool,
}

/// Per-key settings under `[keys.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Name of the upstream transit key.
    pub key_name: String,
    /// A key pair (External Keys): `rsa-2048`, `rsa-3072`, `rsa-4096`,
    /// `ecdsa-p256`, `ecdsa-p384` or `ed25519`, the upstream key's type.
    pub algorithm: Option<String>,
    /// `RSA_PKCS_OAEP` makes an RSA key pair an encryption pair.
    pub mechanism: Option<String>,
    /// `sha256`, the only OAEP hash transit has; for symmetry with PKCS#11.
    pub rsa_oaep_hash: Option<String>,
    /// The upstream version a key pair signs or decrypts with; by default
    /// the broker version's number.
    pub key_version: Option<u32>,
}

/// Config errors name fields relative to this backend's tables; the broker places them under
/// `backends.NAME` or `keys.NAME`.
pub use sealbroker_core::ConfigError;

pub use kind::{KIND, TransitKind};

impl BackendConfig {
    /// Validates the config, reads the token and TLS files, and builds the
    /// HTTP client. Does not contact the upstream; when called inside a Tokio
    /// runtime it starts token renewal in the background.
    pub fn client(&self) -> Result<TransitClient, ConfigError> {
        TransitClient::from_config(self)
    }
}

/// A path segment OpenBao accepts in mount paths, namespaces and key names.
pub(crate) fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What `GET <mount>/keys/<name>` says about the upstream key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpstreamKey {
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: String,
    /// The version new encryptions use.
    pub latest_version: u32,
    /// Ciphertexts below this version no longer decrypt.
    pub min_decryption_version: u32,
    #[serde(default)]
    pub min_encryption_version: u32,
    /// Whether operations need a derivation `context`.
    #[serde(default)]
    pub derived: bool,
    #[serde(default)]
    pub supports_encryption: bool,
    #[serde(default)]
    pub supports_decryption: bool,
    #[serde(default)]
    pub supports_signing: bool,
    /// Per version: a creation time (symmetric keys) or the public key and
    /// its details (key pairs).
    #[serde(default)]
    pub keys: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Key types whose encryption binds `associated_data`.
const AEAD_TYPES: &[&str] = &[
    "aes128-gcm96",
    "aes256-gcm96",
    "chacha20-poly1305",
    "xchacha20-poly1305",
];

/// A key in an upstream transit engine.
pub struct TransitKey {
    shared: Arc<KeyShared>,
    /// The upstream version a key pair uses (unused for sealing keys).
    version: u32,
    /// `None` when `batch_max = 1`: every call is its own request.
    encrypts: Option<Batcher<EncryptItem, Sealed>>,
    decrypts: Option<Batcher<DecryptItem, SecretBytes>>,
}

struct KeyShared {
    client: Arc<ClientInner>,
    name: String,
    purpose: Purpose,
    /// The settings it was made from, for the versions made after it.
    config: KeyConfig,
    identity: String,
    encrypt_path: String,
    decrypt_path: String,
    keys_path: String,
    info: tokio::sync::Mutex<Option<(Instant, UpstreamKey)>>,
}

/// One DEK to encrypt.
pub(crate) struct EncryptItem {
    plaintext: SecretBytes,
    aad: Vec<u8>,
    derived: bool,
}

/// One upstream ciphertext to decrypt.
pub(crate) struct DecryptItem {
    ciphertext: String,
    aad: Vec<u8>,
    context: bool,
}

impl std::fmt::Debug for TransitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitKey")
            .field("identity", &self.shared.identity)
            .field("batching", &self.encrypts.is_some())
            .finish()
    }
}

impl TransitKey {
    /// A key on `client`. Nothing is sent upstream until the first operation,
    /// so the broker can start while the upstream is briefly away.
    pub fn new(client: TransitClient, config: &KeyConfig) -> Result<Self, ConfigError> {
        let purpose = Purpose::from_config(config)?;
        let name = config.key_name.clone();
        if !valid_segment(&name) {
            return Err(ConfigError::new(
                "key_name",
                format!("{name:?} is not a transit key name (letters, digits, '-', '_' and '.')"),
            ));
        }
        let inner = client.inner;
        let mount = inner.mount.clone();
        let identity = match &inner.namespace {
            Some(ns) => format!("transit:{}:ns={ns}:{mount}/keys/{name}", inner.address),
            None => format!("transit:{}:{mount}/keys/{name}", inner.address),
        };
        let batch = inner.batch;
        let shared = Arc::new(KeyShared {
            encrypt_path: format!("{mount}/encrypt/{name}"),
            decrypt_path: format!("{mount}/decrypt/{name}"),
            keys_path: format!("{mount}/keys/{name}"),
            client: inner,
            name,
            purpose,
            config: config.clone(),
            identity,
            info: tokio::sync::Mutex::new(None),
        });
        let (encrypts, decrypts) = if batch.max_items > 1 && purpose == Purpose::Seal {
            let enc = shared.clone();
            let dec = shared.clone();
            (
                Some(Batcher::new(batch, move |items| {
                    let key = enc.clone();
                    Box::pin(async move { key.encrypt_many(items).await })
                })),
                Some(Batcher::new(batch, move |items| {
                    let key = dec.clone();
                    Box::pin(async move { key.decrypt_many(items).await })
                })),
            )
        } else {
            (None, None)
        };
        Ok(TransitKey {
            shared,
            version: config.key_version.unwrap_or(1),
            encrypts,
            decrypts,
        })
    }

    /// The upstream key name.
    pub fn key_name(&self) -> &str {
        &self.shared.name
    }

    /// Reads `GET <mount>/keys/<name>` now (refreshing the cached copy): the
    /// upstream's latest and minimum decryption versions.
    pub async fn upstream_key(&self) -> Result<UpstreamKey, BackendError> {
        self.shared.refresh_info().await
    }

    /// The upstream key version a sealed DEK is under (from its `vault:vN:`
    /// prefix), e.g. to find blobs that a Rewrap would move.
    pub fn sealed_key_version(sealed: &Sealed) -> Option<u32> {
        std::str::from_utf8(&sealed.ciphertext)
            .ok()
            .and_then(ciphertext_version)
    }
}

impl TransitKey {
    /// Creates the upstream key (`sealbroker keygen`): see
    /// [`signing::Purpose::transit_type`] for the type.
    pub async fn create_upstream(&self) -> Result<(), BackendError> {
        self.shared.create_upstream(self.shared.purpose).await
    }

    /// The same upstream key with these settings, pinned at `key_version`
    /// (key pairs) or not.
    fn sibling(&self, key_version: Option<u32>) -> Result<TransitKey, ConfigError> {
        TransitKey::new(
            TransitClient {
                inner: self.shared.client.clone(),
            },
            &KeyConfig {
                key_version,
                ..self.shared.config.clone()
            },
        )
    }
}

/// The settings that rebuild a version pinned at `key_version`.
fn pinned_settings(key_version: Option<u32>) -> std::collections::BTreeMap<String, String> {
    key_version
        .map(|v| ("key_version".to_owned(), v.to_string()))
        .into_iter()
        .collect()
}

/// `N` from `vault:vN:<base64>`; `None` when the string has another shape.
fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    let mut parts = ciphertext.split(':');
    let (Some(prefix), Some(version), Some(body), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if prefix != "vault" || body.is_empty() {
        return None;
    }
    version.strip_prefix('v')?.parse().ok().filter(|v| *v > 0)
}

#[derive(Serialize)]
struct EncryptRequest<'a> {
    plaintext: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    associated_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
}

#[derive(Serialize)]
struct DecryptRequest<'a> {
    ciphertext: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    associated_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
}

#[derive(Serialize)]
struct BatchRequest<T> {
    batch_input: Vec<T>,
}

#[derive(Deserialize)]
struct EncryptResult {
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    key_version: Option<u32>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Deserialize)]
struct DecryptResult {
    /// The DEK, base64: zeroized on drop.
    #[serde(default)]
    plaintext: Option<SecretString>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Deserialize)]
struct BatchResults<T> {
    batch_results: Vec<T>,
}

fn b64_opt(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| B64.encode(bytes))
}

/// Serializes a request body into memory that is zeroed when the request is done.
fn secret_json(value: &impl Serialize, capacity: usize) -> Result<bytes::Bytes, BackendError> {
    let mut buffer = Zeroizing::new(Vec::with_capacity(capacity));
    serde_json::to_writer(&mut *buffer, value)
        .map_err(|e| BackendError::internal(format!("cannot encode the request: {e}")))?;
    Ok(bytes::Bytes::from_owner(buffer))
}

impl KeyShared {
    fn what(&self, op: &str) -> String {
        format!(
            "{op} with transit key {:?} at mount {:?}",
            self.name, self.client.mount
        )
    }

    /// The cached key description, read again when older than a minute. Also
    /// guards against `encrypt` creating a missing key, which OpenBao does for
    /// tokens allowed to.
    async fn info_for_encrypt(&self) -> Result<UpstreamKey, BackendError> {
        let mut cached = self.info.lock().await;
        if let Some((at, info)) = cached.as_ref()
            && at.elapsed() < KEY_INFO_MAX_AGE
        {
            return Ok(info.clone());
        }
        let info = self.read_info().await?;
        *cached = Some((Instant::now(), info.clone()));
        Ok(info)
    }

    async fn refresh_info(&self) -> Result<UpstreamKey, BackendError> {
        let info = self.read_info().await?;
        *self.info.lock().await = Some((Instant::now(), info.clone()));
        Ok(info)
    }

    async fn read_info(&self) -> Result<UpstreamKey, BackendError> {
        let what = self.what("read");
        let reply = self
            .client
            .execute(Call {
                method: Method::GET,
                path: &self.keys_path,
                what: &what,
                body: None,
            })
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(BackendError::new(
                BackendErrorKind::KeyNotFound,
                format!(
                    "upstream OpenBao at {} has no transit key {:?} under mount {:?}{} \
                     (create it with `bao write -f {}/keys/{} type=aes256-gcm96`)",
                    self.client.address,
                    self.name,
                    self.client.mount,
                    self.client.namespace_note(),
                    self.client.mount,
                    self.name
                ),
            ));
        }
        let info: UpstreamKey = reply.data(&self.client, &what, false)?;
        if self.purpose != Purpose::Seal {
            let fits = info.key_type == self.purpose.transit_type()
                && match self.purpose {
                    Purpose::Sign(_) => info.supports_signing,
                    _ => info.supports_encryption && info.supports_decryption,
                };
            if !fits {
                return Err(BackendError::new(
                    BackendErrorKind::InvalidInput,
                    format!(
                        "upstream transit key {:?} at {} has type {}; the config says `algorithm = \"{}\"`{}",
                        self.name,
                        self.client.address,
                        info.key_type,
                        self.purpose.transit_type(),
                        if matches!(self.purpose, Purpose::Oaep(_)) {
                            " for RSA-OAEP"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            return Ok(info);
        }
        if !info.supports_encryption || !AEAD_TYPES.contains(&info.key_type.as_str()) {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "upstream transit key {:?} at {} has type {}, which cannot bind associated data; \
                     sealbroker needs one of {}",
                    self.name,
                    self.client.address,
                    info.key_type,
                    AEAD_TYPES.join(", ")
                ),
            ));
        }
        Ok(info)
    }

    /// Records a version seen in an encrypt answer: a newer one means the
    /// upstream rotated since we last looked. Never waits: when a refresh
    /// holds the lock, that refresh sees the new version itself.
    fn note_version(&self, version: u32) {
        let Ok(mut cached) = self.info.try_lock() else {
            return;
        };
        if let Some((_, info)) = cached.as_mut()
            && version > info.latest_version
        {
            tracing::info!(
                address = %self.client.address,
                key = %self.name,
                from = info.latest_version,
                to = version,
                "upstream transit key was rotated"
            );
            info.latest_version = version;
        }
    }

    async fn encrypt_many(self: Arc<Self>, items: Vec<EncryptItem>) -> Vec<Result<Sealed, BackendError>> {
        let what = self.what("encrypt");
        let plaintexts: Vec<Zeroizing<String>> = items
            .iter()
            .map(|item| Zeroizing::new(B64.encode(item.plaintext.expose())))
            .collect();
        let requests: Vec<EncryptRequest<'_>> = items
            .iter()
            .zip(&plaintexts)
            .enumerate()
            .map(|(i, (item, plaintext))| EncryptRequest {
                plaintext: plaintext.as_str(),
                associated_data: b64_opt(&item.aad),
                context: item.derived.then(|| B64.encode(&item.aad)),
                reference: (items.len() > 1).then(|| i.to_string()),
            })
            .collect();
        // Sized up front so the buffer holding base64 DEKs never reallocates
        // and leaves unzeroed copies behind.
        let capacity = requests
            .iter()
            .map(|r| r.plaintext.len() + 2 * r.associated_data.as_ref().map_or(0, String::len) + 96)
            .sum::<usize>()
            + 32;
        let single = requests.len() == 1;
        let body = if single {
            secret_json(&requests[0], capacity)
        } else {
            secret_json(
                &BatchRequest {
                    batch_input: requests,
                },
                capacity,
            )
        };
        let body = match body {
            Ok(body) => body,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        drop(plaintexts);
        let reply = match self
            .client
            .execute(Call {
                method: Method::POST,
                path: &self.encrypt_path,
                what: &what,
                body: Some(body),
            })
            .await
        {
            Ok(reply) => reply,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let results: Vec<EncryptResult> = if single {
            match reply.data::<EncryptResult>(&self.client, &what, false) {
                Ok(result) => vec![result],
                Err(e) => return vec![Err(e)],
            }
        } else {
            match reply.batch::<EncryptResult>(&self.client, &what, false, items.len()) {
                Ok(results) => results,
                Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, (item, result)) in items.iter().zip(results).enumerate() {
            out.push(self.sealed_from(i, item, result, single, &what));
        }
        out
    }

    fn sealed_from(
        &self,
        index: usize,
        item: &EncryptItem,
        result: EncryptResult,
        single: bool,
        what: &str,
    ) -> Result<Sealed, BackendError> {
        if !single
            && result
                .reference
                .as_deref()
                .is_some_and(|r| r != index.to_string())
        {
            return Err(BackendError::internal(format!(
                "{what}: upstream batch answer is out of order (reference {:?} at position {index})",
                result.reference
            )));
        }
        if let Some(error) = result.error.filter(|e| !e.is_empty()) {
            return Err(self.client.item_error(what, &error, false));
        }
        let ciphertext = result.ciphertext.unwrap_or_default();
        let Some(version) = ciphertext_version(&ciphertext) else {
            return Err(BackendError::internal(format!(
                "{what}: upstream OpenBao at {} answered a ciphertext that is not `vault:vN:...`",
                self.client.address
            )));
        };
        if let Some(reported) = result.key_version
            && reported != version
        {
            tracing::debug!(
                reported,
                version,
                "upstream key_version differs from the ciphertext prefix"
            );
        }
        self.note_version(version);
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert(METADATA_KEY_VERSION.to_owned(), version.to_string());
        if item.derived {
            metadata.insert(METADATA_CONTEXT.to_owned(), "aad".to_owned());
        }
        Ok(Sealed {
            mechanism: Mechanism::ServiceDefined,
            iv: Vec::new(),
            ciphertext: ciphertext.into_bytes(),
            oaep_hash: String::new(),
            metadata,
        })
    }

    async fn decrypt_many(
        self: Arc<Self>,
        items: Vec<DecryptItem>,
    ) -> Vec<Result<SecretBytes, BackendError>> {
        let what = self.what("decrypt");
        let single = items.len() == 1;
        let requests: Vec<DecryptRequest<'_>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| DecryptRequest {
                ciphertext: &item.ciphertext,
                associated_data: b64_opt(&item.aad),
                context: item.context.then(|| B64.encode(&item.aad)),
                reference: (!single).then(|| i.to_string()),
            })
            .collect();
        let body = if single {
            serde_json::to_vec(&requests[0])
        } else {
            serde_json::to_vec(&BatchRequest {
                batch_input: requests,
            })
        };
        let body = match body {
            Ok(body) => bytes::Bytes::from(body),
            Err(e) => {
                let e = BackendError::internal(format!("cannot encode the request: {e}"));
                return items.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let reply = match self
            .client
            .execute(Call {
                method: Method::POST,
                path: &self.decrypt_path,
                what: &what,
                body: Some(body),
            })
            .await
        {
            Ok(reply) => reply,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let results: Vec<DecryptResult> = if single {
            match reply.data::<DecryptResult>(&self.client, &what, true) {
                Ok(result) => vec![result],
                Err(e) => return vec![Err(self.explain_retired(e, &items[0]).await)],
            }
        } else {
            match reply.batch::<DecryptResult>(&self.client, &what, true, items.len()) {
                Ok(results) => results,
                Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, (item, result)) in items.iter().zip(results).enumerate() {
            let opened = if !single && result.reference.as_deref().is_some_and(|r| r != i.to_string()) {
                Err(BackendError::internal(format!(
                    "{what}: upstream batch answer is out of order (reference {:?} at position {i})",
                    result.reference
                )))
            } else if let Some(error) = result.error.filter(|e| !e.is_empty()) {
                Err(self
                    .explain_retired(self.client.item_error(&what, &error, true), item)
                    .await)
            } else {
                match result.plaintext {
                    Some(b64) => B64
                        .decode(b64.expose_secret())
                        .map(SecretBytes::new)
                        .map_err(|_| {
                            BackendError::internal(format!("{what}: upstream plaintext is not base64"))
                        }),
                    None => Err(BackendError::internal(format!(
                        "{what}: upstream answer has no plaintext"
                    ))),
                }
            };
            out.push(opened);
        }
        out
    }

    /// Adds the upstream's minimum decryption version to a "too old" refusal.
    async fn explain_retired(&self, error: BackendError, item: &DecryptItem) -> BackendError {
        if !error.message.contains(client::RETIRED_MARKER) {
            return error;
        }
        let sealed = ciphertext_version(&item.ciphertext).unwrap_or(0);
        let min = match self.refresh_info().await {
            Ok(info) => info.min_decryption_version.to_string(),
            Err(_) => "unknown".to_owned(),
        };
        BackendError::new(
            error.kind,
            format!(
                "the data key was sealed under version {sealed} of upstream transit key {:?}, \
                 which is below its min_decryption_version ({min}); {}",
                self.name, error.message
            ),
        )
    }
}

#[async_trait]
impl Backend for TransitKey {
    fn kind(&self) -> &'static str {
        "transit"
    }

    fn key_identity(&self) -> String {
        self.shared.identity.clone()
    }

    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        if self.shared.purpose != Purpose::Seal {
            return Err(self.shared.refuse(self.shared.purpose, "seal data keys"));
        }
        let info = self.shared.info_for_encrypt().await?;
        if info.derived && aad.is_empty() {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "upstream transit key {:?} is derived and needs a context, but the AAD is empty",
                    self.shared.name
                ),
            ));
        }
        let item = EncryptItem {
            plaintext: SecretBytes::copy_from(secret),
            aad: aad.to_vec(),
            derived: info.derived,
        };
        match &self.encrypts {
            Some(batcher) => batcher.submit(item).await,
            None => one(self.shared.clone().encrypt_many(vec![item]).await),
        }
    }

    /// A sealing key: the same upstream key, since transit keeps its older
    /// versions and each ciphertext names its own, so every broker version
    /// after a rotation is served by the upstream key. A key pair: the
    /// upstream version with the broker version's number.
    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        let pinned = (self.shared.purpose != Purpose::Seal).then_some(version);
        let key = self.sibling(pinned).ok()?;
        Some(NewVersion {
            backend: Arc::new(key),
            settings: pinned_settings(pinned),
        })
    }

    /// Rotates the upstream transit key (`POST <mount>/keys/<name>/rotate`)
    /// and serves the new broker version from it. A sealing key's upstream
    /// versions are not pinned: every broker version decrypts any upstream
    /// version, and the broker's own `min_decryption_version` retires old
    /// blobs. A key pair's new broker version pins the new upstream version.
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let before = self.shared.refresh_info().await?;
        let what = self.shared.what("rotate");
        let path = format!("{}/rotate", self.shared.keys_path);
        let reply = self
            .shared
            .client
            .execute(Call {
                method: Method::POST,
                path: &path,
                what: &what,
                body: None,
            })
            .await?;
        if !reply.status.is_success() {
            return Err(self
                .shared
                .client
                .status_error(reply.status, &reply.errors(), &what, false));
        }
        let after = self.shared.refresh_info().await?;
        tracing::info!(
            address = %self.shared.client.address,
            key = %self.shared.name,
            broker_version = version,
            from = before.latest_version,
            to = after.latest_version,
            "rotated the upstream transit key"
        );
        let pinned = (self.shared.purpose != Purpose::Seal).then_some(after.latest_version);
        let key = self
            .sibling(pinned)
            .map_err(|e| BackendError::internal(e.to_string()))?;
        Ok(NewVersion {
            backend: Arc::new(key),
            settings: pinned_settings(pinned),
        })
    }

    fn algorithm(&self) -> Option<KeyAlgorithm> {
        self.shared.purpose.algorithm()
    }

    fn oaep_hash(&self) -> Option<OaepHash> {
        matches!(self.shared.purpose, Purpose::Oaep(_)).then_some(signing::TRANSIT_OAEP_HASH)
    }

    async fn public_key(&self) -> Result<PublicKey, BackendError> {
        match self.shared.purpose.algorithm() {
            Some(algorithm) => self.shared.public_key_upstream(self.version, algorithm).await,
            None => Err(self.shared.refuse(Purpose::Seal, "have a public key")),
        }
    }

    /// `POST <mount>/sign/<key>` at the pinned version: a digest with
    /// `prehashed`, a message for the upstream to hash once.
    async fn sign(&self, scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        match self.shared.purpose {
            Purpose::Sign(_) => self.shared.sign_upstream(self.version, scheme, input).await,
            other => Err(self.shared.refuse(other, "sign")),
        }
    }

    /// `POST <mount>/verify/<key>`, for messages and digests alike.
    async fn verify(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        match self.shared.purpose {
            Purpose::Sign(_) => {
                self.shared
                    .verify_upstream(self.version, scheme, input, signature)
                    .await
            }
            other => Err(self.shared.refuse(other, "verify signatures")),
        }
    }

    async fn encrypt_asymmetric(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        match self.shared.purpose {
            Purpose::Oaep(_) => self.shared.oaep_encrypt(self.version, plaintext).await,
            other => Err(self.shared.refuse(other, "do RSA-OAEP")),
        }
    }

    async fn decrypt_asymmetric(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        match self.shared.purpose {
            Purpose::Oaep(_) => self.shared.oaep_decrypt(self.version, ciphertext).await,
            other => Err(self.shared.refuse(other, "do RSA-OAEP")),
        }
    }

    /// A sealing key: a seal and open of the probe. A key pair: the
    /// upstream key's type checked against the config, then a signature
    /// made and checked, or an RSA-OAEP round trip, at the pinned version.
    async fn health(&self) -> Result<(), BackendError> {
        let probe = b"sealbroker health probe";
        match self.shared.purpose {
            Purpose::Seal => {
                let sealed = self.encrypt(probe, b"health").await?;
                let opened = self.decrypt(&sealed, b"health").await?;
                if opened.expose() != probe {
                    return Err(BackendError::internal(
                        "health probe round trip returned different bytes",
                    ));
                }
            }
            Purpose::Sign(algorithm) => {
                self.shared.refresh_info().await?;
                let scheme = algorithm.default_scheme();
                let input = SignInput::Message(probe);
                let signature = self.shared.sign_upstream(self.version, scheme, input).await?;
                if !self
                    .shared
                    .verify_upstream(self.version, scheme, input, &signature)
                    .await?
                {
                    return Err(BackendError::internal(
                        "health probe: the upstream does not verify its own signature",
                    ));
                }
            }
            Purpose::Oaep(_) => {
                self.shared.refresh_info().await?;
                let block = self.shared.oaep_encrypt(self.version, probe).await?;
                let opened = self.shared.oaep_decrypt(self.version, &block).await?;
                if opened.expose() != probe {
                    return Err(BackendError::internal(
                        "health probe RSA-OAEP round trip returned different bytes",
                    ));
                }
            }
        }
        Ok(())
    }

    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        if self.shared.purpose != Purpose::Seal {
            return Err(self.shared.refuse(self.shared.purpose, "open data keys"));
        }
        if sealed.mechanism != Mechanism::ServiceDefined {
            return Err(BackendError::not_authentic(format!(
                "the data key was sealed with {:?}, not by a transit backend",
                sealed.mechanism
            )));
        }
        let ciphertext = String::from_utf8(sealed.ciphertext.clone())
            .ok()
            .filter(|c| ciphertext_version(c).is_some())
            .ok_or_else(|| {
                BackendError::not_authentic(
                    "the sealed data key is not an upstream `vault:vN:...` ciphertext",
                )
            })?;
        let item = DecryptItem {
            ciphertext,
            aad: aad.to_vec(),
            context: sealed.metadata.get(METADATA_CONTEXT).is_some_and(|v| v == "aad"),
        };
        match &self.decrypts {
            Some(batcher) => batcher.submit(item).await,
            None => one(self.shared.clone().decrypt_many(vec![item]).await),
        }
    }
}

fn one<T>(mut results: Vec<Result<T, BackendError>>) -> Result<T, BackendError> {
    results
        .pop()
        .unwrap_or_else(|| Err(BackendError::internal("no result for a single request")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_ciphertext_versions() {
        assert_eq!(ciphertext_version("vault:v1:abc"), Some(1));
        assert_eq!(ciphertext_version("vault:v42:abc="), Some(42));
        assert_eq!(ciphertext_version("vault:v0:abc"), None);
        assert_eq!(ciphertext_version("vault:1:abc"), None);
        assert_eq!(ciphertext_version("vault:v1:"), None);
        assert_eq!(ciphertext_version("vault:v1:a:b"), None);
        assert_eq!(ciphertext_version("other:v1:abc"), None);
    }

    #[test]
    fn segments_reject_traversal_and_separators() {
        assert!(valid_segment("transit"));
        assert!(valid_segment("my-key_1.v2"));
        for bad in ["", ".", "..", "a/b", "a b", "k?x", "k%2f"] {
            assert!(!valid_segment(bad), "{bad:?} accepted");
        }
    }
}
