//! Stands in for OpenBao's stock `gcpckms` seal (go-kms-wrapping's
//! `wrappers/gcpckms`), read from its public source:
//!
//! - Stanza keys: `project`, `region`, `key_ring`, `crypto_key`,
//!   `credentials`, `credentials_json`, `credentials_type`,
//!   `credentials_scopes`, `user_agent`, `key_not_required`. The project
//!   comes from `GOOGLE_PROJECT`, then `project`; the location from
//!   `GOOGLE_REGION`, then `region`; the key ring from
//!   `GCPCKMS_WRAPPER_KEY_RING`, then `VAULT_GCPCKMS_SEAL_KEY_RING`, then
//!   `key_ring`; the key from `GCPCKMS_WRAPPER_CRYPTO_KEY`, then
//!   `VAULT_GCPCKMS_SEAL_CRYPTO_KEY`, then `crypto_key`; the credentials
//!   file from `GOOGLE_CREDENTIALS`, then `credentials` (which may be a
//!   `file://` or `env://` path), then `credentials_json` (with
//!   `credentials_type`), then Application Default Credentials. Unknown keys
//!   are ignored, as the stock wrapper ignores them.
//! - Blobs: mechanism 1 (envelope): the payload under a fresh AES-256-GCM
//!   data key ([`sealbroker_core::stock::envelope`]), the data key
//!   encrypted by Cloud KMS (no additional authenticated data) into
//!   `wrapped_key`, and `key_id` the `CryptoKeyVersion` Cloud KMS names in
//!   its answer. Mechanism 0 (a blob with no KeyInfo, from very old Vaults):
//!   the payload encrypted by Cloud KMS directly. Both are decrypted on the
//!   `CryptoKey` (Cloud KMS finds the version in the ciphertext).
//! - KeyId: the primary `CryptoKeyVersion` that `GetCryptoKey` reports at
//!   configuration, then the version of the latest `Encrypt`.
//!
//! The stock wrapper has no endpoint option. For tests against the
//! in-repo stand-in only, `SEALBROKER_TEST_GCPCKMS_ENDPOINT` points the
//! client elsewhere (docs/openbao.md says so).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use google_cloud_gax::options::RequestOptionsBuilder;
use sealbroker_core::stock::{envelope, parse_go_bool};
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, Mechanism, Sealed, SecretBytes, StanzaError, StockBlob,
    StockSeal, StockStanza,
};
use zeroize::Zeroizing;

use crate::{BackendConfig, GcpKmsKey, KeyConfig, METADATA_KEY_VERSION, connect_with};

/// `GcpCkmsEncrypt`: the payload was encrypted by Cloud KMS itself.
pub const MECHANISM_KMS_ENCRYPT: u64 = 0;
/// `GcpCkmsEnvelopeAesGcmEncrypt`: the go-kms-wrapping envelope.
pub const MECHANISM_ENVELOPE: u64 = 1;

/// Test-only: the Cloud KMS endpoint (the stock wrapper has none).
pub const TEST_ENDPOINT_ENV: &str = "SEALBROKER_TEST_GCPCKMS_ENDPOINT";

/// The stanza keys the stock wrapper reads.
pub const STANZA_KEYS: &[&str] = &[
    "project",
    "region",
    "key_ring",
    "crypto_key",
    "credentials",
    "credentials_json",
    "credentials_type",
    "credentials_scopes",
    "user_agent",
    "key_not_required",
];

/// What the stanza says, before any network call.
pub(crate) struct GcpStanza {
    pub project: String,
    pub region: String,
    pub key_ring: String,
    /// Empty only with `key_not_required`.
    pub crypto_key: String,
    pub key_not_required: bool,
    /// A credentials file (`GOOGLE_CREDENTIALS` or `credentials`).
    pub credentials_file: Option<String>,
    /// `credentials_json`, used when both it and `credentials_type` are set.
    credentials_json: Option<Zeroizing<String>>,
    pub endpoint: Option<String>,
}

