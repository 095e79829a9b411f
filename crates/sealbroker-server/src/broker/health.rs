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

/// The broker's answer to "how are you".
#[derive(Debug, Clone)]
pub struct BrokerStatus {
    pub profile: Profile,
    pub security_risk: bool,
    pub keys: Vec<KeyHealth>,
}

impl BrokerStatus {
    /// Keys that no backend member can serve right now, each with the
    /// reasons; empty when the broker is ready.
    pub fn unready_keys(&self) -> Vec<String> {
        let mut names: Vec<&str> = self.keys.iter().map(|k| k.key_name.as_str()).collect();
        names.dedup();
        names
            .into_iter()
            .filter(|key| !self.keys.iter().any(|k| k.key_name == *key && k.healthy))
            .map(|key| {
                let why: Vec<String> = self
                    .keys
                    .iter()
                    .filter(|k| k.key_name == key)
                    .map(|k| {
                        format!(
                            "{}: {}",
                            k.backend_name,
                            k.error.as_deref().unwrap_or("unhealthy")
                        )
                    })
                    .collect();
                format!("key {key:?}: {}", why.join("; "))
            })
            .collect()
    }
}

impl Broker {
    /// Health of every member of every key's primary version. Results
    /// younger than `limits.health_cache_secs` are reused unless `deep` asks
    /// for a fresh probe, so frequent status polls never hammer an HSM or a
    /// cloud quota.
    pub async fn status(&self, deep: bool) -> BrokerStatus {
        let ttl = Duration::from_secs(self.limits.health_cache_secs);
        let _single_flight = self.probing.lock().await;
        let ring = self.key_ring();
        let mut keys = Vec::new();
        for key in ring.keys() {
            for member in &key.primary().members {
                let cache_key = format!("{}/{}", key.name, member.backend_name);
                let cached = self
                    .health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&cache_key)
                    .cloned();
                if let Some(health) = cached.filter(|h| !deep && h.checked_at.elapsed() < ttl) {
                    keys.push(health);
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
                    key_name: key.name.clone(),
                    backend_name: member.backend_name.clone(),
                    healthy: probe.is_ok(),
                    error: probe.err().map(|e| e.to_string()),
                    checked_at: Instant::now(),
                };
                if let Some(error) = &health.error {
                    tracing::warn!(key = %key.name, backend = %member.backend_name, %error, "backend unhealthy");
                }
                if let Some(metrics) = &self.metrics {
                    metrics.set_backend_up(&key.name, &member.backend_name, health.healthy);
                }
                self.health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(cache_key, health.clone());
                keys.push(health);
            }
        }
        BrokerStatus {
            profile: self.profile,
            security_risk: self.profile == Profile::Development,
            keys,
        }
    }
}
