//! OpenBao's stock seals, as the official KMS plugins (go-kms-wrapping
//! wrappers) run them: the seal stanza they read, the blobs they write.
//!
//! OpenBao ≤ 2.6 had `awskms`, `pkcs11`, `gcpckms` and `azurekeyvault`
//! built in; 2.7 offers them only as external plugins, and a plugin that
//! takes the seal's name stands in for it. A kind that can stand in for its
//! stock seal implements [`crate::BackendKind::open_stock_stanza`]: it reads
//! the stock stanza keys (and the environment variables the stock wrapper
//! reads), and returns a [`StockSeal`] that writes and reads the stock
//! blob format, so data sealed before the upgrade opens, and data sealed
//! after it still opens if the operator goes back to the stock plugin.
//!
//! The formats were re-implemented from go-kms-wrapping's public source.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::error::BackendError;
use crate::secret::SecretBytes;

/// go-kms-wrapping's `BlobInfo` with its `KeyInfo`, field for field. Only
/// ciphertext, IVs and wrapped keys: nothing here is secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockBlob {
    pub ciphertext: Vec<u8>,
    pub iv: Vec<u8>,
    /// `KeyInfo.mechanism`: what the wrapper did (e.g. awskms 1 = envelope).
    pub mechanism: u64,
    /// `KeyInfo.key_id`: the key that sealed it, as the wrapper names it.
    pub key_id: String,
    /// `KeyInfo.wrapped_key`: the envelope's data key, sealed by the KMS.
    pub wrapped_key: Vec<u8>,
    /// Whether the blob carried a `KeyInfo` at all (very old blobs did not,
    /// and the wrappers then assume their original mechanism).
    pub has_key_info: bool,
}

/// Why a stock stanza was refused, worded as the stock wrapper words it:
/// OpenBao shows it to the operator as `Error configuring seal: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StanzaError {
    pub message: String,
}

impl StanzaError {
    pub fn new(message: impl Into<String>) -> Self {
        StanzaError {
            message: message.into(),
        }
    }
}

/// A seal stanza as OpenBao sends it (`with_config_map`), with the
/// environment the stock wrapper would consult. Values may be secret (a
/// PIN, a secret key), so they are zeroed on drop and never printed.
pub struct StockStanza {
    values: BTreeMap<String, Zeroizing<String>>,
    env: EnvLookup,
}

/// Reads one environment variable.
type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl fmt::Debug for StockStanza {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key names only.
        f.debug_struct("StockStanza")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl StockStanza {
    /// Takes the stanza's values over (they are zeroed when this is dropped)
    /// and reads variables from the process environment.
    pub fn new(config: HashMap<String, String>) -> Self {
        Self::with_env(config, |name| std::env::var(name).ok())
    }

    /// As [`StockStanza::new`], with the environment given (tests).
    pub fn with_env(
        config: HashMap<String, String>,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        StockStanza {
            values: config.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect(),
            env: Box::new(env),
        }
    }

    /// A stanza value, as written (the stock wrappers do not trim).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|v| v.as_str())
    }

    /// The first of `keys` the stanza sets, as the wrappers' option parsers
    /// accept aliases (`lib` or `module`).
    pub fn get_any(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.get(k))
    }

    /// An environment variable, when set and not empty (the stock wrappers
    /// test `os.Getenv(..) != ""`).
    pub fn env(&self, name: &str) -> Option<Zeroizing<String>> {
        (self.env)(name).filter(|v| !v.is_empty()).map(Zeroizing::new)
    }

    /// The stanza's keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// A setting the stock wrappers take from the environment first: the
    /// first of `envs` that is set and not empty, else the stanza's `key`
    /// when not empty (the wrappers test `!= ""` both times).
    pub fn setting(&self, envs: &[&str], key: &str) -> Option<Zeroizing<String>> {
        envs.iter().find_map(|name| self.env(name)).or_else(|| {
            self.get(key)
                .filter(|v| !v.is_empty())
                .map(|v| Zeroizing::new(v.to_owned()))
        })
    }

    /// A stanza made of `pairs`, with the environment `env` and nothing else
    /// (tests of the stock stanzas).
    pub fn from_pairs(pairs: &[(&str, &str)], env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::with_env(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            move |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        )
    }

    /// The keys not in `known`, sorted: the stock wrappers ignore them, so
    /// a stand-in may only warn about them.
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<String> {
        self.keys()
            .filter(|k| !known.contains(k))
            .map(str::to_owned)
            .collect()
    }

    /// Resolves go-kms-wrapping's `ParsePaths` forms for a value that may
    /// be secret: `file://PATH` reads the file, `env://NAME` the variable;
    /// anything else is the value itself.
    pub fn resolve_path(&self, value: &str) -> Result<Zeroizing<String>, StanzaError> {
        if let Some(path) = value.strip_prefix("file://") {
            std::fs::read_to_string(path)
                .map(Zeroizing::new)
                .map_err(|e| StanzaError::new(format!("error reading file at {path}: {e}")))
        } else if let Some(name) = value.strip_prefix("env://") {
            (self.env)(name)
                .map(Zeroizing::new)
                .ok_or_else(|| StanzaError::new(format!("environment variable {name} unset")))
        } else {
            Ok(Zeroizing::new(value.to_owned()))
        }
    }
}

