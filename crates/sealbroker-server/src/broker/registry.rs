//! Backend kinds are plugged in by the binary, like rustls crypto providers:
//! this crate names no concrete backend. Each kind, exported by its own
//! crate, opens its `[backends.NAME]` tables, and the opened backend turns
//! each `[keys.NAME]` table (or member) that uses it into a [`Backend`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sealbroker_core::{Backend, BackendKind, KeyRing, KeyVersion, LogicalKey, OpenedBackend};

use crate::broker::inflight::InFlightSlots;
use crate::broker::keystate::{KeyState, KeyStateFile};
use crate::config::{Config, ConfigError, KeySpec, Profile};

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

    /// The kind registered under `name`.
    pub fn kind(&self, name: &str) -> Option<&'static dyn BackendKind> {
        self.kinds.get(name).copied()
    }

    pub fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// The kind of `[backends.NAME]`, refusing unknown and (under Hardened)
    /// development-only kinds. Returns the kind, the table without the
    /// broker's own settings (`type`, `max_in_flight`), and the in-flight limit.
    pub fn kind_of(
        &self,
        config: &Config,
        name: &str,
    ) -> Result<(&'static dyn BackendKind, toml::Table, Option<usize>), ConfigError> {
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
        let limit = in_flight_limit(&mut table, &path)?;
        Ok((kind, table, limit))
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
            let (kind, table, limit) = self.kind_of(config, name)?;
            let opened = kind.open(&table, &path, config.profile).await?;
            // Half the request timeout waiting for a slot leaves the other
            // half for the operation itself.
            let queue = Duration::from_millis(config.limits.request_timeout_secs * 500);
            let slots = limit.map(|max| InFlightSlots::new(name, max, queue));
            factories.insert(name.as_str(), Factory { opened, slots });
        }

        let mut keys = Vec::new();
        for (name, spec) in &config.keys {
            keys.push(build_key(spec, state.keys.get(name), &factories)?);
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

type Factories<'a> = BTreeMap<&'a str, Factory>;

/// Builds one logical key from its spec, adding the versions the broker
/// created itself (recorded in `state`): each laid over the settings of the
/// newest configured member on the same backend.
fn build_key(
    spec: &KeySpec,
    state: Option<&KeyState>,
    factories: &Factories<'_>,
) -> Result<LogicalKey, ConfigError> {
    let name = spec.name.as_str();
    let path = format!("keys.{name}");
    let min_decryption = state
        .and_then(|s| s.min_decryption_version)
        .unwrap_or(spec.min_decryption_version)
        .max(spec.min_decryption_version);
    let mut versions = spec
        .versions
        .iter()
        .map(|v| {
            let members: Vec<_> = v
                .members
                .iter()
                .map(|m| build_member(&m.backend, &m.settings, &m.path, factories))
                .collect::<Result<_, _>>()?;
            // A signature comes from one private key: a ring of several
            // would sign with whichever answered, under different keys.
            if members.len() > 1 && members.iter().any(|(_, b)| b.algorithm().is_some()) {
                return Err(ConfigError::new(
                    format!("{path}.members"),
                    "an asymmetric (signing) key version has exactly one member; HA rings are for sealing keys",
                ));
            }
            Ok(KeyVersion::with_members(name, v.version, members))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let created = state.map(|s| s.versions.as_slice()).unwrap_or_default();
    if !created.is_empty() {
        let base = spec.newest_members();
        for record in created {
            if versions.iter().any(|v| v.version == record.version) {
                // Declared in the config since: the config's members win.
                continue;
            }
            let record_path = format!("{path} (state version {})", record.version);
            let mut members = Vec::new();
            for member in &record.members {
                let mut settings = base
                    .get(member.backend.as_str())
                    .map(|m| m.settings.clone())
                    .ok_or_else(|| {
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
                members.push(build_member(&member.backend, &settings, &record_path, factories)?);
            }
            versions.push(KeyVersion::with_members(name, record.version, members));
        }
    }
    // The config's primary, else the highest configured version; a primary
    // this broker promoted itself (recorded in its state) only moves it up.
    let primary = spec.primary().max(state.and_then(KeyState::primary).unwrap_or(0));
    // Versions above the newest configured one, up to the primary or the
    // config's newest_version, are derived by name.
    let configured = spec.versions.last().map_or(1, |v| v.version);
    let newest = primary.max(spec.newest_version.unwrap_or(0));
    for number in configured + 1..=newest {
        if !versions.iter().any(|v| v.version == number) {
            let derived = derived_version(spec, number, &versions)?;
            versions.push(derived);
        }
    }
    LogicalKey::new(name, versions, Some(primary), min_decryption, spec.policy)
        .map_err(|reason| ConfigError::new(path, reason))
}

/// Version `version` of the key, neither configured nor in the state: made
/// from the newest configured version's members by each backend kind's
/// naming convention (`<label>-v<N>` on PKCS#11, ...). Not looked up here;
/// a key that is absent fails its wraps and shows unready.
fn derived_version(spec: &KeySpec, version: u32, built: &[KeyVersion]) -> Result<KeyVersion, ConfigError> {
    let field = if spec.primary_version.is_some_and(|p| p >= version) {
        "primary_version"
    } else {
        "newest_version"
    };
    let path = format!("keys.{}.{field}", spec.name);
    let newest = spec.versions.last().map_or(1, |v| v.version);
    let template = built
        .iter()
        .find(|v| v.version == newest)
        .ok_or_else(|| ConfigError::new(&path, "the key has no configured version"))?;
    let mut members = Vec::new();
    for member in &template.members {
        let derived = member.backend.derive_version(version).ok_or_else(|| {
            ConfigError::new(
                &path,
                format!(
                    "version {version} is not configured, and the {} backend {:?} cannot derive it by name; \
                     declare it under keys.{}.versions",
                    member.backend.kind(),
                    member.backend_name,
                    spec.name
                ),
            )
        })?;
        members.push((member.backend_name.clone(), derived.backend));
    }
    Ok(KeyVersion::with_members(&spec.name, version, members))
}

fn build_member(
    backend: &str,
    settings: &toml::Table,
    path: &str,
    factories: &Factories<'_>,
) -> Result<(String, Arc<dyn Backend>), ConfigError> {
    let factory = factories.get(backend).ok_or_else(|| {
        ConfigError::new(
            format!("{path}.backend"),
            format!("names backend {backend:?}, but there is no [backends.{backend}] table"),
        )
    })?;
    Ok((backend.to_owned(), factory.key(settings, path)?))
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
