//! PKCS#11 backend: AES-GCM or RSA-OAEP sealing keys, and RSA, ECDSA or
//! Ed25519 signing key pairs ([`signing`]), on an HSM token, through a
//! pooled, self-healing session layer ([`pool`]).
//!
//! Config keys follow OpenBao's `pkcs11` seal (`lib`, `slot`, `token_label`,
//! `pin`, `key_label`, `key_id`, `mechanism`, `rsa_oaep_hash`) so an existing
//! stanza can be copied over.

pub mod helper;
mod kind;
pub mod pool;
pub mod signing;
mod stock;
pub mod supervisor;
pub mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism as CkMechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ring::rand::{SecureRandom, SystemRandom};
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, KeyAlgorithm, Mechanism, NewVersion, PublicKey, Sealed,
    SecretBytes, SignInput, SignScheme,
};
use secrecy::SecretString;
use serde::Deserialize;
use zeroize::Zeroizing;

pub use kind::{KIND, Pkcs11Kind};
pub use pool::{Dispatch, OpError, PinSource, TokenPool, TokenSelector};
pub use supervisor::{HelperClient, HelperCommand, Isolation};

const GCM_IV_LEN: usize = 12;
const GCM_TAG_BITS: u64 = 128;

fn default_max_sessions() -> usize {
    8
}

/// `[backends.NAME]` with `type = "pkcs11"`: one token on one module.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub lib: PathBuf,
    /// Token label. Preferred over `slot`: slot ids can change when tokens are initialized.
    pub token_label: Option<String>,
    /// Slot id, when the token has no unique label.
    pub slot: Option<u64>,
    /// User PIN inline. Prefer `pin_file`.
    pub pin: Option<SecretString>,
    /// File holding the user PIN (trailing newline ignored); re-read at each login.
    pub pin_file: Option<PathBuf>,
    /// Upper bound on concurrent sessions (keep it below the token's limit).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Where device calls run: `"pool"` (default), `"inline"` or `"direct"`.
    /// See [`Dispatch`].
    /// In-process isolation only.
    #[serde(default)]
    pub dispatch: Dispatch,
    /// Where the module runs: `"process"` (default: a supervised helper
    /// process, so a module crash fails calls, not the broker) or `"in-process"`.
    pub isolation: Option<Isolation>,
    /// Environment variables the helper inherits from the broker (names);
    /// nothing else reaches the module's process.
    #[serde(default = "default_helper_env")]
    pub helper_env: Vec<String>,
    /// Run the helper under this uid (needs the broker to have CAP_SETUID).
    pub helper_uid: Option<u32>,
    /// Run the helper under this gid (needs CAP_SETGID).
    pub helper_gid: Option<u32>,
    /// Seconds an operation may take in the helper before it counts as hung:
    /// the helper is killed and restarted, failing the calls in flight.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_helper_env() -> Vec<String> {
    vec!["SOFTHSM2_CONF".to_owned()]
}

fn default_timeout_secs() -> u64 {
    30
}

/// Mechanism names as OpenBao's pkcs11 seal spells them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MechanismName {
    #[default]
    #[serde(rename = "AES_GCM", alias = "CKM_AES_GCM")]
    AesGcm,
    #[serde(rename = "RSA_PKCS_OAEP", alias = "CKM_RSA_PKCS_OAEP")]
    RsaPkcsOaep,
}

/// Hash for RSA-OAEP (and its MGF1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OaepHash {
    Sha1,
    Sha224,
    #[default]
    Sha256,
    Sha384,
    Sha512,
}

impl OaepHash {
    fn name(self) -> &'static str {
        match self {
            OaepHash::Sha1 => "sha1",
            OaepHash::Sha224 => "sha224",
            OaepHash::Sha256 => "sha256",
            OaepHash::Sha384 => "sha384",
            OaepHash::Sha512 => "sha512",
        }
    }
    fn params(self) -> (MechanismType, PkcsMgfType) {
        match self {
            OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            OaepHash::Sha224 => (MechanismType::SHA224, PkcsMgfType::MGF1_SHA224),
            OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
            OaepHash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
            OaepHash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
        }
    }
}

/// Per-key settings under `[keys.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// `CKA_LABEL` of the key.
    pub key_label: Option<String>,
    /// `CKA_ID` of the key, hex (an optional `0x` prefix is accepted).
    pub key_id: Option<String>,
    #[serde(default)]
    pub mechanism: MechanismName,
    #[serde(default)]
    pub rsa_oaep_hash: OaepHash,
    /// Makes this a signing key pair (External Keys): `rsa-2048`,
    /// `rsa-3072`, `rsa-4096`, `ecdsa-p256`, `ecdsa-p384` or `ed25519`.
    /// Without it the key is a sealing key of `mechanism`.
    #[serde(default)]
    pub algorithm: Option<String>,
}

/// Config errors name fields relative to this backend's tables; the broker places them under
/// `backends.NAME` or `keys.NAME`.
pub use sealbroker_core::ConfigError;

