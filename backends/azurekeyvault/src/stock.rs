//! Stands in for OpenBao's stock `azurekeyvault` seal (go-kms-wrapping's
//! `wrappers/azurekeyvault`, v2.4.0 in OpenBao 2.6.2), read from its public
//! source:
//!
//! - Stanza keys: `tenant_id`, `client_id`, `client_secret`, `environment`,
//!   `resource`, `vault_name`, `key_name`, `auth_method`, `cert_path`,
//!   `cert_bytes`, `cert_password`, `managed_id_kind`, `resource_id`,
//!   `key_not_required`. The environment wins over the stanza:
//!   `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`,
//!   `AZURE_ENVIRONMENT`, `AZURE_AD_RESOURCE`,
//!   `VAULT_AZUREKEYVAULT_AUTH_METHOD`, `VAULT_AZUREKEYVAULT_MANAGED_IDENTITY_KIND`,
//!   `VAULT_AZUREKEYVAULT_RESOURCE_ID`, `AZUREKEYVAULT_WRAPPER_VAULT_NAME`
//!   then `VAULT_AZUREKEYVAULT_VAULT_NAME`, `AZUREKEYVAULT_WRAPPER_KEY_NAME`
//!   then `VAULT_AZUREKEYVAULT_KEY_NAME`. `tenant_id`, `client_id` and
//!   `client_secret` may be `file://` or `env://` paths. The vault is
//!   `https://<vault_name>.<resource>/`, the resource defaulting to the
//!   environment's Key Vault suffix (`vault.azure.net`). Entra ID is
//!   reached at `AZURE_AUTHORITY_HOST` when set, as the Azure SDK does.
//!   Unknown keys are ignored, as the stock wrapper ignores them.
//! - Credentials: `client_secret`, `managed_identity` and
//!   `workload_identity` as in the stock wrapper; `environment` and
//!   `default` resolve to one of those from the environment. Certificate
//!   credentials are refused with a message.
//! - Blobs: the go-kms-wrapping envelope (the payload under a fresh
//!   AES-256-GCM data key), the data key wrapped by the vault key with
//!   RSA-OAEP-256 into `wrapped_key`, `key_id` the key version `wrapKey`
//!   used, `mechanism` 0. Blobs from wrappers before v2.0.x's SDK change
//!   carry the wrapped key as base64url text; both forms open. A blob is
//!   unwrapped with the version it names.
//! - KeyId: the key's current version (`GetKey`) at configuration, then the
//!   version of the latest `wrapKey`.
//!
//! For tests against the in-repo stand-in only,
//! `SEALBROKER_TEST_AZUREKEYVAULT_ADDRESS` connects to that IP address
//! instead of resolving the vault's name (docs/openbao.md says so).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use azure_core::credentials::Secret;
use base64::Engine as _;
use sealbroker_core::stock::{envelope, parse_go_bool};
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, Mechanism, Sealed, SecretBytes, StanzaError, StockBlob,
    StockSeal, StockStanza,
};
use zeroize::Zeroizing;

use crate::{
    BackendConfig, CredentialKind, KeyConfig, KeyVaultKey, METADATA_KEY_VERSION, OAEP_HASH, connect_with,
};

/// Test-only: the address the vault's name resolves to.
pub const TEST_ADDRESS_ENV: &str = "SEALBROKER_TEST_AZUREKEYVAULT_ADDRESS";

/// The stanza keys the stock wrapper reads.
pub const STANZA_KEYS: &[&str] = &[
    "tenant_id",
    "client_id",
    "client_secret",
    "environment",
    "resource",
    "vault_name",
    "key_name",
    "auth_method",
    "cert_path",
    "cert_bytes",
    "cert_password",
    "managed_id_kind",
    "resource_id",
    "key_not_required",
];

