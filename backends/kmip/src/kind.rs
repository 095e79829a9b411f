//! The `kmip` backend kind: `[backends.NAME]` is one KMIP server, each key
//! an AES-256 object on it, by Unique Identifier or Name.

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, parse_table};

use crate::{BackendConfig, KeyConfig, KmipKey, KmipPool, create_key_on};

/// `type = "kmip"`.
pub static KIND: KmipKind = KmipKind;

pub struct KmipKind;

#[async_trait]
impl BackendKind for KmipKind {
    fn name(&self) -> &'static str {
        "kmip"
    }

    /// Reads the TLS files and builds the connection pool; connections are made on first use.
    async fn open(
        &self,
        table: &toml::Table,
        path: &str,
        _profile: Profile,
    ) -> Result<Arc<dyn OpenedBackend>, ConfigError> {
        let config: BackendConfig = parse_table(table, path)?;
        let pool = config.pool().map_err(|e| e.under(path))?;
        Ok(Arc::new(Server { pool }))
    }
}

struct Server {
    pool: KmipPool,
}

#[async_trait]
impl OpenedBackend for Server {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let key: KeyConfig = parse_table(settings, path)?;
        Ok(Arc::new(
            KmipKey::new(self.pool.clone(), &key).map_err(|e| e.under(path))?,
        ))
    }

    /// An activated AES-256 key, created by Name.
    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        let name = key.key_name.ok_or_else(|| {
            ConfigError::new(
                format!("{path}.key_name"),
                "keygen creates a KMIP key by Name; set key_name (not kms_key_id)",
            )
        })?;
        let id = create_key_on(&self.pool, &name).await?;
        Ok(format!("AES-256 KMIP key {name:?} (unique identifier {id})"))
    }
}
