//! KMIP backend: an AES-256 key on a KMIP server (KMIP 1.2 to 1.4 and 2.0)
//! seals and opens data keys with the server's Encrypt and Decrypt.
//!
//! No permissively licensed async Rust KMIP client with Encrypt and Decrypt
//! exists, so this crate carries a small one:
//!
//! - [`ttlv`]: the wire encoding, from the shared `sealbroker-ttlv` crate
//!   (bounded, and fuzzed in `crates/sealbroker-ttlv/fuzz`);
//! - `protocol`: the request and response shapes of the seven operations we
//!   use (DiscoverVersions, Locate, GetAttributes, Encrypt, Decrypt, and
//!   Create and Activate for provisioning), as pure functions;
//! - [`pool`]: mutual TLS (rustls with the ring provider), a connection pool,
//!   per-request timeouts and reconnection with backoff.
//!
//! The server does all the cryptography; this crate only frames messages and
//! draws IVs. With `encrypt_alg = "AES_GCM"` the 12-byte IV is ours, the AAD
//! travels as Authenticated Encryption Additional Data and the 16-byte tag is
//! appended to the ciphertext. With `"AES_CBC_PAD"` (for servers without
//! usable GCM, such as PyKMIP) the server cannot bind the AAD; the key name and
//! the caller's AAD are still bound by the broker's payload AEAD, which a
//! wrong or tampered data key cannot open.
//!
//! Config keys follow OpenBao's `kmip` seal where they overlap (`endpoint`,
//! `kms_key_id`, `client_cert`, `client_key`, `ca_cert`, `server_name`,
//! `timeout`, `encrypt_alg`).

mod error;
mod kind;
mod pair;
pub mod pool;
mod protocol;
pub use sealbroker_ttlv as ttlv;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ring::rand::{SecureRandom, SystemRandom};
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, KeygenError, Mechanism, NewVersion, Sealed, SecretBytes,
};
use serde::Deserialize;

use crate::error::CallError;
use crate::protocol::{CBC_IV_LEN, Cipher, GCM_IV_LEN, GCM_TAG_LEN, KeyAttributes, KeyState, Operation};

pub use crate::pair::KmipKeyPair;
pub use crate::pool::KmipPool;
pub use crate::protocol::ProtocolVersion;

/// Key in [`Sealed::metadata`] naming the KMIP object that sealed the data key.
pub const METADATA_UNIQUE_ID: &str = "kmip_unique_identifier";

fn default_timeout_secs() -> u64 {
    10
}

fn default_max_connections() -> usize {
    4
}

/// `[backends.NAME]` with `type = "kmip"`: one KMIP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `host:port` of the server, e.g. `kms.example:5696`.
    pub endpoint: String,
    /// PEM client certificate; KMIP servers require the clientAuth extended key usage.
    pub client_cert: PathBuf,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: PathBuf,
    /// PEM CA certificate(s) that issued the server's certificate.
    pub ca_cert: PathBuf,
    /// Name to verify the server certificate against; defaults to the endpoint's host.
    pub server_name: Option<String>,
    /// Bound on each request, connecting included. OpenBao calls it `timeout`.
    #[serde(default = "default_timeout_secs", alias = "timeout")]
    pub timeout_secs: u64,
    /// Upper bound on connections (and so on requests in flight) to the server.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl BackendConfig {
    /// Checks the fields and builds the connection pool (reads the
    /// certificate files, does not connect).
    pub fn pool(&self) -> Result<KmipPool, ConfigError> {
        KmipPool::new(self)
    }
}

/// Encryption algorithm names, as OpenBao's kmip seal spells them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum EncryptAlg {
    /// AES-256-GCM (KMIP 1.4 or later).
    #[default]
    #[serde(rename = "AES_GCM")]
    AesGcm,
    /// AES-256-CBC with PKCS#5 padding; the server cannot bind AAD.
    #[serde(rename = "AES_CBC_PAD")]
    AesCbcPad,
}