/// Go's `strconv.ParseBool`, which the stock wrappers use for flags such as
/// `key_not_required`, with its error text.
pub fn parse_go_bool(value: &str) -> Result<bool, StanzaError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(StanzaError::new(format!(
            "strconv.ParseBool: parsing {value:?}: invalid syntax"
        ))),
    }
}

/// One configured stock seal: what a stock plugin's wrapper instance is.
#[async_trait]
pub trait StockSeal: Send + Sync {
    /// The wrapper type OpenBao records (`awskms`): it must never change.
    fn seal_type(&self) -> &'static str;

    /// The key id OpenBao compares with the stored blobs' `key_id`: the same
    /// value the stock wrapper reports, or OpenBao re-wraps on every unseal.
    fn key_id(&self) -> String;

    /// Non-secret settings for OpenBao's start-up banner.
    fn metadata(&self) -> HashMap<String, String>;

    /// Seals `plaintext` into the stock blob format, binding `aad`.
    async fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<StockBlob, BackendError>;

    /// Opens a blob the stock wrapper (or [`StockSeal::encrypt`]) wrote.
    async fn decrypt(&self, blob: &StockBlob, aad: &[u8]) -> Result<SecretBytes, BackendError>;
}

/// go-kms-wrapping's envelope (`EnvelopeEncrypt`): the payload sealed under
/// a fresh random 32-byte data key with AES-256-GCM and a random 12-byte
/// nonce. The blob stores the nonce as `iv` and `ct || tag` as
/// `ciphertext`; the data key goes to the KMS.
///
/// OpenBao 2.5.0 wrote the nonce inside `ciphertext` with an empty `iv`;
/// opening `iv || ciphertext` reads both forms, as go-kms-wrapping does.
pub mod envelope {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    use ring::rand::{SecureRandom, SystemRandom};

    use crate::error::BackendError;
    use crate::secret::SecretBytes;

    /// The data key length: AES-256.
    pub const DEK_LEN: usize = 32;

    /// A sealed payload and the data key that opens it.
    pub struct Envelope {
        /// The data key: give it to the KMS, then drop it.
        pub dek: SecretBytes,
        /// The 12-byte nonce.
        pub iv: Vec<u8>,
        /// `ct || tag`.
        pub ciphertext: Vec<u8>,
    }

    fn key(dek: &[u8]) -> Result<LessSafeKey, BackendError> {
        UnboundKey::new(&AES_256_GCM, dek)
            .map(LessSafeKey::new)
            .map_err(|_| {
                BackendError::not_authentic(format!(
                    "the envelope's data key is {} bytes, not {DEK_LEN}",
                    dek.len()
                ))
            })
    }