/// go-autorest's `EnvironmentFromName`: the cloud's name and Key Vault suffix.
fn environment(name: &str) -> Result<(&'static str, &'static str), StanzaError> {
    match name.to_ascii_uppercase().as_str() {
        "" | "AZURECLOUD" | "AZUREPUBLICCLOUD" => Ok(("AzurePublicCloud", "vault.azure.net")),
        "AZURECHINACLOUD" => Ok(("AzureChinaCloud", "vault.azure.cn")),
        "AZUREUSGOVERNMENT" | "AZUREUSGOVERNMENTCLOUD" => {
            Ok(("AzureUSGovernmentCloud", "vault.usgovcloudapi.net"))
        }
        "AZUREGERMANCLOUD" => Ok(("AzureGermanCloud", "vault.microsoftazure.de")),
        _ => Err(StanzaError::new(format!(
            "autorest/azure: There is no cloud environment matching the name {:?}",
            name.to_ascii_uppercase()
        ))),
    }
}

/// What the stanza says, before any network call.
pub(crate) struct AzureStanza {
    pub backend: BackendConfig,
    pub client_secret: Option<Zeroizing<String>>,
    pub environment: &'static str,
    pub resource: String,
    pub vault_name: String,
    /// Empty only with `key_not_required`.
    pub key_name: String,
    pub key_not_required: bool,
}

