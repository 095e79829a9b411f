//! Asymmetric Key Vault keys (External Keys): RSA and EC key pairs that
//! sign (`sign`/`verify`), and RSA pairs that encrypt with RSA-OAEP
//! (`encrypt`/`decrypt`). The private half never leaves the vault (keygen
//! makes HSM keys with `exportable: false`).
//!
//! Key Vault signs a digest only: a caller's digest goes as is and a
//! message is hashed once here. It returns ECDSA signatures as `r || s`
//! (JWS), which are turned into the DER `ECDSA-Sig-Value` callers expect,
//! and back for `verify`. Ed25519 is not a Key Vault key type.

use azure_security_keyvault_keys::models::{
    CreateKeyParameters, CurveName, EncryptionAlgorithm, JsonWebKey, KeyAttributes, KeyClientEncryptOptions,
    KeyClientGetKeyOptions, KeyClientSignOptions, KeyOperation, KeyOperationParameters, KeyType,
    SignParameters, SignatureAlgorithm, VerifyParameters,
};
use sealbroker_core::signing::{ecdsa_der_from_raw, ecdsa_raw_from_der};
use sealbroker_core::{
    BackendError, BackendErrorKind, ConfigError, Hash, KeyAlgorithm, OaepHash, PublicKey, SecretBytes,
    SignInput, SignScheme,
};
use serde::Deserialize;

use azure_security_keyvault_keys::ResourceExt;

use crate::{KeyConfig, KeyVaultKey};

/// `mechanism`, spelled as the PKCS#11 backend spells it: an RSA key pair
/// for encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MechanismName {
    #[serde(rename = "RSA_PKCS_OAEP", alias = "CKM_RSA_PKCS_OAEP")]
    RsaPkcsOaep,
}

/// What a configured Key Vault key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// An RSA key that wraps data keys (RSA-OAEP-256 `wrapKey`).
    Seal,
    /// A key pair that signs.
    Sign(KeyAlgorithm),
    /// An RSA key pair that encrypts with RSA-OAEP (SHA-1, `RSA-OAEP`) or
    /// RSA-OAEP-256.
    Oaep(KeyAlgorithm, OaepHash),
}