impl EncryptAlg {
    fn name(self) -> &'static str {
        match self {
            EncryptAlg::AesGcm => "AES_GCM",
            EncryptAlg::AesCbcPad => "AES_CBC_PAD",
        }
    }

    fn cipher(self) -> Cipher {
        match self {
            EncryptAlg::AesGcm => Cipher::AesGcm,
            EncryptAlg::AesCbcPad => Cipher::AesCbcPad,
        }
    }

    fn mechanism(self) -> Mechanism {
        match self {
            EncryptAlg::AesGcm => Mechanism::Aes256Gcm,
            EncryptAlg::AesCbcPad => Mechanism::AesCbcPad,
        }
    }
}

/// Per-key settings under `[keys.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's KMIP Unique Identifier.
    pub kms_key_id: Option<String>,
    /// The key's KMIP Name, found with Locate; it must name exactly one object.
    pub key_name: Option<String>,
    #[serde(default)]
    pub encrypt_alg: EncryptAlg,
    /// A key pair (External Keys): `rsa-2048`, `rsa-3072` or `rsa-4096`.
    /// `key_name` (or `kms_key_id`) then names the Private Key.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Read only to refuse it plainly: KMIP key pairs sign only (no RSA-OAEP).
    #[serde(default)]
    pub mechanism: Option<String>,
    /// Read only to refuse it plainly, as `mechanism`.
    #[serde(default)]
    pub rsa_oaep_hash: Option<String>,
    /// A key pair's Public Key by Unique Identifier; needed with `kms_key_id`.
    #[serde(default)]
    pub public_key_id: Option<String>,
    /// A key pair's Public Key by Name; `<key_name>/public` by default.
    #[serde(default)]
    pub public_key_name: Option<String>,
}

/// Config errors name fields relative to this backend's tables; the broker places them under
/// `backends.NAME` or `keys.NAME`.
pub use sealbroker_core::ConfigError;

pub use kind::{KIND, KmipKind};

/// How the config names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySelector {
    Id(String),
    Name(String),
}

impl KeySelector {
    fn from_config(config: &KeyConfig) -> Result<Self, ConfigError> {
        let non_empty = |field: &'static str, value: &str| {
            if value.is_empty() {
                Err(ConfigError::new(field, "is empty"))
            } else {
                Ok(value.to_owned())
            }
        };
        match (&config.kms_key_id, &config.key_name) {
            (Some(id), None) => Ok(KeySelector::Id(non_empty("kms_key_id", id)?)),
            (None, Some(name)) => Ok(KeySelector::Name(non_empty("key_name", name)?)),
            (Some(_), Some(_)) => Err(ConfigError::new(
                "key_name",
                "set either `kms_key_id` or `key_name`, not both",
            )),
            (None, None) => Err(ConfigError::new(
                "kms_key_id",
                "set `kms_key_id` (the Unique Identifier) or `key_name`",
            )),
        }
    }
}

impl KeySelector {
    /// The Unique Identifier this selects: the id, or the one object Locate
    /// finds by the name. `which` follows the name in errors (" (the
    /// private key)"); `remedy` says how to select by id instead.
    async fn unique_id(&self, pool: &KmipPool, which: &str, remedy: &str) -> Result<String, BackendError> {
        let name = match self {
            KeySelector::Id(id) => return Ok(id.clone()),
            KeySelector::Name(name) => name,
        };
        match pool.locate(name).await?.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(BackendError::new(
                BackendErrorKind::KeyNotFound,
                format!(
                    "KMIP server {} has no object named {name:?}{which}",
                    pool.endpoint()
                ),
            )),
            many => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "{} objects on KMIP server {} are named {name:?}{which} (ids {}); {remedy}",
                    many.len(),
                    pool.endpoint(),
                    many.join(", ")
                ),
            )),
        }
    }

    /// The name of version `version` of what this selects: `<name>-v<N>`
    /// (the name without any `-v<N>` it already ends in), or
    /// `sealbroker-<id>-v<N>` for a key selected by id.
    fn version_name(&self, version: u32) -> String {
        let base = match self {
            KeySelector::Name(name) => match name.rsplit_once("-v") {
                Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base.to_owned(),
                _ => name.clone(),
            },
            KeySelector::Id(id) => format!("sealbroker-{id}"),
        };
        format!("{base}-v{version}")
    }
}

