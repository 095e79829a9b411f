//! The `transit` backend kind: `[backends.NAME]` is one OpenBao/Vault, each
//! key a transit key on it.

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, parse_table};

use crate::{BackendConfig, KeyConfig, TransitClient, TransitKey};

/// `type = "transit"`.
pub static KIND: TransitKind = TransitKind;

pub struct TransitKind;

#[async_trait]
impl BackendKind for TransitKind {
    fn name(&self) -> &'static str {
        "transit"
    }

    /// Builds the HTTP client and reads the token; the upstream is not contacted.
    async fn open(
        &self,
        table: &toml::Table,
        path: &str,
        profile: Profile,
    ) -> Result<Arc<dyn OpenedBackend>, ConfigError> {
        let config: BackendConfig = parse_table(table, path)?;
        profile
            .refuse_plaintext_url("address", &config.address, "the token and the data keys")
            .map_err(|e| e.under(path))?;
        let client = config.client().map_err(|e| e.under(path))?;
        Ok(Arc::new(Upstream { client }))
    }
}

struct Upstream {
    client: TransitClient,
}

#[async_trait]
impl OpenedBackend for Upstream {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let key: KeyConfig = parse_table(settings, path)?;
        Ok(Arc::new(
            TransitKey::new(self.client.clone(), &key).map_err(|e| e.under(path))?,
        ))
    }

    /// A new upstream transit key of the type the settings name
    /// (`aes256-gcm96` for a sealing key, else the key pair's algorithm),
    /// never exportable and without plaintext backup. Refuses when the
    /// upstream already has the key. The token needs `update` on
    /// `<mount>/keys/<key>`.
    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        let key = TransitKey::new(self.client.clone(), &key).map_err(|e| e.under(path))?;
        key.create_upstream().await?;
        Ok(key.key_identity())
    }
}
