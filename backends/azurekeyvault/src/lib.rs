//! Azure Key Vault backend: the broker's 32-byte data key is wrapped by a Key
//! Vault (or Managed HSM) RSA key with `wrapKey`/`unwrapKey` and
//! `RSA-OAEP-256`, through the official `azure_security_keyvault_keys` client.
//!
//! # Design
//!
//! The broker seals the payload locally (AES-256-GCM under a fresh DEK); Key
//! Vault only ever sees the DEK. RSA-OAEP wrapping takes no additional
//! authenticated data, so, as with the other backends whose service cannot
//! bind AAD (KMIP with AES-CBC, PKCS#11 RSA-OAEP), the key name and the
//! caller's AAD are bound by the broker's payload AEAD: a DEK unwrapped for the
//! wrong key or the wrong AAD cannot open the payload, and the unwrap fails as
//! not authentic. The `aad` handed to this backend is not sent to Azure.
//!
//! `wrapKey` answers with the key id (`kid`) it used; its version segment is
//! recorded in the blob ([`Sealed::metadata`] key `azure_key_version`) and
//! `unwrapKey` is called on exactly that version. So blobs sealed before the
//! vault key rotates keep opening as long as that version stays enabled.
//! Unpinned keys wrap with the key's current version; `key_version` pins one.
//! `sealbroker keys rotate` ([`Backend::create_version`]) rotates the key in
//! Key Vault (a new version) and pins the broker's new key version to it. A
//! pinned key has its own key identity (`…/keys/NAME/VERSION`), so each
//! broker version has its own key id.
//!
//! The SDK's retry policy is off. Throttling (HTTP 429, which Key Vault sends
//! with `Retry-After`) and transient failures (5xx, 408, connection errors,
//! timeouts, an unreachable token endpoint) are retried a bounded number of
//! times with full-jitter exponential backoff that honours `Retry-After`
//! ([`RetryConfig`]); then the call fails as [`BackendErrorKind::Throttled`]
//! or `Unavailable`. 401/403 and refused credentials are
//! [`BackendErrorKind::PermissionDenied`] and name the identity used (client
//! id, tenant, where the secret or token comes from), never a secret. 404 is
//! [`BackendErrorKind::KeyNotFound`] and names the key.
//!
//! Credentials are explicit (the SDK has no default chain): workload identity
//! (AKS), managed identity (VMs, App Service) or a service principal's client
//! secret, read from a file. The first request to a vault goes out without a
//! token; the vault's `WWW-Authenticate` challenge names the tenant and
//! resource, and the token is requested for that resource (the SDK checks that
//! the resource matches the vault's domain).
//!
//! HTTPS is reqwest with rustls and the ring provider, trusting the platform's
//! roots plus `ca_file` if set. The request buffers the SDK builds around the
//! DEK are not zeroized; the broker's own copies are.
//!
//! An `algorithm` makes a key asymmetric (External Keys, [`signing`]): an
//! RSA or EC P-256/P-384 key pair that signs (RS256-512, PS256-512, ES256,
//! ES384; Key Vault signs digests, so a message is hashed once here) or, with
//! `mechanism = "RSA_PKCS_OAEP"`, an RSA pair that encrypts with RSA-OAEP-256
//! or RSA-OAEP (SHA-1). The vault signs, verifies, encrypts and decrypts.
//!
//! # Permissions
//!
//! On the key (Key Vault access policy or Azure RBAC): `keys/wrapKey`,
//! `keys/unwrapKey` and `keys/get` (used by the health check); the built-in
//! role "Key Vault Crypto Service Encryption User" grants exactly these.
//! `sealbroker keys rotate` also needs `keys/rotate` (role "Key Vault Crypto
//! Officer"). On Managed HSM, the local RBAC role "Managed HSM Crypto User"
//! (plus "Managed HSM Crypto Officer" for rotation). Signing key pairs need
//! `keys/sign`, `keys/verify` and `keys/get`; RSA encryption pairs
//! `keys/encrypt`, `keys/decrypt` and `keys/get` (role "Key Vault Crypto
//! User"). `sealbroker keygen` needs `keys/create` and `keys/get`.
//!
//! # Configuration
//!
//! ```toml
//! [backends.azure]
//! type = "azurekeyvault"
//! vault_url = "https://my-vault.vault.azure.net"
//! credential = "workload_identity"     # or "managed_identity" or "client_secret"
//! # tenant_id = "…"            # workload identity: else AZURE_TENANT_ID; client_secret: required
//! # client_id = "…"            # workload identity: else AZURE_CLIENT_ID; client_secret: required;
//! #                            # managed identity: a user-assigned one (or object_id / resource_id)
//! # token_file = "/var/run/secrets/azure/tokens/azure-identity-token"
//! #                            # workload identity: else AZURE_FEDERATED_TOKEN_FILE
//! # client_secret_file = "/etc/sealbroker/azure-client-secret"    # client_secret: required
//! # authority_host = "https://login.microsoftonline.us"           # sovereign clouds
//! # vault_address = "10.1.2.3" # connect here instead of resolving the vault's name
//! # ca_file = "/etc/sealbroker/extra-ca.pem"                      # trusted besides the system roots
//! # timeout_ms = 10000                 # per attempt
//! # [backends.azure.retry]
//! # max_retries = 4
//! # initial_backoff_ms = 100
//! # max_backoff_ms = 5000
//!
//! [keys.openbao-unseal]
//! backend = "azure"
//! key_name = "openbao-unseal"          # an RSA (or RSA-HSM) key with wrapKey and unwrapKey
//! # key_version = "…"                  # pin a version; `keys rotate` sets it
//!
//! [keys.pki-root]                      # an asymmetric key (External Keys)
//! backend = "azure"
//! key_name = "pki-root"
//! key_version = "…"                    # required for a key pair; `sealbroker keygen` prints it
//! algorithm = "ecdsa-p256"             # rsa-2048/3072/4096, ecdsa-p256/p384
//! # mechanism = "RSA_PKCS_OAEP"       # an RSA encryption pair instead of a signing one
//! # rsa_oaep_hash = "sha256"          # RSA-OAEP-256, or "sha1" (RSA-OAEP)
//! ```

