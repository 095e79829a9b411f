//! The `awskms` backend kind: `[backends.NAME]` is one AWS account and
//! region (credentials, endpoint), each key a KMS key id, ARN or alias.

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{
    Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, StanzaError, StockSeal,
    StockStanza, parse_table,
};

use crate::signing::Existing;
use crate::{AwsKmsKey, BackendConfig, KeyConfig, KmsClient, connect};

/// `type = "awskms"`.
pub static KIND: AwsKmsKind = AwsKmsKind;

pub struct AwsKmsKind;

#[async_trait]
impl BackendKind for AwsKmsKind {
    fn name(&self) -> &'static str {
        "awskms"
    }

    /// Loads the SDK configuration and credentials chain; no KMS call is made.
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
        Ok(Arc::new(Account { client }))
    }

    fn has_stock_seal(&self) -> bool {
        true
    }

    /// OpenBao's stock `seal "awskms"` stanza, blobs and key ids.
    async fn open_stock_stanza(&self, stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
        crate::stock::open(stanza).await
    }
}

struct Account {
    client: KmsClient,
}

#[async_trait]
impl OpenedBackend for Account {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let key: KeyConfig = parse_table(settings, path)?;
        Ok(Arc::new(
            AwsKmsKey::new(&self.client, &key).map_err(|e| e.under(path))?,
        ))
    }

    /// A new KMS key of the spec and usage the settings describe
    /// (`SYMMETRIC_DEFAULT`, `RSA_*` or `ECC_NIST_*`), named by the alias in
    /// `key_id`. Refuses when the alias already names a key. KMS keys are
    /// never extractable.
    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        let key = AwsKmsKey::new(&self.client, &key).map_err(|e| e.under(path))?;
        Ok(key.create_aliased(Existing::Refuse).await?)
    }
}
