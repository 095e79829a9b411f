//! Stands in for OpenBao's stock `awskms` seal (go-kms-wrapping's
//! `wrappers/awskms`), read from its public source:
//!
//! - Stanza keys: `region`, `access_key`, `secret_key`, `session_token`,
//!   `endpoint`, `kms_key_id`, `shared_creds_filename`,
//!   `shared_creds_profile`, `key_not_required`. The key id is taken from
//!   `AWSKMS_WRAPPER_KEY_ID`, then `VAULT_AWSKMS_SEAL_KEY_ID`, then
//!   `kms_key_id`; the endpoint from `AWS_KMS_ENDPOINT`, then `endpoint`;
//!   the region from `region`, then the SDK (`AWS_REGION`, the profile),
//!   then `us-east-1`. Secret values may be `file://` or `env://` paths.
//!   Unknown keys are ignored, as the stock wrapper ignores them.
//! - Blobs: mechanism 1 (envelope): the payload under a fresh AES-256-GCM
//!   data key ([`sealbroker_core::stock::envelope`]), the data key
//!   encrypted by KMS with no encryption context into `wrapped_key`, and
//!   `key_id` the key ARN KMS reports. Mechanism 0 (a blob with no
//!   KeyInfo, from very old Vaults): the payload encrypted by KMS directly.
//!   `Decrypt` sends no KeyId, so KMS picks the key from the ciphertext.
//! - KeyId: the key id `DescribeKey` reports at configuration, then the
//!   ARN of the latest `Encrypt`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use sealbroker_core::stock::{envelope, parse_go_bool};
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, Mechanism, SecretBytes, StanzaError, StockBlob, StockSeal,
    StockStanza,
};
use zeroize::Zeroizing;

use crate::{AwsKmsKey, BackendConfig, connect_with};

/// `AwsKmsEncrypt`: the payload was encrypted by KMS itself.
pub const MECHANISM_KMS_ENCRYPT: u64 = 0;
/// `AwsKmsEnvelopeAesGcmEncrypt`: the go-kms-wrapping envelope.
pub const MECHANISM_ENVELOPE: u64 = 1;

/// The stanza keys the stock wrapper reads.
pub const STANZA_KEYS: &[&str] = &[
    "region",
    "access_key",
    "secret_key",
    "session_token",
    "endpoint",
    "kms_key_id",
    "shared_creds_filename",
    "shared_creds_profile",
    "key_not_required",
    "web_identity_token_file",
    "role_arn",
    "role_session_name",
];

/// What the stanza says, before any network call.
pub(crate) struct AwsStanza {
    pub key_id: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub credentials_file: Option<String>,
    pub profile: Option<String>,
    access_key: Option<Zeroizing<String>>,
    secret_key: Option<Zeroizing<String>>,
    session_token: Option<Zeroizing<String>>,
}

impl AwsStanza {
    pub(crate) fn parse(stanza: &StockStanza) -> Result<Self, StanzaError> {
        let unknown = stanza.unknown_keys(STANZA_KEYS);
        if !unknown.is_empty() {
            tracing::warn!(
                keys = %unknown.join(", "),
                "seal \"awskms\" has keys the stock awskms seal ignores; ignoring them too"
            );
        }
        let set = |key: &str| stanza.get(key).filter(|v| !v.is_empty());
        if let Some(value) = set("key_not_required") {
            parse_go_bool(value)?;
        }
        for key in ["web_identity_token_file", "role_arn", "role_session_name"] {
            if set(key).is_some() {
                return Err(StanzaError::new(format!(
                    "sealbroker's awskms seal does not take `{key}` from the stanza: set AWS_ROLE_ARN and \
                     AWS_WEB_IDENTITY_TOKEN_FILE in OpenBao's environment (the AWS SDK's chain reads them), \
                     or use the stock plugin"
                )));
            }
        }
        let key_id = stanza
            .setting(
                &["AWSKMS_WRAPPER_KEY_ID", "VAULT_AWSKMS_SEAL_KEY_ID"],
                "kms_key_id",
            )
            .map(|v| v.as_str().to_owned())
            .ok_or_else(|| {
                StanzaError::new("key id not found in env or config for aws kms wrapper configuration")
            })?;
        let secret = |key: &str| set(key).map(|v| stanza.resolve_path(v)).transpose();
        let access_key = secret("access_key")?.filter(|v| !v.is_empty());
        let secret_key = secret("secret_key")?.filter(|v| !v.is_empty());
        let session_token = secret("session_token")?.filter(|v| !v.is_empty());
        if access_key.is_some() != secret_key.is_some() {
            return Err(StanzaError::new(
                "error initializing AWS KMS wrapping client: static AWS client credentials haven't been properly \
                 configured (the access key or secret key were provided but not both)",
            ));
        }
        let endpoint = stanza
            .setting(&["AWS_KMS_ENDPOINT"], "endpoint")
            .map(|v| v.as_str().to_owned());
        Ok(AwsStanza {
            key_id,
            region: set("region").map(str::to_owned),
            endpoint,
            credentials_file: set("shared_creds_filename").map(str::to_owned),
            profile: set("shared_creds_profile").map(str::to_owned),
            access_key,
            secret_key,
            session_token,
        })
    }