impl BackendConfig {
    /// Which token the config selects.
    pub fn token_selector(&self) -> Result<TokenSelector, ConfigError> {
        match (&self.token_label, self.slot) {
            (Some(label), None) => Ok(TokenSelector::Label(label.clone())),
            (None, Some(slot)) => Ok(TokenSelector::Slot(slot)),
            (Some(_), Some(_)) => Err(ConfigError::new(
                "slot",
                "set either `token_label` or `slot`, not both",
            )),
            (None, None) => Err(ConfigError::new(
                "token_label",
                "set `token_label` (preferred) or `slot`",
            )),
        }
    }

    /// Where the config says the PIN comes from.
    pub fn pin_source(&self) -> Result<PinSource, ConfigError> {
        match (&self.pin, &self.pin_file) {
            (Some(pin), None) => Ok(PinSource::Inline(pin.clone())),
            (None, Some(path)) => Ok(PinSource::File(path.clone())),
            (Some(_), Some(_)) => Err(ConfigError::new(
                "pin_file",
                "set either `pin` or `pin_file`, not both",
            )),
            (None, None) => Err(ConfigError::new(
                "pin_file",
                "set `pin_file` (preferred) or `pin`",
            )),
        }
    }

    /// Checks the combination of fields and builds the token pool.
    pub fn pool(&self) -> Result<TokenPool, ConfigError> {
        if self.max_sessions == 0 {
            return Err(ConfigError::new("max_sessions", "must be at least 1"));
        }
        Ok(TokenPool::new(
            self.lib.clone(),
            self.token_selector()?,
            self.pin_source()?,
            self.max_sessions,
        )
        .with_dispatch(self.dispatch))
    }
}

impl BackendConfig {
    /// The isolation this config asks for, after the default.
    pub fn isolation(&self) -> Isolation {
        self.isolation.unwrap_or_default()
    }

    /// Checks the isolation settings and builds the engine every key of
    /// this backend shares. `backend` names the backend in errors
    /// (`backends.NAME`).
    pub fn engine(&self, backend: &str) -> Result<Engine, ConfigError> {
        let pool = self.pool()?;
        if self.timeout_secs == 0 {
            return Err(ConfigError::new("timeout_secs", "must be at least 1"));
        }
        for (i, name) in self.helper_env.iter().enumerate() {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(ConfigError::new(
                    format!("helper_env[{i}]"),
                    format!("{name:?} is not an environment variable name"),
                ));
            }
        }
        match self.isolation() {
            Isolation::InProcess => {
                for (field, set) in [
                    ("helper_uid", self.helper_uid.is_some()),
                    ("helper_gid", self.helper_gid.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::new(field, "applies only to isolation = \"process\""));
                    }
                }
                Ok(Engine::InProcess(pool))
            }
            Isolation::Process => {
                if self.dispatch != Dispatch::Pool {
                    if self.isolation.is_some() {
                        return Err(ConfigError::new(
                            "dispatch",
                            "applies only to isolation = \"in-process\"; the helper process runs each call on its own thread",
                        ));
                    }
                    // Accepted for configs written before process isolation
                    // became the default, but it does nothing: say so.
                    tracing::warn!(
                        backend,
                        dispatch = ?self.dispatch,
                        "dispatch has no effect under the default isolation = \"process\"; \
                         set isolation = \"in-process\" to run calls in the broker"
                    );
                }
                let (lib, token, pin) = pool.origin();
                Ok(Engine::Process(Arc::new(HelperClient::new(
                    supervisor::HelperSettings {
                        backend: backend.to_owned(),
                        command: supervisor::helper_command(),
                        lib,
                        token,
                        pin,
                        max_sessions: self.max_sessions,
                        env: self.helper_env.clone(),
                        uid: self.helper_uid,
                        gid: self.helper_gid,
                        timeout: std::time::Duration::from_secs(self.timeout_secs),
                    },
                ))))
            }
        }
    }
}

/// Which object a key config names, validated.
#[derive(Debug, Clone)]
struct KeySelector {
    label: Option<String>,
    id: Option<Vec<u8>>,
    mechanism: MechanismName,
    oaep_hash: OaepHash,
    /// Set for a signing key pair.
    algorithm: Option<KeyAlgorithm>,
}

