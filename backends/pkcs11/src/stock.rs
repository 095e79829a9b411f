//! Stands in for OpenBao's stock `pkcs11` seal (go-kms-wrapping's
//! `wrappers/pkcs11`), read from its public source:
//!
//! - Stanza keys: `lib` (or `module`), `slot`, `token_label` (or `token`),
//!   `pin`, `key_label` (or `label`), `key_id`, `mechanism`,
//!   `rsa_oaep_hash`, `disable_software_encryption`. Each is taken first
//!   from `BAO_HSM_<KEY>`, then `VAULT_HSM_<KEY>`, then the stanza. The
//!   PIN may be a `file://` or `env://` path. Unknown keys are ignored, as
//!   the stock wrapper ignores them.
//! - Blobs: the payload encrypted by the HSM key itself, with no AAD:
//!   AES-GCM with a fresh 12-byte IV in `iv` and `ct || tag` in
//!   `ciphertext`, or RSA-OAEP with an empty `iv`. `KeyInfo` carries only
//!   `key_id`, `"<key_label>:<key_id>"`; it names the key that opens it.
//! - KeyId: `"<key_label>:<key_id>"` of the configured key.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, Mechanism, Sealed, SecretBytes, StanzaError, StockBlob,
    StockSeal, StockStanza,
};
use secrecy::SecretString;

use crate::{BackendConfig, Dispatch, KeyConfig, MechanismName, OaepHash, Pkcs11Key, TokenPool};

/// The stanza keys the stock wrapper reads (with their aliases).
pub const STANZA_KEYS: &[&str] = &[
    "lib",
    "module",
    "slot",
    "token_label",
    "token",
    "pin",
    "key_label",
    "label",
    "key_id",
    "mechanism",
    "rsa_oaep_hash",
    "disable_software_encryption",
];

/// A setting: `BAO_HSM_<NAME>`, then `VAULT_HSM_<NAME>` (OpenBao's
/// `ReadBaoVariable`), then the stanza's keys.
fn setting(stanza: &StockStanza, env: &str, keys: &[&str]) -> Option<String> {
    stanza
        .env(&format!("BAO_HSM_{env}"))
        .or_else(|| stanza.env(&format!("VAULT_HSM_{env}")))
        .map(|v| v.as_str().to_owned())
        .or_else(|| stanza.get_any(keys).filter(|v| !v.is_empty()).map(str::to_owned))
}

/// Go's `numberAutoParse`: decimal, or hex after `0x`.
fn parse_slot(value: &str) -> Result<u64, StanzaError> {
    let value = value.to_ascii_lowercase();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse::<u32>(),
    };
    parsed
        .map(u64::from)
        .map_err(|_| StanzaError::new("Invalid slot number"))
}

/// `MechanismFromString`: the names the stock wrapper accepts, or a raw
/// `CKM_*` number (decimal, or hex after `0x`) of one this backend runs.
fn parse_mechanism(value: &str) -> Result<MechanismName, StanzaError> {
    match value {
        "CKM_AES_GCM" | "AES_GCM" => return Ok(MechanismName::AesGcm),
        "CKM_RSA_PKCS_OAEP" | "RSA_PKCS_OAEP" => return Ok(MechanismName::RsaPkcsOaep),
        "CKM_RSA_PKCS" | "RSA_PKCS" | "CKM_AES_CBC_PAD" | "AES_CBC_PAD" => {
            return Err(StanzaError::new(format!("deprecated mechanism: {value}")));
        }
        _ => {}
    }
    match parse_slot(value) {
        Ok(0x1087) => Ok(MechanismName::AesGcm),
        Ok(0x9) => Ok(MechanismName::RsaPkcsOaep),
        _ => Err(StanzaError::new(format!("unsupported mechanism: {value}"))),
    }
}

fn parse_oaep_hash(value: &str) -> Result<OaepHash, StanzaError> {
    match value.to_ascii_lowercase().as_str() {
        "sha1" => Ok(OaepHash::Sha1),
        "sha224" => Ok(OaepHash::Sha224),
        "sha256" => Ok(OaepHash::Sha256),
        "sha384" => Ok(OaepHash::Sha384),
        "sha512" => Ok(OaepHash::Sha512),
        // The stock wrapper says this at the first encrypt; we say it at start.
        lower => Err(StanzaError::new(format!("unsupported mechanism: {lower}"))),
    }
}

