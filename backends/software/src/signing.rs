//! Software signing keys (Development only): an ECDSA P-256/P-384 or
//! Ed25519 key pair as PKCS#8 in a key file, signing with ring.
//!
//! ring hashes what it signs, so these keys sign whole messages and refuse
//! a digest: nothing is hashed twice. OpenBao's External Keys always send a
//! digest, so they need a PKCS#11 key (SoftHSM for development).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm,
    Ed25519KeyPair, KeyPair,
};
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, KeyAlgorithm, NewVersion, PublicKey, Sealed, SecretBytes,
    SignInput, SignScheme,
};
use zeroize::Zeroizing;

use crate::{LoadError, file_error};

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// An asymmetric key held in process memory.
pub struct SoftwareSigningKey {
    algorithm: KeyAlgorithm,
    pair: Pair,
    public: PublicKey,
    base_file: PathBuf,
    identity: String,
    rng: SystemRandom,
}

fn ecdsa_algorithm(algorithm: KeyAlgorithm) -> Option<&'static EcdsaSigningAlgorithm> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => Some(&ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyAlgorithm::EcdsaP384 => Some(&ECDSA_P384_SHA384_ASN1_SIGNING),
        _ => None,
    }
}

/// Refuses algorithms the software backend does not hold.
pub fn check_algorithm(algorithm: KeyAlgorithm) -> Result<(), String> {
    if algorithm.rsa_bits().is_some() {
        return Err(format!(
            "{algorithm}: the software backend holds ECDSA P-256/P-384 and Ed25519 keys (ring cannot make RSA keys); \
             use a PKCS#11 token for RSA"
        ));
    }
    Ok(())
}

impl SoftwareSigningKey {
    /// Loads (or, with `generate`, creates) a PKCS#8 key file of `algorithm`.
    pub fn load(path: &Path, algorithm: KeyAlgorithm, generate: bool) -> Result<Self, LoadError> {
        check_algorithm(algorithm).map_err(|e| file_error(path, e))?;
        if generate && !path.exists() {
            generate_pkcs8_file(path, algorithm)?;
        }
        let mode = fs::metadata(path)
            .map_err(|e| file_error(path, e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_error(
                path,
                format!("mode is {mode:04o}; it must not be readable by group or others (chmod 600)"),
            ));
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| file_error(path, e))?);
        let pkcs8 = Zeroizing::new(
            hex::decode(text.trim())
                .map_err(|_| file_error(path, "does not hold a hex-encoded PKCS#8 key"))?,
        );
        let wrong = |_| file_error(path, format!("does not hold a PKCS#8 {algorithm} key"));
        let (pair, public) = match ecdsa_algorithm(algorithm) {
            Some(signing) => {
                let pair = EcdsaKeyPair::from_pkcs8(signing, &pkcs8, &SystemRandom::new()).map_err(wrong)?;
                let public = PublicKey::ec(algorithm, pair.public_key().as_ref())
                    .map_err(|e| file_error(path, e.to_string()))?;
                (Pair::Ecdsa(pair), public)
            }
            None => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(wrong)?;
                let public = PublicKey::ed25519(pair.public_key().as_ref())
                    .map_err(|e| file_error(path, e.to_string()))?;
                (Pair::Ed25519(pair), public)
            }
        };
        // Identified by the public key, never by the private bytes.
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, &public.spki_der);
        Ok(SoftwareSigningKey {
            algorithm,
            pair,
            identity: format!(
                "software:{algorithm}:sha256={}",
                hex::encode(&fingerprint.as_ref()[..8])
            ),
            public,
            base_file: crate::base_file(path),
            rng: SystemRandom::new(),
        })
    }

    fn version(&self, version: u32, create: bool) -> Result<Option<NewVersion>, BackendError> {
        let file = PathBuf::from(format!("{}.v{version}", self.base_file.display()));
        if !file.exists() && !create {
            return Ok(None);
        }
        let key = SoftwareSigningKey::load(&file, self.algorithm, create)
            .map_err(|e| BackendError::internal(e.to_string()))?;
        Ok(Some(NewVersion {
            backend: Arc::new(key),
            settings: [("key_file".to_owned(), file.display().to_string())].into(),
        }))
    }
}