impl AzureStanza {
    pub(crate) fn parse(stanza: &StockStanza) -> Result<Self, StanzaError> {
        let unknown = stanza.unknown_keys(STANZA_KEYS);
        if !unknown.is_empty() {
            tracing::warn!(
                keys = %unknown.join(", "),
                "seal \"azurekeyvault\" has keys the stock azurekeyvault seal ignores; ignoring them too"
            );
        }
        let key_not_required = match stanza.get("key_not_required") {
            Some(value) => parse_go_bool(value)?,
            None => false,
        };
        // The stock wrapper resolves file:// and env:// in these three.
        let path_setting = |env: &str, key: &str| -> Result<Option<Zeroizing<String>>, StanzaError> {
            match stanza.env(env) {
                Some(value) => Ok(Some(value)),
                None => match stanza.get(key).filter(|v| !v.is_empty()) {
                    Some(value) => stanza
                        .resolve_path(value)
                        .map(|v| Some(v).filter(|v| !v.is_empty())),
                    None => Ok(None),
                },
            }
        };
        let tenant_id = path_setting("AZURE_TENANT_ID", "tenant_id")?.map(|v| v.as_str().to_owned());
        let client_id = path_setting("AZURE_CLIENT_ID", "client_id")?.map(|v| v.as_str().to_owned());
        let client_secret = path_setting("AZURE_CLIENT_SECRET", "client_secret")?;
        let plain = |envs: &[&str], key: &str| stanza.setting(envs, key).map(|v| v.as_str().to_owned());
        let auth_method = plain(&["VAULT_AZUREKEYVAULT_AUTH_METHOD"], "auth_method").unwrap_or_default();
        let resource_id = plain(&["VAULT_AZUREKEYVAULT_RESOURCE_ID"], "resource_id");
        let managed_id_kind =
            plain(&["VAULT_AZUREKEYVAULT_MANAGED_IDENTITY_KIND"], "managed_id_kind").unwrap_or_default();
        let certificate = plain(&["VAULT_AZUREKEYVAULT_CERTIFICATE_PATH"], "cert_path").is_some()
            || stanza.get("cert_bytes").is_some_and(|v| !v.is_empty());

        let (environment, suffix) =
            environment(&plain(&["AZURE_ENVIRONMENT"], "environment").unwrap_or_default())?;
        let resource = plain(&["AZURE_AD_RESOURCE"], "resource").unwrap_or_else(|| suffix.to_owned());
        let vault_name = plain(
            &[
                "AZUREKEYVAULT_WRAPPER_VAULT_NAME",
                "VAULT_AZUREKEYVAULT_VAULT_NAME",
            ],
            "vault_name",
        )
        .ok_or_else(|| StanzaError::new("vault name is required"))?;
        let key_name = match plain(
            &["AZUREKEYVAULT_WRAPPER_KEY_NAME", "VAULT_AZUREKEYVAULT_KEY_NAME"],
            "key_name",
        ) {
            Some(name) => name,
            None if key_not_required => String::new(),
            None => return Err(StanzaError::new("key name is required")),
        };

        // The stock wrapper's choice of credential, then its checks.
        let client_error = |message: &str| {
            StanzaError::new(format!(
                "error initializing Azure Key Vault wrapper client: {message}"
            ))
        };
        let method = match auth_method.to_ascii_lowercase().as_str() {
            "" => match (&tenant_id, &client_id, &client_secret) {
                (Some(_), Some(_), Some(_)) => "client_secret",
                _ if certificate => "certificate",
                (_, Some(_), _) => "managed_identity",
                _ => "default",
            },
            "certificate" => "certificate",
            "client_secret" => "client_secret",
            "managed_identity" => "managed_identity",
            "workload_identity" => "workload_identity",
            "environment" => "environment",
            _ => "default",
        };
        let env_secret = stanza.env("AZURE_CLIENT_SECRET").is_some()
            && stanza.env("AZURE_CLIENT_ID").is_some()
            && stanza.env("AZURE_TENANT_ID").is_some();
        let credential = match method {
            "client_secret" => {
                if tenant_id.is_none() {
                    return Err(client_error(
                        "tenant_id is required for azure client secret authentication",
                    ));
                }
                if client_id.is_none() {
                    return Err(client_error(
                        "client_id is required for azure client secret authentication",
                    ));
                }
                CredentialKind::ClientSecret
            }
            "managed_identity" => CredentialKind::ManagedIdentity,
            "workload_identity" => {
                if tenant_id.is_none() {
                    return Err(client_error(
                        "tenant_id is required for azure workload identity authentication",
                    ));
                }
                CredentialKind::WorkloadIdentity
            }
            "environment" if env_secret => CredentialKind::ClientSecret,
            "environment" => {
                return Err(client_error(
                    "failed to get environment credentials: sealbroker's azurekeyvault seal reads a client \
                     secret from AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (not a certificate \
                     or a user name)",
                ));
            }
            "default" => {
                if tenant_id.is_none() {
                    return Err(client_error(
                        "tenant_id is required for default azure credential authentication",
                    ));
                }
                // DefaultAzureCredential's chain, decided up front.
                if env_secret {
                    CredentialKind::ClientSecret
                } else if stanza.env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
                    CredentialKind::WorkloadIdentity
                } else {
                    CredentialKind::ManagedIdentity
                }
            }
            _ => {
                return Err(client_error(
                    "sealbroker's azurekeyvault seal does not authenticate with a certificate (cert_path, \
                     cert_bytes); use client_secret, managed_identity or workload_identity, or the stock plugin",
                ));
            }
        };
        let mut backend = BackendConfig {
            vault_url: format!("https://{vault_name}.{resource}"),
            vault_address: None,
            // Go's TLS trusts SSL_CERT_FILE; so does the drop-in.
            ca_file: stanza.env("SSL_CERT_FILE").map(|v| PathBuf::from(v.as_str())),
            credential,
            tenant_id: None,
            client_id: None,
            object_id: None,
            resource_id: None,
            client_secret_file: None,
            token_file: None,
            authority_host: stanza.env("AZURE_AUTHORITY_HOST").map(|v| v.as_str().to_owned()),
            timeout_ms: crate::default_timeout_ms(),
            retry: Default::default(),
        };
        let mut secret = None;
        match credential {
            CredentialKind::ClientSecret => {
                backend.tenant_id = tenant_id;
                backend.client_id = client_id;
                secret = Some(client_secret.unwrap_or_default());
            }
            CredentialKind::WorkloadIdentity => {
                backend.tenant_id = tenant_id;
                backend.client_id = client_id;
                backend.token_file = stanza
                    .env("AZURE_FEDERATED_TOKEN_FILE")
                    .map(|v| PathBuf::from(v.as_str()));
            }
            CredentialKind::ManagedIdentity => {
                backend.authority_host = None;
                if managed_id_kind.eq_ignore_ascii_case("RESOURCE_ID") {
                    backend.resource_id = resource_id;
                } else {
                    backend.client_id = client_id;
                }
                if method == "managed_identity"
                    && backend.client_id.is_none()
                    && backend.resource_id.is_none()
                {
                    return Err(client_error(
                        "either client_id or resource_id is required for managed identity authentication",
                    ));
                }
            }
        }
        if let Some(address) = stanza.env(TEST_ADDRESS_ENV) {
            backend.vault_address = Some(address.parse::<IpAddr>().map_err(|_| {
                StanzaError::new(format!(
                    "{TEST_ADDRESS_ENV} is {:?}, not an IP address",
                    address.as_str()
                ))
            })?);
        }
        Ok(AzureStanza {
            backend,
            client_secret: secret,
            environment,
            resource,
            vault_name,
            key_name,
            key_not_required,
        })
    }
}