/// What the stanza says, before the module is touched.
pub(crate) struct Pkcs11Stanza {
    pub backend: BackendConfig,
    pub key: KeyConfig,
    /// `key_label` as configured, for the `"<label>:<id>"` key id.
    pub key_label: String,
    /// `key_id` without its `0x`, as the stock wrapper keeps it.
    pub key_id: String,
}

impl Pkcs11Stanza {
    pub(crate) fn parse(stanza: &StockStanza) -> Result<Self, StanzaError> {
        let unknown = stanza.unknown_keys(STANZA_KEYS);
        if !unknown.is_empty() {
            tracing::warn!(
                keys = %unknown.join(", "),
                "seal \"pkcs11\" has keys the stock pkcs11 seal ignores; ignoring them too"
            );
        }
        // The stock wrapper's checks, in its order and words.
        let lib =
            setting(stanza, "LIB", &["lib", "module"]).ok_or_else(|| StanzaError::new("lib is required"))?;
        let slot = setting(stanza, "SLOT", &["slot"]);
        let token_label = setting(stanza, "TOKEN_LABEL", &["token_label", "token"]);
        if slot.is_none() && token_label.is_none() {
            return Err(StanzaError::new("slot or token label required"));
        }
        let pin = match stanza.env("BAO_HSM_PIN").or_else(|| stanza.env("VAULT_HSM_PIN")) {
            Some(pin) => pin,
            None => match stanza.get("pin").filter(|v| !v.is_empty()) {
                Some(value) => stanza.resolve_path(value)?,
                None => return Err(StanzaError::new("pin is required")),
            },
        };
        let key_id = setting(stanza, "KEY_ID", &["key_id"])
            .map(|id| id.strip_prefix("0x").unwrap_or(&id).to_owned())
            .unwrap_or_default();
        let key_label = setting(stanza, "KEY_LABEL", &["key_label", "label"]).unwrap_or_default();
        if key_id.is_empty() && key_label.is_empty() {
            return Err(StanzaError::new("key id or key label required"));
        }
        let mechanism = setting(stanza, "MECHANISM", &["mechanism"])
            .map(|m| parse_mechanism(&m))
            .transpose()?
            .unwrap_or_default();
        let rsa_oaep_hash = setting(stanza, "RSA_OAEP_HASH", &["rsa_oaep_hash"])
            .map(|h| parse_oaep_hash(&h))
            .transpose()?
            .unwrap_or_default();
        if let Some(value) = setting(
            stanza,
            "DISABLE_SOFTWARE_ENCRYPTION",
            &["disable_software_encryption"],
        ) {
            sealbroker_core::stock::parse_go_bool(&value)?;
        }
        let slot = slot.map(|s| parse_slot(&s)).transpose()?;
        let backend = BackendConfig {
            lib: lib.into(),
            // The stock wrapper looks a token up by label when it has one.
            slot: if token_label.is_some() { None } else { slot },
            token_label,
            pin: Some(SecretString::from(pin.as_str().to_owned())),
            pin_file: None,
            max_sessions: crate::default_max_sessions(),
            dispatch: Dispatch::default(),
            // The stock plugin loads the module in its own process, and so
            // does the drop-in (it opens the pool directly).
            isolation: Some(crate::supervisor::Isolation::InProcess),
            helper_env: crate::default_helper_env(),
            helper_uid: None,
            helper_gid: None,
            timeout_secs: crate::default_timeout_secs(),
        };
        let key = KeyConfig {
            key_label: (!key_label.is_empty()).then(|| key_label.clone()),
            key_id: (!key_id.is_empty()).then(|| key_id.clone()),
            mechanism,
            rsa_oaep_hash,
            algorithm: None,
        };
        Ok(Pkcs11Stanza {
            backend,
            key,
            key_label,
            key_id,
        })
    }
}

/// A configured stand-in for one stock `pkcs11` wrapper instance.
pub(crate) struct Pkcs11StockSeal {
    pool: TokenPool,
    key: Pkcs11Key,
    config: KeyConfig,
    key_id: String,
    metadata: HashMap<String, String>,
}