impl GcpStanza {
    pub(crate) fn parse(stanza: &StockStanza) -> Result<Self, StanzaError> {
        let unknown = stanza.unknown_keys(STANZA_KEYS);
        if !unknown.is_empty() {
            tracing::warn!(
                keys = %unknown.join(", "),
                "seal \"gcpckms\" has keys the stock gcpckms seal ignores; ignoring them too"
            );
        }
        // Parsed whenever present, as the stock option parser does.
        let key_not_required = match stanza.get("key_not_required") {
            Some(value) => parse_go_bool(value)?,
            None => false,
        };
        let credentials_file = match stanza.env("GOOGLE_CREDENTIALS") {
            Some(path) => Some(path.as_str().to_owned()),
            None => match stanza.get("credentials").filter(|v| !v.is_empty()) {
                Some(value) => Some(stanza.resolve_path(value)?.as_str().to_owned()),
                None => None,
            },
        };
        let required = |envs: &[&str], key: &str| {
            stanza
                .setting(envs, key)
                .map(|v| v.as_str().to_owned())
                .ok_or_else(|| {
                    StanzaError::new(format!("'{key}' not found for GCP CKMS wrapper configuration"))
                })
        };
        let project = required(&["GOOGLE_PROJECT"], "project")?;
        let region = required(&["GOOGLE_REGION"], "region")?;
        let key_ring = required(
            &["GCPCKMS_WRAPPER_KEY_RING", "VAULT_GCPCKMS_SEAL_KEY_RING"],
            "key_ring",
        )?;
        let crypto_key = match required(
            &["GCPCKMS_WRAPPER_CRYPTO_KEY", "VAULT_GCPCKMS_SEAL_CRYPTO_KEY"],
            "crypto_key",
        ) {
            Ok(key) => key,
            Err(_) if key_not_required => String::new(),
            Err(e) => return Err(e),
        };
        let credentials_json = match (stanza.get("credentials_json"), stanza.get("credentials_type")) {
            (Some(json), Some(kind)) if !json.is_empty() && !kind.is_empty() => {
                let declared = serde_json::from_str::<serde_json::Value>(json)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                if declared != kind {
                    return Err(StanzaError::new(format!(
                        "error initializing GCP CKMS wrapper client: failed to create credentials from provided \
                         configuration: credentials_type is {kind:?} but the credentials_json's type is \
                         {declared:?}"
                    )));
                }
                Some(Zeroizing::new(json.to_owned()))
            }
            _ => None,
        };
        if stanza.get("credentials_scopes").is_some_and(|v| !v.is_empty()) {
            tracing::warn!(
                "seal \"gcpckms\": credentials_scopes is ignored; sealbroker asks for Cloud KMS's default scope"
            );
        }
        Ok(GcpStanza {
            project,
            region,
            key_ring,
            crypto_key,
            key_not_required,
            credentials_file,
            credentials_json,
            endpoint: stanza.env(TEST_ENDPOINT_ENV).map(|v| v.as_str().to_owned()),
        })
    }

    /// `projects/P/locations/L/keyRings/R/cryptoKeys/K`, as the stock
    /// wrapper's `ParentName`.
    pub(crate) fn parent_name(&self) -> String {
        format!(
            "projects/{}/locations/{}/keyRings/{}/cryptoKeys/{}",
            self.project, self.region, self.key_ring, self.crypto_key
        )
    }
}

/// A configured stand-in for one stock `gcpckms` wrapper instance.
pub(crate) struct GcpStockSeal {
    /// `None` with `key_not_required` and no key.
    key: Option<GcpKmsKey>,
    current_key_id: Mutex<String>,
    metadata: HashMap<String, String>,
}

impl GcpStockSeal {
    /// Builds the client and, unless `key_not_required`, reads the key as
    /// the stock wrapper does: a wrong key or unreachable service fails here.
    pub(crate) async fn open(stanza: &StockStanza) -> Result<Self, StanzaError> {
        let parsed = GcpStanza::parse(stanza)?;
        let config = BackendConfig {
            endpoint: parsed.endpoint.clone(),
            credentials_file: parsed.credentials_file.clone().map(Into::into),
            timeout_ms: crate::default_timeout_ms(),
            retry: Default::default(),
        };
        let client = connect_with(
            &config,
            parsed
                .credentials_json
                .as_ref()
                .map(|json| (json.as_str(), "seal \"gcpckms\" credentials_json")),
        )
        .await
        .map_err(|e| StanzaError::new(format!("error initializing GCP CKMS wrapper client: {e}")))?;
        let metadata = HashMap::from([
            ("project".to_owned(), parsed.project.clone()),
            ("region".to_owned(), parsed.region.clone()),
            ("key_ring".to_owned(), parsed.key_ring.clone()),
            ("crypto_key".to_owned(), parsed.crypto_key.clone()),
        ]);
        let key = if parsed.crypto_key.is_empty() {
            None
        } else {
            let key_config = KeyConfig {
                key_name: parsed.parent_name(),
                ..Default::default()
            };
            Some(GcpKmsKey::new(&client, &key_config).map_err(|e| StanzaError::new(e.to_string()))?)
        };
        let mut current = String::new();
        if let (Some(key), false) = (&key, parsed.key_not_required) {
            let kms = &key.client.0.kms;
            let described = key
                .call("GetCryptoKey", || {
                    kms.get_crypto_key()
                        .set_name(&key.key_name)
                        .with_attempt_timeout(key.client.0.timeout)
                        .send()
                })
                .await
                .map_err(|e| StanzaError::new(format!("error checking key existence: {e}")))?;
            current = described.primary.map(|p| p.name).unwrap_or_default();
        }
        Ok(GcpStockSeal {
            key,
            current_key_id: Mutex::new(current),
            metadata,
        })
    }