mod kind;
pub mod signing;
mod stock;
mod transport;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::error::{ErrorKind, ErrorResponse};
use azure_core::http::headers::{Headers, RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, Transport, Url};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, KeyClientGetKeyOptions, KeyClientWrapKeyOptions, KeyOperationParameters, KeyType,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions, ResourceExt};
use sealbroker_core::{
    Backend, BackendError, BackendErrorKind, KeyAlgorithm, Mechanism, NewVersion, PublicKey, Sealed,
    SecretBytes, SignInput, SignScheme,
};
use serde::Deserialize;
use zeroize::Zeroizing;

pub use sealbroker_retry::RetryConfig;
use sealbroker_retry::{Attempt, parse_retry_after};

/// [`Sealed::metadata`] key holding the key version `wrapKey` used.
pub const METADATA_KEY_VERSION: &str = "azure_key_version";
/// The OAEP hash recorded in [`Sealed::oaep_hash`] (RSA-OAEP-256).
pub const OAEP_HASH: &str = "sha256";

fn default_timeout_ms() -> u64 {
    10_000
}

/// Which Entra ID credential calls are made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// AKS workload identity: a federated token file exchanged for a token.
    WorkloadIdentity,
    /// The managed identity of the VM, scale set or App Service.
    ManagedIdentity,
    /// A service principal with a client secret read from `client_secret_file`.
    ClientSecret,
}

impl CredentialKind {
    fn as_str(self) -> &'static str {
        match self {
            CredentialKind::WorkloadIdentity => "workload_identity",
            CredentialKind::ManagedIdentity => "managed_identity",
            CredentialKind::ClientSecret => "client_secret",
        }
    }
}

/// `[backends.NAME]` with `type = "azurekeyvault"`: one vault and one identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `https://NAME.vault.azure.net` (or a Managed HSM / sovereign cloud URL).
    pub vault_url: String,
    /// Connect to this address instead of resolving the vault's host name
    /// (a private endpoint without private DNS). TLS still checks the name.
    pub vault_address: Option<IpAddr>,
    /// PEM bundle of extra CAs to trust besides the system roots (a
    /// TLS-inspecting proxy, a test server).
    pub ca_file: Option<PathBuf>,
    /// `workload_identity`, `managed_identity` or `client_secret`.
    pub credential: CredentialKind,
    /// Entra tenant (directory) id.
    pub tenant_id: Option<String>,
    /// Application (client) id; for managed identity, a user-assigned identity's.
    pub client_id: Option<String>,
    /// Managed identity only: a user-assigned identity by object id.
    pub object_id: Option<String>,
    /// Managed identity only: a user-assigned identity by ARM resource id.
    pub resource_id: Option<String>,
    /// Client secret only: the file holding the secret.
    pub client_secret_file: Option<PathBuf>,
    /// Workload identity only: the federated token file.
    pub token_file: Option<PathBuf>,
    /// Entra authority, e.g. `https://login.microsoftonline.us`; default public cloud.
    pub authority_host: Option<String>,
    /// Time bound of one attempt of one call (token included), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of throttled and transiently failing calls.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// Per-key settings under `[keys.NAME]`. `algorithm`, `mechanism` and
/// `rsa_oaep_hash` are spelled as the PKCS#11 backend spells them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's name in the vault: an RSA or RSA-HSM key allowing wrapKey and unwrapKey,
    /// or with `algorithm` a key pair.
    pub key_name: String,
    /// A key version to use instead of the current one. `keys rotate` sets it.
    #[serde(default)]
    pub key_version: Option<String>,
    /// Makes this an asymmetric key (External Keys): `rsa-2048`,
    /// `rsa-3072`, `rsa-4096`, `ecdsa-p256` or `ecdsa-p384`. A signing key
    /// pair unless `mechanism` says otherwise.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// `RSA_PKCS_OAEP`: with an RSA `algorithm`, an encryption key pair.
    #[serde(default)]
    pub mechanism: Option<MechanismName>,
    /// RSA-OAEP's hash: `sha256` (RSA-OAEP-256, the default) or `sha1` (RSA-OAEP).
    #[serde(default)]
    pub rsa_oaep_hash: Option<String>,
}

/// Config errors name fields relative to this backend's tables; the broker places them under
/// `backends.NAME` or `keys.NAME`.
pub use sealbroker_core::ConfigError;

pub use kind::{KIND, KeyVaultKind};
pub use signing::{MechanismName, Purpose};

fn config_error(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(field, reason)
}

