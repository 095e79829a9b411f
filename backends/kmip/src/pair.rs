//! KMIP key pairs (External Keys): an RSA pair on the KMIP server, a
//! Private Key and a Public Key object, that signs with RSA PKCS#1 v1.5.
//! The private key never leaves the server: it signs there (KMIP Sign), and
//! the broker reads only the public key (KMIP Get, PKCS#1 or X.509) to
//! verify.
//!
//! What the broker asks of the server, and why:
//! - **RSA only.** The KMIP server sealbroker is tested against (PyKMIP)
//!   makes and signs with RSA keys only; ECDSA and Ed25519 are refused in
//!   the config rather than offered untested.
//! - **Messages, not digests.** KMIP Sign is given the whole message (Data)
//!   and the server hashes it once. KMIP's Digested Data is optional and
//!   PyKMIP lacks it, so a digest is refused: nothing is hashed twice.
//! - **PKCS#1 v1.5, not PSS.** A KMIP server picks the PSS salt length
//!   itself (PyKMIP takes the longest), and the broker's `rsa-pss-*` schemes
//!   promise a salt as long as the hash, so PSS is refused.
//! - **No RSA-OAEP.** PyKMIP performs no asymmetric Encrypt or Decrypt
//!   ("Only symmetric encryption is currently supported"), so RSA-OAEP over
//!   KMIP could not be tested against a real server and is refused in the
//!   config.
//!
//! `keygen` and rotation make the pair with CreateKeyPair and activate both
//! halves: the private key is named `key_name`, the public key
//! `<key_name>/public` (the names the KMIP door serves key pairs under).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, ConfigError, Hash, KeyAlgorithm, NewVersion, PublicKey, Sealed,
    SecretBytes, SignInput, SignScheme,
};

use crate::error::CallError;
use crate::protocol::{KeyState, Operation, enums};
use crate::{KeyConfig, KeySelector, KmipPool};

/// The name of a pair's public key, from its private key's name.
pub(crate) fn public_name(private_name: &str) -> String {
    format!("{private_name}/public")
}

/// Reads `algorithm` (and refuses `mechanism` and `rsa_oaep_hash`):
/// `None` for an AES sealing key.
pub(crate) fn algorithm_from_config(config: &KeyConfig) -> Result<Option<KeyAlgorithm>, ConfigError> {
    for (field, value) in [
        ("mechanism", &config.mechanism),
        ("rsa_oaep_hash", &config.rsa_oaep_hash),
    ] {
        if let Some(value) = value {
            return Err(ConfigError::new(
                field,
                format!(
                    "{value:?}: the kmip backend's key pairs sign only. PyKMIP, the KMIP server sealbroker is \
                     tested against, performs no asymmetric Encrypt or Decrypt, so RSA-OAEP over KMIP is not \
                     offered untested; use a PKCS#11 token, a cloud KMS or OpenBao transit for RSA-OAEP"
                ),
            ));
        }
    }
    let Some(text) = config.algorithm.as_deref() else {
        for (field, set) in [
            ("public_key_id", config.public_key_id.is_some()),
            ("public_key_name", config.public_key_name.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    field,
                    "only key pairs have a public key; set `algorithm` for one, or leave this out",
                ));
            }
        }
        return Ok(None);
    };
    match KeyAlgorithm::parse(text) {
        Some(algorithm) if algorithm.rsa_bits().is_some() => Ok(Some(algorithm)),
        Some(other) => Err(ConfigError::new(
            "algorithm",
            format!(
                "\"{other}\": the kmip backend offers RSA key pairs only (rsa-2048, rsa-3072, rsa-4096); \
                 PyKMIP, the KMIP server it is tested against, makes no EC keys. Use a PKCS#11 token or a \
                 cloud KMS for ECDSA and Ed25519"
            ),
        )),
        None => Err(ConfigError::new(
            "algorithm",
            format!("{text:?} is not an algorithm; use rsa-2048, rsa-3072 or rsa-4096"),
        )),
    }
}

fn hash_value(hash: Hash) -> u32 {
    match hash {
        Hash::Sha256 => enums::HASH_SHA_256,
        Hash::Sha384 => enums::HASH_SHA_384,
        Hash::Sha512 => enums::HASH_SHA_512,
    }
}

/// An RSA key pair on a KMIP server.
pub struct KmipKeyPair {
    pool: KmipPool,
    private: KeySelector,
    public: KeySelector,
    algorithm: KeyAlgorithm,
    identity: String,
    /// The private and public Unique Identifiers, once checked.
    ids: Mutex<Option<(String, String)>>,
    public_key: Mutex<Option<PublicKey>>,
}

