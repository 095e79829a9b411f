//! Health: each key's members, probed on demand and cached for
//! `limits.health_cache_secs`, as `/readyz`, gRPC health and `serve --check`
//! report it.

use std::time::{Duration, Instant};

use sealbroker_core::{BackendError, BackendErrorKind};

use crate::config::Profile;

use super::Broker;

/// Health of one key's primary backend, as last probed.
#[derive(Debug, Clone)]
pub struct KeyHealth {
    pub key_name: String,
    pub backend_name: String,
    pub healthy: bool,
    pub error: Option<String>,
    pub checked_at: Instant,
}

/// What a version is for, as this replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRole {
    /// Below `min_decryption_version`: its blobs are refused.
    Retired,
    /// Opens blobs; new wraps use the primary.
    Decrypt,
    /// New wraps use it.
    Primary,
    /// Above the primary: opens blobs, waiting to be promoted.
    Staged,
}

impl VersionRole {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionRole::Retired => "retired",
            VersionRole::Decrypt => "decrypt",
            VersionRole::Primary => "primary",
            VersionRole::Staged => "staged",
        }
    }
}

/// One version this replica knows, so an operator (or the operator) can
/// see that every replica has a staged version before promoting it.
#[derive(Debug, Clone)]
pub struct VersionReport {
    pub key_name: String,
    pub version: u32,
    pub key_id: String,
    pub role: VersionRole,
    /// For the primary and staged versions: whether every member passed its
    /// health probe. `None` for versions that only open old blobs.
    pub usable: Option<bool>,
}

/// The broker's answer to "how are you".
#[derive(Debug, Clone)]
pub struct BrokerStatus {
    pub profile: Profile,
    pub security_risk: bool,
    /// The members of every key's primary version.
    pub keys: Vec<KeyHealth>,
    /// Every version of every key, oldest first per key.
    pub versions: Vec<VersionReport>,
    /// Why the last reload was refused; the config before it serves.
    pub config_error: Option<String>,
}

impl BrokerStatus {
    /// Keys that no backend member can serve right now, each with the
    /// reasons; empty when the broker is ready.
    pub fn unready_keys(&self) -> Vec<String> {
        let mut names: Vec<&str> = self.keys.iter().map(|k| k.key_name.as_str()).collect();
        names.dedup();
        names
            .into_iter()
            .filter_map(|key| self.unavailable(key).map(|why| format!("key {key:?}: {why}")))
            .collect()
    }

    /// Why no member of `key`'s primary version can serve it (each
    /// member's error, `; `-joined), or `None` while any one can.
    pub fn unavailable(&self, key: &str) -> Option<String> {
        let members = self.keys.iter().filter(|k| k.key_name == key);
        if members.clone().any(|k| k.healthy) {
            return None;
        }
        let why: Vec<String> = members
            .map(|k| {
                format!(
                    "{}: {}",
                    k.backend_name,
                    k.error.as_deref().unwrap_or("unhealthy")
                )
            })
            .collect();
        Some(why.join("; "))
    }
}

impl Broker {
    /// Health of every member of every key's primary version. Results
    /// younger than `limits.health_cache_secs` are reused unless `deep` asks
    /// for a fresh probe, so frequent status polls never hammer an HSM or a
    /// cloud quota.
    pub async fn status(&self, deep: bool) -> BrokerStatus {
        let _single_flight = self.probing.lock().await;
        let ring = self.key_ring();
        let mut keys = Vec::new();
        let mut versions = Vec::new();
        for key in ring.keys() {
            let primary = key.primary().version;
            let first = versions.len();
            for version in key.versions() {
                let role = match version.version {
                    v if v < key.min_decryption_version() => VersionRole::Retired,
                    v if v < primary => VersionRole::Decrypt,
                    v if v == primary => VersionRole::Primary,
                    _ => VersionRole::Staged,
                };
                let usable = match role {
                    VersionRole::Primary => {
                        let probed = self.probe_members(&key.name, None, version, deep).await;
                        let all_up = probed.iter().all(|h| h.healthy);
                        keys.extend(probed);
                        Some(all_up)
                    }
                    VersionRole::Staged => {
                        let probed = self
                            .probe_members(&key.name, Some(version.version), version, deep)
                            .await;
                        Some(probed.iter().all(|h| h.healthy))
                    }
                    VersionRole::Retired | VersionRole::Decrypt => None,
                };
                versions.push(VersionReport {
                    key_name: key.name.clone(),
                    version: version.version,
                    key_id: version.key_id.to_string(),
                    role,
                    usable,
                });
            }
            if let Some(metrics) = &self.metrics {
                let usable: Vec<(u32, bool)> = versions[first..]
                    .iter()
                    .map(|v| {
                        (
                            v.version,
                            v.role != VersionRole::Retired && v.usable.unwrap_or(true),
                        )
                    })
                    .collect();
                metrics.set_key_versions(&key.name, primary, key.min_decryption_version(), &usable);
            }
        }
        BrokerStatus {
            profile: self.profile,
            security_risk: self.profile == Profile::Development,
            keys,
            versions,
            config_error: self.config_error(),
        }
    }

    /// Health of each member of `version`, cached as [`status`](Self::status)
    /// says. `staged` names the version for staged ones, whose results are
    /// kept apart from the primary's (and not exported as `backend_up`).
    async fn probe_members(
        &self,
        key: &str,
        staged: Option<u32>,
        version: &sealbroker_core::KeyVersion,
        deep: bool,
    ) -> Vec<KeyHealth> {
        let ttl = Duration::from_secs(self.limits.health_cache_secs);
        let mut probed = Vec::new();
        for member in &version.members {
            let cache_key = match staged {
                None => format!("{key}/{}", member.backend_name),
                Some(v) => format!("{key}/v{v}/{}", member.backend_name),
            };
            let cached = self
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&cache_key)
                .cloned();
            if let Some(health) = cached.filter(|h| !deep && h.checked_at.elapsed() < ttl) {
                probed.push(health);
                continue;
            }
            let probe = tokio::time::timeout(
                Duration::from_secs(self.limits.request_timeout_secs),
                member.backend.health(),
            )
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::new(
                    BackendErrorKind::Timeout,
                    "health probe timed out",
                ))
            });
            let health = KeyHealth {
                key_name: key.to_owned(),
                backend_name: member.backend_name.clone(),
                healthy: probe.is_ok(),
                error: probe.err().map(|e| e.to_string()),
                checked_at: Instant::now(),
            };
            match (&health.error, staged) {
                (Some(error), None) => {
                    tracing::warn!(key, backend = %member.backend_name, %error, "backend unhealthy")
                }
                (Some(error), Some(v)) => {
                    tracing::warn!(key, version = v, backend = %member.backend_name, %error, "staged key version unusable")
                }
                (None, _) => {}
            }
            if staged.is_none()
                && let Some(metrics) = &self.metrics
            {
                metrics.set_backend_up(key, &member.backend_name, health.healthy);
            }
            self.health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cache_key, health.clone());
            probed.push(health);
        }
        probed
    }
}
