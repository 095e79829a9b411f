//! Asymmetric KMS keys (External Keys): key pairs that sign (`SIGN_VERIFY`)
//! and RSA pairs that encrypt with RSA-OAEP (`ENCRYPT_DECRYPT`). The
//! private half never leaves KMS: AWS has no way to export it.
//!
//! KMS hashes what it signs when given a message (`MessageType = RAW`, up
//! to 4096 bytes) and signs a caller's digest as is (`DIGEST`). So a
//! digest goes to KMS untouched, a message up to 4096 bytes goes whole,
//! and a longer message is hashed once here (ring) and sent as a digest:
//! nothing is ever hashed twice.

use std::sync::Arc;

use aws_sdk_kms::error::SdkError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{EncryptionAlgorithmSpec, KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use sealbroker_core::{
    BackendError, BackendErrorKind, ConfigError, Hash, KeyAlgorithm, NewVersion, PublicKey, SecretBytes,
    SignInput, SignScheme,
};
use serde::Deserialize;

use crate::{AwsKmsKey, KeyConfig};

/// The largest message KMS signs with `MessageType = RAW`.
pub const MAX_RAW_MESSAGE: usize = 4096;

/// The largest signature KMS `Verify` takes; no longer one is valid.
pub const MAX_SIGNATURE: usize = 6144;

/// The algorithms an AWS key may declare, for error messages.
const ALGORITHMS: &str = "rsa-2048, rsa-3072, rsa-4096, ecdsa-p256, ecdsa-p384";

/// `mechanism`, spelled as the PKCS#11 backend spells it. AWS keys know one:
/// an RSA key pair for encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MechanismName {
    #[serde(rename = "RSA_PKCS_OAEP", alias = "CKM_RSA_PKCS_OAEP")]
    RsaPkcsOaep,
}

/// The hash of RSA-OAEP and its MGF1: what KMS offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    Sha1,
    Sha256,
}

impl OaepHash {
    pub fn name(self) -> &'static str {
        match self {
            OaepHash::Sha1 => "sha1",
            OaepHash::Sha256 => "sha256",
        }
    }

    pub fn spec(self) -> EncryptionAlgorithmSpec {
        match self {
            OaepHash::Sha1 => EncryptionAlgorithmSpec::RsaesOaepSha1,
            OaepHash::Sha256 => EncryptionAlgorithmSpec::RsaesOaepSha256,
        }
    }
}

