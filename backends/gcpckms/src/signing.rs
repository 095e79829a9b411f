//! Asymmetric Cloud KMS keys (External Keys): `ASYMMETRIC_SIGN` key pairs
//! and `ASYMMETRIC_DECRYPT` RSA pairs. The private half never leaves Cloud
//! KMS: it cannot be exported.
//!
//! Cloud KMS fixes a version's whole scheme in its algorithm
//! (`RSA_SIGN_PSS_2048_SHA256`, `EC_SIGN_P384_SHA384`, ...), so a key signs
//! with that one scheme; the version's algorithm is read from
//! `GetPublicKey` and any other scheme is refused before a call. RSA and
//! ECDSA versions sign a digest: a caller's digest goes as is and a message
//! is hashed once here. Ed25519 signs the message itself (`data`).
//!
//! Cloud KMS has no Verify and no asymmetric Encrypt: a signature is checked
//! here against the version's public key (ring, through core), which needs
//! the whole message; RSA-OAEP encryption to the public key is done here
//! with aws-lc-rs (already linked through `google-cloud-auth`).

use std::sync::Arc;

use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OAEP_SHA512_MGF1SHA512, OaepPublicEncryptingKey,
    PublicEncryptingKey,
};
use bytes::Bytes;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionAlgorithm as Alg;
use google_cloud_kms_v1::model::{CryptoKey, CryptoKeyVersionTemplate, Digest, ProtectionLevel};
use sealbroker_core::{
    BackendError, BackendErrorKind, ConfigError, Hash, KeyAlgorithm, OaepHash, PublicKey, SecretBytes,
    SignInput, SignScheme,
};
use serde::Deserialize;

use crate::{GcpKmsKey, KeyConfig, corrupted, crc32c};

/// `mechanism`, spelled as the PKCS#11 backend spells it: an RSA key pair
/// for encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MechanismName {
    #[serde(rename = "RSA_PKCS_OAEP", alias = "CKM_RSA_PKCS_OAEP")]
    RsaPkcsOaep,
}

/// What a configured Cloud KMS key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A symmetric `ENCRYPT_DECRYPT` key that seals data keys.
    Seal,
    /// A key pair that signs (`ASYMMETRIC_SIGN`).
    Sign(KeyAlgorithm),
    /// An RSA key pair that decrypts RSA-OAEP (`ASYMMETRIC_DECRYPT`).
    Oaep(KeyAlgorithm, OaepHash),
}

/// What a Cloud KMS version algorithm does, in core's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Sign(KeyAlgorithm, SignScheme),
    Oaep(KeyAlgorithm, OaepHash),
}

const ALGORITHMS: &str = "rsa-2048, rsa-3072, rsa-4096, ecdsa-p256, ecdsa-p384, ed25519";