impl std::fmt::Display for KeySelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySelector::Id(id) => write!(f, "id={id}"),
            KeySelector::Name(name) => write!(f, "name={name}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Encrypt,
    Decrypt,
}

/// Why a key the server holds cannot serve `purpose`, if it cannot.
fn unusable(attributes: &KeyAttributes, purpose: Purpose) -> Option<String> {
    if let Some(object_type) = attributes.object_type
        && object_type != protocol::enums::OBJECT_TYPE_SYMMETRIC_KEY
    {
        return Some(format!("is not a symmetric key (Object Type {object_type})"));
    }
    if let Some(algorithm) = attributes.algorithm
        && algorithm != protocol::enums::ALGORITHM_AES
    {
        return Some(format!("is not an AES key (Cryptographic Algorithm {algorithm})"));
    }
    if let Some(length) = attributes.length
        && length != 256
    {
        return Some(format!("is a {length}-bit key; sealbroker needs AES-256"));
    }
    if let Some(mask) = attributes.usage_mask {
        let needed = protocol::enums::USAGE_ENCRYPT | protocol::enums::USAGE_DECRYPT;
        if mask & needed != needed {
            return Some(format!(
                "has Cryptographic Usage Mask 0x{mask:X}, which lacks Encrypt and/or Decrypt"
            ));
        }
    }
    match (attributes.state, purpose) {
        (None | Some(KeyState::Active), _) => None,
        // A deactivated key may still open what it sealed (KMIP "process stop").
        (Some(KeyState::Deactivated), Purpose::Decrypt) => None,
        (Some(state), Purpose::Encrypt) => {
            Some(format!("is in state {state}; only an Active key can encrypt"))
        }
        (Some(state), Purpose::Decrypt) => Some(format!(
            "is in state {state}; only an Active or Deactivated key can decrypt"
        )),
    }
}

/// An AES-256 key on a KMIP server.
pub struct KmipKey {
    pool: KmipPool,
    selector: KeySelector,
    alg: EncryptAlg,
    identity: String,
    rng: SystemRandom,
    /// The Unique Identifier once it is known to be Active and usable.
    usable: Mutex<Option<String>>,
}

