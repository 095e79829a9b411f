//! The `software` backend kind: a key file per key, Development only.

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, parse_table};

use crate::{
    BackendConfig, KeyConfig, SoftwareKey, SoftwareSigningKey, generate_key_file, generate_pkcs8_file,
};

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
        let algorithm = key
            .signing_algorithm()
            .map_err(|e| ConfigError::new(format!("{path}.algorithm"), e))?;
        let file_error = |e: crate::LoadError| ConfigError::new(format!("{path}.key_file"), e.to_string());
        Ok(match algorithm {
            Some(algorithm) => Arc::new(
                SoftwareSigningKey::load(&key.key_file, algorithm, key.generate).map_err(file_error)?,
            ),
            None => Arc::new(SoftwareKey::load(&key).map_err(file_error)?),
        })
    }

    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        let algorithm = key
            .signing_algorithm()
            .map_err(|e| ConfigError::new(format!("{path}.algorithm"), e))?;
        let file_error = |e: crate::LoadError| ConfigError::new(format!("{path}.key_file"), e.to_string());
        match algorithm {
            Some(algorithm) => {
                generate_pkcs8_file(&key.key_file, algorithm).map_err(file_error)?;
                Ok(format!(
                    "software {algorithm} key file {}",
                    key.key_file.display()
                ))
            }
            None => {
                generate_key_file(&key.key_file).map_err(file_error)?;
                Ok(format!("software key file {}", key.key_file.display()))
            }
        }
    }
}