impl Purpose {
    /// Checks `algorithm`, `mechanism` and `rsa_oaep_hash` together.
    pub fn from_config(config: &KeyConfig) -> Result<Purpose, ConfigError> {
        let hash = match config.rsa_oaep_hash.as_deref() {
            None => None,
            Some(text) if config.mechanism.is_none() => {
                return Err(ConfigError::new(
                    "rsa_oaep_hash",
                    format!(
                        "{text:?} applies only to an RSA encryption key pair (mechanism = \"RSA_PKCS_OAEP\")"
                    ),
                ));
            }
            Some("sha256") => Some(OaepHash::Sha256),
            Some("sha1") => Some(OaepHash::Sha1),
            Some("sha512") => Some(OaepHash::Sha512),
            Some(other) => {
                return Err(ConfigError::new(
                    "rsa_oaep_hash",
                    format!(
                        "{other:?}: Cloud KMS does RSA-OAEP with \"sha256\" (the default), \"sha1\", \
                         or \"sha512\" (rsa-4096 only)"
                    ),
                ));
            }
        };
        let Some(text) = config.algorithm.as_deref() else {
            if config.mechanism.is_some() {
                return Err(ConfigError::new(
                    "mechanism",
                    "RSA_PKCS_OAEP needs an RSA key pair: set algorithm = \"rsa-2048\", \"rsa-3072\" or \"rsa-4096\" \
                     (without `algorithm` the key is a symmetric key that seals data keys)",
                ));
            }
            return Ok(Purpose::Seal);
        };
        let algorithm = KeyAlgorithm::parse(text).ok_or_else(|| {
            ConfigError::new(
                "algorithm",
                format!("{text:?} is not an algorithm; use one of {ALGORITHMS}"),
            )
        })?;
        let purpose = match config.mechanism {
            None => Purpose::Sign(algorithm),
            Some(MechanismName::RsaPkcsOaep) if algorithm.rsa_bits().is_some() => {
                let hash = hash.unwrap_or(OaepHash::Sha256);
                if hash == OaepHash::Sha512 && algorithm != KeyAlgorithm::Rsa4096 {
                    return Err(ConfigError::new(
                        "rsa_oaep_hash",
                        format!(
                            "Cloud KMS does RSA-OAEP with SHA-512 only on 4096-bit keys (RSA_DECRYPT_OAEP_4096_SHA512), \
                             not on {algorithm}"
                        ),
                    ));
                }
                Purpose::Oaep(algorithm, hash)
            }
            Some(MechanismName::RsaPkcsOaep) => {
                return Err(ConfigError::new(
                    "mechanism",
                    format!("RSA_PKCS_OAEP needs an RSA key; algorithm = \"{algorithm}\" signs only"),
                ));
            }
        };
        if config.key_version.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return Err(ConfigError::new(
                "key_version",
                "an asymmetric Cloud KMS key has no primary version: name the CryptoKeyVersion to use \
                 (key_version = \"1\" for the first one)",
            ));
        }
        Ok(purpose)
    }

    pub fn algorithm(self) -> Option<KeyAlgorithm> {
        match self {
            Purpose::Seal => None,
            Purpose::Sign(a) | Purpose::Oaep(a, _) => Some(a),
        }
    }

    /// The Cloud KMS `purpose` of the `CryptoKey`.
    pub fn key_purpose(self) -> CryptoKeyPurpose {
        match self {
            Purpose::Seal => CryptoKeyPurpose::EncryptDecrypt,
            Purpose::Sign(_) => CryptoKeyPurpose::AsymmetricSign,
            Purpose::Oaep(..) => CryptoKeyPurpose::AsymmetricDecrypt,
        }
    }

    /// The version algorithm `keygen` makes: the algorithm's default scheme
    /// (RSA PKCS#1 v1.5 with SHA-256, ECDSA with the curve's hash, Ed25519),
    /// or OAEP with the configured hash.
    pub fn version_algorithm(self) -> Alg {
        use KeyAlgorithm as K;
        match self {
            Purpose::Seal => Alg::GoogleSymmetricEncryption,
            Purpose::Sign(K::Rsa2048) => Alg::RsaSignPkcs12048Sha256,
            Purpose::Sign(K::Rsa3072) => Alg::RsaSignPkcs13072Sha256,
            Purpose::Sign(K::Rsa4096) => Alg::RsaSignPkcs14096Sha256,
            Purpose::Sign(K::EcdsaP256) => Alg::EcSignP256Sha256,
            Purpose::Sign(K::EcdsaP384) => Alg::EcSignP384Sha384,
            Purpose::Sign(K::Ed25519) => Alg::EcSignEd25519,
            Purpose::Oaep(a, hash) => oaep_algorithms()
                .into_iter()
                .find(|alg| shape_of(alg) == Some(Shape::Oaep(a, hash)))
                // `from_config` admits only pairs Cloud KMS has.
                .unwrap_or(Alg::RsaDecryptOaep2048Sha256),
        }
    }

    /// Whether a version of `shape` serves this purpose.
    fn accepts(self, shape: Shape) -> bool {
        match (self, shape) {
            (Purpose::Sign(a), Shape::Sign(b, _)) => a == b,
            (Purpose::Oaep(a, h), Shape::Oaep(b, g)) => a == b && h == g,
            _ => false,
        }
    }

    fn describe(self) -> String {
        match self {
            Purpose::Seal => "a symmetric sealing key (no `algorithm`)".to_owned(),
            Purpose::Sign(a) => format!("algorithm = \"{a}\" (a signing key pair)"),
            Purpose::Oaep(a, h) => format!(
                "algorithm = \"{a}\" with mechanism = \"RSA_PKCS_OAEP\" and rsa_oaep_hash = \"{h}\" \
                 (an RSA encryption pair)"
            ),
        }
    }
}