impl KeySelector {
    fn from_config(config: &KeyConfig) -> Result<Self, ConfigError> {
        let id = match &config.key_id {
            Some(hex_id) => {
                let digits = hex_id.trim_start_matches("0x");
                Some(hex::decode(digits).map_err(|_| {
                    ConfigError::new(
                        "key_id",
                        format!("{hex_id:?} is not hex (CKA_ID is given in hex, e.g. \"0x01\")"),
                    )
                })?)
            }
            None => None,
        };
        if config.key_label.is_none() && id.is_none() {
            return Err(ConfigError::new("key_label", "set `key_label` and/or `key_id`"));
        }
        let algorithm = match &config.algorithm {
            None => None,
            Some(text) => {
                let algorithm = KeyAlgorithm::parse(text).ok_or_else(|| {
                    ConfigError::new(
                        "algorithm",
                        format!(
                            "{text:?} is not an algorithm; use one of {}",
                            KeyAlgorithm::names()
                        ),
                    )
                })?;
                match config.mechanism {
                    MechanismName::AesGcm => {}
                    // An RSA key pair for encryption (External Keys' RSA-OAEP).
                    MechanismName::RsaPkcsOaep if algorithm.rsa_bits().is_some() => {}
                    MechanismName::RsaPkcsOaep => {
                        return Err(ConfigError::new(
                            "mechanism",
                            format!("RSA_PKCS_OAEP needs an RSA key; algorithm = \"{algorithm}\" signs only"),
                        ));
                    }
                }
                Some(algorithm)
            }
        };
        Ok(KeySelector {
            label: config.key_label.clone(),
            id,
            mechanism: config.mechanism,
            oaep_hash: config.rsa_oaep_hash,
            algorithm,
        })
    }

    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut template = vec![Attribute::Class(class)];
        if let Some(label) = &self.label {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            template.push(Attribute::Id(id.clone()));
        }
        template
    }

    /// The selector as the helper protocol carries it.
    fn spec(&self) -> wire::KeySpec {
        wire::KeySpec {
            label: self.label.clone(),
            id: self.id.clone(),
            mechanism: {
                let index = |algorithm| {
                    KeyAlgorithm::ALL
                        .iter()
                        .position(|a| *a == algorithm)
                        .unwrap_or(0) as u8
                };
                match (self.algorithm, self.mechanism) {
                    (Some(algorithm), MechanismName::AesGcm) => wire::SIGNING_MECHANISM + index(algorithm),
                    (Some(algorithm), MechanismName::RsaPkcsOaep) => {
                        wire::OAEP_PAIR_MECHANISM + index(algorithm)
                    }
                    (None, MechanismName::AesGcm) => 0,
                    (None, MechanismName::RsaPkcsOaep) => 1,
                }
            },
            oaep_hash: match self.oaep_hash {
                OaepHash::Sha1 => 0,
                OaepHash::Sha224 => 1,
                OaepHash::Sha256 => 2,
                OaepHash::Sha384 => 3,
                OaepHash::Sha512 => 4,
            },
        }
    }

    /// The selector a helper request names (the decoder bounds both codes).
    fn from_spec(spec: &wire::KeySpec) -> Self {
        KeySelector {
            label: spec.label.clone(),
            id: spec.id.clone(),
            mechanism: if spec.mechanism == 1 || spec.mechanism >= wire::OAEP_PAIR_MECHANISM {
                MechanismName::RsaPkcsOaep
            } else {
                MechanismName::AesGcm
            },
            oaep_hash: match spec.oaep_hash {
                0 => OaepHash::Sha1,
                1 => OaepHash::Sha224,
                3 => OaepHash::Sha384,
                4 => OaepHash::Sha512,
                _ => OaepHash::Sha256,
            },
            algorithm: [wire::OAEP_PAIR_MECHANISM, wire::SIGNING_MECHANISM]
                .into_iter()
                .find_map(|base| spec.mechanism.checked_sub(base))
                .and_then(|i| KeyAlgorithm::ALL.get(usize::from(i)).copied()),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(label) = &self.label {
            parts.push(format!("label {label:?}"));
        }
        if let Some(id) = &self.id {
            parts.push(format!("id 0x{}", hex::encode(id)));
        }
        parts.join(", ")
    }

    /// Object classes used to encrypt (or verify) and to decrypt (or sign).
    fn classes(&self) -> (ObjectClass, ObjectClass) {
        if self.algorithm.is_some() {
            return (ObjectClass::PUBLIC_KEY, ObjectClass::PRIVATE_KEY);
        }
        match self.mechanism {
            MechanismName::AesGcm => (ObjectClass::SECRET_KEY, ObjectClass::SECRET_KEY),
            MechanismName::RsaPkcsOaep => (ObjectClass::PUBLIC_KEY, ObjectClass::PRIVATE_KEY),
        }
    }
}

#[derive(Default)]
struct HandleCache {
    generation: u64,
    encrypt: Option<ObjectHandle>,
    decrypt: Option<ObjectHandle>,
}

struct KeyState {
    selector: KeySelector,
    token: String,
    cache: Mutex<HandleCache>,
    /// Set once the key has been found: if it later vanishes, the token
    /// was probably replaced or restored underneath a stale module.
    ever_found: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy)]
enum Purpose {
    Encrypt,
    Decrypt,
}

