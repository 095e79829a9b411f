//! The `gcpckms` backend kind: `[backends.NAME]` is one Google Cloud project (credentials, endpoint),
//! each key a Cloud KMS crypto key (and optional version).

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{
    Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, StanzaError, StockSeal,
    StockStanza, parse_table,
};

use crate::{BackendConfig, GcpKmsKey, KeyConfig, KmsClient, connect};

/// `type = "gcpckms"`.
pub static KIND: GcpKmsKind = GcpKmsKind;

pub struct GcpKmsKind;

#[async_trait]
impl BackendKind for GcpKmsKind {
    fn name(&self) -> &'static str {
        "gcpckms"
    }

    /// Loads the credentials and builds the client; no KMS call is made.
    async fn open(
        &self,
        table: &toml::Table,
        path: &str,
        profile: Profile,
    ) -> Result<Arc<dyn OpenedBackend>, ConfigError> {
        let config: BackendConfig = parse_table(table, path)?;
        if let Some(endpoint) = &config.endpoint {
            profile
                .refuse_plaintext_url("endpoint", endpoint, "credentials and data keys")
                .map_err(|e| e.under(path))?;
        }
        let client = connect(&config).await.map_err(|e| e.under(path))?;
        Ok(Arc::new(Project { client }))
    }

    fn has_stock_seal(&self) -> bool {
        true
    }

    /// OpenBao's stock `seal "gcpckms"` stanza, blobs and key ids.
    async fn open_stock_stanza(&self, stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
        crate::stock::open(stanza).await
    }
}

struct Project {
    client: KmsClient,
}

#[async_trait]
impl OpenedBackend for Project {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let key: KeyConfig = parse_table(settings, path)?;
        Ok(Arc::new(
            GcpKmsKey::new(&self.client, &key).map_err(|e| e.under(path))?,
        ))
    }

    /// An asymmetric key (`algorithm` set): a new `CryptoKey` of purpose
    /// `ASYMMETRIC_SIGN` or `ASYMMETRIC_DECRYPT`, at HSM protection, whose
    /// first version (`key_version = "1"`) Cloud KMS generates; never
    /// exportable. Symmetric keys are made with Google's own tools.
    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        if key.algorithm.is_none() {
            return Err(KeygenError::Unsupported);
        }
        let key = GcpKmsKey::new(&self.client, &key).map_err(|e| e.under(path))?;
        Ok(key.create_crypto_key().await?)
    }
}