fn oaep_algorithms() -> [Alg; 7] {
    [
        Alg::RsaDecryptOaep2048Sha256,
        Alg::RsaDecryptOaep3072Sha256,
        Alg::RsaDecryptOaep4096Sha256,
        Alg::RsaDecryptOaep4096Sha512,
        Alg::RsaDecryptOaep2048Sha1,
        Alg::RsaDecryptOaep3072Sha1,
        Alg::RsaDecryptOaep4096Sha1,
    ]
}

/// What a Cloud KMS version algorithm does; `None` for the ones sealbroker
/// does not serve (raw PKCS#1, secp256k1, post-quantum, symmetric).
pub fn shape_of(algorithm: &Alg) -> Option<Shape> {
    use KeyAlgorithm as K;
    use SignScheme as S;
    Some(match algorithm {
        Alg::RsaSignPss2048Sha256 => Shape::Sign(K::Rsa2048, S::RsaPss(Hash::Sha256)),
        Alg::RsaSignPss3072Sha256 => Shape::Sign(K::Rsa3072, S::RsaPss(Hash::Sha256)),
        Alg::RsaSignPss4096Sha256 => Shape::Sign(K::Rsa4096, S::RsaPss(Hash::Sha256)),
        Alg::RsaSignPss4096Sha512 => Shape::Sign(K::Rsa4096, S::RsaPss(Hash::Sha512)),
        Alg::RsaSignPkcs12048Sha256 => Shape::Sign(K::Rsa2048, S::RsaPkcs1v15(Hash::Sha256)),
        Alg::RsaSignPkcs13072Sha256 => Shape::Sign(K::Rsa3072, S::RsaPkcs1v15(Hash::Sha256)),
        Alg::RsaSignPkcs14096Sha256 => Shape::Sign(K::Rsa4096, S::RsaPkcs1v15(Hash::Sha256)),
        Alg::RsaSignPkcs14096Sha512 => Shape::Sign(K::Rsa4096, S::RsaPkcs1v15(Hash::Sha512)),
        Alg::EcSignP256Sha256 => Shape::Sign(K::EcdsaP256, S::Ecdsa(Hash::Sha256)),
        Alg::EcSignP384Sha384 => Shape::Sign(K::EcdsaP384, S::Ecdsa(Hash::Sha384)),
        Alg::EcSignEd25519 => Shape::Sign(K::Ed25519, S::Ed25519),
        Alg::RsaDecryptOaep2048Sha256 => Shape::Oaep(K::Rsa2048, OaepHash::Sha256),
        Alg::RsaDecryptOaep3072Sha256 => Shape::Oaep(K::Rsa3072, OaepHash::Sha256),
        Alg::RsaDecryptOaep4096Sha256 => Shape::Oaep(K::Rsa4096, OaepHash::Sha256),
        Alg::RsaDecryptOaep4096Sha512 => Shape::Oaep(K::Rsa4096, OaepHash::Sha512),
        Alg::RsaDecryptOaep2048Sha1 => Shape::Oaep(K::Rsa2048, OaepHash::Sha1),
        Alg::RsaDecryptOaep3072Sha1 => Shape::Oaep(K::Rsa3072, OaepHash::Sha1),
        Alg::RsaDecryptOaep4096Sha1 => Shape::Oaep(K::Rsa4096, OaepHash::Sha1),
        _ => return None,
    })
}

