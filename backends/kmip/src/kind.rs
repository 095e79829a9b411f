//! The `kmip` backend kind: `[backends.NAME]` is one KMIP server, each key
//! an AES-256 object on it, by Unique Identifier or Name, or (with
//! `algorithm`) an RSA key pair.

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, parse_table};

use crate::{BackendConfig, KeyConfig, KmipPool, key_on, keygen_on};

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
        key_on(self.pool.clone(), &key).map_err(|e| e.under(path))
    }

    /// An activated AES-256 key, or an activated RSA key pair (the public
    /// key named `<key_name>/public`), created by Name.
    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        keygen_on(&self.pool, &key).await.map_err(|e| match e {
            KeygenError::Config(e) => KeygenError::Config(e.under(path)),
            other => other,
        })
    }
}