/// A configured stand-in for one stock `azurekeyvault` wrapper instance.
pub(crate) struct AzureStockSeal {
    /// `None` with `key_not_required` and no key name.
    key: Option<KeyVaultKey>,
    current_key_id: Mutex<String>,
    metadata: HashMap<String, String>,
}

impl AzureStockSeal {
    /// Builds the client and, unless `key_not_required`, reads the key as
    /// the stock wrapper does: a wrong key or unreachable vault fails here.
    pub(crate) async fn open(stanza: &StockStanza) -> Result<Self, StanzaError> {
        let parsed = AzureStanza::parse(stanza)?;
        let secret = parsed
            .client_secret
            .as_ref()
            .map(|s| Secret::new(s.as_str().to_owned()));
        let client = connect_with(&parsed.backend, secret).map_err(|e| {
            StanzaError::new(format!("error initializing Azure Key Vault wrapper client: {e}"))
        })?;
        let metadata = HashMap::from([
            ("environment".to_owned(), parsed.environment.to_owned()),
            ("vault_name".to_owned(), parsed.vault_name.clone()),
            ("key_name".to_owned(), parsed.key_name.clone()),
            ("resource".to_owned(), format!("https://{}/", parsed.resource)),
        ]);
        let key = if parsed.key_name.is_empty() {
            None
        } else {
            let config = KeyConfig {
                key_name: parsed.key_name.clone(),
                key_version: None,
                ..Default::default()
            };
            Some(KeyVaultKey::new(&client, &config).map_err(|e| StanzaError::new(e.to_string()))?)
        };
        let mut current = String::new();
        if let (Some(key), false) = (&key, parsed.key_not_required) {
            current = current_version(key).await.map_err(|e| {
                StanzaError::new(format!(
                    "error fetching Azure Key Vault wrapper key information: {e}"
                ))
            })?;
        }
        Ok(AzureStockSeal {
            key,
            current_key_id: Mutex::new(current),
            metadata,
        })
    }

    fn key(&self) -> Result<&KeyVaultKey, BackendError> {
        self.key
            .as_ref()
            .ok_or_else(|| BackendError::new(BackendErrorKind::InvalidInput, "key name is required"))
    }
}

/// The key's current version, from `GetKey`.
async fn current_version(key: &KeyVaultKey) -> Result<String, BackendError> {
    use azure_security_keyvault_keys::ResourceExt;
    let keys = &key.client.0.keys;
    let found = key
        .call("get", &key.name, true, || async {
            keys.get_key(&key.name, None).await?.into_model()
        })
        .await?;
    key.version_of("get", found.resource_id())
}

#[async_trait]
impl StockSeal for AzureStockSeal {
    fn seal_type(&self) -> &'static str {
        "azurekeyvault"
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
        let sealed = envelope::seal(plaintext, aad)
            .map_err(|e| BackendError::new(e.kind, format!("error wrapping data: {}", e.message)))?;
        // The key's latest version wraps, with RSA-OAEP-256.
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
            mechanism: 0,
            key_id: version,
            wrapped_key: wrapped.ciphertext,
            has_key_info: true,
        })
    }

    async fn decrypt(&self, blob: &StockBlob, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        open_blob(self, blob, aad).await
    }
}

