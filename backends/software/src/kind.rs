//! The `software` backend kind: a key file per key, Development only.

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, parse_table};

use crate::{BackendConfig, KeyConfig, SoftwareKey, generate_key_file};

/// `type = "software"`.
pub static KIND: SoftwareKind = SoftwareKind;

pub struct SoftwareKind;

#[async_trait]
impl BackendKind for SoftwareKind {
    fn name(&self) -> &'static str {
        "software"
    }

    /// Its keys sit on the broker's own disk: no external root of trust.
    fn development_only(&self) -> bool {
        true
    }

    async fn open(
        &self,
        table: &toml::Table,
        path: &str,
        _profile: Profile,
    ) -> Result<Arc<dyn OpenedBackend>, ConfigError> {
        let _: BackendConfig = parse_table(table, path)?;
        Ok(Arc::new(KeyFiles))
    }
}

struct KeyFiles;

#[async_trait]
impl OpenedBackend for KeyFiles {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let key: KeyConfig = parse_table(settings, path)?;
        let key = SoftwareKey::load(&key)
            .map_err(|e| ConfigError::new(format!("{path}.key_file"), e.to_string()))?;
        Ok(Arc::new(key))
    }

    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        generate_key_file(&key.key_file)
            .map_err(|e| ConfigError::new(format!("{path}.key_file"), e.to_string()))?;
        Ok(format!("software key file {}", key.key_file.display()))
    }
}