/// A pinned version's public half and what it does, as `GetPublicKey`
/// said (a version's key never changes, so it is read once).
#[derive(Debug, Clone)]
pub(crate) struct VersionKey {
    pub(crate) public: PublicKey,
    pub(crate) shape: Shape,
    pub(crate) algorithm: Alg,
}

fn invalid(message: String) -> BackendError {
    BackendError::new(BackendErrorKind::InvalidInput, message)
}

impl GcpKmsKey {
    /// The pinned version of an asymmetric key (always set: checked at load).
    fn asymmetric_version(&self) -> Result<&str, BackendError> {
        self.version.as_deref().ok_or_else(|| {
            invalid(format!(
                "Cloud KMS key {} is asymmetric but names no key_version",
                self.key_name
            ))
        })
    }

    pub(crate) fn refuse_unless_sealing(&self) -> Result<(), BackendError> {
        match self.purpose {
            Purpose::Seal => Ok(()),
            Purpose::Sign(algorithm) => Err(invalid(format!(
                "this Cloud KMS key is an {algorithm} signing key pair; it does not seal"
            ))),
            Purpose::Oaep(algorithm, _) => Err(invalid(format!(
                "this Cloud KMS key is an {algorithm} encryption key pair; it does RSA-OAEP \
                 (EncryptAsymmetric), not sealing"
            ))),
        }
    }

    fn refuse_unless_signing(&self) -> Result<(), BackendError> {
        match self.purpose {
            Purpose::Sign(_) => Ok(()),
            Purpose::Oaep(algorithm, _) => Err(invalid(format!(
                "this Cloud KMS key is an {algorithm} encryption key pair (mechanism = \"RSA_PKCS_OAEP\"); it does not sign"
            ))),
            Purpose::Seal => Err(invalid(
                "this Cloud KMS key is a symmetric key: it seals data keys and does not sign".into(),
            )),
        }
    }

    fn refuse_unless_oaep(&self) -> Result<(), BackendError> {
        match self.purpose {
            Purpose::Oaep(..) => Ok(()),
            _ => Err(invalid(
                "this Cloud KMS key is not an RSA encryption key pair \
                 (algorithm = \"rsa-N\" with mechanism = \"RSA_PKCS_OAEP\")"
                    .into(),
            )),
        }
    }