/// Parses and checks an `https://` URL with a host and nothing after it.
fn https_origin(field: &'static str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| config_error(field, format!("{text:?} is not a URL ({e})")))?;
    if url.scheme() != "https" {
        return Err(config_error(field, format!("{text:?} must be an https:// URL")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(config_error(field, format!("{text:?} has no host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(config_error(
            field,
            format!("{text:?} must be just scheme and host, e.g. https://my-vault.vault.azure.net"),
        ));
    }
    Ok(url)
}

/// Whether `text` is made only of ASCII letters, digits and `extra`, within `max` characters.
fn plain_name(text: &str, extra: &[u8], max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

impl BackendConfig {
    /// Checks the fields that can be checked without the network or files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(false)
    }

    /// [`BackendConfig::validate`]; `inline_secret` says the client secret
    /// is given in code (OpenBao's stock stanza), not in a file.
    fn validate_with(&self, inline_secret: bool) -> Result<(), ConfigError> {
        https_origin("vault_url", &self.vault_url)?;
        if let Some(host) = &self.authority_host {
            https_origin("authority_host", host)?;
        }
        let kind = self.credential;
        let only_for = |field: &'static str, set: bool, allowed: &[CredentialKind]| {
            if set && !allowed.contains(&kind) {
                let names: Vec<String> = allowed.iter().map(|k| format!("{:?}", k.as_str())).collect();
                return Err(config_error(
                    field,
                    format!(
                        "is only used with credential = {}; this backend uses {:?}",
                        names.join(" or "),
                        kind.as_str()
                    ),
                ));
            }
            Ok(())
        };
        use CredentialKind::*;
        only_for(
            "tenant_id",
            self.tenant_id.is_some(),
            &[WorkloadIdentity, ClientSecret],
        )?;
        only_for("object_id", self.object_id.is_some(), &[ManagedIdentity])?;
        only_for("resource_id", self.resource_id.is_some(), &[ManagedIdentity])?;
        only_for(
            "client_secret_file",
            self.client_secret_file.is_some(),
            &[ClientSecret],
        )?;
        only_for("token_file", self.token_file.is_some(), &[WorkloadIdentity])?;
        only_for(
            "authority_host",
            self.authority_host.is_some(),
            &[WorkloadIdentity, ClientSecret],
        )?;
        if let Some(tenant) = &self.tenant_id
            && !plain_name(tenant, b"-.", 128)
        {
            return Err(config_error(
                "tenant_id",
                format!("{tenant:?} is not a tenant id or domain"),
            ));
        }
        for (field, value) in [("client_id", &self.client_id), ("object_id", &self.object_id)] {
            if let Some(id) = value
                && !plain_name(id, b"-", 64)
            {
                return Err(config_error(field, format!("{id:?} is not an Entra id (a GUID)")));
            }
        }
        match kind {
            ClientSecret => {
                if self.tenant_id.is_none() {
                    return Err(config_error(
                        "tenant_id",
                        "is required with credential = \"client_secret\"",
                    ));
                }
                if self.client_id.is_none() {
                    return Err(config_error(
                        "client_id",
                        "is required with credential = \"client_secret\"",
                    ));
                }
                if self.client_secret_file.is_none() && !inline_secret {
                    return Err(config_error(
                        "client_secret_file",
                        "is required with credential = \"client_secret\" (the secret is read from a \
                         file, never written in the config)",
                    ));
                }
            }
            ManagedIdentity => {
                let chosen = [&self.client_id, &self.object_id, &self.resource_id]
                    .iter()
                    .filter(|v| v.is_some())
                    .count();
                if chosen > 1 {
                    return Err(config_error(
                        "client_id",
                        "name a user-assigned identity by one of client_id, object_id and resource_id",
                    ));
                }
            }
            WorkloadIdentity => {}
        }
        if self.timeout_ms == 0 {
            return Err(config_error("timeout_ms", "must be at least 1"));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            return Err(config_error(
                "retry.initial_backoff_ms",
                "must not exceed retry.max_backoff_ms",
            ));
        }
        Ok(())
    }
}

struct ClientInner {
    keys: KeyClient,
    /// `https://host[:port]`, as keys are named in identities and errors.
    vault_url: String,
    /// Who calls are made as, for permission errors. Never a secret.
    principal: String,
    timeout: Duration,
    retry: RetryConfig,
    throttling_retries: AtomicU64,
}

/// A configured Key Vault client for one `[backends.NAME]`, shared by its
/// keys. Cheap to clone. Tokens are fetched lazily, on the first call.
#[derive(Clone)]
pub struct KeyVaultClient(Arc<ClientInner>);

impl fmt::Debug for KeyVaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultClient")
            .field("vault_url", &self.0.vault_url)
            .field("principal", &self.0.principal)
            .finish()
    }
}

/// An environment variable's value, for naming an identity in messages.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Reads the client secret, without its trailing newline. The copy we hold is zeroized.
fn read_client_secret(path: &PathBuf) -> Result<Secret, ConfigError> {
    let field = "client_secret_file";
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| config_error(field, format!("{}: {e}", path.display())))?,
    );
    let secret = text.trim();
    if secret.is_empty() {
        return Err(config_error(field, format!("{} is empty", path.display())));
    }
    Ok(Secret::new(secret.to_owned()))
}

