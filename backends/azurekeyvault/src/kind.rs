//! The `azurekeyvault` backend kind: `[backends.NAME]` is one vault and its
//! credential, each key a Key Vault key (and optional version).

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{
    Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, StanzaError, StockSeal,
    StockStanza, parse_table,
};

use crate::{BackendConfig, KeyConfig, KeyVaultClient, KeyVaultKey, connect};

/// `type = "azurekeyvault"`.
pub static KIND: KeyVaultKind = KeyVaultKind;

pub struct KeyVaultKind;

#[async_trait]
impl BackendKind for KeyVaultKind {
    fn name(&self) -> &'static str {
        "azurekeyvault"
    }

    /// Builds the client and reads the credential files; `vault_url` must be https://. No
    /// vault call is made.
    async fn open(
        &self,
        table: &toml::Table,
        path: &str,
        _profile: Profile,
    ) -> Result<Arc<dyn OpenedBackend>, ConfigError> {
        let config: BackendConfig = parse_table(table, path)?;
        let client = connect(&config).map_err(|e| e.under(path))?;
        Ok(Arc::new(Vault { client }))
    }

    fn has_stock_seal(&self) -> bool {
        true
    }

    /// OpenBao's stock `seal "azurekeyvault"` stanza, blobs and key ids.
    async fn open_stock_stanza(&self, stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
        crate::stock::open(stanza).await
    }
}

struct Vault {
    client: KeyVaultClient,
}

#[async_trait]
impl OpenedBackend for Vault {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let key: KeyConfig = parse_table(settings, path)?;
        Ok(Arc::new(
            KeyVaultKey::new(&self.client, &key).map_err(|e| e.under(path))?,
        ))
    }

    /// A key pair (`algorithm` set): a new `RSA-HSM` or `EC-HSM` key,
    /// never exportable, permitting only sign/verify or encrypt/decrypt;
    /// the description names the version to set as `key_version`. Refused
    /// when the name exists. Sealing keys are made with Azure's tools.
    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        if key.algorithm.is_none() {
            return Err(KeygenError::Unsupported);
        }
        if key.key_version.as_deref().is_some_and(|v| !v.trim().is_empty()) {
            return Err(KeygenError::Config(ConfigError::new(
                format!("{path}.key_version"),
                "keygen makes the key and Key Vault names its version: remove key_version, run keygen, \
                 then set key_version to the version it prints",
            )));
        }
        let key = KeyVaultKey::for_keygen(&self.client, &key, None).map_err(|e| e.under(path))?;
        Ok(key.create_key_pair().await?)
    }
}
