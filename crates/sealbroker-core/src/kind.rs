//! Backend kinds: how a `[backends.NAME]` table with `type = "..."` becomes
//! backend keys. Like a rustls `CryptoProvider`, a kind is a plain value that
//! its own crate exports (`sealbroker_backend_pkcs11::KIND`); the broker names
//! no concrete kind, and the binary lists the kinds it links.
//!
//! A kind owns everything about its backend: its config fields (with field
//! paths), its Hardened refusals, opening (a client, a module, a session
//! pool), key creation for `keygen`, and, through [`Backend::create_version`],
//! rotation. What every backend shares (`type`, `max_in_flight`, refusing
//! development-only kinds under Hardened) is the broker's business.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::Backend;
use crate::config::{ConfigError, Profile};
use crate::error::BackendError;
use crate::stock::{StanzaError, StockSeal, StockStanza};

/// A kind of backend, e.g. `pkcs11`.
#[async_trait]
pub trait BackendKind: Send + Sync + 'static {
    /// The `type` value that selects this kind.
    fn name(&self) -> &'static str;

    /// True for kinds that keep key material on the broker's own disk: the
    /// Hardened profile refuses them.
    fn development_only(&self) -> bool {
        false
    }

    /// Reads a `[backends.NAME]` table (without `type` and the broker's own
    /// settings), applies this kind's rules for `profile`, and builds what
    /// its keys share. Must not need the device or service to be up: a
    /// briefly absent HSM must not stop the broker from starting (and
    /// reporting itself unready). `path` prefixes error paths.
    async fn open(
        &self,
        table: &toml::Table,
        path: &str,
        profile: Profile,
    ) -> Result<Arc<dyn OpenedBackend>, ConfigError>;

    /// Whether this kind stands in for OpenBao's stock seal of its name
    /// (`seal "awskms"` served by `sealbroker kms-plugin awskms`).
    fn has_stock_seal(&self) -> bool {
        false
    }

    /// Reads OpenBao's stock seal stanza for this kind (its keys, defaults
    /// and environment variables) and returns a seal that writes and reads
    /// the stock blob format, so OpenBao sees no seal change. Errors are
    /// worded as the stock wrapper words them.
    async fn open_stock_stanza(&self, stanza: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
        let _ = stanza;
        Err(StanzaError::new(format!(
            "sealbroker's {} backend does not stand in for an OpenBao stock seal",
            self.name()
        )))
    }
}

/// A configured backend, ready to make its keys.
#[async_trait]
pub trait OpenedBackend: Send + Sync {
    /// The backend key that a key's settings describe (the backend's part
    /// of a `[keys.NAME]` table or of one of its members). Cheap, and no
    /// device calls: errors are about the settings, under `path`.
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError>;

    /// Creates the key that `settings` describe on the backend (`sealbroker
    /// keygen`), non-extractable where the backend has the notion. Returns a
    /// description of what was created. Kinds whose keys are made outside
    /// the broker say so.
    async fn create_key(&self, settings: &toml::Table, path: &str) -> Result<String, KeygenError> {
        let _ = (settings, path);
        Err(KeygenError::Unsupported)
    }
}

/// Why `keygen` could not create a key.
#[derive(Debug)]
pub enum KeygenError {
    /// The key's settings are wrong.
    Config(ConfigError),
    /// The backend refused or failed.
    Backend(BackendError),
    /// This kind's keys are created with its own tools.
    Unsupported,
}

impl fmt::Display for KeygenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeygenError::Config(e) => e.fmt(f),
            KeygenError::Backend(e) => e.fmt(f),
            KeygenError::Unsupported => f.write_str(
                "this backend's keys are created with its own tools (console, CLI or API); \
                 create the key there and name it in the config",
            ),
        }
    }
}

impl std::error::Error for KeygenError {}

impl From<ConfigError> for KeygenError {
    fn from(e: ConfigError) -> Self {
        KeygenError::Config(e)
    }
}

impl From<BackendError> for KeygenError {
    fn from(e: BackendError) -> Self {
        KeygenError::Backend(e)
    }
}