/// What a configured KMS key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A symmetric `SYMMETRIC_DEFAULT` key that seals data keys.
    Seal,
    /// A key pair that signs (`SIGN_VERIFY`).
    Sign(KeyAlgorithm),
    /// An RSA key pair that encrypts with RSA-OAEP (`ENCRYPT_DECRYPT`).
    Oaep(KeyAlgorithm, OaepHash),
}

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
            Some(other) => {
                return Err(ConfigError::new(
                    "rsa_oaep_hash",
                    format!(
                        "{other:?}: AWS KMS does RSA-OAEP with \"sha256\" (RSAES_OAEP_SHA_256, the default) or \"sha1\" only"
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
        let algorithm = match KeyAlgorithm::parse(text) {
            Some(KeyAlgorithm::Ed25519) => {
                return Err(ConfigError::new(
                    "algorithm",
                    format!(
                        "\"ed25519\" is not offered on AWS KMS: its ECC_NIST_EDWARDS25519 keys are recent and the \
                         KMS test server (moto) cannot make them, so sealbroker cannot test them; use \"ecdsa-p256\", \
                         or a PKCS#11 token for Ed25519 (one of {ALGORITHMS})"
                    ),
                ));
            }
            Some(algorithm) => algorithm,
            None => {
                return Err(ConfigError::new(
                    "algorithm",
                    format!("{text:?} is not an algorithm; use one of {ALGORITHMS}"),
                ));
            }
        };
        match config.mechanism {
            None => Ok(Purpose::Sign(algorithm)),
            Some(MechanismName::RsaPkcsOaep) if algorithm.rsa_bits().is_some() => {
                Ok(Purpose::Oaep(algorithm, hash.unwrap_or(OaepHash::Sha256)))
            }
            Some(MechanismName::RsaPkcsOaep) => Err(ConfigError::new(
                "mechanism",
                format!("RSA_PKCS_OAEP needs an RSA key; algorithm = \"{algorithm}\" signs only"),
            )),
        }
    }

    pub fn algorithm(self) -> Option<KeyAlgorithm> {
        match self {
            Purpose::Seal => None,
            Purpose::Sign(a) | Purpose::Oaep(a, _) => Some(a),
        }
    }

    /// The `KeySpec` of the KMS key this purpose needs.
    pub fn key_spec(self) -> KeySpec {
        match self.algorithm() {
            None => KeySpec::SymmetricDefault,
            Some(KeyAlgorithm::Rsa2048) => KeySpec::Rsa2048,
            Some(KeyAlgorithm::Rsa3072) => KeySpec::Rsa3072,
            Some(KeyAlgorithm::Rsa4096) => KeySpec::Rsa4096,
            Some(KeyAlgorithm::EcdsaP256) => KeySpec::EccNistP256,
            Some(KeyAlgorithm::EcdsaP384) => KeySpec::EccNistP384,
            // Refused by `from_config`.
            Some(KeyAlgorithm::Ed25519) => KeySpec::EccNistEdwards25519,
        }
    }

    /// The `KeyUsage` of the KMS key this purpose needs.
    pub fn key_usage(self) -> KeyUsageType {
        match self {
            Purpose::Seal | Purpose::Oaep(..) => KeyUsageType::EncryptDecrypt,
            Purpose::Sign(_) => KeyUsageType::SignVerify,
        }
    }

    /// `RSA_2048/SIGN_VERIFY`: what the KMS key must be, for messages.
    pub fn kms_shape(self) -> String {
        format!("{}/{}", self.key_spec().as_str(), self.key_usage().as_str())
    }

    /// Refuses a KMS key of another spec or usage than the config says.
    pub fn check_shape(
        self,
        key: &str,
        spec: Option<&KeySpec>,
        usage: Option<&KeyUsageType>,
    ) -> Result<(), BackendError> {
        // What KMS leaves out is not held against the key.
        if spec.is_none_or(|s| *s == self.key_spec()) && usage.is_none_or(|u| *u == self.key_usage()) {
            return Ok(());
        }
        let found = format!(
            "{}/{}",
            spec.map_or("?", |s| s.as_str()),
            usage.map_or("?", |u| u.as_str())
        );
        let configured = match self {
            Purpose::Seal => "a symmetric sealing key (no `algorithm`)".to_owned(),
            Purpose::Sign(a) => format!("algorithm = \"{a}\" (a signing key pair)"),
            Purpose::Oaep(a, _) => {
                format!("algorithm = \"{a}\" with mechanism = \"RSA_PKCS_OAEP\" (an RSA encryption pair)")
            }
        };
        Err(BackendError::new(
            BackendErrorKind::InvalidInput,
            format!(
                "AWS KMS key {key} is {found}, but the config says {configured}, which needs {}",
                self.kms_shape()
            ),
        ))
    }
}

/// The KMS signing algorithm for `scheme` on a key of `algorithm`. KMS
/// signs with an ECDSA key only under its curve's own hash.
pub fn signing_algorithm(
    algorithm: KeyAlgorithm,
    scheme: SignScheme,
) -> Result<SigningAlgorithmSpec, BackendError> {
    use SigningAlgorithmSpec as S;
    let refuse = |why: String| Err(BackendError::new(BackendErrorKind::InvalidInput, why));
    if !scheme.fits(algorithm) {
        return refuse(format!(
            "this AWS KMS key is {algorithm}; it cannot sign with {}",
            scheme.name()
        ));
    }
    Ok(match (scheme, algorithm) {
        (SignScheme::RsaPkcs1v15(Hash::Sha256), _) => S::RsassaPkcs1V15Sha256,
        (SignScheme::RsaPkcs1v15(Hash::Sha384), _) => S::RsassaPkcs1V15Sha384,
        (SignScheme::RsaPkcs1v15(Hash::Sha512), _) => S::RsassaPkcs1V15Sha512,
        (SignScheme::RsaPss(Hash::Sha256), _) => S::RsassaPssSha256,
        (SignScheme::RsaPss(Hash::Sha384), _) => S::RsassaPssSha384,
        (SignScheme::RsaPss(Hash::Sha512), _) => S::RsassaPssSha512,
        (SignScheme::Ecdsa(Hash::Sha256), KeyAlgorithm::EcdsaP256) => S::EcdsaSha256,
        (SignScheme::Ecdsa(Hash::Sha384), KeyAlgorithm::EcdsaP384) => S::EcdsaSha384,
        (scheme, algorithm) => {
            return refuse(format!(
                "AWS KMS signs with an {algorithm} key only as {}, not {}",
                algorithm.default_scheme().name(),
                scheme.name()
            ));
        }
    })
}

/// What goes to KMS as `Message`, and as which `MessageType`.
pub fn message(scheme: SignScheme, input: SignInput<'_>) -> Result<(MessageType, Vec<u8>), BackendError> {
    input
        .check(scheme)
        .map_err(|why| BackendError::new(BackendErrorKind::InvalidInput, why))?;
    let hash = scheme.hash().ok_or_else(|| {
        BackendError::new(
            BackendErrorKind::InvalidInput,
            "AWS KMS keys here do not sign with Ed25519",
        )
    })?;
    Ok(match input {
        SignInput::Digest(digest) => (MessageType::Digest, digest.to_vec()),
        SignInput::Message(m) if m.len() <= MAX_RAW_MESSAGE => (MessageType::Raw, m.to_vec()),
        SignInput::Message(m) => (MessageType::Digest, hash.digest(m)),
    })
}

/// What [`AwsKmsKey::create_aliased`] does when the alias already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// keygen: an operator asked for a new key, so an old one is an error.
    Refuse,
    /// Rotation: another replica or a retried job made it; use it.
    Use,
}

/// `alias/NAME` of a key id that is an alias or alias ARN.
fn alias_of(key_id: &str) -> Option<&str> {
    if key_id.starts_with("alias/") {
        return Some(key_id);
    }
    key_id
        .strip_prefix("arn:")
        .and_then(|rest| rest.split(':').nth(4))
        .filter(|resource| resource.starts_with("alias/"))
}

/// `alias/NAME` without a `-vN` version suffix.
fn base_alias(alias: &str) -> &str {
    match alias.rsplit_once("-v") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => alias,
    }
}