    fn credentials(&self) -> Option<aws_sdk_kms::config::Credentials> {
        match (&self.access_key, &self.secret_key) {
            (Some(access), Some(secret)) => Some(aws_sdk_kms::config::Credentials::new(
                access.as_str(),
                secret.as_str(),
                self.session_token.as_ref().map(|t| t.as_str().to_owned()),
                None,
                "openbao-seal-stanza",
            )),
            _ => None,
        }
    }

    fn backend_config(&self, region: Option<String>) -> BackendConfig {
        BackendConfig {
            region,
            endpoint: self.endpoint.clone(),
            credentials_file: self.credentials_file.clone().map(Into::into),
            profile: self.profile.clone(),
            timeout_ms: crate::default_timeout_ms(),
            retry: Default::default(),
        }
    }
}

/// A configured stand-in for one stock `awskms` wrapper instance.
pub(crate) struct AwsStockSeal {
    key: AwsKmsKey,
    configured_key_id: String,
    current_key_id: Mutex<String>,
    region: String,
    endpoint: Option<String>,
}

impl AwsStockSeal {
    /// Builds the client and, as the stock wrapper does, checks the key
    /// with `DescribeKey`: a wrong key or unreachable KMS fails here.
    pub(crate) async fn open(stanza: &StockStanza) -> Result<Self, StanzaError> {
        let parsed = AwsStanza::parse(stanza)?;
        let config_error = |e: sealbroker_core::ConfigError| {
            StanzaError::new(format!("error initializing AWS KMS wrapping client: {e}"))
        };
        let client = match connect_with(
            &parsed.backend_config(parsed.region.clone()),
            parsed.credentials(),
        )
        .await
        {
            // No region in the stanza, the environment or the profile: the
            // stock wrapper falls back to us-east-1.
            Err(e) if parsed.region.is_none() && e.path == "region" => connect_with(
                &parsed.backend_config(Some("us-east-1".into())),
                parsed.credentials(),
            )
            .await
            .map_err(config_error)?,
            other => other.map_err(config_error)?,
        };
        // An ARN from another region is for KMS to refuse, as with the
        // stock wrapper; bind the key without the backend's region check.
        let key = AwsKmsKey::with_purpose(&client, &parsed.key_id, crate::Purpose::Seal);
        let kms = &client.0.kms;
        let described = key
            .call("DescribeKey", &parsed.key_id, || {
                kms.describe_key().key_id(&parsed.key_id).send()
            })
            .await
            .map_err(|e| StanzaError::new(format!("error fetching AWS KMS wrapping key information: {e}")))?;
        let described_id = described
            .key_metadata
            .map(|m| m.key_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| StanzaError::new("no key information returned"))?;
        Ok(AwsStockSeal {
            region: client.region().to_owned(),
            endpoint: parsed.endpoint.clone(),
            key,
            configured_key_id: parsed.key_id,
            current_key_id: Mutex::new(described_id),
        })
    }

    /// KMS `Decrypt` with no KeyId: the ciphertext names its key.
    async fn kms_decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        let kms = &self.key.client.0.kms;
        let output = self
            .key
            .call("Decrypt", &self.configured_key_id, || {
                kms.decrypt().ciphertext_blob(Blob::new(ciphertext)).send()
            })
            .await?;
        let plaintext = output
            .plaintext
            .ok_or_else(|| BackendError::internal("AWS KMS Decrypt answered without a Plaintext"))?;
        Ok(SecretBytes::new(plaintext.into_inner()))
    }
}

fn prefixed(prefix: &str, e: BackendError) -> BackendError {
    BackendError::new(e.kind, format!("{prefix}: {}", e.message))
}