impl std::fmt::Debug for KmipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipKey")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl KmipKey {
    /// A key on `pool`. Nothing touches the server until the first
    /// operation, so the broker can start while the KMIP server is away.
    pub fn new(pool: KmipPool, config: &KeyConfig) -> Result<Self, ConfigError> {
        let selector = KeySelector::from_config(config)?;
        let identity = format!(
            "kmip:{}:{selector}:{}",
            pool.endpoint(),
            config.encrypt_alg.name()
        );
        Ok(KmipKey {
            pool,
            selector,
            alg: config.encrypt_alg,
            identity,
            rng: SystemRandom::new(),
            usable: Mutex::new(None),
        })
    }

    /// The pool this key runs on.
    pub fn pool(&self) -> &KmipPool {
        &self.pool
    }

    /// The name of this key's version `version`: see `derive_version`.
    fn version_name(&self, version: u32) -> String {
        self.selector.version_name(version)
    }

    fn describe(&self, unique_id: Option<&str>) -> String {
        match (&self.selector, unique_id) {
            (KeySelector::Id(id), _) => format!("key id {id:?}"),
            (KeySelector::Name(name), Some(id)) => format!("key named {name:?} (id {id:?})"),
            (KeySelector::Name(name), None) => format!("key named {name:?}"),
        }
    }

    fn cached(&self) -> Option<String> {
        self.usable.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_cached(&self, unique_id: Option<String>) {
        *self.usable.lock().unwrap_or_else(|p| p.into_inner()) = unique_id;
    }

    /// The Unique Identifier of the configured key, checked with
    /// GetAttributes to be usable for `purpose`. Cached once it is Active.
    async fn usable_key(&self, purpose: Purpose) -> Result<String, BackendError> {
        if let Some(unique_id) = self.cached() {
            return Ok(unique_id);
        }
        let unique_id = self.selector.unique_id(&self.pool, "", "set kms_key_id").await?;
        let attributes = self.pool.get_attributes(&unique_id).await.map_err(|e| {
            e.into_backend(
                Operation::GetAttributes,
                &self.describe(Some(&unique_id)),
                self.pool.endpoint(),
            )
        })?;
        if let Some(why) = unusable(&attributes, purpose) {
            return Err(BackendError::new(
                BackendErrorKind::KeyNotFound,
                format!(
                    "{} on KMIP server {} {why}",
                    self.describe(Some(&unique_id)),
                    self.pool.endpoint()
                ),
            ));
        }
        if attributes.state.is_none_or(|s| s == KeyState::Active) {
            self.set_cached(Some(unique_id.clone()));
        }
        Ok(unique_id)
    }

    /// Turns a failed Encrypt or Decrypt into an error. When the failure
    /// hints that the key changed (gone, refused, wrong state) the cached
    /// check is dropped and redone, so the error says what is wrong with the key.
    async fn operation_error(
        &self,
        error: CallError,
        operation: Operation,
        unique_id: &str,
        purpose: Purpose,
    ) -> BackendError {
        let key_changed = error.says_key_changed();
        let error = error.into_backend(operation, &self.describe(Some(unique_id)), self.pool.endpoint());
        if key_changed {
            self.set_cached(None);
            if let Err(diagnosis) = self.usable_key(purpose).await
                && diagnosis.kind == BackendErrorKind::KeyNotFound
            {
                return diagnosis;
            }
        }
        error
    }

    fn random_iv(&self, len: usize) -> Result<Vec<u8>, BackendError> {
        let mut iv = vec![0u8; len];
        self.rng
            .fill(&mut iv)
            .map_err(|_| BackendError::internal("system RNG failed"))?;
        Ok(iv)
    }
}

fn bad_answer(endpoint: &str, what: String) -> BackendError {
    BackendError::internal(format!("KMIP server {endpoint} answered Encrypt with {what}"))
}

