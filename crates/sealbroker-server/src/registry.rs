//! Backend kinds are plugged in by the binary, like rustls crypto providers:
//! this crate names no concrete backend. Each kind, exported by its own
//! crate, opens its `[backends.NAME]` tables, and the opened backend turns
//! each `[keys.NAME]` table (or member) that uses it into a [`Backend`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sealbroker_core::{Backend, BackendKind, KeyRing, KeyVersion, LogicalKey, OpenedBackend, WrapPolicy};

use crate::config::{Config, ConfigError, Profile};
use crate::inflight::InFlightSlots;
use crate::keystate::{KeyState, KeyStateFile};

/// The kinds available to a config.
#[derive(Clone, Default)]
pub struct BackendRegistry {
    kinds: BTreeMap<&'static str, &'static dyn BackendKind>,
}

/// One opened `[backends.NAME]`, with the broker's in-flight limit around
/// every key it makes.
struct Factory {
    opened: Arc<dyn OpenedBackend>,
    slots: Option<InFlightSlots>,
}

impl Factory {
    fn key(&self, settings: &toml::Table, path: &str) -> Result<Arc<dyn Backend>, ConfigError> {
        let key = self.opened.key(settings, path)?;
        Ok(match &self.slots {
            Some(slots) => slots.wrap(key),
            None => key,
        })
    }
}

impl BackendRegistry {
    pub fn with(mut self, kind: &'static dyn BackendKind) -> Self {
        self.kinds.insert(kind.name(), kind);
        self
    }

    pub fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// The kind of `[backends.NAME]`, refusing unknown and (under Hardened)
    /// development-only kinds. Returns the kind and the table without `type`.
    pub fn kind_of(
        &self,
        config: &Config,
        name: &str,
    ) -> Result<(&'static dyn BackendKind, toml::Table), ConfigError> {
        let path = format!("backends.{name}");
        let table = config
            .backends
            .get(name)
            .ok_or_else(|| ConfigError::new(&path, "no such backend in the config"))?;
        let kind_name = table.get("type").and_then(|v| v.as_str()).unwrap_or_default();
        let kind = *self.kinds.get(kind_name).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.type"),
                format!(
                    "unknown backend type {kind_name:?}; this build knows {}",
                    self.kind_names().join(", ")
                ),
            )
        })?;
        if kind.development_only() && config.profile == Profile::Hardened {
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
        Ok((kind, table))
    }

    /// Builds the key ring the config describes, enforcing the profile.
    /// Backends are not contacted here: a briefly absent HSM must not stop
    /// the broker from starting (and reporting itself unready).
    pub async fn build_keyring(&self, config: &Config) -> Result<KeyRing, ConfigError> {
        self.build_keyring_with_state(config, &KeyStateFile::default())
            .await
    }

    /// Like [`build_keyring`](Self::build_keyring), adding the versions and
    /// minimum decryption versions recorded in the broker's state.
    pub async fn build_keyring_with_state(
        &self,
        config: &Config,
        state: &KeyStateFile,
    ) -> Result<KeyRing, ConfigError> {
        let mut factories = BTreeMap::new();
        for name in config.backends.keys() {
            let path = format!("backends.{name}");
            let (kind, mut table) = self.kind_of(config, name)?;
            let limit = in_flight_limit(&mut table, &path)?;
            let opened = kind.open(&table, &path, config.profile).await?;
            // Half the request timeout waiting for a slot leaves the other
            // half for the operation itself.
            let queue = Duration::from_millis(config.limits.request_timeout_secs * 500);
            let slots = limit.map(|max| InFlightSlots::new(name, max, queue));
            factories.insert(name.as_str(), Factory { opened, slots });
        }

        let mut keys = Vec::new();
        for (name, table) in &config.keys {
            keys.push(build_key(name, table, state.keys.get(name), &factories)?);
        }
        Ok(KeyRing::new(keys))
    }
}

/// Takes the generic `max_in_flight` setting out of a backend table.
fn in_flight_limit(table: &mut toml::Table, path: &str) -> Result<Option<usize>, ConfigError> {
    match table.remove("max_in_flight") {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if (1..=1_000_000).contains(&n) => Ok(Some(n as usize)),
        Some(_) => Err(ConfigError::new(
            format!("{path}.max_in_flight"),
            "must be a whole number from 1 (operations at once on this backend)",
        )),
    }
}

/// Key-table fields that describe the logical key rather than a backend key.
const KEY_FIELDS: &[&str] = &[
    "backend",
    "members",
    "versions",
    "policy",
    "primary_version",
    "min_decryption_version",
];