impl KeyState {
    /// Runs `f` with the key's handle, finding it on a cache miss and once
    /// more if the token says the cached handle is no longer valid.
    fn with_handle<T>(
        &self,
        session: &Session,
        generation: u64,
        purpose: Purpose,
        what: &'static str,
        f: impl Fn(ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, OpError> {
        let cached = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation != generation {
                *cache = HandleCache {
                    generation,
                    ..Default::default()
                };
            }
            match purpose {
                Purpose::Encrypt => cache.encrypt,
                Purpose::Decrypt => cache.decrypt,
            }
        };
        let handle = match cached {
            Some(handle) => handle,
            None => self.find(session, generation, purpose)?,
        };
        match f(handle) {
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)) => {
                let handle = self.find(session, generation, purpose)?;
                f(handle).map_err(|e| OpError::Device(e, what))
            }
            other => other.map_err(|e| OpError::Device(e, what)),
        }
    }

    fn find(&self, session: &Session, generation: u64, purpose: Purpose) -> Result<ObjectHandle, OpError> {
        let (enc_class, dec_class) = self.selector.classes();
        let class = match purpose {
            Purpose::Encrypt => enc_class,
            Purpose::Decrypt => dec_class,
        };
        let found = session
            .find_objects(&self.selector.template(class))
            .map_err(|e| OpError::Device(e, "C_FindObjects"))?;
        let handle = match found.as_slice() {
            [handle] => *handle,
            [] if self.ever_found.load(std::sync::atomic::Ordering::Relaxed) => {
                // Treat as device damage: the pool re-initializes the module
                // (rate-limited) and retries, so a restored token is seen.
                return Err(OpError::Device(
                    CkError::Pkcs11(RvError::TokenNotPresent, cryptoki::context::Function::FindObjects),
                    "the key vanished from the token (C_FindObjects)",
                ));
            }
            [] => {
                return Err(OpError::Backend(BackendError::new(
                    BackendErrorKind::KeyNotFound,
                    format!("no {class} with {} on {}", self.selector.describe(), self.token),
                )));
            }
            many => {
                return Err(OpError::Backend(BackendError::new(
                    BackendErrorKind::InvalidInput,
                    format!(
                        "{} objects of class {class} match {} on {}; give both key_label and key_id",
                        many.len(),
                        self.selector.describe(),
                        self.token
                    ),
                )));
            }
        };
        self.ever_found.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation == generation {
            match purpose {
                Purpose::Encrypt => cache.encrypt = Some(handle),
                Purpose::Decrypt => cache.decrypt = Some(handle),
            }
        }
        Ok(handle)
    }
}

/// Where a key's device calls run.
#[derive(Clone)]
pub enum Engine {
    /// In the broker's process, on its own session pool.
    InProcess(TokenPool),
    /// In the backend's supervised helper process ([`supervisor`]).
    Process(Arc<supervisor::HelperClient>),
}

/// A key on a PKCS#11 token.
pub struct Pkcs11Key {
    engine: Engine,
    /// Where new versions are created, and how they are named.
    lib: PathBuf,
    token: TokenSelector,
    pin: PinSource,
    key: Arc<KeyState>,
    identity: String,
    rng: SystemRandom,
}

impl Pkcs11Key {
    /// The settings of version `version`: `<label>-v<version>`, selected by
    /// label alone, with this key's mechanism.
    fn version_config(&self, version: u32) -> KeyConfig {
        let selector = &self.key.selector;
        let base = selector
            .label
            .as_deref()
            .map(base_label)
            .unwrap_or("sealbroker-key");
        KeyConfig {
            key_label: Some(format!("{base}-v{version}")),
            key_id: None,
            mechanism: selector.mechanism,
            rsa_oaep_hash: selector.oaep_hash,
            algorithm: selector.algorithm.map(|a| a.as_str().to_owned()),
        }
    }

    fn version_key(&self, version: u32) -> Result<NewVersion, BackendError> {
        let config = self.version_config(version);
        let key = Pkcs11Key::with_engine(self.engine.clone(), &config)
            .map_err(|e| BackendError::new(BackendErrorKind::InvalidInput, e.to_string()))?;
        Ok(NewVersion {
            backend: Arc::new(key),
            settings: [
                ("key_label".to_owned(), config.key_label.unwrap_or_default()),
                ("key_id".to_owned(), String::new()),
            ]
            .into(),
        })
    }

    /// The in-process pool this key runs on; `None` under process isolation.
    pub fn pool(&self) -> Option<&TokenPool> {
        match &self.engine {
            Engine::InProcess(pool) => Some(pool),
            Engine::Process(_) => None,
        }
    }

    /// A key on `pool`, in the broker's process. Nothing touches the token
    /// until the first operation, so the broker can start while the HSM is
    /// briefly away.
    pub fn new(pool: TokenPool, config: &KeyConfig) -> Result<Self, ConfigError> {
        Self::with_engine(Engine::InProcess(pool), config)
    }

    /// A key served by `engine`; like [`Pkcs11Key::new`], lazy.
    pub fn with_engine(engine: Engine, config: &KeyConfig) -> Result<Self, ConfigError> {
        let selector = KeySelector::from_config(config)?;
        let (lib, token_selector, pin, token) = match &engine {
            Engine::InProcess(pool) => {
                let (lib, token, pin) = pool.origin();
                (lib, token, pin, pool.describe())
            }
            Engine::Process(helper) => {
                let (lib, token, pin) = helper.origin();
                let described = format!("{token} in {}", lib.display());
                (lib, token, pin, described)
            }
        };
        let identity = match selector.algorithm {
            Some(algorithm) => format!("pkcs11:{token}:{}:{algorithm}", selector.describe()),
            None => format!("pkcs11:{token}:{}:{:?}", selector.describe(), selector.mechanism),
        };
        Ok(Pkcs11Key {
            engine,
            lib,
            token: token_selector,
            pin,
            key: Arc::new(KeyState {
                selector,
                token,
                cache: Mutex::new(HandleCache::default()),
                ever_found: Default::default(),
            }),
            identity,
            rng: SystemRandom::new(),
        })
    }