    /// Seals `plaintext` under a fresh data key and nonce.
    pub fn seal(plaintext: &[u8], aad: &[u8]) -> Result<Envelope, BackendError> {
        let rng = SystemRandom::new();
        let mut dek = SecretBytes::new(vec![0u8; DEK_LEN]);
        let mut iv = [0u8; NONCE_LEN];
        rng.fill(dek.expose_mut())
            .and_then(|_| rng.fill(&mut iv))
            .map_err(|_| BackendError::internal("the system random number generator failed"))?;
        seal_with(dek, iv, plaintext, aad)
    }

    /// Seals with a given data key and nonce: for fixed test vectors only.
    /// A nonce must never be used twice with one key.
    pub fn seal_with(
        dek: SecretBytes,
        iv: [u8; NONCE_LEN],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Envelope, BackendError> {
        let mut ciphertext = plaintext.to_vec();
        key(dek.expose())?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut ciphertext)
            .map_err(|_| BackendError::internal("AES-GCM seal failed"))?;
        Ok(Envelope {
            dek,
            iv: iv.to_vec(),
            ciphertext,
        })
    }

    /// Opens `iv || ciphertext` (nonce, ct, tag) with the data key.
    pub fn open(
        dek: &SecretBytes,
        iv: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        let key = key(dek.expose())?;
        let mut joined = Vec::with_capacity(iv.len() + ciphertext.len());
        joined.extend_from_slice(iv);
        joined.extend_from_slice(ciphertext);
        if joined.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(BackendError::not_authentic(format!(
                "the envelope's nonce and ciphertext are {} bytes, shorter than a nonce and a tag",
                joined.len()
            )));
        }
        let mut body = SecretBytes::new(joined.split_off(NONCE_LEN));
        let nonce =
            Nonce::try_assume_unique_for_key(&joined).map_err(|_| BackendError::internal("nonce length"))?;
        let len = key
            .open_in_place(nonce, Aad::from(aad), body.expose_mut())
            .map_err(|_| {
                BackendError::not_authentic(
                    "the envelope does not open: wrong data key, AAD, or altered ciphertext",
                )
            })?
            .len();
        let mut plaintext = body.into_unprotected_vec();
        plaintext.truncate(len);
        Ok(SecretBytes::new(plaintext))
    }
}

#[cfg(test)]
mod tests {
    use super::envelope::{open, seal, seal_with};
    use super::*;

    // Derived with Python's `cryptography` AESGCM (independent of ring):
    // key = bytes(range(32)), nonce = bytes(range(12)),
    // AESGCM(key).encrypt(nonce, b"openbao root key", b"aad").hex()
    const VECTOR_CT: &str = "2872b375a784ad3bff2ef8ff91821d144741c41808a57ff97177317547555bba";

    fn dek() -> SecretBytes {
        SecretBytes::new((0u8..32).collect())
    }