impl AwsKmsKey {
    fn refuse_unless_signing(&self) -> Result<KeyAlgorithm, BackendError> {
        match self.purpose {
            Purpose::Sign(algorithm) => Ok(algorithm),
            Purpose::Oaep(algorithm, _) => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "this AWS KMS key is an {algorithm} encryption key pair (mechanism = \"RSA_PKCS_OAEP\"); it does not sign"
                ),
            )),
            Purpose::Seal => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                "this AWS KMS key is a symmetric key: it seals data keys and does not sign",
            )),
        }
    }

    fn refuse_unless_oaep(&self) -> Result<OaepHash, BackendError> {
        match self.purpose {
            Purpose::Oaep(_, hash) => Ok(hash),
            _ => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                "this AWS KMS key is not an RSA encryption key pair \
                 (algorithm = \"rsa-N\" with mechanism = \"RSA_PKCS_OAEP\")",
            )),
        }
    }

    /// KMS `Sign`: the signature as KMS gives it (raw RSA; DER ECDSA).
    pub(crate) async fn sign_asymmetric(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
    ) -> Result<Vec<u8>, BackendError> {
        let algorithm = self.refuse_unless_signing()?;
        let spec = signing_algorithm(algorithm, scheme)?;
        let (message_type, message) = message(scheme, input)?;
        let kms = &self.client.0.kms;
        let output = self
            .call("Sign", &self.key_id, || {
                kms.sign()
                    .key_id(&self.key_id)
                    .message(Blob::new(message.clone()))
                    .message_type(message_type.clone())
                    .signing_algorithm(spec.clone())
                    .send()
            })
            .await?;
        output
            .signature
            .map(Blob::into_inner)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BackendError::internal("AWS KMS Sign answered without a Signature"))
    }

    /// KMS `Verify`. A signature KMS calls invalid is `Ok(false)`, not an
    /// error (real KMS answers `KMSInvalidSignatureException`).
    pub(crate) async fn verify_asymmetric(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        let algorithm = self.refuse_unless_signing()?;
        let spec = signing_algorithm(algorithm, scheme)?;
        let (message_type, message) = message(scheme, input)?;
        // Nothing KMS could call valid: a verdict, without asking it.
        if signature.is_empty() || signature.len() > MAX_SIGNATURE {
            return Ok(false);
        }
        let kms = &self.client.0.kms;
        self.call("Verify", &self.key_id, || {
            let sent = kms
                .verify()
                .key_id(&self.key_id)
                .message(Blob::new(message.clone()))
                .message_type(message_type.clone())
                .signing_algorithm(spec.clone())
                .signature(Blob::new(signature))
                .send();
            async move {
                match sent.await {
                    Ok(output) => Ok(output.signature_valid),
                    Err(SdkError::ServiceError(e)) if e.err().is_kms_invalid_signature_exception() => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// KMS `GetPublicKey`, checked against the configured algorithm and
    /// read with core's SPKI decoder.
    pub(crate) async fn public_key_asymmetric(&self) -> Result<PublicKey, BackendError> {
        let Some(algorithm) = self.purpose.algorithm() else {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                "this AWS KMS key is a symmetric key; it has no public key to give",
            ));
        };
        let kms = &self.client.0.kms;
        let output = self
            .call("GetPublicKey", &self.key_id, || {
                kms.get_public_key().key_id(&self.key_id).send()
            })
            .await?;
        self.purpose
            .check_shape(&self.key_id, output.key_spec.as_ref(), output.key_usage.as_ref())?;
        let der = output
            .public_key
            .ok_or_else(|| BackendError::internal("AWS KMS GetPublicKey answered without a PublicKey"))?;
        let public = PublicKey::from_spki_der(der.as_ref())
            .map_err(|e| BackendError::internal(format!("AWS KMS GetPublicKey for {}: {e}", self.key_id)))?;
        if public.algorithm != algorithm {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "AWS KMS key {} holds an {} key, but the config says algorithm = \"{algorithm}\"",
                    self.key_id, public.algorithm
                ),
            ));
        }
        Ok(public)
    }

    /// KMS `Encrypt` with RSA-OAEP: the raw OAEP block.
    pub(crate) async fn encrypt_oaep(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        let hash = self.refuse_unless_oaep()?;
        let kms = &self.client.0.kms;
        let output = self
            .call("Encrypt", &self.key_id, || {
                kms.encrypt()
                    .key_id(&self.key_id)
                    .plaintext(Blob::new(plaintext))
                    .encryption_algorithm(hash.spec())
                    .send()
            })
            .await?;
        output
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| BackendError::internal("AWS KMS Encrypt answered without a CiphertextBlob"))
    }

    /// KMS `Decrypt` with RSA-OAEP. A ciphertext that does not open is
    /// [`BackendErrorKind::NotAuthentic`].
    pub(crate) async fn decrypt_oaep(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        let hash = self.refuse_unless_oaep()?;
        let kms = &self.client.0.kms;
        let output = self
            .call("Decrypt", &self.key_id, || {
                kms.decrypt()
                    .key_id(&self.key_id)
                    .ciphertext_blob(Blob::new(ciphertext))
                    .encryption_algorithm(hash.spec())
                    .send()
            })
            .await?;
        let plaintext = output
            .plaintext
            .ok_or_else(|| BackendError::internal("AWS KMS Decrypt answered without a Plaintext"))?;
        Ok(SecretBytes::new(plaintext.into_inner()))
    }

    /// Signing keys: a signature made and checked by KMS. RSA encryption
    /// pairs: an OAEP round trip.
    pub(crate) async fn probe_asymmetric(&self) -> Result<(), BackendError> {
        let probe = b"sealbroker health probe";
        match self.purpose {
            Purpose::Sign(algorithm) => {
                let scheme = algorithm.default_scheme();
                let signature = self.sign_asymmetric(scheme, SignInput::Message(probe)).await?;
                match self
                    .verify_asymmetric(scheme, SignInput::Message(probe), &signature)
                    .await?
                {
                    true => Ok(()),
                    false => Err(BackendError::internal(
                        "AWS KMS did not verify its own health probe signature",
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
                        "the AWS KMS OAEP probe returned different bytes",
                    ))
                }
            }
            Purpose::Seal => Err(BackendError::internal("a sealing key has no asymmetric probe")),
        }
    }

    /// `alias/NAME-v<version>`, the alias of version `version` of an
    /// asymmetric key whose `key_id` is `alias/NAME` (or `alias/NAME-vN`).
    fn version_alias(&self, version: u32) -> Result<String, BackendError> {
        let alias = alias_of(&self.key_id).ok_or_else(|| {
            BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "an asymmetric AWS KMS key gets new versions as new keys under an alias (KMS cannot rotate \
                     asymmetric key material); set key_id = \"alias/NAME\" instead of {:?}",
                    self.key_id
                ),
            )
        })?;
        Ok(format!("{}-v{version}", base_alias(alias)))
    }

    /// The key serving version `version` of this asymmetric key, and the
    /// settings that rebuild it (`key_id` only; the rest is inherited).
    pub(crate) fn asymmetric_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let alias = self.version_alias(version)?;
        Ok(NewVersion {
            backend: Arc::new(AwsKmsKey::with_purpose(&self.client, &alias, self.purpose)),
            settings: [("key_id".to_owned(), alias)].into(),
        })
    }

    /// Creates version `version` of this asymmetric key: a new KMS key of the
    /// same spec and usage under `alias/NAME-v<version>`, or the existing one.
    pub(crate) async fn create_asymmetric_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let created = self.asymmetric_version(version)?;
        let alias = self.version_alias(version)?;
        let made = AwsKmsKey::with_purpose(&self.client, &alias, self.purpose)
            .create_aliased(Existing::Use)
            .await?;
        tracing::info!(key = %made, broker_version = version, "created an AWS KMS key pair for a new version");
        Ok(created)
    }

    /// Makes a KMS key of this key's spec and usage and points this key's
    /// alias at it; `existing` says what an alias already there means.
    /// Returns a description of the key. KMS keys are never extractable.
    pub(crate) async fn create_aliased(&self, existing: Existing) -> Result<String, BackendError> {
        let Some(alias) = alias_of(&self.key_id).map(str::to_owned) else {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "keygen names the new KMS key by its alias; set key_id = \"alias/NAME\" \
                     (AWS chooses key ids and ARNs), not {:?}",
                    self.key_id
                ),
            ));
        };
        let shape = self.purpose.kms_shape();
        if let Some(found) = self.existing(&alias, existing).await? {
            return Ok(found);
        }
        let kms = &self.client.0.kms;
        let description = format!("sealbroker {alias} ({shape})");
        let created = self
            .call("CreateKey", &alias, || {
                kms.create_key()
                    .key_spec(self.purpose.key_spec())
                    .key_usage(self.purpose.key_usage())
                    .description(&description)
                    .send()
            })
            .await?;
        let meta = created
            .key_metadata
            .ok_or_else(|| BackendError::internal("AWS KMS CreateKey answered without KeyMetadata"))?;
        let key_id = meta.key_id;
        let arn = meta.arn.unwrap_or_else(|| key_id.clone());
        let aliased = self
            .call("CreateAlias", &alias, || {
                let sent = kms
                    .create_alias()
                    .alias_name(&alias)
                    .target_key_id(&key_id)
                    .send();
                async move {
                    match sent.await {
                        Ok(_) => Ok(true),
                        Err(SdkError::ServiceError(e)) if e.err().is_already_exists_exception() => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        if !aliased {
            // Another replica named its key first: ours is not used.
            self.call("ScheduleKeyDeletion", &key_id, || {
                kms.schedule_key_deletion()
                    .key_id(&key_id)
                    .pending_window_in_days(7)
                    .send()
            })
            .await?;
            return self.existing(&alias, existing).await?.ok_or_else(|| {
                BackendError::unavailable(format!("{alias} was taken, then vanished; try again"))
            });
        }
        Ok(format!(
            "{shape} key {arn} as {alias} (in AWS KMS, never extractable)"
        ))
    }

    /// The key `alias` already names, if any, checked to fit.
    async fn existing(&self, alias: &str, existing: Existing) -> Result<Option<String>, BackendError> {
        let kms = &self.client.0.kms;
        let described = match self
            .call("DescribeKey", alias, || kms.describe_key().key_id(alias).send())
            .await
        {
            Ok(described) => described,
            Err(e) if e.kind == BackendErrorKind::KeyNotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = described
            .key_metadata
            .ok_or_else(|| BackendError::internal("AWS KMS DescribeKey answered without KeyMetadata"))?;
        let arn = meta.arn.clone().unwrap_or_else(|| meta.key_id.clone());
        match existing {
            Existing::Refuse => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!("{alias} already names AWS KMS key {arn}"),
            )),
            Existing::Use => {
                self.purpose
                    .check_shape(alias, meta.key_spec.as_ref(), meta.key_usage.as_ref())?;
                Ok(Some(format!("the existing key {arn} as {alias}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> KeyConfig {
        toml::from_str(&format!("key_id = \"alias/k\"\n{text}")).unwrap()
    }

    fn refused(text: &str) -> ConfigError {
        Purpose::from_config(&config(text)).unwrap_err()
    }

    #[test]
    fn algorithm_mechanism_and_hash_make_the_purpose() {
        let purpose = |text: &str| Purpose::from_config(&config(text)).unwrap();
        assert_eq!(purpose(""), Purpose::Seal);
        assert_eq!(
            purpose("algorithm = \"ecdsa-p384\""),
            Purpose::Sign(KeyAlgorithm::EcdsaP384)
        );
        assert_eq!(
            purpose("algorithm = \"rsa-3072\"\nmechanism = \"RSA_PKCS_OAEP\""),
            Purpose::Oaep(KeyAlgorithm::Rsa3072, OaepHash::Sha256)
        );
        assert_eq!(
            purpose("algorithm = \"rsa-2048\"\nmechanism = \"CKM_RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha1\""),
            Purpose::Oaep(KeyAlgorithm::Rsa2048, OaepHash::Sha1)
        );
        assert_eq!(purpose("algorithm = \"rsa-4096\"").key_spec(), KeySpec::Rsa4096);
        assert_eq!(
            purpose("algorithm = \"ecdsa-p256\"").kms_shape(),
            "ECC_NIST_P256/SIGN_VERIFY"
        );
    }

    #[test]
    fn ill_fitting_settings_are_refused_naming_the_field() {
        let e = refused("algorithm = \"ed25519\"");
        assert_eq!(e.path, "algorithm");
        assert!(e.message.contains("not offered on AWS KMS"), "{e}");
        let e = refused("algorithm = \"rsa-1024\"");
        assert_eq!(e.path, "algorithm");
        assert!(e.message.contains("rsa-2048"), "{e}");
        let e = refused("algorithm = \"ecdsa-p256\"\nmechanism = \"RSA_PKCS_OAEP\"");
        assert_eq!(e.path, "mechanism");
        assert!(e.message.contains("signs only"), "{e}");
        let e = refused("mechanism = \"RSA_PKCS_OAEP\"");
        assert_eq!(e.path, "mechanism");
        let e = refused("algorithm = \"rsa-2048\"\nrsa_oaep_hash = \"sha256\"");
        assert_eq!(e.path, "rsa_oaep_hash");
        let e =
            refused("algorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha512\"");
        assert_eq!(e.path, "rsa_oaep_hash");
        assert!(e.message.contains("RSAES_OAEP_SHA_256"), "{e}");
        // A sealing mechanism is not a thing on AWS.
        let e = toml::from_str::<KeyConfig>("key_id = \"k\"\nmechanism = \"AES_GCM\"").unwrap_err();
        assert!(e.to_string().contains("RSA_PKCS_OAEP"), "{e}");
    }

    #[test]
    fn ecdsa_signs_only_with_its_curves_hash() {
        assert_eq!(
            signing_algorithm(KeyAlgorithm::EcdsaP384, SignScheme::Ecdsa(Hash::Sha384)).unwrap(),
            SigningAlgorithmSpec::EcdsaSha384
        );
        let e = signing_algorithm(KeyAlgorithm::EcdsaP256, SignScheme::Ecdsa(Hash::Sha384)).unwrap_err();
        assert_eq!(e.kind, BackendErrorKind::InvalidInput);
        assert!(e.message.contains("only as ecdsa-sha256"), "{e}");
        let e = signing_algorithm(KeyAlgorithm::Rsa2048, SignScheme::Ecdsa(Hash::Sha256)).unwrap_err();
        assert!(e.message.contains("cannot sign with ecdsa-sha256"), "{e}");
        assert_eq!(
            signing_algorithm(KeyAlgorithm::Rsa4096, SignScheme::RsaPss(Hash::Sha512)).unwrap(),
            SigningAlgorithmSpec::RsassaPssSha512
        );
    }

    #[test]
    fn a_digest_goes_as_is_and_a_long_message_is_hashed_once() {
        let scheme = SignScheme::Ecdsa(Hash::Sha256);
        let digest = Hash::Sha256.digest(b"m");
        assert_eq!(
            message(scheme, SignInput::Digest(&digest)).unwrap(),
            (MessageType::Digest, digest.clone())
        );
        assert_eq!(
            message(scheme, SignInput::Message(b"m")).unwrap(),
            (MessageType::Raw, b"m".to_vec())
        );
        let long = vec![7u8; MAX_RAW_MESSAGE + 1];
        assert_eq!(
            message(scheme, SignInput::Message(&long)).unwrap(),
            (MessageType::Digest, Hash::Sha256.digest(&long))
        );
        let e = message(scheme, SignInput::Digest(&digest[..20])).unwrap_err();
        assert_eq!(e.kind, BackendErrorKind::InvalidInput);
    }
}