    /// Runs one device call where the engine says.
    async fn execute(&self, call: Call) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        match &self.engine {
            Engine::InProcess(pool) => {
                let decrypting = matches!(call, Call::Decrypt { .. });
                let key = self.key.clone();
                pool.run(move |session, generation| key.perform(session, generation, &call))
                    .await
                    .map_err(|e| op_error(e, decrypting))
            }
            Engine::Process(helper) => helper.call(self.key.selector.spec(), call).await,
        }
    }
}

/// One device call on a key: what the broker asks of the token, in process
/// or through the helper.
pub enum Call {
    /// `iv` is 12 bytes for AES-GCM and empty for RSA-OAEP (so is `aad`).
    Encrypt {
        iv: Vec<u8>,
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    },
    Decrypt {
        iv: Vec<u8>,
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    },
    /// Signing keys: sign `data` (a digest, or for Ed25519 the message).
    Sign {
        scheme: SignScheme,
        data: Zeroizing<Vec<u8>>,
    },
    /// Signing keys: check `signature`; answers `[1]` or `[0]`.
    Verify {
        scheme: SignScheme,
        data: Vec<u8>,
        signature: Vec<u8>,
    },
    /// Signing keys: the public key ([`signing::encode_public`]).
    PublicKey,
}

impl KeyState {
    /// Runs `call` on `session` with this key's mechanism.
    fn perform(
        &self,
        session: &Session,
        generation: u64,
        call: &Call,
    ) -> Result<Zeroizing<Vec<u8>>, OpError> {
        let gcm_iv = |iv: &[u8]| -> Result<[u8; GCM_IV_LEN], OpError> {
            iv.try_into()
                .map_err(|_| OpError::Backend(BackendError::not_authentic("the data key IV is not 12 bytes")))
        };
        let oaep = || {
            let (hash_alg, mgf) = self.selector.oaep_hash.params();
            PkcsOaepParams::new(hash_alg, mgf, PkcsOaepSource::empty())
        };
        match (self.selector.algorithm, self.selector.mechanism) {
            (Some(algorithm), MechanismName::AesGcm) => {
                return self.perform_signing(session, generation, algorithm, call);
            }
            (Some(algorithm), MechanismName::RsaPkcsOaep) if matches!(call, Call::PublicKey) => {
                return self.perform_signing(session, generation, algorithm, call);
            }
            _ => {}
        }
        let not_signing = || {
            Err(OpError::Backend(BackendError::new(
                BackendErrorKind::InvalidInput,
                "this PKCS#11 key encrypts (AES_GCM or RSA_PKCS_OAEP); it does not sign",
            )))
        };
        match (self.selector.mechanism, call) {
            (_, Call::Sign { .. } | Call::Verify { .. } | Call::PublicKey) => not_signing(),
            (MechanismName::AesGcm, Call::Encrypt { iv, aad, plaintext }) => {
                let iv = gcm_iv(iv)?;
                self.with_handle(
                    session,
                    generation,
                    Purpose::Encrypt,
                    "C_Encrypt(AES_GCM)",
                    |handle| {
                        let mut iv = iv;
                        let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
                        session
                            .encrypt(&CkMechanism::AesGcm(params), handle, plaintext)
                            .map(Zeroizing::new)
                    },
                )
            }
            (MechanismName::AesGcm, Call::Decrypt { iv, aad, ciphertext }) => {
                let iv = gcm_iv(iv)?;
                self.with_handle(
                    session,
                    generation,
                    Purpose::Decrypt,
                    "C_Decrypt(AES_GCM)",
                    |handle| {
                        let mut iv = iv;
                        let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
                        session
                            .decrypt(&CkMechanism::AesGcm(params), handle, ciphertext)
                            .map(Zeroizing::new)
                    },
                )
            }
            (MechanismName::RsaPkcsOaep, Call::Encrypt { plaintext, .. }) => self.with_handle(
                session,
                generation,
                Purpose::Encrypt,
                "C_Encrypt(RSA_PKCS_OAEP)",
                |handle| {
                    session
                        .encrypt(&CkMechanism::RsaPkcsOaep(oaep()), handle, plaintext)
                        .map(Zeroizing::new)
                },
            ),
            (MechanismName::RsaPkcsOaep, Call::Decrypt { ciphertext, .. }) => self.with_handle(
                session,
                generation,
                Purpose::Decrypt,
                "C_Decrypt(RSA_PKCS_OAEP)",
                |handle| {
                    session
                        .decrypt(&CkMechanism::RsaPkcsOaep(oaep()), handle, ciphertext)
                        .map(Zeroizing::new)
                },
            ),
        }
    }
}

impl KeyState {
    /// Runs `call` on a signing key pair.
    fn perform_signing(
        &self,
        session: &Session,
        generation: u64,
        algorithm: KeyAlgorithm,
        call: &Call,
    ) -> Result<Zeroizing<Vec<u8>>, OpError> {
        match call {
            Call::Sign { scheme, data } => {
                let signed = self.with_handle(session, generation, Purpose::Decrypt, "C_Sign", |handle| {
                    signing::sign(session, handle, algorithm, *scheme, data)
                })?;
                signed.map(Zeroizing::new).map_err(OpError::Backend)
            }
            Call::Verify {
                scheme,
                data,
                signature,
            } => {
                let valid =
                    self.with_handle(session, generation, Purpose::Encrypt, "C_Verify", |handle| {
                        signing::verify(session, handle, algorithm, *scheme, data, signature)
                    })?;
                Ok(Zeroizing::new(vec![u8::from(valid)]))
            }
            Call::PublicKey => {
                let handle = self.with_handle(session, generation, Purpose::Encrypt, "C_FindObjects", Ok)?;
                let public = signing::public_key(session, handle, algorithm, &self.selector.describe())?;
                Ok(Zeroizing::new(signing::encode_public(&public)))
            }
            Call::Encrypt { .. } | Call::Decrypt { .. } => Err(OpError::Backend(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!("this PKCS#11 key is a {algorithm} signing key; it does not seal"),
            ))),
        }
    }
}

