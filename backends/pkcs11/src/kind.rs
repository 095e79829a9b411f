//! The `pkcs11` backend kind: `[backends.NAME]` is one token on one module,
//! each key a label and/or id on it.

use std::sync::Arc;

use async_trait::async_trait;
use sealbroker_core::{
    Backend, BackendKind, ConfigError, KeygenError, OpenedBackend, Profile, StanzaError, StockSeal,
    StockStanza, parse_table,
};

use crate::{BackendConfig, Engine, KeyConfig, Pkcs11Key, generate_key};

/// `type = "pkcs11"`.
pub static KIND: Pkcs11Kind = Pkcs11Kind;

pub struct Pkcs11Kind;

#[async_trait]
impl BackendKind for Pkcs11Kind {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    /// Builds the token pool or the helper's supervisor; nothing starts or
    /// touches the module until the first operation.
    async fn open(
        &self,
        table: &toml::Table,
        path: &str,
        _profile: Profile,
    ) -> Result<Arc<dyn OpenedBackend>, ConfigError> {
        let config: BackendConfig = parse_table(table, path)?;
        let engine = config.engine(path).map_err(|e| e.under(path))?;
        Ok(Arc::new(Token { config, engine }))
    }

    fn has_stock_seal(&self) -> bool {
        true
    }

    /// OpenBao's stock `seal "pkcs11"` stanza, blobs and key ids.
    async fn open_stock_stanza(&self, stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
        crate::stock::open(stanza).await
    }
}

/// One configured token.
struct Token {
    config: BackendConfig,
    engine: Engine,
}

#[async_trait]
impl OpenedBackend for Token {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let key: KeyConfig = parse_table(settings, path)?;
        Ok(Arc::new(
            Pkcs11Key::with_engine(self.engine.clone(), &key).map_err(|e| e.under(path))?,
        ))
    }

    /// A non-extractable, sensitive AES-256 key or RSA-3072 pair, made in
    /// this process (`sealbroker keygen` is short-lived; a module crash there
    /// fails only the command).
    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let key: KeyConfig = parse_table(settings, path)?;
        Ok(generate_key(&self.config, &key).await?)
    }
}
