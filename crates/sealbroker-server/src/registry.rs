//! Backend kinds are plugged in by the binary, like rustls crypto providers:
//! this crate names no concrete backend. A kind turns a `[backends.NAME]`
//! table into a factory, and the factory turns each `[keys.NAME]` table that
//! uses it into a [`Backend`].

use std::collections::BTreeMap;
use std::sync::Arc;

use sealbroker_core::{Backend, KeyRing, KeyVersion, LogicalKey};

use crate::config::{Config, ConfigError, Profile};

/// Makes backend keys for one configured backend.
pub type KeyFactory = Box<dyn Fn(&toml::Table, &str) -> Result<Arc<dyn Backend>, ConfigError> + Send + Sync>;

/// Opens a configured backend: gets its table (without `type`) and the
/// table's path for error messages.
pub type OpenBackend = fn(&toml::Table, &str) -> Result<KeyFactory, ConfigError>;

/// A kind of backend the binary knows how to build.
#[derive(Clone)]
pub struct BackendKind {
    /// The `type` value, e.g. `"pkcs11"`.
    pub name: &'static str,
    /// True for kinds that keep key material on the broker's own disk; the
    /// hardened profile refuses them.
    pub development_only: bool,
    pub open: OpenBackend,
}

/// The kinds available to a config.
#[derive(Clone, Default)]
pub struct BackendRegistry {
    kinds: BTreeMap<&'static str, BackendKind>,
}

impl BackendRegistry {
    pub fn with(mut self, kind: BackendKind) -> Self {
        self.kinds.insert(kind.name, kind);
        self
    }

    pub fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// Builds the key ring the config describes, enforcing the profile.
    /// Backends are not contacted here: a briefly absent HSM must not stop
    /// the broker from starting (and reporting itself unready).
    pub fn build_keyring(&self, config: &Config) -> Result<KeyRing, ConfigError> {
        let mut factories = BTreeMap::new();
        for (name, table) in &config.backends {
            let path = format!("backends.{name}");
            let kind_name = table.get("type").and_then(|v| v.as_str()).unwrap_or_default();
            let kind = self.kinds.get(kind_name).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.type"),
                    format!(
                        "unknown backend type {kind_name:?}; this build knows {}",
                        self.kind_names().join(", ")
                    ),
                )
            })?;
            let uses = config
                .keys
                .values()
                .filter(|k| k.get("backend").and_then(|v| v.as_str()) == Some(name));
            if kind.development_only && config.profile == Profile::Hardened && uses.count() > 0 {
                return Err(ConfigError::new(
                    format!("{path}.type"),
                    format!(
                        "the hardened profile refuses the {kind_name:?} backend: its key sits on the broker's own \
                         disk, so it is no external root of trust. Use an HSM (pkcs11), KMIP, a cloud KMS or \
                         OpenBao transit, or set profile = \"development\" for local testing"
                    ),
                ));
            }
            let mut table = table.clone();
            table.remove("type");
            factories.insert(name.as_str(), (kind.open)(&table, &path)?);
        }

        let mut keys = Vec::new();
        for (name, table) in &config.keys {
            let path = format!("keys.{name}");
            let backend_name = table.get("backend").and_then(|v| v.as_str()).unwrap_or_default();
            let factory = factories.get(backend_name).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.backend"),
                    format!("no backend named {backend_name:?}"),
                )
            })?;
            let mut key_table = table.clone();
            key_table.remove("backend");
            let backend = factory(&key_table, &path)?;
            keys.push(LogicalKey::single(
                name,
                KeyVersion::new(name, 1, backend_name, backend),
            ));
        }
        Ok(KeyRing::new(keys))
    }
}