fn op_error(error: OpError, decrypting: bool) -> BackendError {
    match error {
        OpError::Backend(e) => e,
        OpError::Device(e, what) => {
            let kind = match &e {
                // SoftHSM answers a bad GCM tag with CKR_GENERAL_ERROR.
                CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::GeneralError
                    | RvError::FunctionFailed,
                    _,
                ) if decrypting => BackendErrorKind::NotAuthentic,
                CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLocked | RvError::UserNotLoggedIn, _) => {
                    BackendErrorKind::PermissionDenied
                }
                CkError::Pkcs11(
                    RvError::KeyFunctionNotPermitted
                    | RvError::KeyTypeInconsistent
                    | RvError::MechanismInvalid
                    | RvError::MechanismParamInvalid
                    | RvError::ArgumentsBad,
                    _,
                ) => BackendErrorKind::InvalidInput,
                _ if pool::damage_of(&e) != pool::Damage::None => BackendErrorKind::Unavailable,
                _ => BackendErrorKind::Internal,
            };
            let hint = match &e {
                CkError::Pkcs11(RvError::ArgumentsBad | RvError::MechanismParamInvalid, _)
                    if what.contains("OAEP") =>
                {
                    " (the token rejected the OAEP parameters; SoftHSM 2.6 supports only rsa_oaep_hash = \"sha1\")"
                }
                _ => "",
            };
            BackendError::new(kind, format!("{what}: {}{hint}", pool::describe(&e)))
        }
    }
}

/// `unseal-v3` -> `unseal`: the label versions derive from.
fn base_label(label: &str) -> &str {
    match label.rsplit_once("-v") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => label,
    }
}

