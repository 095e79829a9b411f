//! Transit key pairs (External Keys): an upstream transit key of type
//! `rsa-2048`, `rsa-3072`, `rsa-4096`, `ecdsa-p256`, `ecdsa-p384` or
//! `ed25519` signs through `POST <mount>/sign/<key>` and checks through
//! `verify/<key>`; an RSA key configured with `mechanism = "RSA_PKCS_OAEP"`
//! encrypts and decrypts with RSA-OAEP/SHA-256 through `encrypt/<key>` and
//! `decrypt/<key>`. The public key is `keys/<key>`'s, of the pinned version.
//!
//! Each broker key version signs with one upstream version (`key_version`,
//! by default the broker version's own number): an upstream rotation never
//! changes what an existing broker version signs or checks with.
//!
//! Messages and digests both go upstream as they are: a digest with
//! `prehashed = true` and its `hash_algorithm`, a message with
//! `prehashed = false` for the upstream to hash once. Ed25519 signs
//! messages only (the broker refuses a digest before it gets here). RSA-PSS
//! asks for `salt_length = "hash"`, the salt length ring and Go's
//! `PSSSaltLengthEqualsHash` check.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::{Method, StatusCode};
use sealbroker_core::{
    BackendError, BackendErrorKind, ConfigError, Hash, KeyAlgorithm, OaepHash, PublicKey, SecretBytes,
    SignInput, SignScheme,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::Call;
use crate::{KeyConfig, KeyShared, secret_json};

/// What a transit key is for, from its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// An AEAD key that seals data keys.
    Seal,
    /// A key pair that signs.
    Sign(KeyAlgorithm),
    /// An RSA key pair that encrypts with OAEP (SHA-256, as transit does).
    Oaep(KeyAlgorithm),
}

impl Purpose {
    /// Checks `algorithm`, `mechanism`, `rsa_oaep_hash` and `key_version`
    /// together; errors name the field.
    pub fn from_config(config: &KeyConfig) -> Result<Purpose, ConfigError> {
        let algorithm = match &config.algorithm {
            None => None,
            Some(text) => Some(KeyAlgorithm::parse(text).ok_or_else(|| {
                ConfigError::new(
                    "algorithm",
                    format!(
                        "{text:?} is not an algorithm; use one of {}",
                        KeyAlgorithm::names()
                    ),
                )
            })?),
        };
        let oaep = match config.mechanism.as_deref() {
            None => false,
            Some("RSA_PKCS_OAEP" | "CKM_RSA_PKCS_OAEP") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "mechanism",
                    format!(
                        "{other:?} is not a transit mechanism; set \"RSA_PKCS_OAEP\" for an RSA encryption key pair, or leave it out"
                    ),
                ));
            }
        };
        match config.rsa_oaep_hash.as_deref() {
            None | Some("sha256") if oaep || config.rsa_oaep_hash.is_none() => {}
            Some("sha256") => {
                return Err(ConfigError::new(
                    "rsa_oaep_hash",
                    "only an RSA encryption key pair (mechanism = \"RSA_PKCS_OAEP\") has an OAEP hash",
                ));
            }
            Some(other) => {
                return Err(ConfigError::new(
                    "rsa_oaep_hash",
                    format!(
                        "{other:?}: OpenBao transit does RSA-OAEP with SHA-256 only; set \"sha256\" or leave it out"
                    ),
                ));
            }
            None => {}
        }
        let purpose = match (algorithm, oaep) {
            (None, false) => Purpose::Seal,
            (None, true) => {
                return Err(ConfigError::new(
                    "mechanism",
                    "RSA_PKCS_OAEP needs an RSA key pair: set `algorithm = \"rsa-3072\"` (or 2048, 4096)",
                ));
            }
            (Some(algorithm), true) if algorithm.rsa_bits().is_some() => Purpose::Oaep(algorithm),
            (Some(algorithm), true) => {
                return Err(ConfigError::new(
                    "mechanism",
                    format!("RSA_PKCS_OAEP needs an RSA key; algorithm = \"{algorithm}\" signs only"),
                ));
            }
            (Some(algorithm), false) => Purpose::Sign(algorithm),
        };
        if purpose == Purpose::Seal && config.key_version.is_some() {
            return Err(ConfigError::new(
                "key_version",
                "only key pairs pin an upstream version; a sealing key's ciphertexts each name their own",
            ));
        }
        if config.key_version == Some(0) {
            return Err(ConfigError::new("key_version", "upstream versions start at 1"));
        }
        Ok(purpose)
    }

    pub fn algorithm(self) -> Option<KeyAlgorithm> {
        match self {
            Purpose::Seal => None,
            Purpose::Sign(a) | Purpose::Oaep(a) => Some(a),
        }
    }

    /// The upstream key type: transit spells the algorithms as the config does.
    pub fn transit_type(self) -> &'static str {
        match self {
            Purpose::Seal => "aes256-gcm96",
            Purpose::Sign(a) | Purpose::Oaep(a) => a.as_str(),
        }
    }

    fn what_it_is(self) -> String {
        match self {
            Purpose::Seal => "a sealing key".into(),
            Purpose::Sign(a) => format!("a {a} signing key pair"),
            Purpose::Oaep(a) => format!("an {a} RSA-OAEP encryption key pair"),
        }
    }
}