/// Builds the credential `backend` names and describes its identity.
fn credential(
    backend: &BackendConfig,
    options: ClientOptions,
    inline_secret: Option<Secret>,
) -> Result<(Arc<dyn TokenCredential>, String), ConfigError> {
    let sdk_error = |field: &'static str| {
        move |e: azure_core::Error| config_error(field, format!("cannot set up the credential: {e}"))
    };
    match backend.credential {
        CredentialKind::ClientSecret => {
            let (Some(tenant), Some(client_id)) = (&backend.tenant_id, &backend.client_id) else {
                return Err(config_error(
                    "credential",
                    "client_secret needs tenant_id, client_id and client_secret_file",
                ));
            };
            let (secret, source) = match (inline_secret, &backend.client_secret_file) {
                (Some(secret), _) => (secret, "the seal stanza or its environment".to_owned()),
                (None, Some(path)) => (read_client_secret(path)?, path.display().to_string()),
                (None, None) => {
                    return Err(config_error(
                        "credential",
                        "client_secret needs tenant_id, client_id and client_secret_file",
                    ));
                }
            };
            let credential = ClientSecretCredential::new(
                tenant,
                client_id.clone(),
                secret,
                Some(ClientSecretCredentialOptions {
                    client_options: options,
                }),
            )
            .map_err(sdk_error("client_secret_file"))?;
            let principal = format!(
                "service principal (client id {client_id}, tenant {tenant}) with the client secret from {source}"
            );
            Ok((credential, principal))
        }
        CredentialKind::WorkloadIdentity => {
            let credential = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: options,
                },
                client_id: backend.client_id.clone(),
                tenant_id: backend.tenant_id.clone(),
                token_file_path: backend.token_file.clone(),
            }))
            .map_err(sdk_error("token_file"))?;
            let shown = |configured: &Option<String>, env: &str| match configured {
                Some(value) => value.clone(),
                None => format!("{} (from {env})", env_value(env).unwrap_or_else(|| "?".into())),
            };
            let token_file = match &backend.token_file {
                Some(path) => path.display().to_string(),
                None => format!(
                    "{} (from AZURE_FEDERATED_TOKEN_FILE)",
                    env_value("AZURE_FEDERATED_TOKEN_FILE").unwrap_or_else(|| "?".into())
                ),
            };
            let principal = format!(
                "workload identity (client id {}, tenant {}) with the federated token in {token_file}",
                shown(&backend.client_id, "AZURE_CLIENT_ID"),
                shown(&backend.tenant_id, "AZURE_TENANT_ID"),
            );
            Ok((credential, principal))
        }
        CredentialKind::ManagedIdentity => {
            let (user_assigned_id, principal) =
                match (&backend.client_id, &backend.object_id, &backend.resource_id) {
                    (Some(id), _, _) => (
                        Some(UserAssignedId::ClientId(id.clone())),
                        format!("user-assigned managed identity (client id {id})"),
                    ),
                    (_, Some(id), _) => (
                        Some(UserAssignedId::ObjectId(id.clone())),
                        format!("user-assigned managed identity (object id {id})"),
                    ),
                    (_, _, Some(id)) => (
                        Some(UserAssignedId::ResourceId(id.clone())),
                        format!("user-assigned managed identity ({id})"),
                    ),
                    _ => (None, "the system-assigned managed identity".to_owned()),
                };
            let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id,
                client_options: options,
            }))
            .map_err(sdk_error("credential"))?;
            Ok((credential, principal))
        }
    }
}

/// Builds the Key Vault client for `backend`. Makes no network call; reads
/// `ca_file`, `client_secret_file` and the workload identity token file.
pub fn connect(backend: &BackendConfig) -> Result<KeyVaultClient, ConfigError> {
    connect_with(backend, None)
}

/// As [`connect`], with the client secret given in code (OpenBao's stock
/// stanza carries it inline) instead of `client_secret_file`.
fn connect_with(
    backend: &BackendConfig,
    inline_secret: Option<Secret>,
) -> Result<KeyVaultClient, ConfigError> {
    backend.validate_with(inline_secret.is_some())?;
    let vault = https_origin("vault_url", &backend.vault_url)?;
    let host = vault.host_str().unwrap_or_default().to_owned();
    let timeout = Duration::from_millis(backend.timeout_ms);
    let transport: Transport = transport::build(&transport::TransportConfig {
        ca_file: backend.ca_file.as_deref(),
        pinned_address: backend.vault_address.map(|address| (host.as_str(), address)),
        connect_timeout: timeout.min(Duration::from_secs(5)),
    })?;
    let options = ClientOptions {
        transport: Some(transport),
        // Ours is the only retry loop.
        retry: RetryOptions::none(),
        ..Default::default()
    };
    let mut credential_options = options.clone();
    if let Some(authority) = &backend.authority_host {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = authority.trim_end_matches('/').to_owned();
        credential_options.cloud = Some(Arc::new(CloudConfiguration::from(cloud)));
    }
    let (credential, principal) = credential(backend, credential_options, inline_secret)?;
    let vault_url = vault.as_str().trim_end_matches('/').to_owned();
    let keys = KeyClient::new(
        &vault_url,
        credential,
        Some(KeyClientOptions {
            client_options: options,
            ..Default::default()
        }),
    )
    .map_err(|e| config_error("vault_url", format!("cannot build the Key Vault client: {e}")))?;
    Ok(KeyVaultClient(Arc::new(ClientInner {
        keys,
        vault_url,
        principal,
        timeout,
        retry: backend.retry,
        throttling_retries: AtomicU64::new(0),
    })))
}

impl KeyVaultClient {
    /// The vault's URL, `https://host[:port]`.
    pub fn vault_url(&self) -> &str {
        &self.0.vault_url
    }

    /// The underlying SDK client, for tooling (admin CLIs, tests).
    pub fn sdk(&self) -> &KeyClient {
        &self.0.keys
    }
}

/// One Key Vault key (optionally pinned to one of its versions) used through
/// one [`KeyVaultClient`].
pub struct KeyVaultKey {
    client: KeyVaultClient,
    name: String,
    version: Option<String>,
    purpose: Purpose,
}

impl fmt::Debug for KeyVaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultKey")
            .field("vault_url", &self.client.0.vault_url)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("purpose", &self.purpose)
            .finish()
    }
}

/// Key Vault key names: 1 to 127 letters, digits and dashes.
fn valid_key_name(name: &str) -> bool {
    plain_name(name, b"-", 127)
}

/// Key versions are 32 hex digits; accept any short alphanumeric token, so
/// nothing else can reach the request path.
fn valid_key_version(version: &str) -> bool {
    plain_name(version, b"", 64)
}

/// A classified failure, before the key and principal are named.
#[derive(Debug)]
struct Failure {
    kind: BackendErrorKind,
    message: String,
    retryable: bool,
}