impl Pkcs11StockSeal {
    /// Builds the session pool and, as the stock wrapper does, opens a
    /// logged-in session: a wrong module, token or PIN fails here.
    pub(crate) async fn open(stanza: &StockStanza) -> Result<Self, StanzaError> {
        let parsed = Pkcs11Stanza::parse(stanza)?;
        let pool = parsed
            .backend
            .pool()
            .map_err(|e| StanzaError::new(format!("failed to initialize PKCS11: {e}")))?;
        pool.run(|_session, _generation| Ok(()))
            .await
            .map_err(|e| StanzaError::new(crate::op_error(e, false).message))?;
        let key = Pkcs11Key::new(pool.clone(), &parsed.key).map_err(|e| StanzaError::new(e.to_string()))?;
        let mut metadata = HashMap::from([
            ("lib".to_owned(), parsed.backend.lib.display().to_string()),
            ("key_label".to_owned(), parsed.key_label.clone()),
            ("key_id".to_owned(), parsed.key_id.clone()),
        ]);
        if let Some(slot) = parsed.backend.slot {
            metadata.insert("slot".to_owned(), slot.to_string());
        }
        if let Some(label) = &parsed.backend.token_label {
            metadata.insert("token_label".to_owned(), label.clone());
        }
        Ok(Pkcs11StockSeal {
            pool,
            key,
            key_id: format!("{}:{}", parsed.key_label, parsed.key_id),
            config: parsed.key,
            metadata,
        })
    }

    /// The key a blob names (`"<label>:<id>"`), on the same token.
    fn key_for(&self, blob: &StockBlob) -> Result<Option<Pkcs11Key>, BackendError> {
        if !blob.has_key_info || blob.key_id == self.key_id {
            return Ok(None);
        }
        let (label, id) = blob
            .key_id
            .rsplit_once(':')
            .ok_or_else(|| BackendError::new(BackendErrorKind::InvalidInput, "Invalid key format"))?;
        let config = KeyConfig {
            key_label: (!label.is_empty()).then(|| label.to_owned()),
            key_id: (!id.is_empty()).then(|| id.to_owned()),
            ..self.config.clone()
        };
        Pkcs11Key::new(self.pool.clone(), &config)
            .map(Some)
            .map_err(|e| BackendError::new(BackendErrorKind::InvalidInput, e.to_string()))
    }
}

#[async_trait]
impl StockSeal for Pkcs11StockSeal {
    fn seal_type(&self) -> &'static str {
        "pkcs11"
    }

    fn key_id(&self) -> String {
        self.key_id.clone()
    }

    fn metadata(&self) -> HashMap<String, String> {
        self.metadata.clone()
    }

    async fn encrypt(&self, plaintext: &[u8], _aad: &[u8]) -> Result<StockBlob, BackendError> {
        // The stock wrapper binds no AAD.
        let sealed = self.key.encrypt(plaintext, b"").await?;
        Ok(StockBlob {
            ciphertext: sealed.ciphertext,
            iv: sealed.iv,
            mechanism: 0,
            key_id: self.key_id.clone(),
            wrapped_key: Vec::new(),
            has_key_info: true,
        })
    }

    async fn decrypt(&self, blob: &StockBlob, _aad: &[u8]) -> Result<SecretBytes, BackendError> {
        let sealed = match self.config.mechanism {
            MechanismName::AesGcm => Sealed {
                mechanism: Mechanism::Aes256Gcm,
                iv: blob.iv.clone(),
                ciphertext: blob.ciphertext.clone(),
                ..Default::default()
            },
            MechanismName::RsaPkcsOaep => Sealed {
                mechanism: Mechanism::RsaOaep,
                ciphertext: blob.ciphertext.clone(),
                oaep_hash: self.config.rsa_oaep_hash.name().to_owned(),
                ..Default::default()
            },
        };
        match self.key_for(blob)? {
            Some(other) => other.decrypt(&sealed, b"").await,
            None => self.key.decrypt(&sealed, b"").await,
        }
        .map_err(|e| BackendError::new(e.kind, format!("failed to pkcs11 Decrypt: {}", e.message)))
    }
}