    fn iv() -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        iv
    }

    #[test]
    fn envelope_matches_the_fixed_vector() {
        let sealed = seal_with(dek(), iv(), b"openbao root key", b"aad").unwrap();
        assert_eq!(hex::encode(&sealed.ciphertext), VECTOR_CT);
        assert_eq!(sealed.iv, iv().to_vec());
    }

    #[test]
    fn envelope_opens_the_fixed_vector_split_and_joined() {
        let ct = hex::decode(VECTOR_CT).unwrap();
        // OpenBao ≤ 2.4 and ≥ 2.5.1: nonce in `iv`, ct||tag in `ciphertext`.
        let opened = open(&dek(), &iv(), &ct, b"aad").unwrap();
        assert_eq!(opened.expose(), b"openbao root key");
        // OpenBao 2.5.0: empty `iv`, nonce||ct||tag in `ciphertext`.
        let mut joined = iv().to_vec();
        joined.extend_from_slice(&ct);
        let opened = open(&dek(), &[], &joined, b"aad").unwrap();
        assert_eq!(opened.expose(), b"openbao root key");
    }

    #[test]
    fn envelope_refuses_other_aad_key_and_tampering() {
        let ct = hex::decode(VECTOR_CT).unwrap();
        assert!(open(&dek(), &iv(), &ct, b"other").is_err());
        assert!(open(&SecretBytes::new(vec![7; 32]), &iv(), &ct, b"aad").is_err());
        let mut flipped = ct.clone();
        flipped[0] ^= 1;
        assert!(open(&dek(), &iv(), &flipped, b"aad").is_err());
        let Err(err) = open(&SecretBytes::new(vec![0; 16]), &iv(), &ct, b"aad") else {
            panic!("a 16-byte data key opened an AES-256 envelope");
        };
        assert!(err.to_string().contains("16 bytes"), "{err}");
        assert!(open(&dek(), &[], &ct[..10], b"aad").is_err());
    }

    #[test]
    fn envelope_round_trips_with_fresh_keys_and_nonces() {
        let a = seal(b"payload", b"").unwrap();
        let b = seal(b"payload", b"").unwrap();
        assert_ne!(a.iv, b.iv);
        assert_ne!(a.dek.expose(), b.dek.expose());
        assert_eq!(a.iv.len(), 12);
        assert_eq!(a.ciphertext.len(), b"payload".len() + 16);
        assert_eq!(
            open(&a.dek, &a.iv, &a.ciphertext, b"").unwrap().expose(),
            b"payload"
        );
    }

    #[test]
    fn go_bools_parse_as_strconv_does() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(parse_go_bool(yes).unwrap(), "{yes}");
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!parse_go_bool(no).unwrap(), "{no}");
        }
        assert_eq!(
            parse_go_bool("yes").unwrap_err().message,
            "strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
    }

    #[test]
    fn settings_take_the_first_set_env_var_then_the_stanza() {
        let stanza = StockStanza::from_pairs(
            &[("key_ring", "from-stanza"), ("empty", "")],
            &[("SECOND", "from-second"), ("BLANK", "")],
        );
        let get = |envs: &[&str], key: &str| stanza.setting(envs, key).map(|v| v.as_str().to_owned());
        assert_eq!(
            get(&["FIRST", "SECOND"], "key_ring").as_deref(),
            Some("from-second")
        );
        assert_eq!(get(&["BLANK"], "key_ring").as_deref(), Some("from-stanza"));
        assert_eq!(get(&["BLANK"], "empty"), None);
        assert_eq!(get(&[], "missing"), None);
    }

    #[test]
    fn stanza_reads_values_env_and_paths_without_printing_values() {
        let dir = std::env::temp_dir().join(format!("sealbroker-stanza-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "from-file").unwrap();
        let stanza = StockStanza::with_env(
            HashMap::from([
                ("region".to_owned(), "eu-west-1".to_owned()),
                ("secret_key".to_owned(), "hunter2".to_owned()),
                ("stray".to_owned(), String::new()),
            ]),
            |name| (name == "SET").then(|| "yes".to_owned()),
        );
        assert_eq!(stanza.get("region"), Some("eu-west-1"));
        assert_eq!(stanza.get_any(&["nope", "region"]), Some("eu-west-1"));
        assert_eq!(stanza.env("SET").as_deref().map(String::as_str), Some("yes"));
        assert!(stanza.env("UNSET").is_none());
        assert_eq!(
            stanza.unknown_keys(&["region", "secret_key"]),
            vec!["stray".to_owned()]
        );
        let debug = format!("{stanza:?}");
        assert!(
            debug.contains("secret_key") && !debug.contains("hunter2"),
            "{debug}"
        );
        let path = format!("file://{}", file.display());
        assert_eq!(stanza.resolve_path(&path).unwrap().as_str(), "from-file");
        assert_eq!(stanza.resolve_path("env://SET").unwrap().as_str(), "yes");
        let err = stanza.resolve_path("env://UNSET").unwrap_err();
        assert_eq!(err.message, "environment variable UNSET unset");
        assert_eq!(stanza.resolve_path("plain").unwrap().as_str(), "plain");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