    /// `GetPublicKey` of the pinned version, read once: the PEM checked
    /// against its CRC32C, the version's algorithm against the config.
    pub(crate) async fn version_key(&self) -> Result<Arc<VersionKey>, BackendError> {
        if let Some(known) = self.version_key.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(known);
        }
        if self.purpose == Purpose::Seal {
            return Err(invalid(
                "this Cloud KMS key is a symmetric key; it has no public key to give".into(),
            ));
        }
        let name = self.asymmetric_version()?;
        let kms = &self.client.0.kms;
        let answer = self
            .call("GetPublicKey", || {
                kms.get_public_key()
                    .set_name(name)
                    .with_attempt_timeout(self.client.0.timeout)
                    .send()
            })
            .await?;
        if answer.pem_crc32c != Some(i64::from(crc32c(answer.pem.as_bytes()))) {
            return Err(corrupted("public key PEM"));
        }
        if answer.name != name {
            return Err(BackendError::internal(format!(
                "Cloud KMS GetPublicKey answered for {:?}, not {name}",
                answer.name
            )));
        }
        let found = match answer.algorithm.name() {
            Some(text) => text.to_owned(),
            None => format!("{:?}", answer.algorithm),
        };
        let shape = shape_of(&answer.algorithm)
            .filter(|shape| self.purpose.accepts(*shape))
            .ok_or_else(|| {
                invalid(format!(
                    "Cloud KMS version {name} is {found}, but the config says {}",
                    self.purpose.describe()
                ))
            })?;
        let public = PublicKey::from_spki_pem(&answer.pem)
            .map_err(|e| BackendError::internal(format!("Cloud KMS GetPublicKey for {name}: {e}")))?;
        let expected = match shape {
            Shape::Sign(a, _) | Shape::Oaep(a, _) => a,
        };
        if public.algorithm != expected {
            return Err(BackendError::internal(format!(
                "Cloud KMS version {name} is {found} but its public key is {}",
                public.algorithm
            )));
        }
        let known = Arc::new(VersionKey {
            public,
            shape,
            algorithm: answer.algorithm,
        });
        *self.version_key.lock().unwrap_or_else(|e| e.into_inner()) = Some(known.clone());
        Ok(known)
    }

    /// The one scheme the version signs with, or a refusal naming it.
    async fn signing_scheme(&self, scheme: SignScheme) -> Result<Arc<VersionKey>, BackendError> {
        self.refuse_unless_signing()?;
        let key = self.version_key().await?;
        let Shape::Sign(_, own) = key.shape else {
            return Err(BackendError::internal("a signing key's version does not sign"));
        };
        if own != scheme {
            let name = key.algorithm.name().unwrap_or("its algorithm");
            return Err(invalid(format!(
                "Cloud KMS version {} is {name}: it signs only as {}, not {}",
                self.version.as_deref().unwrap_or(&self.key_name),
                own.name(),
                scheme.name()
            )));
        }
        Ok(key)
    }

    /// `AsymmetricSign`: a digest for RSA and ECDSA (the caller's, or the
    /// message's hashed once here), the message itself for Ed25519.
    pub(crate) async fn sign_asymmetric(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
    ) -> Result<Vec<u8>, BackendError> {
        self.signing_scheme(scheme).await?;
        input.check(scheme).map_err(invalid)?;
        let name = self.asymmetric_version()?;
        let kms = &self.client.0.kms;
        let (digest, data) = match (scheme.hash(), input) {
            (Some(hash), input) => {
                let digest = Bytes::from(input.digest(hash));
                let wrapped = match hash {
                    Hash::Sha256 => Digest::new().set_sha256(digest.clone()),
                    Hash::Sha384 => Digest::new().set_sha384(digest.clone()),
                    Hash::Sha512 => Digest::new().set_sha512(digest.clone()),
                };
                (Some((wrapped, crc32c(&digest))), None)
            }
            (None, SignInput::Message(message)) => (None, Some(Bytes::copy_from_slice(message))),
            // Refused by `check`.
            (None, SignInput::Digest(_)) => return Err(invalid("Ed25519 signs the message itself".into())),
        };
        let answer = self
            .call("AsymmetricSign", || {
                let mut request = kms.asymmetric_sign().set_name(name);
                if let Some((digest, crc)) = &digest {
                    request = request
                        .set_digest(digest.clone())
                        .set_digest_crc32c(i64::from(*crc));
                }
                if let Some(data) = &data {
                    request = request
                        .set_data(data.clone())
                        .set_data_crc32c(i64::from(crc32c(data)));
                }
                request.with_attempt_timeout(self.client.0.timeout).send()
            })
            .await?;
        let verified = if digest.is_some() {
            answer.verified_digest_crc32c
        } else {
            answer.verified_data_crc32c
        };
        if !verified {
            return Err(corrupted("the service did not verify our request checksum"));
        }
        if answer.signature_crc32c != Some(i64::from(crc32c(&answer.signature))) {
            return Err(corrupted("signature"));
        }
        if answer.name != name {
            return Err(BackendError::internal(format!(
                "Cloud KMS AsymmetricSign answered for {:?}, not {name}",
                answer.name
            )));
        }
        if answer.signature.is_empty() {
            return Err(BackendError::internal(
                "Cloud KMS AsymmetricSign answered without a signature",
            ));
        }
        Ok(answer.signature.to_vec())
    }

    /// Cloud KMS has no Verify: the signature is checked here against the
    /// version's public key, which needs the whole message.
    pub(crate) async fn verify_asymmetric(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        let key = self.signing_scheme(scheme).await?;
        input.check(scheme).map_err(invalid)?;
        if input.is_digest() {
            return Err(invalid(
                "Cloud KMS has no Verify call and sealbroker checks its signatures with the public key, \
                 which needs the whole message: send the message (prehashed = false), or verify with the \
                 public key yourself"
                    .into(),
            ));
        }
        key.public
            .verify(scheme, input, signature)
            .map_err(|e| invalid(format!("cannot verify this Cloud KMS signature: {e}")))
    }

    /// RSA-OAEP to the version's public key, here (Cloud KMS has no
    /// asymmetric Encrypt): the raw OAEP block.
    pub(crate) async fn encrypt_oaep(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.refuse_unless_oaep()?;
        let key = self.version_key().await?;
        let Shape::Oaep(_, hash) = key.shape else {
            return Err(BackendError::internal(
                "an encryption key's version does not decrypt",
            ));
        };
        let algorithm = match hash {
            OaepHash::Sha1 => &OAEP_SHA1_MGF1SHA1,
            OaepHash::Sha256 => &OAEP_SHA256_MGF1SHA256,
            OaepHash::Sha512 => &OAEP_SHA512_MGF1SHA512,
            other => {
                return Err(BackendError::internal(format!(
                    "Cloud KMS has no OAEP with {other}"
                )));
            }
        };
        let unusable = || BackendError::internal("the Cloud KMS public key is not a usable RSA key");
        let public = PublicEncryptingKey::from_der(&key.public.spki_der)
            .map_err(|_| unusable())
            .and_then(|public| OaepPublicEncryptingKey::new(public).map_err(|_| unusable()))?;
        let room = public.max_plaintext_size(algorithm);
        if plaintext.len() > room {
            return Err(invalid(format!(
                "RSA-OAEP with {hash} on this {} key takes at most {room} bytes, not {}",
                key.public.algorithm,
                plaintext.len()
            )));
        }
        let mut out = vec![0u8; public.ciphertext_size()];
        let written = public
            .encrypt(algorithm, plaintext, &mut out, None)
            .map_err(|_| BackendError::internal("RSA-OAEP encryption to the Cloud KMS public key failed"))?
            .len();
        out.truncate(written);
        Ok(out)
    }

    /// `AsymmetricDecrypt`. A ciphertext that does not open is
    /// [`BackendErrorKind::NotAuthentic`].
    pub(crate) async fn decrypt_oaep(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        self.refuse_unless_oaep()?;
        let name = self.asymmetric_version()?;
        let kms = &self.client.0.kms;
        let sent = Bytes::copy_from_slice(ciphertext);
        let answer = self
            .call("AsymmetricDecrypt", || {
                kms.asymmetric_decrypt()
                    .set_name(name)
                    .set_ciphertext(sent.clone())
                    .set_ciphertext_crc32c(i64::from(crc32c(ciphertext)))
                    .with_attempt_timeout(self.client.0.timeout)
                    .send()
            })
            .await?;
        let plaintext = SecretBytes::new(answer.plaintext.to_vec());
        if !answer.verified_ciphertext_crc32c {
            return Err(corrupted("the service did not verify our request checksum"));
        }
        if answer.plaintext_crc32c != Some(i64::from(crc32c(plaintext.expose()))) {
            return Err(corrupted("plaintext"));
        }
        Ok(plaintext)
    }

    /// Signing keys: a signature made by Cloud KMS and checked here with
    /// the public key. RSA encryption pairs: an OAEP round trip.
    pub(crate) async fn probe_asymmetric(&self) -> Result<(), BackendError> {
        let probe = b"sealbroker health probe";
        match self.purpose {
            Purpose::Sign(_) => {
                let key = self.version_key().await?;
                let Shape::Sign(_, scheme) = key.shape else {
                    return Err(BackendError::internal("a signing key's version does not sign"));
                };
                let signature = self.sign_asymmetric(scheme, SignInput::Message(probe)).await?;
                match self
                    .verify_asymmetric(scheme, SignInput::Message(probe), &signature)
                    .await?
                {
                    true => Ok(()),
                    false => Err(BackendError::internal(
                        "the Cloud KMS health probe signature does not verify with the version's public key",
                    )),
                }
            }
            Purpose::Oaep(..) => {
                let ciphertext = self.encrypt_oaep(probe).await?;
                let opened = self.decrypt_oaep(&ciphertext).await?;
                if opened.expose() == probe {
                    Ok(())
                } else {
                    Err(BackendError::internal(
                        "the Cloud KMS OAEP probe returned different bytes",
                    ))
                }
            }
            Purpose::Seal => Err(BackendError::internal("a sealing key has no asymmetric probe")),
        }
    }

    /// `keygen`: creates the `CryptoKey` of an asymmetric key, at HSM
    /// protection, with the purpose and version algorithm the settings
    /// describe; Cloud KMS makes its first version, `1`, which the settings
    /// must name. Waits until that version is ENABLED.
    pub(crate) async fn create_crypto_key(&self) -> Result<String, BackendError> {
        let Some(algorithm) = self.purpose.algorithm() else {
            return Err(invalid(
                "keygen makes asymmetric Cloud KMS keys; make symmetric ones with gcloud or the console"
                    .into(),
            ));
        };
        let first = format!("{}/cryptoKeyVersions/1", self.key_name);
        if self.version.as_deref() != Some(first.as_str()) {
            return Err(invalid(format!(
                "keygen makes a new CryptoKey, whose first version Cloud KMS numbers 1: set key_version = \"1\", not {:?}",
                self.version
                    .as_deref()
                    .and_then(|v| v.rsplit('/').next())
                    .unwrap_or("")
            )));
        }
        let (parent, id) = self
            .key_name
            .rsplit_once("/cryptoKeys/")
            .ok_or_else(|| invalid(format!("{} is not a CryptoKey name", self.key_name)))?;
        let version_algorithm = self.purpose.version_algorithm();
        let kms = &self.client.0.kms;
        // Not retried after a timeout or 5xx: a second attempt would find
        // the key made and fail.
        self.call_with("CreateCryptoKey", false, || {
            kms.create_crypto_key()
                .set_parent(parent)
                .set_crypto_key_id(id)
                .set_crypto_key(
                    CryptoKey::new()
                        .set_purpose(self.purpose.key_purpose())
                        .set_version_template(
                            CryptoKeyVersionTemplate::new()
                                .set_algorithm(version_algorithm.clone())
                                .set_protection_level(ProtectionLevel::Hsm),
                        ),
                )
                .with_attempt_timeout(self.client.0.timeout)
                .send()
        })
        .await?;
        let version = self.get_version(&first).await?;
        let version = self.wait_enabled(version).await?;
        let shape = version_algorithm.name().unwrap_or("?");
        tracing::info!(key = %self.key_name, version = %version.name, algorithm = shape, "created a Cloud KMS key pair");
        Ok(format!(
            "{algorithm} key {} ({shape}, HSM, version 1; in Cloud KMS, never exportable)",
            self.key_name
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> KeyConfig {
        toml::from_str(&format!(
            "key_name = \"projects/p/locations/l/keyRings/r/cryptoKeys/k\"\n{text}"
        ))
        .unwrap()
    }

    fn refused(text: &str) -> ConfigError {
        Purpose::from_config(&config(text)).unwrap_err()
    }

    #[test]
    fn algorithm_mechanism_and_hash_make_the_purpose() {
        let purpose = |text: &str| Purpose::from_config(&config(text)).unwrap();
        assert_eq!(purpose(""), Purpose::Seal);
        assert_eq!(
            purpose("key_version = \"1\"\nalgorithm = \"ed25519\""),
            Purpose::Sign(KeyAlgorithm::Ed25519)
        );
        assert_eq!(
            purpose("key_version = \"2\"\nalgorithm = \"rsa-3072\"\nmechanism = \"RSA_PKCS_OAEP\""),
            Purpose::Oaep(KeyAlgorithm::Rsa3072, OaepHash::Sha256)
        );
        let oaep = purpose(
            "key_version = \"1\"\nalgorithm = \"rsa-4096\"\nmechanism = \"CKM_RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha512\"",
        );
        assert_eq!(oaep, Purpose::Oaep(KeyAlgorithm::Rsa4096, OaepHash::Sha512));
        assert_eq!(oaep.version_algorithm(), Alg::RsaDecryptOaep4096Sha512);
        assert_eq!(
            purpose("key_version = \"1\"\nalgorithm = \"ecdsa-p384\"").version_algorithm(),
            Alg::EcSignP384Sha384
        );
    }

    #[test]
    fn ill_fitting_settings_are_refused_naming_the_field() {
        let e = refused("key_version = \"1\"\nalgorithm = \"rsa-1024\"");
        assert_eq!(e.path, "algorithm");
        assert!(e.message.contains("rsa-2048"), "{e}");
        let e = refused("key_version = \"1\"\nalgorithm = \"ecdsa-p256\"\nmechanism = \"RSA_PKCS_OAEP\"");
        assert_eq!(e.path, "mechanism");
        assert!(e.message.contains("signs only"), "{e}");
        let e = refused("mechanism = \"RSA_PKCS_OAEP\"");
        assert_eq!(e.path, "mechanism");
        let e = refused("key_version = \"1\"\nalgorithm = \"rsa-2048\"\nrsa_oaep_hash = \"sha256\"");
        assert_eq!(e.path, "rsa_oaep_hash");
        let e = refused(
            "key_version = \"1\"\nalgorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha512\"",
        );
        assert_eq!(e.path, "rsa_oaep_hash");
        assert!(e.message.contains("4096"), "{e}");
        let e = refused(
            "key_version = \"1\"\nalgorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha384\"",
        );
        assert_eq!(e.path, "rsa_oaep_hash");
        let e = refused("algorithm = \"ecdsa-p256\"");
        assert_eq!(e.path, "key_version");
        assert!(e.message.contains("no primary version"), "{e}");
        let e = toml::from_str::<KeyConfig>("key_name = \"k\"\nmechanism = \"AES_GCM\"").unwrap_err();
        assert!(e.to_string().contains("RSA_PKCS_OAEP"), "{e}");
    }

    #[test]
    fn every_served_version_algorithm_has_its_scheme_and_keygen_makes_served_ones() {
        assert_eq!(
            shape_of(&Alg::RsaSignPss2048Sha256),
            Some(Shape::Sign(
                KeyAlgorithm::Rsa2048,
                SignScheme::RsaPss(Hash::Sha256)
            ))
        );
        assert_eq!(
            shape_of(&Alg::RsaDecryptOaep3072Sha1),
            Some(Shape::Oaep(KeyAlgorithm::Rsa3072, OaepHash::Sha1))
        );
        assert_eq!(shape_of(&Alg::EcSignSecp256K1Sha256), None);
        assert_eq!(shape_of(&Alg::RsaSignRawPkcs12048), None);
        for algorithm in KeyAlgorithm::ALL {
            let made = Purpose::Sign(algorithm).version_algorithm();
            assert_eq!(
                shape_of(&made),
                Some(Shape::Sign(algorithm, algorithm.default_scheme())),
                "{algorithm}"
            );
        }
        for algorithm in [
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072,
            KeyAlgorithm::Rsa4096,
        ] {
            for hash in [OaepHash::Sha1, OaepHash::Sha256] {
                let made = Purpose::Oaep(algorithm, hash).version_algorithm();
                assert_eq!(shape_of(&made), Some(Shape::Oaep(algorithm, hash)));
            }
        }
    }
}