/// Key Vault `unwrapKey`, as the blob format needs it (a seam for tests).
#[async_trait]
trait UnwrapKey: Send + Sync {
    /// Unwraps with `version` of the key (the current one when empty).
    async fn unwrap_key(&self, version: &str, wrapped: &[u8]) -> Result<SecretBytes, BackendError>;
}

#[async_trait]
impl UnwrapKey for AzureStockSeal {
    async fn unwrap_key(&self, version: &str, wrapped: &[u8]) -> Result<SecretBytes, BackendError> {
        let version = if version.is_empty() {
            self.key_id()
        } else {
            version.to_owned()
        };
        let sealed = Sealed {
            mechanism: Mechanism::RsaOaep,
            ciphertext: wrapped.to_vec(),
            oaep_hash: OAEP_HASH.to_owned(),
            metadata: [(METADATA_KEY_VERSION.to_owned(), version)].into(),
            ..Default::default()
        };
        self.key()?.decrypt(&sealed, b"").await
    }
}

/// Opens a stock `azurekeyvault` blob, with the stock wrapper's checks.
async fn open_blob(vault: &dyn UnwrapKey, blob: &StockBlob, aad: &[u8]) -> Result<SecretBytes, BackendError> {
    if !blob.has_key_info {
        return Err(BackendError::new(
            BackendErrorKind::InvalidInput,
            "key info is nil",
        ));
    }
    // Older wrappers stored the wrapped key as base64url text; newer ones
    // store the bytes. Text that decodes is the old form.
    let legacy = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&blob.wrapped_key);
    let wrapped = legacy.as_deref().unwrap_or(&blob.wrapped_key);
    let dek = vault.unwrap_key(&blob.key_id, wrapped).await?;
    envelope::open(&dek, &blob.iv, &blob.ciphertext, aad)
}