/// Transit's name for a hash.
fn hash_name(hash: Hash) -> &'static str {
    match hash {
        Hash::Sha256 => "sha2-256",
        Hash::Sha384 => "sha2-384",
        Hash::Sha512 => "sha2-512",
    }
}

/// The sign/verify parameters of `scheme` on `input`, without `input` or
/// the signature.
fn scheme_params(scheme: SignScheme, input: &SignInput<'_>) -> serde_json::Map<String, serde_json::Value> {
    let mut params = serde_json::Map::new();
    if let Some(hash) = scheme.hash() {
        params.insert("hash_algorithm".into(), json!(hash_name(hash)));
        params.insert("prehashed".into(), json!(input.is_digest()));
    }
    match scheme {
        SignScheme::RsaPss(_) => {
            params.insert("signature_algorithm".into(), json!("pss"));
            params.insert("salt_length".into(), json!("hash"));
        }
        SignScheme::RsaPkcs1v15(_) => {
            params.insert("signature_algorithm".into(), json!("pkcs1v15"));
        }
        SignScheme::Ecdsa(_) => {
            params.insert("marshaling_algorithm".into(), json!("asn1"));
        }
        SignScheme::Ed25519 => {}
    }
    params
}

fn input_bytes<'a>(input: &SignInput<'a>) -> &'a [u8] {
    match input {
        SignInput::Message(m) => m,
        SignInput::Digest(d) => d,
    }
}

/// `vault:vN:<base64>` → (N, the bytes).
fn parse_vault_value(text: &str) -> Option<(u32, Vec<u8>)> {
    let rest = text.strip_prefix("vault:v")?;
    let (version, body) = rest.split_once(':')?;
    Some((version.parse().ok()?, B64.decode(body).ok()?))
}

#[derive(Deserialize)]
struct Signed {
    signature: String,
}

#[derive(Deserialize)]
struct Verified {
    valid: bool,
}

#[derive(Deserialize)]
struct Encrypted {
    ciphertext: String,
}

#[derive(Deserialize)]
struct Decrypted {
    plaintext: SecretString,
}

impl KeyShared {
    /// Refuses what a key of another purpose was asked to do.
    pub(crate) fn refuse(&self, purpose: Purpose, doing: &str) -> BackendError {
        BackendError::new(
            BackendErrorKind::InvalidInput,
            format!(
                "transit key {:?} is {}: it does not {doing}",
                self.name,
                purpose.what_it_is()
            ),
        )
    }