const ALGORITHMS: &str = "rsa-2048, rsa-3072, rsa-4096, ecdsa-p256, ecdsa-p384";

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
                        "{other:?}: Key Vault does RSA-OAEP with \"sha256\" (RSA-OAEP-256, the default) or \"sha1\" (RSA-OAEP) only"
                    ),
                ));
            }
        };
        let Some(text) = config.algorithm.as_deref() else {
            if config.mechanism.is_some() {
                return Err(ConfigError::new(
                    "mechanism",
                    "RSA_PKCS_OAEP needs an RSA key pair: set algorithm = \"rsa-2048\", \"rsa-3072\" or \"rsa-4096\" \
                     (without `algorithm` the key is an RSA key that wraps data keys)",
                ));
            }
            return Ok(Purpose::Seal);
        };
        let algorithm = match KeyAlgorithm::parse(text) {
            Some(KeyAlgorithm::Ed25519) => {
                return Err(ConfigError::new(
                    "algorithm",
                    format!(
                        "\"ed25519\" is not a Key Vault key type (Key Vault holds RSA and EC P-256/P-384/P-521 keys); \
                         use a PKCS#11 token or Cloud KMS for Ed25519, or one of {ALGORITHMS}"
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

    /// The operations a key must permit for this purpose.
    pub fn key_ops(self) -> [KeyOperation; 2] {
        match self {
            Purpose::Seal => [KeyOperation::WrapKey, KeyOperation::UnwrapKey],
            Purpose::Sign(_) => [KeyOperation::Sign, KeyOperation::Verify],
            Purpose::Oaep(..) => [KeyOperation::Encrypt, KeyOperation::Decrypt],
        }
    }
}

/// The Key Vault signature algorithm for `scheme` on a key of `algorithm`.
/// Key Vault signs with an EC key only under its curve's own hash.
pub fn signature_algorithm(
    algorithm: KeyAlgorithm,
    scheme: SignScheme,
) -> Result<SignatureAlgorithm, BackendError> {
    use SignatureAlgorithm as S;
    let refuse = |why: String| Err(BackendError::new(BackendErrorKind::InvalidInput, why));
    if !scheme.fits(algorithm) {
        return refuse(format!(
            "this Key Vault key is {algorithm}; it cannot sign with {}",
            scheme.name()
        ));
    }
    Ok(match (scheme, algorithm) {
        (SignScheme::RsaPkcs1v15(Hash::Sha256), _) => S::Rs256,
        (SignScheme::RsaPkcs1v15(Hash::Sha384), _) => S::Rs384,
        (SignScheme::RsaPkcs1v15(Hash::Sha512), _) => S::Rs512,
        (SignScheme::RsaPss(Hash::Sha256), _) => S::Ps256,
        (SignScheme::RsaPss(Hash::Sha384), _) => S::Ps384,
        (SignScheme::RsaPss(Hash::Sha512), _) => S::Ps512,
        (SignScheme::Ecdsa(Hash::Sha256), KeyAlgorithm::EcdsaP256) => S::Es256,
        (SignScheme::Ecdsa(Hash::Sha384), KeyAlgorithm::EcdsaP384) => S::Es384,
        (scheme, algorithm) => {
            return refuse(format!(
                "Key Vault signs with an {algorithm} key only as {}, not {}",
                algorithm.default_scheme().name(),
                scheme.name()
            ));
        }
    })
}

/// The core public key of a Key Vault JWK: `kty` RSA or RSA-HSM with `n`
/// and `e`, or EC or EC-HSM with `crv` P-256/P-384 and `x`, `y` of the
/// curve's length.
pub fn public_key_of(jwk: &JsonWebKey) -> Result<PublicKey, BackendError> {
    let bad =
        |why: String| BackendError::internal(format!("Key Vault returned an unusable public key: {why}"));
    match &jwk.kty {
        Some(KeyType::Rsa | KeyType::RsaHsm) => {
            let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                return Err(bad("an RSA key without n and e".into()));
            };
            PublicKey::rsa(n, e).map_err(|e| bad(e.to_string()))
        }
        Some(KeyType::Ec | KeyType::EcHsm) => {
            let algorithm = match &jwk.crv {
                Some(CurveName::P256) => KeyAlgorithm::EcdsaP256,
                Some(CurveName::P384) => KeyAlgorithm::EcdsaP384,
                other => {
                    return Err(BackendError::new(
                        BackendErrorKind::InvalidInput,
                        format!(
                            "the Key Vault key is on curve {}; sealbroker signs with P-256 and P-384",
                            other
                                .as_ref()
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| "?".into())
                        ),
                    ));
                }
            };
            let len = algorithm.ec_field_len().unwrap_or_default();
            let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                return Err(bad("an EC key without x and y".into()));
            };
            if x.len() != len || y.len() != len {
                return Err(bad(format!("{algorithm} coordinates must be {len} bytes each")));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            PublicKey::ec(algorithm, &point).map_err(|e| bad(e.to_string()))
        }
        other => Err(BackendError::new(
            BackendErrorKind::InvalidInput,
            format!(
                "the Key Vault key type is {}; a key pair is RSA, RSA-HSM, EC or EC-HSM",
                other
                    .as_ref()
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "unknown".into())
            ),
        )),
    }
}

fn invalid(message: impl Into<String>) -> BackendError {
    BackendError::new(BackendErrorKind::InvalidInput, message)
}

impl KeyVaultKey {
    pub(crate) fn refuse_unless_sealing(&self) -> Result<(), BackendError> {
        match self.purpose {
            Purpose::Seal => Ok(()),
            Purpose::Sign(algorithm) => Err(invalid(format!(
                "this Key Vault key is an {algorithm} signing key pair; it does not seal"
            ))),
            Purpose::Oaep(algorithm, _) => Err(invalid(format!(
                "this Key Vault key is an {algorithm} encryption key pair; it does RSA-OAEP (EncryptAsymmetric), \
                 not sealing"
            ))),
        }
    }

    fn refuse_unless_signing(&self) -> Result<KeyAlgorithm, BackendError> {
        match self.purpose {
            Purpose::Sign(algorithm) => Ok(algorithm),
            Purpose::Oaep(algorithm, _) => Err(invalid(format!(
                "this Key Vault key is an {algorithm} encryption key pair (mechanism = \"RSA_PKCS_OAEP\"); it does not sign"
            ))),
            Purpose::Seal => Err(invalid(
                "this Key Vault key is a sealing key: it wraps data keys and does not sign",
            )),
        }
    }

    fn refuse_unless_oaep(&self) -> Result<EncryptionAlgorithm, BackendError> {
        match self.purpose {
            Purpose::Oaep(_, OaepHash::Sha1) => Ok(EncryptionAlgorithm::RsaOaep),
            Purpose::Oaep(..) => Ok(EncryptionAlgorithm::RsaOaep256),
            _ => Err(invalid(
                "this Key Vault key is not an RSA encryption key pair \
                 (algorithm = \"rsa-N\" with mechanism = \"RSA_PKCS_OAEP\")",
            )),
        }
    }

    /// The digest Key Vault signs or verifies: the caller's, or the
    /// message's hashed once here.
    fn digest_for(scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        input.check(scheme).map_err(invalid)?;
        let hash = scheme
            .hash()
            .ok_or_else(|| invalid("Key Vault keys do not sign with Ed25519"))?;
        Ok(input.digest(hash))
    }

    /// `sign`: the signature as callers expect it (raw RSA; DER ECDSA).
    pub(crate) async fn sign_asymmetric(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
    ) -> Result<Vec<u8>, BackendError> {
        let algorithm = self.refuse_unless_signing()?;
        let alg = signature_algorithm(algorithm, scheme)?;
        let digest = Self::digest_for(scheme, input)?;
        let keys = &self.client.0.keys;
        let target = self.describe(self.version.as_deref());
        let result = self
            .call("sign", &target, true, || async {
                let parameters = SignParameters {
                    algorithm: Some(alg.clone()),
                    value: Some(digest.clone()),
                };
                let options = KeyClientSignOptions {
                    key_version: self.version.clone(),
                    ..Default::default()
                };
                keys.sign(&self.name, parameters.try_into()?, Some(options))
                    .await?
                    .into_model()
            })
            .await?;
        let signature = result
            .result
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BackendError::internal("Key Vault sign answered without a signature"))?;
        match algorithm.ec_field_len() {
            Some(len) => ecdsa_der_from_raw(&signature, len)
                .map_err(|e| BackendError::internal(format!("Key Vault sign: {e}"))),
            None => Ok(signature),
        }
    }

    /// `verify`, for messages (hashed once here) and digests alike. A DER
    /// ECDSA signature that does not decode is invalid without a call.
    pub(crate) async fn verify_asymmetric(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        let algorithm = self.refuse_unless_signing()?;
        let alg = signature_algorithm(algorithm, scheme)?;
        let digest = Self::digest_for(scheme, input)?;
        let signature = match algorithm.ec_field_len() {
            Some(len) => match ecdsa_raw_from_der(signature, len) {
                Ok(raw) => raw,
                Err(_) => return Ok(false),
            },
            None => signature.to_vec(),
        };
        if signature.is_empty() {
            return Ok(false);
        }
        let keys = &self.client.0.keys;
        let version = self.version.clone().unwrap_or_default();
        let target = self.describe(self.version.as_deref());
        let result = self
            .call("verify", &target, true, || async {
                let parameters = VerifyParameters {
                    algorithm: Some(alg.clone()),
                    digest: Some(digest.clone()),
                    signature: Some(signature.clone()),
                };
                keys.verify(&self.name, &version, parameters.try_into()?, None)
                    .await?
                    .into_model()
            })
            .await?;
        result
            .value
            .ok_or_else(|| BackendError::internal("Key Vault verify answered without a value"))
    }

    /// `GET` of the key (its version, if pinned): the JWK read into core's
    /// public key, checked against the configured algorithm.
    pub(crate) async fn public_key_asymmetric(&self) -> Result<PublicKey, BackendError> {
        let Some(algorithm) = self.purpose.algorithm() else {
            return Err(invalid(
                "this Key Vault key is a sealing key; its public key is not served",
            ));
        };
        let keys = &self.client.0.keys;
        let target = self.describe(self.version.as_deref());
        let key = self
            .call("get", &target, true, || async {
                let options = KeyClientGetKeyOptions {
                    key_version: self.version.clone(),
                    ..Default::default()
                };
                keys.get_key(&self.name, Some(options)).await?.into_model()
            })
            .await?;
        let jwk = key
            .key
            .ok_or_else(|| BackendError::internal("Key Vault answered without the key"))?;
        let public = public_key_of(&jwk)?;
        if public.algorithm != algorithm {
            return Err(invalid(format!(
                "Key Vault key {target} is {}, but the config says algorithm = \"{algorithm}\"",
                public.algorithm
            )));
        }
        Ok(public)
    }

    /// `encrypt` with RSA-OAEP or RSA-OAEP-256: the raw OAEP block.
    pub(crate) async fn encrypt_oaep(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        let alg = self.refuse_unless_oaep()?;
        let keys = &self.client.0.keys;
        let target = self.describe(self.version.as_deref());
        let result = self
            .call("encrypt", &target, true, || async {
                let parameters = KeyOperationParameters {
                    algorithm: Some(alg.clone()),
                    value: Some(plaintext.to_vec()),
                    ..Default::default()
                };
                let options = KeyClientEncryptOptions {
                    key_version: self.version.clone(),
                    ..Default::default()
                };
                keys.encrypt(&self.name, parameters.try_into()?, Some(options))
                    .await?
                    .into_model()
            })
            .await?;
        result
            .result
            .filter(|c| !c.is_empty())
            .ok_or_else(|| BackendError::internal("Key Vault encrypt answered without a ciphertext"))
    }

    /// `decrypt`. A ciphertext that does not open is
    /// [`BackendErrorKind::NotAuthentic`].
    pub(crate) async fn decrypt_oaep(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        let alg = self.refuse_unless_oaep()?;
        let keys = &self.client.0.keys;
        let version = self.version.clone().unwrap_or_default();
        let target = self.describe(self.version.as_deref());
        let result = self
            .call("decrypt", &target, true, || async {
                let parameters = KeyOperationParameters {
                    algorithm: Some(alg.clone()),
                    value: Some(ciphertext.to_vec()),
                    ..Default::default()
                };
                keys.decrypt(&self.name, &version, parameters.try_into()?, None)
                    .await?
                    .into_model()
            })
            .await?;
        let plaintext = result
            .result
            .ok_or_else(|| BackendError::internal("Key Vault decrypt answered without a plaintext"))?;
        Ok(SecretBytes::new(plaintext))
    }

    /// Signing keys: a signature made and checked by Key Vault. RSA
    /// encryption pairs: an OAEP round trip.
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
                        "Key Vault did not verify its own health probe signature",
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
                        "the Key Vault OAEP probe returned different bytes",
                    ))
                }
            }
            Purpose::Seal => Err(BackendError::internal("a sealing key has no asymmetric probe")),
        }
    }

    /// `keygen`: a new HSM key (`RSA-HSM` or `EC-HSM`, never exportable)
    /// permitting only this purpose's operations. A key of that name is
    /// refused, since `create` on an existing name would add a version.
    pub(crate) async fn create_key_pair(&self) -> Result<String, BackendError> {
        let Some(algorithm) = self.purpose.algorithm() else {
            return Err(invalid(
                "keygen makes Key Vault key pairs; make sealing keys with the portal, az or the API",
            ));
        };
        let keys = &self.client.0.keys;
        let existing = self
            .call("get", &self.name, true, || async {
                keys.get_key(&self.name, None).await?.into_model()
            })
            .await;
        match existing {
            Ok(found) => {
                let kid = found.key.and_then(|k| k.kid).unwrap_or_else(|| self.name.clone());
                return Err(invalid(format!("Key Vault key {kid} already exists")));
            }
            Err(e) if e.kind == BackendErrorKind::KeyNotFound => {}
            Err(e) => return Err(e),
        }
        let (kty, key_size, curve) = match algorithm {
            KeyAlgorithm::EcdsaP256 => (KeyType::EcHsm, None, Some(CurveName::P256)),
            KeyAlgorithm::EcdsaP384 => (KeyType::EcHsm, None, Some(CurveName::P384)),
            rsa => (KeyType::RsaHsm, rsa.rsa_bits().map(|b| b as i32), None),
        };
        let ops = self.purpose.key_ops();
        // Not retried after a timeout or 5xx: a second attempt would add a
        // second version.
        let created = self
            .call("create", &self.name, false, || async {
                let parameters = CreateKeyParameters {
                    kty: Some(kty.clone()),
                    key_size,
                    curve: curve.clone(),
                    key_ops: Some(ops.to_vec()),
                    key_attributes: Some(KeyAttributes {
                        enabled: Some(true),
                        exportable: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                keys.create_key(&self.name, parameters.try_into()?, None)
                    .await?
                    .into_model()
            })
            .await?;
        let version = self.version_of("create", created.resource_id())?;
        tracing::info!(key = %self.name, %version, "created a Key Vault key pair");
        Ok(format!(
            "{algorithm} {kty} key {} version {version} (ops {}; in Key Vault, never exportable); \
             set key_version = \"{version}\" in its settings",
            self.name,
            ops.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> KeyConfig {
        toml::from_str(&format!("key_name = \"k\"\n{text}")).unwrap()
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
    }

    #[test]
    fn ill_fitting_settings_are_refused_naming_the_field() {
        let e = refused("algorithm = \"ed25519\"");
        assert_eq!(e.path, "algorithm");
        assert!(e.message.contains("not a Key Vault key type"), "{e}");
        let e = refused("algorithm = \"rsa-1024\"");
        assert_eq!(e.path, "algorithm");
        let e = refused("algorithm = \"ecdsa-p256\"\nmechanism = \"RSA_PKCS_OAEP\"");
        assert_eq!(e.path, "mechanism");
        let e = refused("mechanism = \"RSA_PKCS_OAEP\"");
        assert_eq!(e.path, "mechanism");
        let e = refused("algorithm = \"rsa-2048\"\nrsa_oaep_hash = \"sha256\"");
        assert_eq!(e.path, "rsa_oaep_hash");
        let e =
            refused("algorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha512\"");
        assert_eq!(e.path, "rsa_oaep_hash");
        assert!(e.message.contains("RSA-OAEP-256"), "{e}");
    }

    #[test]
    fn ecdsa_signs_only_with_its_curves_hash() {
        assert_eq!(
            signature_algorithm(KeyAlgorithm::EcdsaP384, SignScheme::Ecdsa(Hash::Sha384)).unwrap(),
            SignatureAlgorithm::Es384
        );
        let e = signature_algorithm(KeyAlgorithm::EcdsaP256, SignScheme::Ecdsa(Hash::Sha384)).unwrap_err();
        assert!(e.message.contains("only as ecdsa-sha256"), "{e}");
        assert_eq!(
            signature_algorithm(KeyAlgorithm::Rsa4096, SignScheme::RsaPss(Hash::Sha512)).unwrap(),
            SignatureAlgorithm::Ps512
        );
        let e = signature_algorithm(KeyAlgorithm::Rsa2048, SignScheme::Ed25519).unwrap_err();
        assert_eq!(e.kind, BackendErrorKind::InvalidInput);
    }

    #[test]
    fn a_jwk_reads_into_the_public_key_or_is_refused() {
        let mut ec = JsonWebKey {
            kty: Some(KeyType::EcHsm),
            crv: Some(CurveName::P256),
            x: Some(vec![1; 32]),
            y: Some(vec![2; 32]),
            ..Default::default()
        };
        let key = public_key_of(&ec).unwrap();
        assert_eq!(key.algorithm, KeyAlgorithm::EcdsaP256);
        assert_eq!(key.raw()[0], 4);
        ec.y = Some(vec![2; 31]);
        assert!(public_key_of(&ec).is_err());
        ec.crv = Some(CurveName::P521);
        assert_eq!(
            public_key_of(&ec).unwrap_err().kind,
            BackendErrorKind::InvalidInput
        );
        let rsa = JsonWebKey {
            kty: Some(KeyType::Rsa),
            n: Some(vec![0xc5; 256]),
            e: Some(vec![1, 0, 1]),
            ..Default::default()
        };
        assert_eq!(public_key_of(&rsa).unwrap().algorithm, KeyAlgorithm::Rsa2048);
        let oct = JsonWebKey {
            kty: Some(KeyType::Oct),
            ..Default::default()
        };
        assert!(public_key_of(&oct).is_err());
    }
}