/// `open_stock_stanza` for the `azurekeyvault` kind.
pub(crate) async fn open(stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
    Ok(Arc::new(AzureStockSeal::open(stanza).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &[(&str, &str)] = &[
        ("tenant_id", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("client_id", "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8"),
        ("client_secret", "azure-client-secret-DO-NOT-LEAK"),
        ("vault_name", "sealbroker"),
        ("key_name", "unseal"),
    ];

    fn parse(pairs: &[(&str, &str)], env: &[(&str, &str)]) -> Result<AzureStanza, StanzaError> {
        AzureStanza::parse(&StockStanza::from_pairs(pairs, env))
    }

    fn without(key: &str) -> Vec<(&'static str, &'static str)> {
        FULL.iter().copied().filter(|(k, _)| *k != key).collect()
    }

    fn with(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut all: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| !pairs.iter().any(|(p, _)| p == k))
            .collect();
        all.extend_from_slice(pairs);
        all
    }

    #[test]
    fn the_stock_stanza_maps_onto_a_client_secret_backend() {
        let parsed = parse(FULL, &[]).unwrap();
        assert_eq!(parsed.backend.vault_url, "https://sealbroker.vault.azure.net");
        assert_eq!(parsed.backend.credential, CredentialKind::ClientSecret);
        assert_eq!(
            parsed.client_secret.as_deref().map(String::as_str),
            Some("azure-client-secret-DO-NOT-LEAK")
        );
        assert_eq!(parsed.environment, "AzurePublicCloud");
        parsed.backend.validate_with(true).unwrap();
    }

    #[test]
    fn environment_and_resource_pick_the_vault_domain() {
        let parsed = parse(&with(&[("environment", "AzureUSGovernmentCloud")]), &[]).unwrap();
        assert_eq!(
            parsed.backend.vault_url,
            "https://sealbroker.vault.usgovcloudapi.net"
        );
        let parsed = parse(
            &with(&[("resource", "vault.azure.test:8443")]),
            &[("AZURE_ENVIRONMENT", "AzureChinaCloud")],
        )
        .unwrap();
        assert_eq!(
            parsed.backend.vault_url,
            "https://sealbroker.vault.azure.test:8443"
        );
        assert_eq!(parsed.environment, "AzureChinaCloud");
        let err = parse(&with(&[("environment", "Mars")]), &[]).err().unwrap();
        assert_eq!(
            err.message,
            "autorest/azure: There is no cloud environment matching the name \"MARS\""
        );
    }

    #[test]
    fn env_wins_in_the_stock_order_and_paths_resolve() {
        let parsed = parse(
            &with(&[("client_secret", "env://SECRET_VAR")]),
            &[
                ("SECRET_VAR", "from-env-path"),
                ("VAULT_AZUREKEYVAULT_VAULT_NAME", "vault-env"),
                ("AZUREKEYVAULT_WRAPPER_VAULT_NAME", "wrapper-env"),
                ("VAULT_AZUREKEYVAULT_KEY_NAME", "key-env"),
                ("AZURE_AUTHORITY_HOST", "https://localhost:9443"),
            ],
        )
        .unwrap();
        assert_eq!(parsed.vault_name, "wrapper-env");
        assert_eq!(parsed.key_name, "key-env");
        assert_eq!(
            parsed.client_secret.as_deref().map(String::as_str),
            Some("from-env-path")
        );
        assert_eq!(
            parsed.backend.authority_host.as_deref(),
            Some("https://localhost:9443")
        );
    }

    #[test]
    fn missing_keys_are_reported_as_the_stock_wrapper_reports_them() {
        assert_eq!(
            parse(&without("vault_name"), &[]).err().unwrap().message,
            "vault name is required"
        );
        assert_eq!(
            parse(&without("key_name"), &[]).err().unwrap().message,
            "key name is required"
        );
        let mut pairs = without("key_name");
        pairs.push(("key_not_required", "true"));
        assert!(parse(&pairs, &[]).unwrap().key_name.is_empty());
        assert_eq!(
            parse(&with(&[("key_not_required", "sure")]), &[])
                .err()
                .unwrap()
                .message,
            "strconv.ParseBool: parsing \"sure\": invalid syntax"
        );
        let err = parse(
            &with(&[("auth_method", "client_secret")])
                .into_iter()
                .filter(|(k, _)| *k != "tenant_id")
                .collect::<Vec<_>>(),
            &[],
        )
        .err()
        .unwrap();
        assert_eq!(
            err.message,
            "error initializing Azure Key Vault wrapper client: tenant_id is required for azure client secret \
             authentication"
        );
        let err = parse(&[("vault_name", "v"), ("key_name", "k")], &[])
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            "error initializing Azure Key Vault wrapper client: tenant_id is required for default azure credential \
             authentication"
        );
        let err = parse(
            &[
                ("vault_name", "v"),
                ("key_name", "k"),
                ("auth_method", "managed_identity"),
            ],
            &[],
        )
        .err()
        .unwrap();
        assert!(
            err.message
                .ends_with("either client_id or resource_id is required for managed identity authentication"),
            "{err}"
        );
    }

    #[test]
    fn credentials_are_chosen_as_the_stock_wrapper_chooses_them() {
        // A client id alone: a user-assigned managed identity.
        let parsed = parse(&[("vault_name", "v"), ("key_name", "k"), ("client_id", "c")], &[]).unwrap();
        assert_eq!(parsed.backend.credential, CredentialKind::ManagedIdentity);
        assert_eq!(parsed.backend.client_id.as_deref(), Some("c"));
        let parsed = parse(
            &[
                ("vault_name", "v"),
                ("key_name", "k"),
                ("auth_method", "managed_identity"),
                ("managed_id_kind", "resource_id"),
                ("resource_id", "/subscriptions/s/id"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(parsed.backend.resource_id.as_deref(), Some("/subscriptions/s/id"));
        let parsed = parse(
            &[
                ("vault_name", "v"),
                ("key_name", "k"),
                ("tenant_id", "t"),
                ("auth_method", "workload_identity"),
            ],
            &[("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token")],
        )
        .unwrap();
        assert_eq!(parsed.backend.credential, CredentialKind::WorkloadIdentity);
        assert_eq!(parsed.backend.token_file, Some(PathBuf::from("/var/run/token")));
        let err = parse(&with(&[("auth_method", "certificate")]), &[])
            .err()
            .unwrap();
        assert!(
            err.message.contains("does not authenticate with a certificate"),
            "{err}"
        );
        assert!(!err.message.contains("DO-NOT-LEAK"), "{err}");
    }

    #[test]
    fn unknown_keys_are_ignored_and_the_test_address_is_env_only() {
        let parsed = parse(&with(&[("no_such_key", "x")]), &[]).unwrap();
        assert!(parsed.backend.vault_address.is_none());
        let parsed = parse(FULL, &[(TEST_ADDRESS_ENV, "127.0.0.1")]).unwrap();
        assert_eq!(parsed.backend.vault_address, Some("127.0.0.1".parse().unwrap()));
        let err = parse(FULL, &[(TEST_ADDRESS_ENV, "localhost")]).err().unwrap();
        assert!(err.message.contains(TEST_ADDRESS_ENV), "{err}");
    }

    /// A vault that knows one wrapped data key under one version.
    struct KnownVault {
        calls: Mutex<Vec<(String, Vec<u8>)>>,
    }

    const VERSION: &str = "0123456789abcdef0123456789abcdef";
    const WRAPPED: &[u8] = &[0xA5; 256];
    const DEK: [u8; 32] = [0x42; 32];

    #[async_trait]
    impl UnwrapKey for KnownVault {
        async fn unwrap_key(&self, version: &str, wrapped: &[u8]) -> Result<SecretBytes, BackendError> {
            self.calls
                .lock()
                .unwrap()
                .push((version.to_owned(), wrapped.to_vec()));
            if version == VERSION && wrapped == WRAPPED {
                Ok(SecretBytes::new(DEK.to_vec()))
            } else {
                Err(BackendError::not_authentic("BadParameter"))
            }
        }
    }

    /// A blob as OpenBao 2.6's built-in seal wrote it, sealed here with ring
    /// directly: AES-256-GCM under the data key, the nonce in `iv`.
    fn built_in_blob(wrapped_key: Vec<u8>) -> StockBlob {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let nonce = [9u8; 12];
        let mut sealed = b"openbao root key".to_vec();
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &DEK).unwrap())
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
            .unwrap();
        StockBlob {
            ciphertext: sealed,
            iv: nonce.to_vec(),
            mechanism: 0,
            key_id: VERSION.into(),
            wrapped_key,
            has_key_info: true,
        }
    }

    #[tokio::test]
    async fn envelopes_the_built_in_seal_wrote_open_in_both_wrapped_key_forms() {
        let vault = KnownVault {
            calls: Mutex::new(Vec::new()),
        };
        let raw = built_in_blob(WRAPPED.to_vec());
        assert_eq!(
            open_blob(&vault, &raw, b"").await.unwrap().expose(),
            b"openbao root key"
        );
        // The older form: the wrapped key as base64url text without padding.
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(WRAPPED);
        let legacy = built_in_blob(text.into_bytes());
        assert_eq!(
            open_blob(&vault, &legacy, b"").await.unwrap().expose(),
            b"openbao root key"
        );
        // Each unwrapped the raw bytes with the version the blob names.
        let calls = vault.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![(VERSION.to_owned(), WRAPPED.to_vec()); 2]);
    }

    #[tokio::test]
    async fn blobs_without_key_info_or_under_other_versions_are_refused() {
        let vault = KnownVault {
            calls: Mutex::new(Vec::new()),
        };
        let bare = StockBlob {
            has_key_info: false,
            ..built_in_blob(WRAPPED.to_vec())
        };
        assert_eq!(
            open_blob(&vault, &bare, b"").await.err().unwrap().message,
            "key info is nil"
        );
        assert!(vault.calls.lock().unwrap().is_empty());
        let other = StockBlob {
            key_id: "ffffffffffffffffffffffffffffffff".into(),
            ..built_in_blob(WRAPPED.to_vec())
        };
        assert!(open_blob(&vault, &other, b"").await.is_err());
        let tampered = {
            let mut blob = built_in_blob(WRAPPED.to_vec());
            blob.ciphertext[0] ^= 1;
            blob
        };
        assert!(open_blob(&vault, &tampered, b"").await.is_err());
    }
}