    fn key(&self) -> Result<&GcpKmsKey, BackendError> {
        self.key.as_ref().ok_or_else(|| {
            BackendError::new(
                BackendErrorKind::InvalidInput,
                "'crypto_key' not found for GCP CKMS wrapper configuration",
            )
        })
    }

    /// Cloud KMS `Decrypt` on the `CryptoKey`, with no AAD.
    async fn kms_decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        let sealed = Sealed {
            mechanism: Mechanism::ServiceDefined,
            ciphertext: ciphertext.to_vec(),
            ..Default::default()
        };
        self.key()?.decrypt(&sealed, b"").await
    }
}

fn prefixed(prefix: &str, e: BackendError) -> BackendError {
    BackendError::new(e.kind, format!("{prefix}: {}", e.message))
}

#[async_trait]
impl StockSeal for GcpStockSeal {
    fn seal_type(&self) -> &'static str {
        "gcpckms"
    }

    fn key_id(&self) -> String {
        self.current_key_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn metadata(&self) -> HashMap<String, String> {
        self.metadata.clone()
    }

    async fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<StockBlob, BackendError> {
        let sealed = envelope::seal(plaintext, aad).map_err(|e| prefixed("error wrapping data", e))?;
        // No AAD to Cloud KMS: the stock wrapper sends none.
        let wrapped = self.key()?.encrypt(sealed.dek.expose(), b"").await?;
        let version = wrapped
            .metadata
            .get(METADATA_KEY_VERSION)
            .cloned()
            .unwrap_or_default();
        *self.current_key_id.lock().unwrap_or_else(|p| p.into_inner()) = version.clone();
        Ok(StockBlob {
            ciphertext: sealed.ciphertext,
            iv: sealed.iv,
            mechanism: MECHANISM_ENVELOPE,
            key_id: version,
            wrapped_key: wrapped.ciphertext,
            has_key_info: true,
        })
    }

    async fn decrypt(&self, blob: &StockBlob, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        open_blob(self, blob, aad).await
    }
}

/// Cloud KMS `Decrypt`, as the blob format needs it (a seam for tests).
#[async_trait]
trait KmsDecrypt: Send + Sync {
    async fn kms_decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError>;
}

#[async_trait]
impl KmsDecrypt for GcpStockSeal {
    async fn kms_decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        GcpStockSeal::kms_decrypt(self, ciphertext).await
    }
}

/// Opens a stock `gcpckms` blob, with the stock wrapper's checks and words.
async fn open_blob(kms: &dyn KmsDecrypt, blob: &StockBlob, aad: &[u8]) -> Result<SecretBytes, BackendError> {
    if blob.ciphertext.is_empty() {
        return Err(BackendError::new(
            BackendErrorKind::InvalidInput,
            "given ciphertext for decryption is nil",
        ));
    }
    // Blobs from before KeyInfo existed were encrypted by Cloud KMS itself.
    let mechanism = if blob.has_key_info {
        blob.mechanism
    } else {
        MECHANISM_KMS_ENCRYPT
    };
    match mechanism {
        MECHANISM_KMS_ENCRYPT => kms
            .kms_decrypt(&blob.ciphertext)
            .await
            .map_err(|e| prefixed("failed to decrypt data", e)),
        MECHANISM_ENVELOPE => {
            let dek = kms
                .kms_decrypt(&blob.wrapped_key)
                .await
                .map_err(|e| prefixed("failed to decrypt envelope", e))?;
            envelope::open(&dek, &blob.iv, &blob.ciphertext, aad)
                .map_err(|e| prefixed("error decrypting data with envelope", e))
        }
        other => Err(BackendError::new(
            BackendErrorKind::InvalidInput,
            format!("invalid mechanism: {other}"),
        )),
    }
}