impl std::fmt::Debug for KmipKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipKeyPair")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl KmipKeyPair {
    pub(crate) fn new(
        pool: KmipPool,
        config: &KeyConfig,
        private: KeySelector,
        algorithm: KeyAlgorithm,
    ) -> Result<Self, ConfigError> {
        let public = match (&config.public_key_id, &config.public_key_name, &private) {
            (Some(_), Some(_), _) => {
                return Err(ConfigError::new(
                    "public_key_name",
                    "set either `public_key_id` or `public_key_name`, not both",
                ));
            }
            (Some(id), None, _) if !id.is_empty() => KeySelector::Id(id.clone()),
            (None, Some(name), _) if !name.is_empty() => KeySelector::Name(name.clone()),
            (Some(_), None, _) => return Err(ConfigError::new("public_key_id", "is empty")),
            (None, Some(_), _) => return Err(ConfigError::new("public_key_name", "is empty")),
            (None, None, KeySelector::Name(name)) => KeySelector::Name(public_name(name)),
            (None, None, KeySelector::Id(_)) => {
                return Err(ConfigError::new(
                    "public_key_id",
                    "a key pair selected by `kms_key_id` also needs its public key's Unique Identifier \
                     (or select the pair by `key_name`, whose public key is `<key_name>/public`)",
                ));
            }
        };
        let identity = format!("kmip:{}:{private}:{algorithm}", pool.endpoint());
        Ok(KmipKeyPair {
            pool,
            private,
            public,
            algorithm,
            identity,
            ids: Mutex::new(None),
            public_key: Mutex::new(None),
        })
    }

    fn subject(&self) -> String {
        format!("key pair {}", self.private)
    }

    fn fail(&self, operation: Operation) -> impl FnOnce(CallError) -> BackendError + '_ {
        move |e| {
            if e.says_key_changed() {
                // Look the pair up again next time: it may have been replaced.
                *self.ids.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            e.into_backend(operation, &self.subject(), self.pool.endpoint())
        }
    }

    /// The Unique Identifier `selector` names, checked with GetAttributes
    /// to be an Active RSA `object_type` of the configured size.
    async fn resolve(
        &self,
        selector: &KeySelector,
        object_type: u32,
        half: &str,
    ) -> Result<String, BackendError> {
        let endpoint = self.pool.endpoint();
        let unique_id = selector
            .unique_id(
                &self.pool,
                &format!(" (the {half} key)"),
                &format!("select the {half} key by id"),
            )
            .await?;
        let what = format!("{half} key {selector} (id {unique_id:?})");
        let attributes = self
            .pool
            .get_attributes(&unique_id)
            .await
            .map_err(|e| e.into_backend(Operation::GetAttributes, &what, endpoint))?;
        let bits = self.algorithm.rsa_bits().unwrap_or_default() as i32;
        let why = if attributes.object_type.is_some_and(|t| t != object_type) {
            Some(format!(
                "is not a {half} key (Object Type {:?})",
                attributes.object_type
            ))
        } else if attributes.algorithm.is_some_and(|a| a != enums::ALGORITHM_RSA) {
            Some(format!(
                "is not an RSA key (Cryptographic Algorithm {:?})",
                attributes.algorithm
            ))
        } else if attributes.length.is_some_and(|l| l != bits) {
            Some(format!(
                "is a {}-bit key; the config says {}",
                attributes.length.unwrap_or_default(),
                self.algorithm
            ))
        } else if attributes.state.is_some_and(|s| s != KeyState::Active) {
            Some(format!(
                "is in state {}; only an Active key pair is used",
                attributes.state.unwrap_or(KeyState::Active)
            ))
        } else {
            None
        };
        match why {
            Some(why) => Err(BackendError::new(
                BackendErrorKind::KeyNotFound,
                format!("{what} on KMIP server {endpoint} {why}"),
            )),
            None => Ok(unique_id),
        }
    }

    /// The private and public Unique Identifiers, checked once and cached.
    async fn ids(&self) -> Result<(String, String), BackendError> {
        if let Some(ids) = self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(ids);
        }
        let private = self
            .resolve(&self.private, enums::OBJECT_TYPE_PRIVATE_KEY, "private")
            .await?;
        let public = self
            .resolve(&self.public, enums::OBJECT_TYPE_PUBLIC_KEY, "public")
            .await?;
        let ids = (private, public);
        *self.ids.lock().unwrap_or_else(|p| p.into_inner()) = Some(ids.clone());
        Ok(ids)
    }

    fn refuse(&self, what: &str) -> BackendError {
        BackendError::new(
            BackendErrorKind::InvalidInput,
            format!("this KMIP key pair {what}"),
        )
    }
}