#[async_trait]
impl StockSeal for AwsStockSeal {
    fn seal_type(&self) -> &'static str {
        "awskms"
    }

    fn key_id(&self) -> String {
        self.current_key_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::from([
            ("region".to_owned(), self.region.clone()),
            ("key_id".to_owned(), self.configured_key_id.clone()),
        ]);
        if let Some(endpoint) = &self.endpoint {
            metadata.insert("endpoint".to_owned(), endpoint.clone());
        }
        metadata
    }

    async fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<StockBlob, BackendError> {
        let sealed = envelope::seal(plaintext, aad).map_err(|e| prefixed("error wrapping data", e))?;
        // No AAD: the stock wrapper sends KMS no encryption context.
        let wrapped = self
            .key
            .encrypt(sealed.dek.expose(), b"")
            .await
            .map_err(|e| prefixed("error encrypting data", e))?;
        debug_assert_eq!(wrapped.mechanism, Mechanism::ServiceDefined);
        let arn = wrapped
            .metadata
            .get(crate::METADATA_KEY_ARN)
            .cloned()
            .unwrap_or_default();
        if !arn.is_empty() {
            *self.current_key_id.lock().unwrap_or_else(|p| p.into_inner()) = arn.clone();
        }
        Ok(StockBlob {
            ciphertext: sealed.ciphertext,
            iv: sealed.iv,
            mechanism: MECHANISM_ENVELOPE,
            key_id: arn,
            wrapped_key: wrapped.ciphertext,
            has_key_info: true,
        })
    }

    async fn decrypt(&self, blob: &StockBlob, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        let mechanism = if blob.has_key_info {
            blob.mechanism
        } else {
            MECHANISM_KMS_ENCRYPT
        };
        match mechanism {
            MECHANISM_KMS_ENCRYPT => self
                .kms_decrypt(&blob.ciphertext)
                .await
                .map_err(|e| prefixed("error decrypting data", e)),
            MECHANISM_ENVELOPE => {
                let dek = self
                    .kms_decrypt(&blob.wrapped_key)
                    .await
                    .map_err(|e| prefixed("error decrypting data encryption key", e))?;
                envelope::open(&dek, &blob.iv, &blob.ciphertext, aad)
                    .map_err(|e| prefixed("error decrypting data", e))
            }
            other => Err(BackendError::new(
                BackendErrorKind::InvalidInput,
                format!("invalid mechanism: {other}"),
            )),
        }
    }
}

/// `open_stock_stanza` for the `awskms` kind.
pub(crate) async fn open(stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
    Ok(Arc::new(AwsStockSeal::open(stanza).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(pairs: &[(&str, &str)], env: &[(&str, &str)]) -> StockStanza {
        StockStanza::from_pairs(pairs, env)
    }

    #[test]
    fn key_id_comes_from_the_env_before_the_stanza() {
        let s = stanza(&[("kms_key_id", "from-stanza")], &[]);
        assert_eq!(AwsStanza::parse(&s).unwrap().key_id, "from-stanza");
        let s = stanza(
            &[("kms_key_id", "from-stanza")],
            &[("VAULT_AWSKMS_SEAL_KEY_ID", "from-vault")],
        );
        assert_eq!(AwsStanza::parse(&s).unwrap().key_id, "from-vault");
        let s = stanza(
            &[("kms_key_id", "from-stanza")],
            &[
                ("VAULT_AWSKMS_SEAL_KEY_ID", "from-vault"),
                ("AWSKMS_WRAPPER_KEY_ID", "from-wrapper"),
            ],
        );
        assert_eq!(AwsStanza::parse(&s).unwrap().key_id, "from-wrapper");
    }

    #[test]
    fn missing_key_id_is_reported_as_the_stock_wrapper_reports_it() {
        let err = AwsStanza::parse(&stanza(&[("region", "eu-west-1")], &[]))
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            "key id not found in env or config for aws kms wrapper configuration"
        );
    }

    #[test]
    fn half_static_credentials_are_refused_without_printing_them() {
        let s = stanza(&[("kms_key_id", "k"), ("secret_key", "DO-NOT-LEAK")], &[]);
        let err = AwsStanza::parse(&s).err().unwrap();
        assert!(err.message.contains("provided but not both"), "{err}");
        assert!(!err.message.contains("DO-NOT-LEAK"));
    }

    #[test]
    fn endpoint_env_wins_and_unknown_keys_are_ignored() {
        let s = stanza(
            &[
                ("kms_key_id", "k"),
                ("endpoint", "http://stanza"),
                ("no_such_key", "x"),
            ],
            &[("AWS_KMS_ENDPOINT", "http://env")],
        );
        let parsed = AwsStanza::parse(&s).unwrap();
        assert_eq!(parsed.endpoint.as_deref(), Some("http://env"));
        assert!(parsed.credentials().is_none());
    }

    #[test]
    fn secret_values_take_env_paths() {
        let s = stanza(
            &[
                ("kms_key_id", "k"),
                ("access_key", "AKIA1"),
                ("secret_key", "env://SECRET"),
            ],
            &[("SECRET", "resolved")],
        );
        let credentials = AwsStanza::parse(&s).unwrap().credentials().unwrap();
        assert_eq!(credentials.access_key_id(), "AKIA1");
        assert_eq!(credentials.secret_access_key(), "resolved");
    }

    #[test]
    fn key_not_required_must_be_a_go_bool() {
        let s = stanza(&[("kms_key_id", "k"), ("key_not_required", "maybe")], &[]);
        let err = AwsStanza::parse(&s).err().unwrap();
        assert_eq!(
            err.message,
            "strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
    }
}