    async fn post_json(
        &self,
        path: &str,
        what: &str,
        body: bytes::Bytes,
    ) -> Result<crate::client::Reply, BackendError> {
        let reply = self
            .client
            .execute(Call {
                method: Method::POST,
                path,
                what,
                body: Some(body),
            })
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(BackendError::new(
                BackendErrorKind::KeyNotFound,
                format!(
                    "{what}: upstream OpenBao at {} has no such transit key{}",
                    self.client.address,
                    self.client.namespace_note()
                ),
            ));
        }
        Ok(reply)
    }

    pub(crate) async fn sign_upstream(
        &self,
        version: u32,
        scheme: SignScheme,
        input: SignInput<'_>,
    ) -> Result<Vec<u8>, BackendError> {
        let what = self.what("sign");
        let mut body = scheme_params(scheme, &input);
        body.insert("input".into(), json!(B64.encode(input_bytes(&input))));
        body.insert("key_version".into(), json!(version));
        let path = format!("{}/sign/{}", self.client.mount, self.name);
        let reply = self.post_json(&path, &what, secret_json(&body, 256)?).await?;
        let signed: Signed = reply.data(&self.client, &what, false)?;
        match parse_vault_value(&signed.signature) {
            Some((v, signature)) if v == version => Ok(signature),
            Some((v, _)) => Err(BackendError::internal(format!(
                "{what}: upstream signed with version {v}, not the pinned {version}"
            ))),
            None => Err(BackendError::internal(format!(
                "{what}: upstream's signature is not `vault:vN:<base64>`"
            ))),
        }
    }

    pub(crate) async fn verify_upstream(
        &self,
        version: u32,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        let what = self.what("verify");
        let mut body = scheme_params(scheme, &input);
        body.insert("input".into(), json!(B64.encode(input_bytes(&input))));
        body.insert(
            "signature".into(),
            json!(format!("vault:v{version}:{}", B64.encode(signature))),
        );
        let path = format!("{}/verify/{}", self.client.mount, self.name);
        let reply = self.post_json(&path, &what, secret_json(&body, 256)?).await?;
        // A signature the upstream cannot even parse is not valid.
        if reply.status == StatusCode::BAD_REQUEST
            && reply.errors().iter().any(|e| e.contains("signature is invalid"))
        {
            return Ok(false);
        }
        let verified: Verified = reply.data(&self.client, &what, false)?;
        Ok(verified.valid)
    }

    /// The public key of upstream version `version`, from `keys/<key>`.
    pub(crate) async fn public_key_upstream(
        &self,
        version: u32,
        algorithm: KeyAlgorithm,
    ) -> Result<PublicKey, BackendError> {
        let info = self.refresh_info().await?;
        let what = self.what("read the public key of");
        let entry = info
            .keys
            .get(&version.to_string())
            .and_then(|v| v.get("public_key"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                BackendError::new(
                    BackendErrorKind::KeyNotFound,
                    format!(
                        "{what}: upstream transit key {:?} has no version {version} with a public key (latest is {})",
                        self.name, info.latest_version
                    ),
                )
            })?;
        let bad = |e: String| BackendError::internal(format!("{what}: {e}"));
        let public = if algorithm == KeyAlgorithm::Ed25519 {
            let raw = B64.decode(entry.trim()).map_err(|e| bad(e.to_string()))?;
            PublicKey::ed25519(&raw).map_err(|e| bad(e.to_string()))?
        } else {
            let body: String = entry.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = B64
                .decode(body)
                .map_err(|e| bad(format!("the PEM is not base64: {e}")))?;
            PublicKey::from_spki_der(&der).map_err(|e| bad(e.to_string()))?
        };
        if public.algorithm != algorithm {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "{what}: upstream version {version} holds a {} key, the config says {algorithm}",
                    public.algorithm
                ),
            ));
        }
        Ok(public)
    }

    pub(crate) async fn oaep_encrypt(&self, version: u32, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        let what = self.what("encrypt (RSA-OAEP)");
        let body = json!({
            "plaintext": Zeroizing::new(B64.encode(plaintext)).as_str(),
            "key_version": version,
        });
        let path = format!("{}/encrypt/{}", self.client.mount, self.name);
        let reply = self
            .post_json(&path, &what, secret_json(&body, 128 + plaintext.len() * 2)?)
            .await?;
        let encrypted: Encrypted = reply.data(&self.client, &what, false)?;
        match parse_vault_value(&encrypted.ciphertext) {
            Some((v, block)) if v == version => Ok(block),
            _ => Err(BackendError::internal(format!(
                "{what}: upstream's ciphertext is not `vault:v{version}:<base64>`"
            ))),
        }
    }

    pub(crate) async fn oaep_decrypt(
        &self,
        version: u32,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        let what = self.what("decrypt (RSA-OAEP)");
        let body = json!({ "ciphertext": format!("vault:v{version}:{}", B64.encode(ciphertext)) });
        let path = format!("{}/decrypt/{}", self.client.mount, self.name);
        let reply = self
            .post_json(&path, &what, secret_json(&body, 128 + ciphertext.len() * 2)?)
            .await?;
        // OpenBao answers a block that does not decrypt with HTTP 500
        // ("failed to RSA decrypt the ciphertext: crypto/rsa: decryption
        // error"), which is no outage.
        if reply.status == StatusCode::INTERNAL_SERVER_ERROR
            && reply.errors().iter().any(|e| e.contains("failed to RSA decrypt"))
        {
            return Err(BackendError::not_authentic(format!(
                "{what}: the ciphertext does not decrypt under upstream version {version}"
            )));
        }
        let decrypted: Decrypted = reply.data(&self.client, &what, true)?;
        B64.decode(decrypted.plaintext.expose_secret())
            .map(SecretBytes::new)
            .map_err(|_| BackendError::internal(format!("{what}: upstream's plaintext is not base64")))
    }

    /// Creates the upstream key: `POST <mount>/keys/<key>` with the type the
    /// settings name, never exportable, no plaintext backup. Refuses when
    /// the key exists.
    pub(crate) async fn create_upstream(&self, purpose: Purpose) -> Result<(), BackendError> {
        let what = self.what("create");
        let existing = self
            .client
            .execute(Call {
                method: Method::GET,
                path: &self.keys_path,
                what: &what,
                body: None,
            })
            .await?;
        if existing.status.is_success() {
            return Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!(
                    "upstream OpenBao at {} already has transit key {:?}; keygen makes new keys only",
                    self.client.address, self.name
                ),
            ));
        }
        let body = json!({
            "type": purpose.transit_type(),
            "exportable": false,
            "allow_plaintext_backup": false,
        });
        let reply = self
            .post_json(&self.keys_path, &what, secret_json(&body, 128)?)
            .await?;
        if !reply.status.is_success() {
            return Err(self
                .client
                .status_error(reply.status, &reply.errors(), &what, false));
        }
        Ok(())
    }
}