/// Writes a fresh PKCS#8 key pair to `path` with mode 0600, refusing to
/// overwrite.
pub fn generate_pkcs8_file(path: &Path, algorithm: KeyAlgorithm) -> Result<(), LoadError> {
    check_algorithm(algorithm).map_err(|e| file_error(path, e))?;
    let rng = SystemRandom::new();
    let pkcs8 = match ecdsa_algorithm(algorithm) {
        Some(signing) => EcdsaKeyPair::generate_pkcs8(signing, &rng),
        None => Ed25519KeyPair::generate_pkcs8(&rng),
    }
    .map_err(|_| file_error(path, "system RNG failed"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    let encoded = Zeroizing::new(hex::encode(pkcs8.as_ref()));
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
    tracing::info!(path = %path.display(), %algorithm, "generated a new software signing key (Development profile only)");
    Ok(())
}

fn invalid(message: impl Into<String>) -> BackendError {
    BackendError::new(BackendErrorKind::InvalidInput, message)
}

#[async_trait]
impl Backend for SoftwareSigningKey {
    fn kind(&self) -> &'static str {
        "software"
    }

    fn key_identity(&self) -> String {
        self.identity.clone()
    }

    fn algorithm(&self) -> Option<KeyAlgorithm> {
        Some(self.algorithm)
    }

    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        self.version(version, false).ok().flatten()
    }

    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        self.version(version, true)?
            .ok_or_else(|| BackendError::internal("the new version's key file was not written"))
    }

    async fn encrypt(&self, _: &[u8], _: &[u8]) -> Result<Sealed, BackendError> {
        Err(invalid(format!(
            "this software {} key signs; it does not seal",
            self.algorithm
        )))
    }

    async fn decrypt(&self, _: &Sealed, _: &[u8]) -> Result<SecretBytes, BackendError> {
        Err(invalid(format!(
            "this software {} key signs; it does not seal",
            self.algorithm
        )))
    }

    async fn public_key(&self) -> Result<PublicKey, BackendError> {
        Ok(self.public.clone())
    }

    async fn sign(&self, scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        let SignInput::Message(message) = input else {
            return Err(invalid(
                "the software backend signs whole messages (ring hashes them itself) and cannot sign a digest; \
                 send the message (prehashed = false), or use a PKCS#11 key",
            ));
        };
        if scheme != self.algorithm.default_scheme() {
            return Err(invalid(format!(
                "a software {} key signs with {} only",
                self.algorithm,
                self.algorithm.default_scheme().name()
            )));
        }
        match &self.pair {
            Pair::Ecdsa(pair) => pair
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| BackendError::internal("ECDSA signing failed")),
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }

    /// A signature made and checked: the key is usable.
    async fn health(&self) -> Result<(), BackendError> {
        let scheme = self.algorithm.default_scheme();
        let probe = SignInput::Message(b"sealbroker health probe");
        let signature = self.sign(scheme, probe).await?;
        match self.verify(scheme, probe, &signature).await? {
            true => Ok(()),
            false => Err(BackendError::internal("health probe signature did not verify")),
        }
    }
}

#[cfg(test)]
mod tests {
    use sealbroker_core::Hash;

    use super::*;

    #[tokio::test]
    async fn each_algorithm_signs_messages_that_its_public_key_verifies_and_refuses_digests() {
        let dir = tempfile::tempdir().unwrap();
        for algorithm in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
        ] {
            let path = dir.path().join(algorithm.as_str());
            let key = SoftwareSigningKey::load(&path, algorithm, true).unwrap();
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let scheme = algorithm.default_scheme();
            let signature = key.sign(scheme, SignInput::Message(b"m")).await.unwrap();
            assert!(
                key.verify(scheme, SignInput::Message(b"m"), &signature)
                    .await
                    .unwrap()
            );
            assert!(
                !key.verify(scheme, SignInput::Message(b"n"), &signature)
                    .await
                    .unwrap()
            );
            key.health().await.unwrap();
            let digest = Hash::Sha256.digest(b"m");
            let e = key.sign(scheme, SignInput::Digest(&digest)).await.unwrap_err();
            assert!(e.message.contains("cannot sign a digest"), "{algorithm}: {e}");
            assert!(key.encrypt(b"dek", b"").await.is_err());
            // Reloading finds the same key.
            let again = SoftwareSigningKey::load(&path, algorithm, false).unwrap();
            assert_eq!(again.key_identity(), key.key_identity());
            assert_eq!(again.public_key().await.unwrap(), key.public_key().await.unwrap());
        }
    }

    #[test]
    fn rsa_is_refused_naming_what_to_use_instead() {
        let dir = tempfile::tempdir().unwrap();
        let e = SoftwareSigningKey::load(&dir.path().join("k"), KeyAlgorithm::Rsa3072, true)
            .err()
            .unwrap();
        assert!(e.to_string().contains("PKCS#11"), "{e}");
        assert!(!dir.path().join("k").exists());
    }

    #[test]
    fn a_key_file_of_another_algorithm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        generate_pkcs8_file(&path, KeyAlgorithm::Ed25519).unwrap();
        let e = SoftwareSigningKey::load(&path, KeyAlgorithm::EcdsaP256, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("ecdsa-p256"), "{e}");
    }
}