type Factories<'a> = BTreeMap<&'a str, Factory>;

/// Builds one logical key. A key table takes one of three forms:
/// `backend = "b"` plus that backend's key settings (one version, one
/// member); `members = [{ backend = "a", ... }, ...]` (one version held by
/// several backends); or `versions = [{ version = 1, backend = "a", ... },
/// { version = 2, members = [...] }]`.
fn build_key(
    name: &str,
    table: &toml::Table,
    state: Option<&KeyState>,
    factories: &Factories<'_>,
) -> Result<LogicalKey, ConfigError> {
    let path = format!("keys.{name}");
    let policy = match table.get("policy").map(|v| v.as_str()) {
        None | Some(Some("all")) => WrapPolicy::All,
        Some(Some("primary")) => WrapPolicy::Primary,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.policy"),
                "must be \"all\" or \"primary\"",
            ));
        }
    };
    let number = |field: &str, default: Option<u32>| -> Result<Option<u32>, ConfigError> {
        match table.get(field) {
            None => Ok(default),
            Some(toml::Value::Integer(n)) if *n >= 1 && *n <= u32::MAX as i64 => Ok(Some(*n as u32)),
            Some(_) => Err(ConfigError::new(
                format!("{path}.{field}"),
                "must be a whole number from 1",
            )),
        }
    };
    let primary = number("primary_version", None)?;
    let configured_min = number("min_decryption_version", Some(1))?.unwrap_or(1);
    let min_decryption = state
        .and_then(|s| s.min_decryption_version)
        .unwrap_or(configured_min)
        .max(configured_min);

    let versions = match table.get("versions") {
        Some(toml::Value::Array(entries)) => {
            if table.contains_key("backend") || table.contains_key("members") {
                return Err(ConfigError::new(
                    format!("{path}.versions"),
                    "give either `versions` or `backend`/`members` at the key's top level, not both",
                ));
            }
            let mut versions = Vec::new();
            for (i, entry) in entries.iter().enumerate() {
                let entry_path = format!("{path}.versions[{i}]");
                let entry = entry
                    .as_table()
                    .ok_or_else(|| ConfigError::new(&entry_path, "must be a table"))?;
                let version = match entry.get("version") {
                    Some(toml::Value::Integer(n)) if *n >= 1 && *n <= u32::MAX as i64 => *n as u32,
                    _ => {
                        return Err(ConfigError::new(
                            format!("{entry_path}.version"),
                            "must be a whole number from 1",
                        ));
                    }
                };
                let mut entry = entry.clone();
                entry.remove("version");
                versions.push(build_version(name, version, &entry, &entry_path, factories)?);
            }
            versions
        }
        Some(_) => {
            return Err(ConfigError::new(
                format!("{path}.versions"),
                "must be an array of tables",
            ));
        }
        None => {
            let mut rest = table.clone();
            for field in ["policy", "primary_version", "min_decryption_version", "allow"] {
                rest.remove(field);
            }
            vec![build_version(name, 1, &rest, &path, factories)?]
        }
    };
    let mut versions = versions;
    if let Some(state) = state.filter(|s| !s.versions.is_empty()) {
        let base = newest_member_tables(table);
        for record in &state.versions {
            let record_path = format!("{path} (state version {})", record.version);
            let mut members = Vec::new();
            for member in &record.members {
                let mut settings = base.get(&member.backend).cloned().ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.backend"),
                        format!(
                            "the broker's state has version {} on backend {:?}, which the key no longer uses",
                            record.version, member.backend
                        ),
                    )
                })?;
                for (field, value) in &member.settings {
                    if value.is_empty() {
                        settings.remove(field);
                    } else {
                        settings.insert(field.clone(), toml::Value::String(value.clone()));
                    }
                }
                members.push(build_member(&settings, &record_path, factories)?);
            }
            versions.push(KeyVersion::with_members(name, record.version, members));
        }
    }
    // Versions the broker created supersede the configured primary.
    let primary = if state.is_some_and(|s| !s.versions.is_empty()) {
        None
    } else {
        primary
    };
    LogicalKey::new(name, versions, primary, min_decryption, policy)
        .map_err(|reason| ConfigError::new(path, reason))
}