#[async_trait]
impl Backend for KmipKey {
    fn kind(&self) -> &'static str {
        "kmip"
    }

    fn key_identity(&self) -> String {
        self.identity.clone()
    }

    /// The key named `<name>-v<version>` on the same server (the name
    /// without any `-v<N>` it already ends in; `sealbroker-<id>` for a key
    /// selected by id). Not looked up here: the broker adds it only once a
    /// blob sealed under it opens.
    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        let name = self.version_name(version);
        let config = KeyConfig {
            kms_key_id: None,
            key_name: Some(name.clone()),
            encrypt_alg: self.alg,
            ..Default::default()
        };
        let key = KmipKey::new(self.pool.clone(), &config).ok()?;
        Some(NewVersion {
            backend: Arc::new(key),
            settings: BTreeMap::from([
                ("key_name".to_owned(), name),
                ("kms_key_id".to_owned(), String::new()),
            ]),
        })
    }

    /// Creates and activates a new AES-256 key named as
    /// [`derive_version`](Self::derive_version) names it, or uses the one
    /// object of that name when it already exists (another replica, or a
    /// retried job, made it), and selects it by name.
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let name = self.version_name(version);
        let existing = self.pool.locate(&name).await?;
        match existing.as_slice() {
            [] => {
                create_key_on(&self.pool, &name).await?;
            }
            [unique_id] => {
                tracing::info!(endpoint = %self.pool.endpoint(), name, %unique_id, "the key version exists already; using it");
            }
            many => {
                return Err(BackendError::new(
                    BackendErrorKind::InvalidInput,
                    format!(
                        "KMIP server {} has {} objects named {name:?} (ids {}): remove all but one",
                        self.pool.endpoint(),
                        many.len(),
                        many.join(", ")
                    ),
                ));
            }
        }
        self.derive_version(version)
            .ok_or_else(|| BackendError::internal(format!("cannot select the KMIP key {name:?}")))
    }

    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        let unique_id = self.usable_key(Purpose::Encrypt).await?;
        let cipher = self.alg.cipher();
        let iv_len = match cipher {
            Cipher::AesGcm => GCM_IV_LEN,
            Cipher::AesCbcPad => CBC_IV_LEN,
        };
        let iv = self.random_iv(iv_len)?;
        let encrypted = match self.pool.encrypt(&unique_id, cipher, secret, &iv, aad).await {
            Ok(encrypted) => encrypted,
            Err(e) => {
                return Err(self
                    .operation_error(e, Operation::Encrypt, &unique_id, Purpose::Encrypt)
                    .await);
            }
        };
        let endpoint = self.pool.endpoint();
        // The server returns an IV only when it chose one itself.
        let iv = encrypted.iv.unwrap_or(iv);
        if iv.len() != iv_len {
            return Err(bad_answer(
                endpoint,
                format!("a {}-byte IV; expected {iv_len}", iv.len()),
            ));
        }
        let ciphertext = match cipher {
            Cipher::AesGcm => {
                let Some(tag) = encrypted.auth_tag else {
                    return Err(bad_answer(
                        endpoint,
                        "no Authenticated Encryption Tag for AES-GCM; this server's GCM is not usable, \
                         set encrypt_alg = \"AES_CBC_PAD\""
                            .into(),
                    ));
                };
                if tag.len() != GCM_TAG_LEN {
                    return Err(bad_answer(
                        endpoint,
                        format!("a {}-byte GCM tag; expected {GCM_TAG_LEN}", tag.len()),
                    ));
                }
                if encrypted.data.len() != secret.len() {
                    return Err(bad_answer(
                        endpoint,
                        format!(
                            "{} bytes of GCM ciphertext for {} bytes of plaintext",
                            encrypted.data.len(),
                            secret.len()
                        ),
                    ));
                }
                let mut ciphertext = encrypted.data;
                ciphertext.extend_from_slice(&tag);
                ciphertext
            }
            Cipher::AesCbcPad => {
                let len = encrypted.data.len();
                if !len.is_multiple_of(16) || len <= secret.len() {
                    return Err(bad_answer(
                        endpoint,
                        format!(
                            "{len} bytes of CBC ciphertext for {} bytes of plaintext",
                            secret.len()
                        ),
                    ));
                }
                encrypted.data
            }
        };
        Ok(Sealed {
            mechanism: self.alg.mechanism(),
            iv,
            ciphertext,
            metadata: BTreeMap::from([(METADATA_UNIQUE_ID.to_owned(), unique_id)]),
            ..Default::default()
        })
    }

    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        if sealed.mechanism != self.alg.mechanism() {
            return Err(BackendError::not_authentic(format!(
                "the data key was sealed with {:?}, this key uses {}",
                sealed.mechanism,
                self.alg.name()
            )));
        }
        let cipher = self.alg.cipher();
        let (data, auth_tag) = match cipher {
            Cipher::AesGcm => {
                if sealed.iv.len() != GCM_IV_LEN {
                    return Err(BackendError::not_authentic(format!(
                        "the data key IV is {} bytes, not {GCM_IV_LEN}",
                        sealed.iv.len()
                    )));
                }
                let Some(split) = sealed.ciphertext.len().checked_sub(GCM_TAG_LEN) else {
                    return Err(BackendError::not_authentic(
                        "the sealed data key is shorter than a GCM tag",
                    ));
                };
                sealed.ciphertext.split_at(split)
            }
            Cipher::AesCbcPad => {
                if sealed.iv.len() != CBC_IV_LEN {
                    return Err(BackendError::not_authentic(format!(
                        "the data key IV is {} bytes, not {CBC_IV_LEN}",
                        sealed.iv.len()
                    )));
                }
                let len = sealed.ciphertext.len();
                if len == 0 || !len.is_multiple_of(16) {
                    return Err(BackendError::not_authentic(format!(
                        "the sealed data key is {len} bytes, not a positive multiple of the AES block"
                    )));
                }
                (sealed.ciphertext.as_slice(), &[][..])
            }
        };
        let unique_id = self.usable_key(Purpose::Decrypt).await?;
        if let Some(sealed_by) = sealed.metadata.get(METADATA_UNIQUE_ID)
            && *sealed_by != unique_id
        {
            return Err(BackendError::not_authentic(format!(
                "the data key was sealed by KMIP object {sealed_by:?}, but {} is now object {unique_id:?}",
                self.describe(None)
            )));
        }
        match self
            .pool
            .decrypt(&unique_id, cipher, data, &sealed.iv, aad, auth_tag)
            .await
        {
            Ok(mut plaintext) => Ok(SecretBytes::new(std::mem::take(&mut *plaintext))),
            Err(e) => Err(self
                .operation_error(e, Operation::Decrypt, &unique_id, Purpose::Decrypt)
                .await),
        }
    }
}