/// The OAEP hash of a transit RSA encryption key pair.
pub const TRANSIT_OAEP_HASH: OaepHash = OaepHash::Sha256;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(algorithm: Option<&str>, mechanism: Option<&str>, hash: Option<&str>) -> KeyConfig {
        KeyConfig {
            key_name: "k".into(),
            algorithm: algorithm.map(Into::into),
            mechanism: mechanism.map(Into::into),
            rsa_oaep_hash: hash.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn purposes_follow_the_settings() {
        assert_eq!(
            Purpose::from_config(&config(None, None, None)).unwrap(),
            Purpose::Seal
        );
        assert_eq!(
            Purpose::from_config(&config(Some("ecdsa-p384"), None, None)).unwrap(),
            Purpose::Sign(KeyAlgorithm::EcdsaP384)
        );
        assert_eq!(
            Purpose::from_config(&config(Some("rsa-3072"), Some("RSA_PKCS_OAEP"), Some("sha256"))).unwrap(),
            Purpose::Oaep(KeyAlgorithm::Rsa3072)
        );
        assert_eq!(Purpose::Sign(KeyAlgorithm::Ed25519).transit_type(), "ed25519");
    }

    #[test]
    fn ill_fitting_settings_name_the_field() {
        for (c, field, says) in [
            (
                config(Some("rsa-1024"), None, None),
                "algorithm",
                "is not an algorithm",
            ),
            (
                config(Some("ecdsa-p256"), Some("RSA_PKCS_OAEP"), None),
                "mechanism",
                "signs only",
            ),
            (
                config(None, Some("RSA_PKCS_OAEP"), None),
                "mechanism",
                "needs an RSA key pair",
            ),
            (
                config(Some("rsa-2048"), Some("AES_GCM"), None),
                "mechanism",
                "not a transit mechanism",
            ),
            (
                config(Some("rsa-2048"), Some("RSA_PKCS_OAEP"), Some("sha1")),
                "rsa_oaep_hash",
                "SHA-256 only",
            ),
            (
                config(Some("rsa-2048"), None, Some("sha256")),
                "rsa_oaep_hash",
                "only an RSA encryption",
            ),
        ] {
            let err = Purpose::from_config(&c).unwrap_err();
            assert_eq!(err.path, field, "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
        let mut pinned = config(None, None, None);
        pinned.key_version = Some(2);
        assert_eq!(Purpose::from_config(&pinned).unwrap_err().path, "key_version");
    }

    #[test]
    fn vault_values_parse_and_pss_asks_for_the_hash_length_salt() {
        assert_eq!(parse_vault_value("vault:v3:AAEC"), Some((3, vec![0, 1, 2])));
        assert_eq!(parse_vault_value("vault:3:AAEC"), None);
        assert_eq!(parse_vault_value("vault:v3:!!"), None);
        let params = scheme_params(SignScheme::RsaPss(Hash::Sha384), &SignInput::Digest(&[0; 48]));
        assert_eq!(params["salt_length"], "hash");
        assert_eq!(params["hash_algorithm"], "sha2-384");
        assert_eq!(params["prehashed"], true);
        let params = scheme_params(SignScheme::Ed25519, &SignInput::Message(b"m"));
        assert!(params.is_empty(), "{params:?}");
    }
}