#[async_trait]
impl Backend for KmipKeyPair {
    fn kind(&self) -> &'static str {
        "kmip"
    }

    fn key_identity(&self) -> String {
        self.identity.clone()
    }

    fn algorithm(&self) -> Option<KeyAlgorithm> {
        Some(self.algorithm)
    }

    /// The pair named `<name>-v<version>` (and `<name>-v<version>/public`),
    /// as for AES keys.
    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        let name = self.private.version_name(version);
        let config = KeyConfig {
            key_name: Some(name.clone()),
            algorithm: Some(self.algorithm.as_str().to_owned()),
            ..Default::default()
        };
        let pair = KmipKeyPair::new(
            self.pool.clone(),
            &config,
            KeySelector::Name(name.clone()),
            self.algorithm,
        )
        .ok()?;
        Some(NewVersion {
            backend: Arc::new(pair),
            settings: BTreeMap::from([
                ("key_name".to_owned(), name),
                ("kms_key_id".to_owned(), String::new()),
                ("public_key_id".to_owned(), String::new()),
                ("public_key_name".to_owned(), String::new()),
            ]),
        })
    }

    /// A new pair named as [`derive_version`](Self::derive_version) names
    /// it, or the one already there (another replica, or a retried job,
    /// made it).
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let name = self.private.version_name(version);
        create_pair_on(&self.pool, &name, self.algorithm, true).await?;
        self.derive_version(version)
            .ok_or_else(|| BackendError::internal(format!("cannot select the KMIP key pair {name:?}")))
    }

    async fn public_key(&self) -> Result<PublicKey, BackendError> {
        if let Some(key) = self.public_key.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(key);
        }
        let (_, public_id) = self.ids().await?;
        let endpoint = self.pool.endpoint();
        let block = self
            .pool
            .get_public_key(&public_id)
            .await
            .map_err(self.fail(Operation::Get))?;
        let read = match block.format {
            enums::KEY_FORMAT_PKCS_1 => PublicKey::from_raw(self.algorithm, block.material),
            enums::KEY_FORMAT_X_509 => PublicKey::from_spki_der(&block.material),
            other => {
                return Err(BackendError::internal(format!(
                    "KMIP server {endpoint} returned the public key of {} in Key Format Type {other}; \
                     sealbroker reads PKCS#1 (3) and X.509 (5)",
                    self.subject()
                )));
            }
        };
        let key = read.map_err(|e| {
            BackendError::internal(format!(
                "KMIP server {endpoint} returned an unreadable public key for {}: {e}",
                self.subject()
            ))
        })?;
        if key.algorithm != self.algorithm {
            return Err(BackendError::new(
                BackendErrorKind::KeyNotFound,
                format!(
                    "the public key of {} on KMIP server {endpoint} is {}, but the config says {}",
                    self.subject(),
                    key.algorithm,
                    self.algorithm
                ),
            ));
        }
        *self.public_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
        Ok(key)
    }

    async fn sign(&self, scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        let hash = match scheme {
            SignScheme::RsaPkcs1v15(hash) => hash,
            SignScheme::RsaPss(hash) => {
                let hash = hash.as_str();
                return Err(self.refuse(&format!(
                    "signs with rsa-pkcs1-{hash}, not rsa-pss-{hash}: a KMIP server picks the PSS salt length \
                     itself (PyKMIP takes the longest), and rsa-pss promises a salt as long as the hash"
                )));
            }
            other => return Err(self.refuse(&format!("is RSA; it does not sign {}", other.name()))),
        };
        let SignInput::Message(message) = input else {
            return Err(self.refuse(
                "signs whole messages (KMIP Sign hashes the Data it is given); send the message, not a digest \
                 (prehashed = false)",
            ));
        };
        let (private_id, _) = self.ids().await?;
        self.pool
            .sign_pkcs1(&private_id, hash_value(hash), message)
            .await
            .map_err(self.fail(Operation::Sign))
    }

    async fn encrypt(&self, _secret: &[u8], _aad: &[u8]) -> Result<Sealed, BackendError> {
        Err(self.refuse(&format!(
            "is an {} key pair; it does not seal data keys (use an AES key for that)",
            self.algorithm
        )))
    }

    async fn decrypt(&self, _sealed: &Sealed, _aad: &[u8]) -> Result<SecretBytes, BackendError> {
        Err(self.refuse(&format!(
            "is an {} key pair; it does not open sealed data keys",
            self.algorithm
        )))
    }

    /// Signs a probe and checks it with the public key.
    async fn health(&self) -> Result<(), BackendError> {
        let scheme = self.algorithm.default_scheme();
        let input = SignInput::Message(b"sealbroker health probe");
        let signature = self.sign(scheme, input).await?;
        let public = self.public_key().await?;
        if public.verify(scheme, input, &signature) != Ok(true) {
            return Err(BackendError::internal(
                "health probe: the KMIP server's signature does not verify with its public key",
            ));
        }
        Ok(())
    }
}