impl KeyVaultKey {
    /// Binds `key` to `client`. Makes no network call.
    pub fn new(client: &KeyVaultClient, key: &KeyConfig) -> Result<Self, ConfigError> {
        if !valid_key_name(&key.key_name) {
            let hint = if key.key_name.starts_with("https://") {
                "; give the key's name, not its URL (the vault is the backend's vault_url)"
            } else {
                ""
            };
            return Err(config_error(
                "key_name",
                format!(
                    "{:?} is not a Key Vault key name (1-127 letters, digits and dashes){hint}",
                    key.key_name
                ),
            ));
        }
        let version = match key.key_version.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) if valid_key_version(v) => Some(v.to_owned()),
            Some(other) => {
                return Err(config_error(
                    "key_version",
                    format!("{other:?} is not a Key Vault key version (32 hex digits)"),
                ));
            }
        };
        let built = Self::for_keygen(client, key, version)?;
        if built.purpose != Purpose::Seal && built.version.is_none() {
            // Unpinned, the key would follow Key Vault's current version:
            // a rotation (by the broker or a rotation policy) would change
            // the public key of every broker version at once.
            return Err(config_error(
                "key_version",
                "a Key Vault key pair must name its version (`sealbroker keygen` prints it; or see \
                 `az keyvault key show`), so that each broker version keeps its own public key",
            ));
        }
        Ok(built)
    }

    /// [`KeyVaultKey::new`] without requiring a key pair's version:
    /// `keygen` makes the key, and Key Vault names the version.
    pub(crate) fn for_keygen(
        client: &KeyVaultClient,
        key: &KeyConfig,
        version: Option<String>,
    ) -> Result<Self, ConfigError> {
        let purpose = Purpose::from_config(key)?;
        Ok(KeyVaultKey {
            client: client.clone(),
            name: key.key_name.clone(),
            version,
            purpose,
        })
    }

    /// `NAME` or `NAME/VERSION`, as errors name the key.
    fn describe(&self, version: Option<&str>) -> String {
        match version {
            Some(v) => format!("{}/{v}", self.name),
            None => self.name.clone(),
        }
    }

    /// Runs one call with retries, each attempt bounded by `timeout_ms`, and
    /// turns its failure into a [`BackendError`]. A call that is not
    /// idempotent is retried only when the service refused it outright
    /// (throttling), never after a timeout or a 5xx, which may have taken effect.
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        idempotent: bool,
        mut op: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        let inner = &self.client.0;
        let result = inner
            .retry
            .run(
                || {
                    let attempt = tokio::time::timeout(inner.timeout, op());
                    async move {
                        let outcome = match attempt.await {
                            Ok(Ok(value)) => return Ok(value),
                            Ok(Err(error)) => classify(operation, &error, inner.timeout),
                            Err(_) => Attempt::Retryable {
                                error: Failure {
                                    kind: BackendErrorKind::Timeout,
                                    message: format!(
                                        "no answer within timeout_ms = {} (the per-attempt bound, token fetch included)",
                                        inner.timeout.as_millis()
                                    ),
                                    retryable: true,
                                },
                                retry_after: None,
                            },
                        };
                        Err(match outcome {
                            Attempt::Retryable { error, .. }
                                if !idempotent && error.kind != BackendErrorKind::Throttled =>
                            {
                                Attempt::Fatal(Failure {
                                    retryable: false,
                                    ..error
                                })
                            }
                            other => other,
                        })
                    }
                },
                |failure: &Failure| {
                    if failure.kind == BackendErrorKind::Throttled {
                        inner.throttling_retries.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await;
        result.map_err(|failure| {
            let mut message = format!(
                "Key Vault {operation} with key {key} in {}: {}",
                inner.vault_url, failure.message
            );
            if failure.retryable && inner.retry.max_retries > 0 {
                message.push_str(&format!(" (gave up after {} retries)", inner.retry.max_retries));
            }
            if failure.kind == BackendErrorKind::PermissionDenied {
                message.push_str(&format!("; calling as {}", inner.principal));
            }
            BackendError::new(failure.kind, message)
        })
    }

    /// The version named by a `kid` the service answered with, checked to be
    /// a version of this key (and the pinned one, if pinned).
    fn version_of(
        &self,
        operation: &str,
        id: azure_core::Result<azure_security_keyvault_keys::ResourceId>,
    ) -> Result<String, BackendError> {
        let id = id.map_err(|e| {
            BackendError::internal(format!(
                "Key Vault {operation} answered without a usable key id: {e}"
            ))
        })?;
        let version = id.version.filter(|v| valid_key_version(v)).ok_or_else(|| {
            BackendError::internal(format!(
                "Key Vault {operation} answered with key id {:?}, which names no key version",
                id.source_id
            ))
        })?;
        if !id.name.eq_ignore_ascii_case(&self.name) {
            return Err(BackendError::internal(format!(
                "Key Vault {operation} answered with key id {:?}, not a version of key {}",
                id.source_id, self.name
            )));
        }
        if let Some(pinned) = &self.version
            && operation != "rotate"
            && !pinned.eq_ignore_ascii_case(&version)
        {
            return Err(BackendError::internal(format!(
                "Key Vault {operation} used version {version}, not {pinned} which this key is pinned to"
            )));
        }
        Ok(version)
    }
}

/// `Retry-After` in seconds, or the Azure millisecond variants.
fn retry_after(headers: &Headers) -> Option<Duration> {
    for name in [&X_MS_RETRY_AFTER_MS, &RETRY_AFTER_MS] {
        if let Some(ms) = headers
            .get_optional_str(name)
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            return Some(Duration::from_millis(ms));
        }
    }
    headers.get_optional_str(&RETRY_AFTER).and_then(parse_retry_after)
}