/// `open_stock_stanza` for the `gcpckms` kind.
pub(crate) async fn open(stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
    Ok(Arc::new(GcpStockSeal::open(stanza).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &[(&str, &str)] = &[
        ("project", "p"),
        ("region", "global"),
        ("key_ring", "sealbroker"),
        ("crypto_key", "unseal"),
    ];

    fn parse(pairs: &[(&str, &str)], env: &[(&str, &str)]) -> Result<GcpStanza, StanzaError> {
        GcpStanza::parse(&StockStanza::from_pairs(pairs, env))
    }

    fn without(key: &str) -> Vec<(&'static str, &'static str)> {
        FULL.iter().copied().filter(|(k, _)| *k != key).collect()
    }

    #[test]
    fn the_stock_stanza_names_the_crypto_key() {
        let parsed = parse(FULL, &[]).unwrap();
        assert_eq!(
            parsed.parent_name(),
            "projects/p/locations/global/keyRings/sealbroker/cryptoKeys/unseal"
        );
        assert!(parsed.credentials_file.is_none() && parsed.endpoint.is_none());
    }

    #[test]
    fn env_wins_in_the_stock_order() {
        let parsed = parse(
            FULL,
            &[
                ("GOOGLE_PROJECT", "env-project"),
                ("GOOGLE_REGION", "europe-west1"),
                ("VAULT_GCPCKMS_SEAL_KEY_RING", "vault-ring"),
                ("GCPCKMS_WRAPPER_CRYPTO_KEY", "wrapper-key"),
                ("VAULT_GCPCKMS_SEAL_CRYPTO_KEY", "vault-key"),
                ("GOOGLE_CREDENTIALS", "/env/creds.json"),
            ],
        )
        .unwrap();
        assert_eq!(
            parsed.parent_name(),
            "projects/env-project/locations/europe-west1/keyRings/vault-ring/cryptoKeys/wrapper-key"
        );
        assert_eq!(parsed.credentials_file.as_deref(), Some("/env/creds.json"));
    }

    #[test]
    fn missing_keys_are_reported_as_the_stock_wrapper_reports_them() {
        for key in ["project", "region", "key_ring", "crypto_key"] {
            let err = parse(&without(key), &[]).err().unwrap();
            assert_eq!(
                err.message,
                format!("'{key}' not found for GCP CKMS wrapper configuration")
            );
        }
        // An empty value counts as missing, as in the stock wrapper.
        let mut pairs = without("region");
        pairs.push(("region", ""));
        assert_eq!(
            parse(&pairs, &[]).err().unwrap().message,
            "'region' not found for GCP CKMS wrapper configuration"
        );
    }

    #[test]
    fn key_not_required_allows_no_crypto_key_and_must_be_a_go_bool() {
        let mut pairs = without("crypto_key");
        pairs.push(("key_not_required", "true"));
        let parsed = parse(&pairs, &[]).unwrap();
        assert!(parsed.key_not_required && parsed.crypto_key.is_empty());
        let mut pairs = FULL.to_vec();
        pairs.push(("key_not_required", "maybe"));
        assert_eq!(
            parse(&pairs, &[]).err().unwrap().message,
            "strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
    }

    #[test]
    fn credentials_take_paths_and_json_must_match_its_type() {
        let mut pairs = FULL.to_vec();
        pairs.push(("credentials", "env://CREDS_PATH"));
        let parsed = parse(&pairs, &[("CREDS_PATH", "/from/env.json")]).unwrap();
        assert_eq!(parsed.credentials_file.as_deref(), Some("/from/env.json"));

        let json = r#"{"type":"service_account","private_key":"DO-NOT-LEAK"}"#;
        let mut pairs = FULL.to_vec();
        pairs.push(("credentials_json", json));
        pairs.push(("credentials_type", "authorized_user"));
        let err = parse(&pairs, &[]).err().unwrap();
        assert!(err.message.contains("\"authorized_user\""), "{err}");
        assert!(!err.message.contains("DO-NOT-LEAK"), "{err}");
        pairs.pop();
        pairs.push(("credentials_type", "service_account"));
        assert!(parse(&pairs, &[]).unwrap().credentials_json.is_some());
    }

    /// A Cloud KMS that knows one wrapped data key (and one directly
    /// encrypted payload) and counts its calls.
    struct KnownKms {
        calls: Mutex<Vec<Vec<u8>>>,
    }

    const WRAPPED_DEK: &[u8] = b"cloud-kms-ciphertext-of-the-dek";
    const DIRECT_CT: &[u8] = b"cloud-kms-ciphertext-of-the-payload";
    const DEK: [u8; 32] = [0x42; 32];

    #[async_trait]
    impl KmsDecrypt for KnownKms {
        async fn kms_decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
            self.calls.lock().unwrap().push(ciphertext.to_vec());
            match ciphertext {
                WRAPPED_DEK => Ok(SecretBytes::new(DEK.to_vec())),
                DIRECT_CT => Ok(SecretBytes::new(b"root key, mechanism 0".to_vec())),
                _ => Err(BackendError::not_authentic(
                    "Decryption failed: the ciphertext is invalid.",
                )),
            }
        }
    }

    /// A blob as OpenBao 2.6's built-in seal wrote it (go-kms-wrapping's
    /// EnvelopeEncrypt), sealed here with ring directly: AES-256-GCM under
    /// the data key, the nonce in `iv`, `ct || tag` in `ciphertext`.
    fn built_in_blob(plaintext: &[u8], aad: &[u8]) -> StockBlob {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let nonce = [7u8; 12];
        let mut sealed = plaintext.to_vec();
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &DEK).unwrap())
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut sealed)
            .unwrap();
        StockBlob {
            ciphertext: sealed,
            iv: nonce.to_vec(),
            mechanism: MECHANISM_ENVELOPE,
            key_id: "projects/p/locations/global/keyRings/sealbroker/cryptoKeys/unseal/cryptoKeyVersions/1"
                .into(),
            wrapped_key: WRAPPED_DEK.to_vec(),
            has_key_info: true,
        }
    }

    fn kms() -> KnownKms {
        KnownKms {
            calls: Mutex::new(Vec::new()),
        }
    }

    #[tokio::test]
    async fn envelopes_the_built_in_seal_wrote_open() {
        let kms = kms();
        let blob = built_in_blob(b"openbao root key", b"");
        let opened = open_blob(&kms, &blob, b"").await.unwrap();
        assert_eq!(opened.expose(), b"openbao root key");
        // Only the data key went to Cloud KMS.
        assert_eq!(*kms.calls.lock().unwrap(), vec![WRAPPED_DEK.to_vec()]);

        // OpenBao 2.5.0's form: the nonce inside `ciphertext`, `iv` empty.
        let mut joined = blob.iv.clone();
        joined.extend_from_slice(&blob.ciphertext);
        let old = StockBlob {
            ciphertext: joined,
            iv: Vec::new(),
            ..blob.clone()
        };
        assert_eq!(
            open_blob(&kms, &old, b"").await.unwrap().expose(),
            b"openbao root key"
        );

        // Bound to its AAD, and to its data key.
        let with_aad = built_in_blob(b"payload", b"aad");
        assert!(open_blob(&kms, &with_aad, b"other").await.is_err());
        assert_eq!(
            open_blob(&kms, &with_aad, b"aad").await.unwrap().expose(),
            b"payload"
        );
        let foreign = StockBlob {
            wrapped_key: b"another key's ciphertext".to_vec(),
            ..blob
        };
        let err = open_blob(&kms, &foreign, b"").await.err().unwrap();
        assert!(err.message.starts_with("failed to decrypt envelope: "), "{err}");
    }

    #[tokio::test]
    async fn blobs_without_key_info_were_encrypted_by_cloud_kms_itself() {
        let kms = kms();
        let blob = StockBlob {
            ciphertext: DIRECT_CT.to_vec(),
            ..Default::default()
        };
        assert_eq!(
            open_blob(&kms, &blob, b"").await.unwrap().expose(),
            b"root key, mechanism 0"
        );
        assert_eq!(*kms.calls.lock().unwrap(), vec![DIRECT_CT.to_vec()]);
    }

    #[tokio::test]
    async fn bad_blobs_are_refused_in_the_stock_words() {
        let kms = kms();
        let err = open_blob(&kms, &StockBlob::default(), b"").await.err().unwrap();
        assert_eq!(err.message, "given ciphertext for decryption is nil");
        let blob = StockBlob {
            mechanism: 7,
            ..built_in_blob(b"x", b"")
        };
        let err = open_blob(&kms, &blob, b"").await.err().unwrap();
        assert_eq!(err.message, "invalid mechanism: 7");
        assert!(kms.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn unknown_keys_are_ignored_like_the_stock_wrapper_does() {
        let mut pairs = FULL.to_vec();
        pairs.push(("no_such_key", "x"));
        assert!(parse(&pairs, &[]).is_ok());
    }

    #[test]
    fn the_test_endpoint_comes_only_from_its_env_var() {
        let mut pairs = FULL.to_vec();
        pairs.push(("endpoint", "https://ignored.example"));
        assert!(parse(&pairs, &[]).unwrap().endpoint.is_none());
        let parsed = parse(FULL, &[(TEST_ENDPOINT_ENV, "https://localhost:4443")]).unwrap();
        assert_eq!(parsed.endpoint.as_deref(), Some("https://localhost:4443"));
    }
}