/// Creates an RSA key pair named `name` (and `name/public`) and activates
/// both halves; returns the private and public Unique Identifiers. With
/// `reuse`, a complete pair already of that name is used instead (a
/// rotation another replica started); without it, any object of either name
/// is refused.
pub(crate) async fn create_pair_on(
    pool: &KmipPool,
    name: &str,
    algorithm: KeyAlgorithm,
    reuse: bool,
) -> Result<(String, String), BackendError> {
    let endpoint = pool.endpoint().to_owned();
    if name.is_empty() {
        return Err(BackendError::new(
            BackendErrorKind::InvalidInput,
            "the key name is empty",
        ));
    }
    let public = public_name(name);
    let existing = (pool.locate(name).await?, pool.locate(&public).await?);
    match (existing.0.as_slice(), existing.1.as_slice()) {
        ([], []) => {}
        ([private_id], [public_id]) if reuse => {
            tracing::info!(%endpoint, name, %private_id, %public_id, "the key pair version exists already; using it");
            return Ok((private_id.clone(), public_id.clone()));
        }
        (private, public_ids) => {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "KMIP server {endpoint} already has objects named {name:?} (ids [{}]) or {public:?} (ids [{}])",
                    private.join(", "),
                    public_ids.join(", ")
                ),
            ));
        }
    }
    let bits = algorithm.rsa_bits().unwrap_or_default() as i32;
    let subject = format!("an {algorithm} key pair named {name:?}");
    let (private_id, public_id) = pool
        .create_rsa_key_pair(bits, (name, enums::USAGE_SIGN), (&public, enums::USAGE_VERIFY))
        .await
        .map_err(|e| e.into_backend(Operation::CreateKeyPair, &subject, &endpoint))?;
    for unique_id in [&private_id, &public_id] {
        crate::activate_if_pre_active(pool, unique_id).await?;
    }
    tracing::info!(%endpoint, name, %private_id, %public_id, %algorithm, "created an RSA key pair on the KMIP server");
    Ok((private_id, public_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> KeyConfig {
        toml::from_str(text).unwrap()
    }

    fn algorithm(text: &str) -> Result<Option<KeyAlgorithm>, ConfigError> {
        algorithm_from_config(&config(text))
    }

    #[test]
    fn algorithm_makes_a_signing_pair() {
        assert_eq!(algorithm("key_name = \"k\"").unwrap(), None);
        assert_eq!(
            algorithm("key_name = \"k\"\nalgorithm = \"rsa-3072\"").unwrap(),
            Some(KeyAlgorithm::Rsa3072)
        );
    }

    #[test]
    fn refusals_name_the_field_and_say_why() {
        for (text, field, says) in [
            ("algorithm = \"ecdsa-p256\"", "algorithm", "RSA key pairs only"),
            ("algorithm = \"ed25519\"", "algorithm", "RSA key pairs only"),
            ("algorithm = \"rsa-1024\"", "algorithm", "is not an algorithm"),
            (
                "algorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"",
                "mechanism",
                "no asymmetric Encrypt",
            ),
            (
                "algorithm = \"rsa-2048\"\nrsa_oaep_hash = \"sha256\"",
                "rsa_oaep_hash",
                "sign only",
            ),
            ("public_key_name = \"p\"", "public_key_name", "only key pairs"),
        ] {
            let e = algorithm(&format!("key_name = \"k\"\n{text}")).unwrap_err();
            assert_eq!(e.path, field, "{text}: {e}");
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn versions_are_named_like_aes_keys() {
        let name = |s: &str| KeySelector::Name(s.into());
        assert_eq!(name("ca").version_name(2), "ca-v2");
        assert_eq!(name("ca-v2").version_name(3), "ca-v3");
        assert_eq!(KeySelector::Id("7".into()).version_name(2), "sealbroker-7-v2");
        assert_eq!(public_name("ca-v2"), "ca-v2/public");
    }
}