/// `timeout` is the attempt bound (`timeout_ms`); connecting is bounded by
/// it too (at most 5 s), and a connection that ends there is a timeout, not
/// an unreachable vault: which of the two bounds fires first is a race.
fn classify(operation: &str, error: &azure_core::Error, timeout: Duration) -> Attempt<Failure> {
    let fatal = |kind, message: String| {
        Attempt::Fatal(Failure {
            kind,
            message,
            retryable: false,
        })
    };
    let retryable = |kind, message: String, retry_after| Attempt::Retryable {
        error: Failure {
            kind,
            message,
            retryable: true,
        },
        retry_after,
    };
    match error.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let status = u16::from(*status);
            let headers = raw_response.as_ref().map(|r| r.headers());
            let after = headers.and_then(retry_after);
            // Key Vault puts the precise reason (e.g. KeyDisabled) in innererror.
            let inner_code = raw_response
                .as_ref()
                .and_then(|r| azure_core::json::from_json::<_, ErrorResponse>(r.body()).ok())
                .and_then(|body| body.error)
                .and_then(|detail| detail.inner_error)
                .and_then(|inner| inner.code);
            let code = error_code.as_deref().unwrap_or("");
            let mut text = if code.is_empty() {
                format!("HTTP {status}: {error}")
            } else {
                format!("HTTP {status} {code}: {error}")
            };
            if let Some(inner) = &inner_code {
                text.push_str(&format!(" ({inner})"));
            }
            let disabled = inner_code.as_deref() == Some("KeyDisabled") || text.contains("disabled key");
            match status {
                429 => retryable(BackendErrorKind::Throttled, text, after),
                403 if disabled => fatal(
                    BackendErrorKind::KeyNotFound,
                    format!("the key version is disabled; enable it or pin an enabled version ({text})"),
                ),
                401 | 403 => fatal(BackendErrorKind::PermissionDenied, text),
                404 => fatal(BackendErrorKind::KeyNotFound, text),
                400 if operation == "unwrapKey" || operation == "decrypt" => fatal(
                    BackendErrorKind::NotAuthentic,
                    format!("the wrapped data key does not open under this key version ({text})"),
                ),
                400 => fatal(BackendErrorKind::InvalidInput, text),
                408 => retryable(BackendErrorKind::Timeout, text, after),
                500.. => retryable(BackendErrorKind::Unavailable, text, after),
                _ => fatal(BackendErrorKind::Internal, text),
            }
        }
        ErrorKind::Credential => {
            // A token endpoint that is down or throttling is not a refusal.
            let text = format!("cannot obtain an access token: {}", error_chain(error));
            match credential_cause(error) {
                Some(ErrorKind::Connection | ErrorKind::Io) => {
                    retryable(BackendErrorKind::Unavailable, text, None)
                }
                Some(ErrorKind::HttpResponse { status, .. }) => match u16::from(*status) {
                    429 => retryable(BackendErrorKind::Throttled, text, None),
                    408 | 500.. => retryable(BackendErrorKind::Unavailable, text, None),
                    _ => fatal(BackendErrorKind::PermissionDenied, text),
                },
                _ => fatal(BackendErrorKind::PermissionDenied, text),
            }
        }
        // A certificate the client does not trust will not become trusted by retrying.
        ErrorKind::Connection if error_chain(error).contains("certificate") => fatal(
            BackendErrorKind::Unavailable,
            format!(
                "TLS with the vault failed; if it is reached through a TLS-inspecting proxy or a private \
                 CA, set ca_file: {}",
                error_chain(error)
            ),
        ),
        ErrorKind::Connection if connect_timed_out(error) => retryable(
            BackendErrorKind::Timeout,
            format!(
                "no connection within {} ms (timeout_ms, at most 5000 for connecting): {}",
                timeout.min(Duration::from_secs(5)).as_millis(),
                error_chain(error)
            ),
            None,
        ),
        ErrorKind::Connection => retryable(
            BackendErrorKind::Unavailable,
            format!("cannot reach the vault: {}", error_chain(error)),
            None,
        ),
        ErrorKind::Io => retryable(
            BackendErrorKind::Unavailable,
            format!("the connection failed: {}", error_chain(error)),
            None,
        ),
        ErrorKind::DataConversion => fatal(
            BackendErrorKind::Internal,
            format!("unreadable answer: {}", error_chain(error)),
        ),
        _ => fatal(BackendErrorKind::Internal, error_chain(error)),
    }
}

/// Whether the HTTP client gave up connecting (TCP and TLS) at its connect
/// timeout.
fn connect_timed_out(error: &azure_core::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The kind of the innermost Azure error under a credential failure.
fn credential_cause(error: &azure_core::Error) -> Option<&ErrorKind> {
    let mut found = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(azure) = e.downcast_ref::<azure_core::Error>()
            && !matches!(azure.kind(), ErrorKind::Credential)
        {
            found = Some(azure.kind());
        }
        source = e.source();
    }
    found
}

/// An error and its sources on one line, without the SDK's troubleshooting link.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let clean = |e: &dyn std::error::Error| {
        let text = e.to_string();
        match text.split_once("\nTo troubleshoot") {
            Some((head, _)) => head.trim().to_owned(),
            None => text.trim().to_owned(),
        }
    };
    let mut text = clean(error);
    let mut source = error.source();
    while let Some(e) = source {
        let next = clean(e);
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text.replace('\n', " ")
}

fn wrap_parameters(value: Vec<u8>) -> azure_core::Result<RequestContent<KeyOperationParameters>> {
    KeyOperationParameters {
        algorithm: Some(EncryptionAlgorithm::RsaOaep256),
        value: Some(value),
        ..Default::default()
    }
    .try_into()
}