/// The member tables of a key's newest configured version, by backend name:
/// what rotated versions lay their settings over.
fn newest_member_tables(table: &toml::Table) -> BTreeMap<String, toml::Table> {
    let version_table = match table.get("versions").and_then(|v| v.as_array()) {
        Some(versions) => versions
            .iter()
            .filter_map(|v| v.as_table())
            .max_by_key(|v| v.get("version").and_then(|n| n.as_integer()).unwrap_or(0))
            .cloned()
            .unwrap_or_default(),
        None => table.clone(),
    };
    let members: Vec<toml::Table> = match version_table.get("members").and_then(|m| m.as_array()) {
        Some(members) => members.iter().filter_map(|m| m.as_table().cloned()).collect(),
        None => vec![version_table],
    };
    members
        .into_iter()
        .filter_map(|mut member| {
            let backend = member.get("backend")?.as_str()?.to_owned();
            member.remove("version");
            Some((backend, member))
        })
        .collect()
}

/// One version: `backend = ...` plus settings, or `members = [...]`.
fn build_version(
    key: &str,
    version: u32,
    table: &toml::Table,
    path: &str,
    factories: &Factories<'_>,
) -> Result<KeyVersion, ConfigError> {
    let members = match (table.get("backend"), table.get("members")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{path}.members"),
                "give either `backend` or `members`, not both",
            ));
        }
        (Some(_), None) => vec![build_member(table, path, factories)?],
        (None, Some(toml::Value::Array(entries))) if !entries.is_empty() => {
            let mut members = Vec::new();
            for (i, entry) in entries.iter().enumerate() {
                let member_path = format!("{path}.members[{i}]");
                let entry = entry
                    .as_table()
                    .ok_or_else(|| ConfigError::new(&member_path, "must be a table"))?;
                members.push(build_member(entry, &member_path, factories)?);
            }
            members
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                format!("{path}.members"),
                "must be a non-empty array of tables",
            ));
        }
        (None, None) => {
            return Err(ConfigError::new(
                format!("{path}.backend"),
                "is missing: name a [backends.NAME] (or give `members` for an HA key ring)",
            ));
        }
    };
    Ok(KeyVersion::with_members(key, version, members))
}

fn build_member(
    table: &toml::Table,
    path: &str,
    factories: &Factories<'_>,
) -> Result<(String, Arc<dyn Backend>), ConfigError> {
    let backend_name = match table.get("backend") {
        Some(toml::Value::String(name)) => name.clone(),
        _ => {
            return Err(ConfigError::new(
                format!("{path}.backend"),
                "must name a [backends.NAME] table",
            ));
        }
    };
    let factory = factories.get(backend_name.as_str()).ok_or_else(|| {
        ConfigError::new(
            format!("{path}.backend"),
            format!("names backend {backend_name:?}, but there is no [backends.{backend_name}] table"),
        )
    })?;
    let mut settings = table.clone();
    for field in KEY_FIELDS {
        settings.remove(*field);
    }
    Ok((backend_name, factory.key(&settings, path)?))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use sealbroker_testkit::memory::MemoryKind;

    use super::*;

    fn config(limit: &str) -> Config {
        Config::parse(&format!(
            "profile = \"development\"\n[server]\nunix_socket = \"/tmp/x.sock\"\n\
             [backends.hsm]\ntype = \"slow\"\n{limit}\n\
             [keys.a]\nbackend = \"hsm\"\n[keys.b]\nbackend = \"hsm\"\n"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn max_in_flight_bounds_every_key_of_the_backend_together() {
        let slow = MemoryKind::leak("slow");
        slow.knobs().delay_ms.store(10, Ordering::SeqCst);
        let registry = BackendRegistry::default().with(slow);
        let ring = Arc::new(
            registry
                .build_keyring(&config("max_in_flight = 2"))
                .await
                .unwrap(),
        );
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let ring = ring.clone();
                let key = if i % 2 == 0 { "a" } else { "b" };
                tokio::spawn(async move { ring.wrap(key, b"secret", b"").await.map(|_| ()) })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(slow.knobs().concurrency.peak(), 2);
        assert_eq!(slow.knobs().concurrency.calls(), 10);
    }

    #[tokio::test]
    async fn max_in_flight_must_be_a_positive_number_and_names_its_path() {
        let registry = BackendRegistry::default().with(MemoryKind::leak("slow"));
        for bad in ["max_in_flight = 0", "max_in_flight = \"4\"", "max_in_flight = -1"] {
            let err = registry.build_keyring(&config(bad)).await.err().unwrap();
            assert_eq!(err.path, "backends.hsm.max_in_flight", "{bad}");
            assert!(err.message.contains("whole number"), "{err:?}");
        }
    }
}