/// The backend key `config` describes on `pool`: an AES-256 key, or (with
/// `algorithm`) an RSA key pair. Contacts nothing.
pub fn key_on(pool: KmipPool, config: &KeyConfig) -> Result<Arc<dyn Backend>, ConfigError> {
    match pair::algorithm_from_config(config)? {
        None => Ok(Arc::new(KmipKey::new(pool, config)?)),
        Some(algorithm) => {
            let private = KeySelector::from_config(config)?;
            Ok(Arc::new(KmipKeyPair::new(pool, config, private, algorithm)?))
        }
    }
}

/// `sealbroker keygen`: creates and activates what `config` describes, by
/// its `key_name`: an AES-256 key, or an RSA key pair whose public key is
/// `<key_name>/public`. Says what it made. Refuses a name already taken.
pub async fn keygen_on(pool: &KmipPool, config: &KeyConfig) -> Result<String, KeygenError> {
    let algorithm = pair::algorithm_from_config(config)?;
    let name = config.key_name.clone().ok_or_else(|| {
        ConfigError::new(
            "key_name",
            "keygen creates a KMIP key by Name; set key_name (not kms_key_id)",
        )
    })?;
    let Some(algorithm) = algorithm else {
        let id = create_key_on(pool, &name).await?;
        return Ok(format!("AES-256 KMIP key {name:?} (unique identifier {id})"));
    };
    if config.public_key_id.is_some() || config.public_key_name.is_some() {
        return Err(ConfigError::new(
            "public_key_name",
            "keygen names the public key `<key_name>/public` itself; leave public_key_id and public_key_name out",
        )
        .into());
    }
    let (private_id, public_id) = pair::create_pair_on(pool, &name, algorithm, false).await?;
    Ok(format!(
        "{algorithm} KMIP key pair {name:?} (private key {private_id}, public key {:?} {public_id})",
        pair::public_name(&name)
    ))
}

/// Creates an AES-256 key named `name` for Encrypt and Decrypt on the
/// server, activates it, and returns its Unique Identifier. For development
/// and tests; production keys come from the KMS's own tooling. Refuses when
/// an object with that name exists.
pub async fn create_key(backend: &BackendConfig, name: &str) -> Result<String, BackendError> {
    let pool = backend
        .pool()
        .map_err(|e| BackendError::new(BackendErrorKind::InvalidInput, e.to_string()))?;
    create_key_on(&pool, name).await
}

async fn create_key_on(pool: &KmipPool, name: &str) -> Result<String, BackendError> {
    if name.is_empty() {
        return Err(BackendError::new(
            BackendErrorKind::InvalidInput,
            "the key name is empty",
        ));
    }
    let endpoint = pool.endpoint().to_owned();
    let existing = pool.locate(name).await?;
    if !existing.is_empty() {
        return Err(BackendError::new(
            BackendErrorKind::InvalidInput,
            format!(
                "KMIP server {endpoint} already has an object named {name:?} (ids {})",
                existing.join(", ")
            ),
        ));
    }
    let subject = format!("a key named {name:?}");
    let unique_id = pool
        .create_aes256(name)
        .await
        .map_err(|e| e.into_backend(Operation::Create, &subject, &endpoint))?;
    activate_if_pre_active(pool, &unique_id).await?;
    tracing::info!(%endpoint, name, %unique_id, "created an AES-256 key on the KMIP server");
    Ok(unique_id)
}