#[async_trait]
impl Backend for KeyVaultKey {
    fn kind(&self) -> &'static str {
        "azurekeyvault"
    }

    fn key_identity(&self) -> String {
        format!(
            "azurekeyvault:{}/keys/{}",
            self.client.0.vault_url,
            self.describe(self.version.as_deref())
        )
    }

    fn throttling_retries(&self) -> u64 {
        self.client.0.throttling_retries.load(Ordering::Relaxed)
    }

    fn algorithm(&self) -> Option<KeyAlgorithm> {
        self.purpose.algorithm()
    }

    fn oaep_hash(&self) -> Option<sealbroker_core::OaepHash> {
        match self.purpose {
            Purpose::Oaep(_, hash) => Some(hash),
            _ => None,
        }
    }

    /// The key's JWK (`GET`), read into core's public key.
    async fn public_key(&self) -> Result<PublicKey, BackendError> {
        self.public_key_asymmetric().await
    }

    /// Key Vault `sign`: a digest (the caller's, or the message hashed once
    /// here); ECDSA comes back as `r || s` and is returned as DER.
    async fn sign(&self, scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        self.sign_asymmetric(scheme, input).await
    }

    /// Key Vault `verify`, for messages and digests alike.
    async fn verify(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        self.verify_asymmetric(scheme, input, signature).await
    }

    async fn encrypt_asymmetric(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.encrypt_oaep(plaintext).await
    }

    async fn decrypt_asymmetric(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        self.decrypt_oaep(ciphertext).await
    }

    /// `aad` is not sent: RSA-OAEP binds none (see the crate docs).
    async fn encrypt(&self, secret: &[u8], _aad: &[u8]) -> Result<Sealed, BackendError> {
        self.refuse_unless_sealing()?;
        let keys = &self.client.0.keys;
        let target = self.describe(self.version.as_deref());
        let result = self
            .call("wrapKey", &target, true, || async {
                let options = KeyClientWrapKeyOptions {
                    key_version: self.version.clone(),
                    ..Default::default()
                };
                keys.wrap_key(&self.name, wrap_parameters(secret.to_vec())?, Some(options))
                    .await?
                    .into_model()
            })
            .await?;
        let version = self.version_of("wrapKey", result.resource_id())?;
        let ciphertext = result
            .result
            .filter(|c| !c.is_empty())
            .ok_or_else(|| BackendError::internal("Key Vault wrapKey answered without a wrapped key"))?;
        Ok(Sealed {
            mechanism: Mechanism::RsaOaep,
            ciphertext,
            oaep_hash: OAEP_HASH.to_owned(),
            metadata: [(METADATA_KEY_VERSION.to_owned(), version)].into(),
            ..Default::default()
        })
    }

    async fn decrypt(&self, sealed: &Sealed, _aad: &[u8]) -> Result<SecretBytes, BackendError> {
        self.refuse_unless_sealing()?;
        if sealed.mechanism != Mechanism::RsaOaep || sealed.oaep_hash != OAEP_HASH {
            return Err(BackendError::not_authentic(
                "the data key was not wrapped by Key Vault with RSA-OAEP-256",
            ));
        }
        let version = match (sealed.metadata.get(METADATA_KEY_VERSION), &self.version) {
            (Some(recorded), Some(pinned)) if !recorded.eq_ignore_ascii_case(pinned) => {
                return Err(BackendError::not_authentic(format!(
                    "the blob was wrapped by version {recorded:?} of key {}, not by {pinned} which this key \
                     is pinned to",
                    self.name
                )));
            }
            (Some(recorded), _) => recorded.clone(),
            (None, Some(pinned)) => pinned.clone(),
            (None, None) => {
                return Err(BackendError::not_authentic(
                    "the blob records no Key Vault key version to unwrap with",
                ));
            }
        };
        if !valid_key_version(&version) {
            return Err(BackendError::not_authentic(format!(
                "the blob records {version:?}, which is not a Key Vault key version"
            )));
        }
        let keys = &self.client.0.keys;
        let target = self.describe(Some(&version));
        let result = self
            .call("unwrapKey", &target, true, || async {
                keys.unwrap_key(
                    &self.name,
                    &version,
                    wrap_parameters(sealed.ciphertext.clone())?,
                    None,
                )
                .await?
                .into_model()
            })
            .await?;
        let plaintext = result
            .result
            .ok_or_else(|| BackendError::internal("Key Vault unwrapKey answered without a key"))?;
        Ok(SecretBytes::new(plaintext))
    }

    /// Rotates the key in Key Vault (a new version) and pins the new broker
    /// version to it. Key Vault names versions itself, so the broker's
    /// `version` is not part of the name.
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let keys = &self.client.0.keys;
        // Not retried after a timeout or 5xx: that could rotate twice.
        let rotated = self
            .call("rotate", &self.name, false, || async {
                keys.rotate_key(&self.name, None).await?.into_model()
            })
            .await?;
        let cloud_version = self.version_of("rotate", rotated.resource_id())?;
        tracing::info!(
            key = %self.name,
            vault = %self.client.0.vault_url,
            cloud_version = %cloud_version,
            version,
            "rotated a Key Vault key"
        );
        // Key Vault rotates a key pair to a new pair of the same type.
        let key = KeyVaultKey {
            client: self.client.clone(),
            name: self.name.clone(),
            version: Some(cloud_version.clone()),
            purpose: self.purpose,
        };
        Ok(NewVersion {
            backend: Arc::new(key),
            settings: [("key_version".to_owned(), cloud_version)].into(),
        })
    }

    /// Reads the key first, so a disabled, expired or unsuitable key is named
    /// plainly, then makes a real round trip.
    async fn health(&self) -> Result<(), BackendError> {
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
        let unusable = |kind, why: String| {
            Err(BackendError::new(
                kind,
                format!("Key Vault key {target} in {}: {why}", self.client.0.vault_url),
            ))
        };
        if let Some(attributes) = &key.attributes {
            if attributes.enabled == Some(false) {
                return unusable(BackendErrorKind::KeyNotFound, "the key is disabled".into());
            }
            if let Some(expires) = attributes.expires
                && expires <= azure_core::time::OffsetDateTime::now_utc()
            {
                return unusable(
                    BackendErrorKind::KeyNotFound,
                    format!("the key expired at {expires}"),
                );
            }
        }
        let Some(material) = &key.key else {
            return unusable(BackendErrorKind::Internal, "the service returned no key".into());
        };
        if self.purpose != Purpose::Seal {
            let public = signing::public_key_of(material)?;
            if Some(public.algorithm) != self.purpose.algorithm() {
                return unusable(
                    BackendErrorKind::InvalidInput,
                    format!(
                        "the key is {}, but the config says algorithm = \"{}\"",
                        public.algorithm,
                        self.purpose.algorithm().map(|a| a.as_str()).unwrap_or("")
                    ),
                );
            }
        }
        match &material.kty {
            Some(KeyType::Rsa | KeyType::RsaHsm) if self.purpose == Purpose::Seal => {}
            _ if self.purpose != Purpose::Seal => {}
            other => {
                let kty = other
                    .as_ref()
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "unknown".into());
                return unusable(
                    BackendErrorKind::InvalidInput,
                    format!("the key type is {kty}; RSA-OAEP-256 wrapping needs an RSA or RSA-HSM key"),
                );
            }
        }
        if let Some(ops) = &material.key_ops {
            for needed in self.purpose.key_ops().map(|op| op.to_string()) {
                if !ops.contains(&needed) {
                    return unusable(
                        BackendErrorKind::InvalidInput,
                        format!("the key does not permit {needed} (key_ops {ops:?})"),
                    );
                }
            }
        }
        // A key pair is probed by signing or by OAEP, never by sealing.
        if self.purpose != Purpose::Seal {
            return self.probe_asymmetric().await;
        }
        let probe = [0x5a_u8; 32];
        let sealed = self.encrypt(&probe, b"health").await?;
        let opened = self.decrypt(&sealed, b"health").await?;
        if opened.expose() == probe {
            Ok(())
        } else {
            Err(BackendError::internal(
                "health probe round trip returned different bytes",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BackendConfig, toml::de::Error> {
        toml::from_str(text)
    }

    const MINIMAL: &str = "vault_url = \"https://v.vault.azure.net\"\ncredential = \"managed_identity\"\n";

    #[test]
    fn config_rejects_unknown_fields_and_inline_secrets() {
        let err = parse(&format!("{MINIMAL}client_secret = \"s3cret\"\n")).unwrap_err();
        assert!(err.to_string().contains("client_secret"), "{err}");
        let err = parse("vault_url = \"https://v.vault.azure.net\"\ncredential = \"default\"\n").unwrap_err();
        assert!(err.to_string().contains("default"), "{err}");
    }

    #[test]
    fn config_defaults_and_validation_name_the_field() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.timeout_ms, 10_000);
        assert_eq!(config.retry, RetryConfig::default());
        config.validate().unwrap();

        let field = |text: &str| parse(text).unwrap().validate().unwrap_err().path;
        assert_eq!(
            field("vault_url = \"http://v.vault.azure.net\"\ncredential = \"managed_identity\""),
            "vault_url"
        );
        assert_eq!(
            field("vault_url = \"https://v.vault.azure.net/keys/k\"\ncredential = \"managed_identity\""),
            "vault_url"
        );
        assert_eq!(field(&format!("{MINIMAL}tenant_id = \"t\"")), "tenant_id");
        assert_eq!(
            field(&format!("{MINIMAL}client_secret_file = \"/x\"")),
            "client_secret_file"
        );
        assert_eq!(
            field(&format!("{MINIMAL}client_id = \"a\"\nobject_id = \"b\"")),
            "client_id"
        );
        assert_eq!(
            field(
                "vault_url = \"https://v.vault.azure.net\"\ncredential = \"client_secret\"\n\
                 tenant_id = \"t\"\nclient_id = \"c\""
            ),
            "client_secret_file"
        );
        assert_eq!(
            field(
                "vault_url = \"https://v.vault.azure.net\"\ncredential = \"workload_identity\"\n\
                 authority_host = \"login.example\""
            ),
            "authority_host"
        );
        assert_eq!(
            field(&format!(
                "{MINIMAL}[retry]\ninitial_backoff_ms = 10\nmax_backoff_ms = 1"
            )),
            "retry.initial_backoff_ms"
        );
        let err = parse(&format!("{MINIMAL}vault_address = \"not-an-ip\"")).unwrap_err();
        assert!(err.to_string().contains("vault_address"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_secret_file_names_the_file_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for path in [dir.path().join("missing"), empty] {
            let config = parse(&format!(
                "vault_url = \"https://v.vault.azure.net\"\ncredential = \"client_secret\"\n\
                 tenant_id = \"t\"\n\
                 client_id = \"c\"\nclient_secret_file = {:?}\n",
                path.display().to_string()
            ))
            .unwrap();
            let err = connect(&config).err().unwrap();
            assert_eq!(err.path, "client_secret_file");
            assert!(err.message.contains(&path.display().to_string()), "{err}");
        }
    }

    #[test]
    fn key_names_and_versions_are_checked_and_pinning_changes_the_identity() {
        let client = connect(&parse(MINIMAL).unwrap()).unwrap();
        let key = |name: &str, version: Option<&str>| {
            KeyVaultKey::new(
                &client,
                &KeyConfig {
                    key_name: name.into(),
                    key_version: version.map(str::to_owned),
                    ..Default::default()
                },
            )
        };
        assert_eq!(key("a/b", None).unwrap_err().path, "key_name");
        assert_eq!(key("", None).unwrap_err().path, "key_name");
        let err = key("https://v.vault.azure.net/keys/k", None).unwrap_err();
        assert!(err.message.contains("not its URL"), "{err}");
        assert_eq!(key("k", Some("../x")).unwrap_err().path, "key_version");
        let unpinned = key("unseal", Some("")).unwrap();
        assert_eq!(
            unpinned.key_identity(),
            "azurekeyvault:https://v.vault.azure.net/keys/unseal"
        );
        let pinned = key("unseal", Some("0123abcd")).unwrap();
        assert_eq!(
            pinned.key_identity(),
            "azurekeyvault:https://v.vault.azure.net/keys/unseal/0123abcd"
        );
        assert_eq!(pinned.kind(), "azurekeyvault");
    }

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut headers = Headers::new();
        headers.insert(RETRY_AFTER, "3");
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(X_MS_RETRY_AFTER_MS, "250");
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
    }
}