#[async_trait]
impl Backend for Pkcs11Key {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    /// `<label>-v<version>` on the same token (not looked up here: the
    /// broker adds it only once a blob sealed under it opens).
    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        self.version_key(version).ok()
    }

    /// Creates `<label>-v<version>` (non-extractable, like keygen) on the
    /// same token, or uses it when it already exists there.
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let created = self.version_key(version)?;
        let config = self.version_config(version);
        let selection = KeySelector::from_config(&config)
            .map_err(|e| BackendError::new(BackendErrorKind::InvalidInput, e.to_string()))?;
        match &self.engine {
            Engine::InProcess(_) => {
                create_key(
                    self.lib.clone(),
                    self.token.clone(),
                    self.pin.clone(),
                    selection,
                    Existing::Use,
                )
                .await?;
            }
            Engine::Process(helper) => {
                helper.create_key(selection.spec(), true).await?;
            }
        }
        Ok(created)
    }

    fn key_identity(&self) -> String {
        self.identity.clone()
    }

    fn helper_restarts(&self) -> u64 {
        match &self.engine {
            Engine::InProcess(_) => 0,
            Engine::Process(helper) => helper.restarts(),
        }
    }

    fn algorithm(&self) -> Option<KeyAlgorithm> {
        self.key.selector.algorithm
    }

    fn oaep_hash(&self) -> Option<sealbroker_core::OaepHash> {
        let selector = &self.key.selector;
        match (selector.algorithm, selector.mechanism) {
            (Some(_), MechanismName::RsaPkcsOaep) => Some(match selector.oaep_hash {
                OaepHash::Sha1 => sealbroker_core::OaepHash::Sha1,
                OaepHash::Sha224 => sealbroker_core::OaepHash::Sha224,
                OaepHash::Sha256 => sealbroker_core::OaepHash::Sha256,
                OaepHash::Sha384 => sealbroker_core::OaepHash::Sha384,
                OaepHash::Sha512 => sealbroker_core::OaepHash::Sha512,
            }),
            _ => None,
        }
    }

    async fn public_key(&self) -> Result<PublicKey, BackendError> {
        if self.key.selector.algorithm.is_none() {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                "this PKCS#11 key is a sealing key; it has no public key to give",
            ));
        }
        let encoded = self.execute(Call::PublicKey).await?;
        signing::decode_public(&encoded)
    }

    /// Hands the token a digest (hashing a message once, with ring), or for
    /// Ed25519 the message.
    async fn sign(&self, scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        let data = match scheme.hash() {
            Some(hash) => input.digest(hash),
            None => match input {
                SignInput::Message(m) => m.to_vec(),
                SignInput::Digest(_) => {
                    return Err(BackendError::new(
                        BackendErrorKind::InvalidInput,
                        "Ed25519 signs messages",
                    ));
                }
            },
        };
        let signature = self
            .execute(Call::Sign {
                scheme,
                data: Zeroizing::new(data),
            })
            .await?;
        Ok(signature.to_vec())
    }

    async fn verify(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        let data = match scheme.hash() {
            Some(hash) => input.digest(hash),
            None => match input {
                SignInput::Message(m) => m.to_vec(),
                SignInput::Digest(_) => {
                    return Err(BackendError::new(
                        BackendErrorKind::InvalidInput,
                        "Ed25519 signs messages",
                    ));
                }
            },
        };
        let verdict = self
            .execute(Call::Verify {
                scheme,
                data,
                signature: signature.to_vec(),
            })
            .await?;
        Ok(verdict.first() == Some(&1))
    }

    async fn encrypt_asymmetric(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        match (self.key.selector.algorithm, self.key.selector.mechanism) {
            (Some(_), MechanismName::RsaPkcsOaep) => {
                let call = Call::Encrypt {
                    iv: Vec::new(),
                    aad: Vec::new(),
                    plaintext: Zeroizing::new(plaintext.to_vec()),
                };
                Ok(self.execute(call).await?.to_vec())
            }
            _ => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                "this PKCS#11 key is not an RSA encryption key pair (algorithm = \"rsa-N\" with mechanism = \"RSA_PKCS_OAEP\")",
            )),
        }
    }

    async fn decrypt_asymmetric(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        match (self.key.selector.algorithm, self.key.selector.mechanism) {
            (Some(_), MechanismName::RsaPkcsOaep) => {
                let call = Call::Decrypt {
                    iv: Vec::new(),
                    aad: Vec::new(),
                    ciphertext: ciphertext.to_vec(),
                };
                let mut plaintext = self.execute(call).await?;
                Ok(SecretBytes::new(std::mem::take(&mut *plaintext)))
            }
            _ => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                "this PKCS#11 key is not an RSA encryption key pair (algorithm = \"rsa-N\" with mechanism = \"RSA_PKCS_OAEP\")",
            )),
        }
    }

    /// Sealing keys: a seal and open. Signing keys: a signature made and
    /// checked on the token. RSA encryption pairs: an OAEP round trip.
    async fn health(&self) -> Result<(), BackendError> {
        if let (Some(_), MechanismName::RsaPkcsOaep) =
            (self.key.selector.algorithm, self.key.selector.mechanism)
        {
            let probe = b"sealbroker health probe";
            let ciphertext = self.encrypt_asymmetric(probe).await?;
            let opened = self.decrypt_asymmetric(&ciphertext).await?;
            return if opened.expose() == probe {
                Ok(())
            } else {
                Err(BackendError::internal(
                    "the token's OAEP probe returned different bytes",
                ))
            };
        }
        let Some(algorithm) = self.key.selector.algorithm else {
            let probe = b"sealbroker health probe";
            let sealed = self.encrypt(probe, b"health").await?;
            let opened = self.decrypt(&sealed, b"health").await?;
            return if opened.expose() == probe {
                Ok(())
            } else {
                Err(BackendError::internal(
                    "health probe round trip returned different bytes",
                ))
            };
        };
        let scheme = algorithm.default_scheme();
        let probe = SignInput::Message(b"sealbroker health probe");
        let signature = self.sign(scheme, probe).await?;
        match self.verify(scheme, probe, &signature).await? {
            true => Ok(()),
            false => Err(BackendError::internal(
                "the token's health probe signature did not verify",
            )),
        }
    }

    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        if let Some(algorithm) = self.key.selector.algorithm {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!("this PKCS#11 key is a {algorithm} signing key; it does not seal"),
            ));
        }
        let plaintext = Zeroizing::new(secret.to_vec());
        match self.key.selector.mechanism {
            MechanismName::AesGcm => {
                let mut iv = [0u8; GCM_IV_LEN];
                self.rng
                    .fill(&mut iv)
                    .map_err(|_| BackendError::internal("system RNG failed"))?;
                let call = Call::Encrypt {
                    iv: iv.to_vec(),
                    aad: aad.to_vec(),
                    plaintext,
                };
                let ciphertext = self.execute(call).await?;
                Ok(Sealed {
                    mechanism: Mechanism::Aes256Gcm,
                    iv: iv.to_vec(),
                    ciphertext: ciphertext.to_vec(),
                    ..Default::default()
                })
            }
            MechanismName::RsaPkcsOaep => {
                let call = Call::Encrypt {
                    iv: Vec::new(),
                    aad: Vec::new(),
                    plaintext,
                };
                let ciphertext = self.execute(call).await?;
                Ok(Sealed {
                    mechanism: Mechanism::RsaOaep,
                    ciphertext: ciphertext.to_vec(),
                    oaep_hash: self.key.selector.oaep_hash.name().to_owned(),
                    ..Default::default()
                })
            }
        }
    }

    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        if let Some(algorithm) = self.key.selector.algorithm {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!("this PKCS#11 key is a {algorithm} signing key; it does not seal"),
            ));
        }
        let call = match (self.key.selector.mechanism, sealed.mechanism) {
            (MechanismName::AesGcm, Mechanism::Aes256Gcm) => {
                if sealed.iv.len() != GCM_IV_LEN {
                    return Err(BackendError::not_authentic("the data key IV is not 12 bytes"));
                }
                Call::Decrypt {
                    iv: sealed.iv.clone(),
                    aad: aad.to_vec(),
                    ciphertext: sealed.ciphertext.clone(),
                }
            }
            (MechanismName::RsaPkcsOaep, Mechanism::RsaOaep) => {
                let hash = self.key.selector.oaep_hash;
                if sealed.oaep_hash != hash.name() {
                    return Err(BackendError::not_authentic(format!(
                        "the data key was sealed with OAEP/{}, this key uses OAEP/{}",
                        sealed.oaep_hash,
                        hash.name()
                    )));
                }
                Call::Decrypt {
                    iv: Vec::new(),
                    aad: Vec::new(),
                    ciphertext: sealed.ciphertext.clone(),
                }
            }
            (configured, found) => {
                return Err(BackendError::not_authentic(format!(
                    "the data key was sealed with {found:?}, this key uses {configured:?}"
                )));
            }
        };
        let mut plaintext = self.execute(call).await?;
        Ok(SecretBytes::new(std::mem::take(&mut *plaintext)))
    }
}

