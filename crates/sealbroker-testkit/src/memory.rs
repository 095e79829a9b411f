//! A backend that keeps its keys in memory. The key bytes derive from the
//! key's settings, so two brokers built from the same config (replicas) open
//! each other's blobs, as two brokers on one HSM token would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sealbroker_core::{
    Backend, BackendError, BackendKind, ConfigError, Mechanism, NewVersion, OpenedBackend, Profile, Sealed,
    SecretBytes,
};

/// Counts calls in progress and the most seen at once.
#[derive(Debug, Default)]
pub struct Concurrency {
    now: AtomicUsize,
    peak: AtomicUsize,
    calls: AtomicUsize,
}

impl Concurrency {
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Encrypt and decrypt calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn enter(&self) -> CallGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        CallGuard(self)
    }
}

struct CallGuard<'a>(&'a Concurrency);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Behaviour shared by every key of one [`MemoryKind`] (or made by hand).
#[derive(Debug, Default)]
pub struct Knobs {
    /// How long each encrypt and decrypt takes.
    pub delay_ms: AtomicUsize,
    /// When set, every call fails as `Unavailable` (a device gone away).
    pub down: AtomicBool,
    /// Reported by `throttling_retries`.
    pub throttling_retries: AtomicUsize,
    pub concurrency: Concurrency,
}

/// An AES-256-GCM key in memory.
pub struct MemoryKey {
    identity: String,
    key: LessSafeKey,
    knobs: Arc<Knobs>,
}

impl MemoryKey {
    /// A key whose bytes derive from `identity`.
    pub fn new(identity: &str, knobs: Arc<Knobs>) -> Self {
        let bytes = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes.as_ref()).expect("32 bytes"));
        MemoryKey {
            identity: format!("memory:{identity}"),
            key,
            knobs,
        }
    }

    async fn call(&self) -> Result<CallGuard<'_>, BackendError> {
        let guard = self.knobs.concurrency.enter();
        let delay = self.knobs.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        if self.knobs.down.load(Ordering::SeqCst) {
            return Err(BackendError::unavailable(format!("{} is down", self.identity)));
        }
        Ok(guard)
    }
}

#[async_trait]
impl Backend for MemoryKey {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn key_identity(&self) -> String {
        self.identity.clone()
    }

    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        let _call = self.call().await?;
        let mut iv = [0u8; 12];
        SystemRandom::new()
            .fill(&mut iv)
            .map_err(|_| BackendError::internal("RNG failed"))?;
        let mut in_out = secret.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut in_out)
            .map_err(|_| BackendError::internal("seal failed"))?;
        Ok(Sealed {
            mechanism: Mechanism::Aes256Gcm,
            iv: iv.to_vec(),
            ciphertext: in_out,
            ..Default::default()
        })
    }

    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        let _call = self.call().await?;
        let iv: [u8; 12] = sealed
            .iv
            .as_slice()
            .try_into()
            .map_err(|_| BackendError::not_authentic("IV is not 12 bytes"))?;
        let mut in_out = sealed.ciphertext.clone();
        let len = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut in_out)
            .map_err(|_| BackendError::not_authentic("does not authenticate under this key"))?
            .len();
        in_out.truncate(len);
        Ok(SecretBytes::new(in_out))
    }

    /// `<identity>-v<version>`, recorded as the `label` setting. Every
    /// label "exists", as on a backend that keeps all its key generations.
    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        let base = self.identity.trim_start_matches("memory:");
        let label = format!("{}-v{version}", base.rsplit_once("-v").map_or(base, |(b, _)| b));
        Some(NewVersion {
            backend: Arc::new(MemoryKey::new(&label, self.knobs.clone())),
            settings: [("label".to_owned(), label)].into(),
        })
    }

    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        self.derive_version(version)
            .ok_or_else(|| BackendError::internal("memory keys always derive"))
    }

    fn throttling_retries(&self) -> u64 {
        self.knobs.throttling_retries.load(Ordering::SeqCst) as u64
    }
}

/// A backend kind whose keys are [`MemoryKey`]s. Key settings: an optional
/// `label` names the key (its bytes derive from it; default: the key's
/// config path); any other setting is accepted and ignored, so configs
/// written for other kinds parse too.
pub struct MemoryKind {
    name: &'static str,
    development_only: bool,
    knobs: Arc<Knobs>,
}

impl MemoryKind {
    /// A kind answering to `type = name`, for the life of the test process.
    pub fn leak(name: &'static str) -> &'static MemoryKind {
        Box::leak(Box::new(MemoryKind {
            name,
            development_only: false,
            knobs: Arc::default(),
        }))
    }

    /// Like [`leak`](Self::leak), refused under the Hardened profile.
    pub fn leak_development_only(name: &'static str) -> &'static MemoryKind {
        Box::leak(Box::new(MemoryKind {
            name,
            development_only: true,
            knobs: Arc::default(),
        }))
    }

    /// What every key of this kind shares.
    pub fn knobs(&self) -> &Arc<Knobs> {
        &self.knobs
    }
}

#[async_trait]
impl BackendKind for MemoryKind {
    fn name(&self) -> &'static str {
        self.name
    }

    fn development_only(&self) -> bool {
        self.development_only
    }

    async fn open(
        &self,
        _table: &toml::Table,
        _path: &str,
        _profile: Profile,
    ) -> Result<Arc<dyn OpenedBackend>, ConfigError> {
        Ok(Arc::new(MemoryBackend {
            knobs: self.knobs.clone(),
        }))
    }
}

struct MemoryBackend {
    knobs: Arc<Knobs>,
}

impl OpenedBackend for MemoryBackend {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let label = match settings.get("label") {
            None => path.to_owned(),
            Some(toml::Value::String(label)) => label.clone(),
            Some(_) => return Err(ConfigError::new(format!("{path}.label"), "must be a string")),
        };
        Ok(Arc::new(MemoryKey::new(&label, self.knobs.clone())))
    }
}
