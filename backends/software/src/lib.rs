//! A software AES-256-GCM key in a local file, for the Development profile
//! only: the key lives on the same disk as the broker, so it is no root of
//! trust. The server refuses it under the Hardened profile.

mod kind;
mod signing;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sealbroker_core::{Backend, BackendError, Mechanism, NewVersion, Sealed, SecretBytes};
use serde::Deserialize;
use zeroize::Zeroizing;

pub use kind::{KIND, SoftwareKind};
pub use signing::{SoftwareSigningKey, generate_pkcs8_file};

const KEY_LEN: usize = 32;
const IV_LEN: usize = 12;

/// `[backends.NAME]` with `type = "software"`: nothing to set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {}

/// Per-key settings under `[keys.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// File holding the key as 64 hex characters (an AES-256 key), or as hex
    /// PKCS#8 (a signing key, with `algorithm`). Must be mode 0600 or stricter.
    pub key_file: PathBuf,
    /// Create the file with a fresh random key when it does not exist.
    #[serde(default)]
    pub generate: bool,
    /// Makes this an asymmetric signing key: `ecdsa-p256`, `ecdsa-p384` or
    /// `ed25519`. Without it the key is an AES-256-GCM sealing key.
    #[serde(default)]
    pub algorithm: Option<String>,
}

impl KeyConfig {
    /// The signing algorithm, checked; `None` for a sealing key.
    pub fn signing_algorithm(&self) -> Result<Option<sealbroker_core::KeyAlgorithm>, String> {
        let Some(text) = &self.algorithm else {
            return Ok(None);
        };
        let algorithm = sealbroker_core::KeyAlgorithm::parse(text).ok_or_else(|| {
            format!(
                "{text:?} is not an algorithm; use one of {}",
                sealbroker_core::KeyAlgorithm::names()
            )
        })?;
        signing::check_algorithm(algorithm)?;
        Ok(Some(algorithm))
    }
}

/// Why a software key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

pub(crate) fn file_error(path: &Path, reason: impl ToString) -> LoadError {
    LoadError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// An AES-256-GCM key held in process memory.
pub struct SoftwareKey {
    key: LessSafeKey,
    /// The file of the first version; later versions sit beside it.
    base_file: PathBuf,
    identity: String,
    rng: SystemRandom,
}

impl SoftwareKey {
    /// Loads (or, with `generate`, creates) the key file.
    pub fn load(config: &KeyConfig) -> Result<Self, LoadError> {
        let path = &config.key_file;
        if config.generate && !path.exists() {
            generate_key_file(path)?;
        }
        let meta = fs::metadata(path).map_err(|e| file_error(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_error(
                path,
                format!("mode is {mode:04o}; it must not be readable by group or others (chmod 600)"),
            ));
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| file_error(path, e))?);
        let bytes = Zeroizing::new(
            hex::decode(text.trim()).map_err(|_| file_error(path, "does not hold a hex-encoded key"))?,
        );
        if bytes.len() != KEY_LEN {
            return Err(file_error(
                path,
                format!("holds {} bytes; an AES-256 key is 32", bytes.len()),
            ));
        }
        let key = LessSafeKey::new(
            UnboundKey::new(&aead::AES_256_GCM, &bytes).map_err(|_| file_error(path, "bad key"))?,
        );
        // Identify the key by a fingerprint, never by its bytes.
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let identity = format!("software:sha256={}", hex::encode(&fingerprint.as_ref()[..8]));
        Ok(SoftwareKey {
            key,
            identity,
            base_file: base_file(path),
            rng: SystemRandom::new(),
        })
    }
}

impl SoftwareKey {
    fn version_file(&self, version: u32) -> PathBuf {
        PathBuf::from(format!("{}.v{version}", self.base_file.display()))
    }

    fn load_version(&self, file: &Path) -> Result<NewVersion, BackendError> {
        let key = SoftwareKey::load(&KeyConfig {
            key_file: file.to_owned(),
            generate: false,
            algorithm: None,
        })
        .map_err(|e| BackendError::internal(e.to_string()))?;
        Ok(NewVersion {
            backend: std::sync::Arc::new(key),
            settings: [("key_file".to_owned(), file.display().to_string())].into(),
        })
    }
}

/// `dev.key.v3` -> `dev.key`: the file name versions derive from.
pub(crate) fn base_file(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    match text.rsplit_once(".v") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => PathBuf::from(base),
        _ => path.to_owned(),
    }
}