/// Creates a key for [`KeyConfig`] on the token: a non-extractable, sensitive
/// AES-256 secret key, or an RSA-3072 key pair whose private half is
/// non-extractable. Refuses when a matching key already exists. Returns a
/// description of what was created.
pub async fn generate_key(backend: &BackendConfig, key: &KeyConfig) -> Result<String, BackendError> {
    let config_err = |e: ConfigError| BackendError::new(BackendErrorKind::InvalidInput, e.to_string());
    let selector = KeySelector::from_config(key).map_err(config_err)?;
    let token = backend.token_selector().map_err(config_err)?;
    let pin = backend.pin_source().map_err(config_err)?;
    create_key(backend.lib.clone(), token, pin, selector, Existing::Refuse).await
}

/// What [`create_key`] does when a matching key already exists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// keygen: an operator asked for a new key, so an old one is an error.
    Refuse,
    /// Rotation: another replica or a retried job made it; use it.
    Use,
}

async fn create_key(
    lib: PathBuf,
    token: TokenSelector,
    pin: PinSource,
    selector: KeySelector,
    existing: Existing,
) -> Result<String, BackendError> {
    tokio::task::spawn_blocking(move || create_key_blocking(&lib, &token, &pin, &selector, existing))
        .await
        .map_err(|e| BackendError::internal(format!("PKCS#11 worker failed: {e}")))?
}

/// [`create_key`] on the calling thread (the helper's worker threads).
fn create_key_blocking(
    lib: &std::path::Path,
    token: &TokenSelector,
    pin: &PinSource,
    selector: &KeySelector,
    existing: Existing,
) -> Result<String, BackendError> {
    let label = selector.label.clone().unwrap_or_default().into_bytes();
    let id = selector.id.clone().unwrap_or_default();
    {
        let session = pool::open_rw_logged_in(lib, token, pin)?;
        let device = |what: &'static str| {
            move |e: CkError| BackendError::unavailable(format!("{what}: {}", pool::describe(&e)))
        };
        let (class, _) = selector.classes();
        if !session
            .find_objects(&selector.template(class))
            .map_err(device("C_FindObjects"))?
            .is_empty()
        {
            return match existing {
                Existing::Use => Ok(format!(
                    "the existing key with {} on {token}",
                    selector.describe()
                )),
                Existing::Refuse => Err(BackendError::new(
                    BackendErrorKind::InvalidInput,
                    format!("a key with {} already exists on {token}", selector.describe()),
                )),
            };
        }
        if let (Some(algorithm), MechanismName::AesGcm) = (selector.algorithm, selector.mechanism) {
            signing::generate(&session, algorithm, label, id).map_err(device("C_GenerateKeyPair"))?;
            return Ok(format!(
                "{algorithm} key pair with {} on {token} (private key sensitive, not extractable)",
                selector.describe()
            ));
        }
        match selector.mechanism {
            MechanismName::AesGcm => {
                let template = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(label),
                    Attribute::Id(id),
                ];
                session
                    .generate_key(&CkMechanism::AesKeyGen, &template)
                    .map_err(device("C_GenerateKey"))?;
                Ok(format!("AES-256 key with {} on {token}", selector.describe()))
            }
            MechanismName::RsaPkcsOaep => {
                let rsa_bits = selector
                    .algorithm
                    .and_then(KeyAlgorithm::rsa_bits)
                    .unwrap_or(3072);
                let public = [
                    Attribute::Token(true),
                    Attribute::Encrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Verify(false),
                    Attribute::ModulusBits(u64::from(rsa_bits).into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                    Attribute::Label(label.clone()),
                    Attribute::Id(id.clone()),
                ];
                let private = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Decrypt(true),
                    // C_Decrypt only: no C_UnwrapKey into the token either.
                    Attribute::Unwrap(false),
                    Attribute::Sign(false),
                    Attribute::Label(label),
                    Attribute::Id(id),
                ];
                session
                    .generate_key_pair(&CkMechanism::RsaPkcsKeyPairGen, &public, &private)
                    .map_err(device("C_GenerateKeyPair"))?;
                Ok(format!(
                    "RSA-{rsa_bits} key pair with {} on {token}",
                    selector.describe()
                ))
            }
        }
    }
}