/// `open_stock_stanza` for the `pkcs11` kind.
pub(crate) async fn open(stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
    Ok(Arc::new(Pkcs11StockSeal::open(stanza).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn stanza(pairs: &[(&str, &str)], env: &[(&str, &str)]) -> StockStanza {
        StockStanza::from_pairs(pairs, env)
    }

    const FULL: &[(&str, &str)] = &[
        ("lib", "/usr/lib/softhsm/libsofthsm2.so"),
        ("token_label", "openbao"),
        ("pin", "1234"),
        ("key_label", "unseal"),
        ("mechanism", "CKM_AES_GCM"),
    ];

    fn error(pairs: &[(&str, &str)]) -> String {
        Pkcs11Stanza::parse(&stanza(pairs, &[])).err().unwrap().message
    }

    #[test]
    fn the_stock_stanza_maps_onto_the_backend() {
        let parsed = Pkcs11Stanza::parse(&stanza(FULL, &[])).unwrap();
        assert_eq!(parsed.backend.token_label.as_deref(), Some("openbao"));
        assert_eq!(parsed.backend.pin.as_ref().unwrap().expose_secret(), "1234");
        assert_eq!(parsed.key.key_label.as_deref(), Some("unseal"));
        assert_eq!(parsed.key.mechanism, MechanismName::AesGcm);
        assert_eq!(format!("{}:{}", parsed.key_label, parsed.key_id), "unseal:");
    }

    #[test]
    fn env_wins_bao_before_vault_and_aliases_count() {
        let s = stanza(
            &[
                ("module", "/lib.so"),
                ("token", "t"),
                ("pin", "p"),
                ("label", "l"),
                ("key_id", "0x0A"),
            ],
            &[("VAULT_HSM_KEY_LABEL", "vault"), ("BAO_HSM_SLOT", "0x10")],
        );
        let parsed = Pkcs11Stanza::parse(&s).unwrap();
        assert_eq!(parsed.backend.lib.to_str(), Some("/lib.so"));
        assert_eq!(parsed.key_label, "vault");
        assert_eq!(parsed.key_id, "0A");
        // A token label wins over a slot, as in the stock wrapper.
        assert_eq!(parsed.backend.slot, None);
        let s = stanza(
            &[("lib", "/l.so"), ("pin", "p"), ("key_label", "k")],
            &[("BAO_HSM_SLOT", "0x10")],
        );
        assert_eq!(Pkcs11Stanza::parse(&s).unwrap().backend.slot, Some(16));
    }

    #[test]
    fn missing_keys_are_reported_as_the_stock_wrapper_reports_them() {
        assert_eq!(error(&[]), "lib is required");
        assert_eq!(error(&[("lib", "/l.so")]), "slot or token label required");
        assert_eq!(error(&[("lib", "/l.so"), ("slot", "0")]), "pin is required");
        assert_eq!(
            error(&[("lib", "/l.so"), ("slot", "0"), ("pin", "p")]),
            "key id or key label required"
        );
        assert_eq!(
            error(&[
                ("lib", "/l.so"),
                ("slot", "zero"),
                ("pin", "p"),
                ("key_label", "k")
            ]),
            "Invalid slot number"
        );
    }

    #[test]
    fn bad_mechanisms_are_reported_as_the_stock_wrapper_reports_them() {
        let with = |mechanism: &'static str| {
            let mut pairs = FULL.to_vec();
            pairs.retain(|(k, _)| *k != "mechanism");
            pairs.push(("mechanism", mechanism));
            error(&pairs)
        };
        assert_eq!(with("AES_CBC"), "unsupported mechanism: AES_CBC");
        assert_eq!(with("CKM_RSA_PKCS"), "deprecated mechanism: CKM_RSA_PKCS");
        let mut pairs = FULL.to_vec();
        pairs.push(("rsa_oaep_hash", "MD5"));
        assert_eq!(error(&pairs), "unsupported mechanism: md5");
        assert_eq!(parse_mechanism("0x1087").unwrap(), MechanismName::AesGcm);
        assert_eq!(parse_mechanism("9").unwrap(), MechanismName::RsaPkcsOaep);
        assert_eq!(
            parse_mechanism("0x1").err().unwrap().message,
            "unsupported mechanism: 0x1"
        );
    }

    #[test]
    fn unknown_keys_are_ignored_like_the_stock_wrapper_does() {
        let mut pairs = FULL.to_vec();
        pairs.push(("no_such_key", "x"));
        assert!(Pkcs11Stanza::parse(&stanza(&pairs, &[])).is_ok());
    }

    #[test]
    fn the_pin_takes_paths_and_stays_out_of_errors() {
        let s = stanza(
            &[
                ("lib", "/l.so"),
                ("slot", "0"),
                ("pin", "env://PIN"),
                ("key_label", "k"),
                ("mechanism", "nope"),
            ],
            &[("PIN", "DO-NOT-LEAK")],
        );
        let err = Pkcs11Stanza::parse(&s).err().unwrap();
        assert!(!err.message.contains("DO-NOT-LEAK"));
        let s = stanza(
            &[
                ("lib", "/l.so"),
                ("slot", "0"),
                ("pin", "env://PIN"),
                ("key_label", "k"),
            ],
            &[("PIN", "DO-NOT-LEAK")],
        );
        let parsed = Pkcs11Stanza::parse(&s).unwrap();
        assert_eq!(parsed.backend.pin.unwrap().expose_secret(), "DO-NOT-LEAK");
    }
}