/// Writes a fresh random key to `path` with mode 0600, refusing to overwrite.
pub fn generate_key_file(path: &Path) -> Result<(), LoadError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| file_error(path, "system RNG failed"))?;
    let encoded = Zeroizing::new(hex::encode(key.as_ref()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    file.write_all(encoded.as_bytes())
        .map_err(|e| file_error(path, e))?;
    file.write_all(b"\n").map_err(|e| file_error(path, e))?;
    file.sync_all().map_err(|e| file_error(path, e))?;
    tracing::info!(path = %path.display(), "generated a new software key (Development profile only)");
    Ok(())
}

#[async_trait]
impl Backend for SoftwareKey {
    fn kind(&self) -> &'static str {
        "software"
    }

    fn key_identity(&self) -> String {
        self.identity.clone()
    }

    /// `<key_file>.v<N>`, when that file exists.
    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        let file = self.version_file(version);
        file.exists().then(|| self.load_version(&file).ok()).flatten()
    }

    /// Writes `<key_file>.v<N>`, or uses it when it already exists.
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let file = self.version_file(version);
        if !file.exists() {
            generate_key_file(&file).map_err(|e| BackendError::internal(e.to_string()))?;
        }
        self.load_version(&file)
    }

    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        let mut iv = [0u8; IV_LEN];
        self.rng
            .fill(&mut iv)
            .map_err(|_| BackendError::internal("system RNG failed"))?;
        let mut in_out = secret.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut in_out)
            .map_err(|_| BackendError::internal("AES-GCM seal failed"))?;
        Ok(Sealed {
            mechanism: Mechanism::Aes256Gcm,
            iv: iv.to_vec(),
            ciphertext: in_out,
            ..Default::default()
        })
    }

    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        if sealed.mechanism != Mechanism::Aes256Gcm {
            return Err(BackendError::not_authentic(
                "the data key was not sealed with AES-GCM",
            ));
        }
        let iv: [u8; IV_LEN] = sealed
            .iv
            .as_slice()
            .try_into()
            .map_err(|_| BackendError::not_authentic("the data key IV is not 12 bytes"))?;
        let mut in_out = SecretBytes::new(sealed.ciphertext.clone());
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::from(aad),
                in_out.expose_mut(),
            )
            .map_err(|_| BackendError::not_authentic("the data key does not authenticate under this key"))?
            .len();
        let mut plain = in_out.into_unprotected_vec();
        plain.truncate(len);
        Ok(SecretBytes::new(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_in(dir: &Path) -> SoftwareKey {
        SoftwareKey::load(&KeyConfig {
            key_file: dir.join("k"),
            generate: true,
            algorithm: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn round_trip_binds_aad() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_in(dir.path());
        let sealed = key.encrypt(b"dek", b"aad").await.unwrap();
        assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), b"dek");
        let err = key.decrypt(&sealed, b"other").await.err().unwrap();
        assert_eq!(err.kind, sealbroker_core::BackendErrorKind::NotAuthentic);
    }

    #[test]
    fn generated_file_is_private_and_reloads_to_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let first = key_in(dir.path());
        let mode = fs::metadata(dir.path().join("k")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(key_in(dir.path()).key_identity(), first.key_identity());
    }

    #[tokio::test]
    async fn versions_are_created_once_and_derived_only_when_the_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let base = key_in(dir.path());
        assert!(base.derive_version(2).is_none(), "no k.v2 yet");
        let first = base.create_version(2).await.unwrap();
        assert_eq!(
            first.settings["key_file"],
            dir.path().join("k.v2").display().to_string()
        );
        let again = base.create_version(2).await.unwrap();
        let derived = base.derive_version(2).expect("k.v2 exists now");
        assert_eq!(again.backend.key_identity(), first.backend.key_identity());
        assert_eq!(derived.backend.key_identity(), first.backend.key_identity());
        assert_ne!(first.backend.key_identity(), base.key_identity());
    }

    #[test]
    fn refuses_group_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        key_in(dir.path());
        fs::set_permissions(dir.path().join("k"), fs::Permissions::from_mode(0o640)).unwrap();
        let err = SoftwareKey::load(&KeyConfig {
            key_file: dir.path().join("k"),
            generate: false,
            algorithm: None,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn refuses_missing_file_without_generate() {
        let dir = tempfile::tempdir().unwrap();
        let err = SoftwareKey::load(&KeyConfig {
            key_file: dir.path().join("nope"),
            generate: false,
            algorithm: None,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