/// Activates an object just created, when the server made it Pre-Active.
async fn activate_if_pre_active(pool: &KmipPool, unique_id: &str) -> Result<(), BackendError> {
    let endpoint = pool.endpoint();
    let subject = format!("key {unique_id:?}");
    let attributes = pool
        .get_attributes(unique_id)
        .await
        .map_err(|e| e.into_backend(Operation::GetAttributes, &subject, endpoint))?;
    if attributes.state == Some(KeyState::PreActive) {
        pool.activate(unique_id)
            .await
            .map_err(|e| e.into_backend(Operation::Activate, &subject, endpoint))?;
    }
    Ok(())
}

/// Entry points for the fuzz target (`fuzz/`); not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::protocol::{self, Operation, ProtocolVersion};
    use crate::ttlv::Item;

    /// Reads `message` as the answer to each operation we send, and its
    /// payload with every payload parser. Must never panic.
    pub fn parse_any_response(message: Item) {
        for operation in [
            Operation::DiscoverVersions,
            Operation::Locate,
            Operation::GetAttributes,
            Operation::Create,
            Operation::Activate,
            Operation::Encrypt,
            Operation::Decrypt,
            Operation::CreateKeyPair,
            Operation::Get,
            Operation::Sign,
        ] {
            if let Ok(mut payload) = protocol::parse_response(message.clone(), operation) {
                let _ = protocol::parse_create_key_pair(&payload);
                let _ = protocol::parse_get_public_key(&payload);
                let _ = protocol::parse_sign(&mut payload);
                let _ = protocol::parse_discover_versions(&payload, &ProtocolVersion::SUPPORTED);
                let _ = protocol::parse_locate(&payload);
                let _ = protocol::parse_get_attributes(&payload);
                let _ = protocol::parse_unique_identifier(&payload);
                let _ = protocol::parse_encrypt(payload.clone());
                let _ = protocol::parse_decrypt(payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(state: KeyState) -> KeyAttributes {
        KeyAttributes {
            object_type: Some(2),
            state: Some(state),
            algorithm: Some(3),
            length: Some(256),
            usage_mask: Some(12),
        }
    }

    #[test]
    fn key_config_parses_openbao_names() {
        let key: KeyConfig = toml::from_str(r#"kms_key_id = "c1afd090""#).unwrap();
        assert_eq!(key.kms_key_id.as_deref(), Some("c1afd090"));
        assert_eq!(key.encrypt_alg, EncryptAlg::AesGcm);
        let key: KeyConfig = toml::from_str("key_name = \"seal\"\nencrypt_alg = \"AES_CBC_PAD\"").unwrap();
        assert_eq!(key.encrypt_alg, EncryptAlg::AesCbcPad);
        let err = toml::from_str::<KeyConfig>(r#"encrypt_alg = "RSA_OAEP_SHA256""#).unwrap_err();
        assert!(err.to_string().contains("AES_GCM"), "{err}");
        let err = toml::from_str::<KeyConfig>(r#"key_label = "x""#).unwrap_err();
        assert!(err.to_string().contains("unknown field `key_label`"), "{err}");
    }

    #[test]
    fn key_config_needs_exactly_one_selector() {
        let config = |id: Option<&str>, name: Option<&str>| KeyConfig {
            kms_key_id: id.map(Into::into),
            key_name: name.map(Into::into),
            encrypt_alg: EncryptAlg::AesGcm,
            ..Default::default()
        };
        assert_eq!(
            KeySelector::from_config(&config(Some("1"), None)).unwrap(),
            KeySelector::Id("1".into())
        );
        assert_eq!(
            KeySelector::from_config(&config(None, None)).unwrap_err().path,
            "kms_key_id"
        );
        assert_eq!(
            KeySelector::from_config(&config(Some("1"), Some("n")))
                .unwrap_err()
                .path,
            "key_name"
        );
        let empty = KeySelector::from_config(&config(Some(""), None)).unwrap_err();
        assert_eq!(
            (empty.path.as_str(), empty.message.as_str()),
            ("kms_key_id", "is empty")
        );
    }

    #[test]
    fn backend_config_defaults_and_openbao_timeout_alias() {
        let config: BackendConfig = toml::from_str(
            r#"
            endpoint = "kms:5696"
            client_cert = "c.pem"
            client_key = "k.pem"
            ca_cert = "ca.pem"
            "#,
        )
        .unwrap();
        assert_eq!((config.timeout_secs, config.max_connections), (10, 4));
        assert_eq!(config.server_name, None);
        let config: BackendConfig = toml::from_str(
            "endpoint = \"kms:5696\"\nclient_cert = \"c\"\nclient_key = \"k\"\nca_cert = \"a\"\ntimeout = 3",
        )
        .unwrap();
        assert_eq!(config.timeout_secs, 3);
        let err = toml::from_str::<BackendConfig>(
            "endpoint = \"kms:5696\"\nclient_cert = \"c\"\nclient_key = \"k\"\nca_cert = \"a\"\ntls12_ciphers = \"x\"",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `tls12_ciphers`"), "{err}");
    }

    #[test]
    fn pool_errors_name_the_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = BackendConfig {
            endpoint: "127.0.0.1:5696".into(),
            client_cert: dir.path().join("missing.pem"),
            client_key: dir.path().join("missing.key"),
            ca_cert: dir.path().join("ca.pem"),
            server_name: None,
            timeout_secs: 10,
            max_connections: 4,
        };
        let err = config.pool().unwrap_err();
        assert_eq!(err.path, "ca_cert");
        assert!(err.message.contains("ca.pem"), "{err}");

        std::fs::write(dir.path().join("ca.pem"), "not pem").unwrap();
        let err = config.pool().unwrap_err();
        assert_eq!(err.path, "ca_cert");
        assert!(err.message.contains("no PEM certificate"), "{err}");

        let zero = BackendConfig {
            max_connections: 0,
            ..config.clone()
        };
        assert_eq!(zero.pool().unwrap_err().path, "max_connections");
        let bad_name = BackendConfig {
            server_name: Some("not a name!".into()),
            ..config
        };
        assert_eq!(bad_name.pool().unwrap_err().path, "server_name");
    }

    #[test]
    fn active_aes_256_key_is_usable_both_ways() {
        assert_eq!(unusable(&attributes(KeyState::Active), Purpose::Encrypt), None);
        assert_eq!(unusable(&attributes(KeyState::Active), Purpose::Decrypt), None);
        assert_eq!(unusable(&KeyAttributes::default(), Purpose::Encrypt), None);
    }

    #[test]
    fn key_state_decides_what_a_key_may_do() {
        let why = unusable(&attributes(KeyState::PreActive), Purpose::Encrypt).unwrap();
        assert_eq!(why, "is in state Pre-Active; only an Active key can encrypt");
        assert!(unusable(&attributes(KeyState::Deactivated), Purpose::Encrypt).is_some());
        assert_eq!(
            unusable(&attributes(KeyState::Deactivated), Purpose::Decrypt),
            None
        );
        assert!(unusable(&attributes(KeyState::Compromised), Purpose::Decrypt).is_some());
        assert!(unusable(&attributes(KeyState::Destroyed), Purpose::Decrypt).is_some());
    }

    #[test]
    fn wrong_kind_of_key_is_named() {
        let mut rsa = attributes(KeyState::Active);
        rsa.algorithm = Some(4);
        assert!(
            unusable(&rsa, Purpose::Encrypt)
                .unwrap()
                .contains("not an AES key")
        );
        let mut short = attributes(KeyState::Active);
        short.length = Some(128);
        assert!(unusable(&short, Purpose::Encrypt).unwrap().contains("128-bit"));
        let mut sign_only = attributes(KeyState::Active);
        sign_only.usage_mask = Some(0x04);
        assert!(
            unusable(&sign_only, Purpose::Decrypt)
                .unwrap()
                .contains("Usage Mask 0x4")
        );
        let mut secret_data = attributes(KeyState::Active);
        secret_data.object_type = Some(7);
        assert!(
            unusable(&secret_data, Purpose::Encrypt)
                .unwrap()
                .contains("not a symmetric key")
        );
    }
}
