//! Health: each key's members, probed on demand and cached for
//! `limits.health_cache_secs`, as `/readyz`, gRPC health and `serve --check`
//! report it.
//!
//! Probes are single-flight per member, and the cached answer never waits
//! behind one: while a member's probe is in flight (a deep Status on a
//! silent HSM, say), other callers get its last result. A deep probe needs
//! the `admin` grant on the key, and re-probes a member at most once per
//! [`DEEP_MIN_INTERVAL`]; concurrent deep calls share one probe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sealbroker_core::{BackendError, BackendErrorKind, Error};

use crate::config::Profile;

use super::Broker;
use super::acl::Operation;
use super::caller::Call;

/// A deep Status re-probes a member at most this often; within it the last
/// probe is the answer.
pub const DEEP_MIN_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Health of every member of every key's primary and staged versions.
    /// Results younger than `limits.health_cache_secs` are reused unless
    /// `deep` asks for a fresh probe, so frequent status polls never hammer
    /// an HSM or a cloud quota. For the broker itself (readiness, metrics,
    /// tests); a caller's deep Status goes through
    /// [`status_deep_for`](Self::status_deep_for).
    pub async fn status(&self, deep: bool) -> BrokerStatus {
        self.status_probing(&|_| deep).await
    }

    /// A deep Status for `call`: the keys it may administer are probed now
    /// (within [`DEEP_MIN_INTERVAL`]), the others reported from the cache.
    /// Refused as `admin` on the first key when it administers none, since a
    /// deep probe costs backend calls.
    pub async fn status_deep_for(&self, call: &Call) -> Result<BrokerStatus, Error> {
        let acls = self.policy().acls.clone();
        let ring = self.key_ring();
        let names: Vec<String> = ring.keys().map(|k| k.name.clone()).collect();
        let granted: Vec<&String> = names
            .iter()
            .filter(|key| acls.check(&call.caller, Operation::Admin, key).is_ok())
            .collect();
        if granted.is_empty() {
            let first = names.first().map(String::as_str).unwrap_or("");
            acls.check(&call.caller, Operation::Admin, first)?;
        }
        Ok(self
            .status_probing(&|key| granted.iter().any(|g| *g == key))
            .await)
    }

    async fn status_probing(&self, deep: &(dyn Fn(&str) -> bool + Sync)) -> BrokerStatus {
        let ring = self.key_ring();
        let mut keys = Vec::new();
        let mut versions = Vec::new();
        for key in ring.keys() {
            let deep = deep(&key.name);
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

    fn probe_lock(&self, cache_key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.probing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cache_key.to_owned())
            .or_default()
            .clone()
    }

    fn cached_health(&self, cache_key: &str) -> Option<KeyHealth> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cache_key)
            .cloned()
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
            let lock = self.probe_lock(&cache_key);
            let fresh = if deep { DEEP_MIN_INTERVAL.min(ttl) } else { ttl };
            if let Some(health) = self.cached_health(&cache_key) {
                // Fresh enough, or a probe is in flight and this caller
                // takes the last answer instead of waiting for it.
                if health.checked_at.elapsed() < fresh || (!deep && lock.try_lock().is_err()) {
                    probed.push(health);
                    continue;
                }
            }
            let waited = Instant::now();
            let _probing = lock.lock().await;
            // Single flight: whoever held the lock probed while we waited.
            if let Some(health) = self.cached_health(&cache_key).filter(|h| h.checked_at >= waited) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use sealbroker_core::BackendKind;
    use sealbroker_proto::kms_v2::key_management_service_server::KeyManagementService;
    use sealbroker_testkit::memory::MemoryKind;

    use super::*;
    use crate::broker::caller::{Caller, Door};
    use crate::broker::registry::BackendRegistry;
    use crate::config::Config;

    async fn broker(kind: &'static MemoryKind) -> Arc<Broker> {
        let text = format!(
            "profile = \"development\"\n[server]\nunix_socket = \"/tmp/unused.sock\"\n\
             [backends.hsm]\ntype = \"{}\"\n[keys.unseal]\nbackend = \"hsm\"\nlabel = \"unseal\"\n\
             allow = {{ wrap = [\"uid:1000\"], unwrap = [\"uid:1000\"], admin = [\"uid:0\"] }}\n",
            kind.name()
        );
        let registry = BackendRegistry::default().with(kind);
        Arc::new(
            Broker::from_config(&Config::parse(&text).unwrap(), &registry)
                .await
                .unwrap(),
        )
    }

    fn unix(uid: u32) -> Call {
        Call::new(
            Door::Grpc,
            Caller::Unix {
                uid,
                gid: uid,
                pid: None,
            },
        )
    }

    /// Ages every cached probe by `by`, as time passing would.
    fn age_cache(broker: &Broker, by: Duration) {
        for health in broker.health.lock().unwrap().values_mut() {
            health.checked_at = health.checked_at.checked_sub(by).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_health_and_kms_v2_status_never_wait_behind_a_hanging_deep_probe() {
        let kind = MemoryKind::leak("hangs");
        let broker = broker(kind).await;
        assert!(broker.status(false).await.unready_keys().is_empty());
        // The HSM goes silent; a deep probe (the cache is past
        // DEEP_MIN_INTERVAL, within health_cache_secs) starts and hangs in it.
        age_cache(&broker, DEEP_MIN_INTERVAL);
        kind.knobs().delay_ms.store(600_000, Ordering::SeqCst);
        let calls = kind.knobs().concurrency.calls();
        let deep = tokio::spawn({
            let broker = broker.clone();
            async move { broker.status(true).await }
        });
        while kind.knobs().concurrency.calls() == calls {
            assert!(!deep.is_finished(), "the deep Status probed nothing");
            tokio::task::yield_now().await;
        }

        // Readiness and KMS v2 Status answer from the cache meanwhile.
        assert!(broker.status(false).await.unready_keys().is_empty());
        let kms = crate::doors::kmsv2::KmsV2::new(broker.clone(), "unseal".into());
        let status = kms
            .status(tonic::Request::new(Default::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.healthz, "ok");
        assert!(!deep.is_finished(), "the deep probe was still hanging");
        deep.abort();
    }

    #[tokio::test]
    async fn deep_probes_are_single_flight_and_rate_limited() {
        let kind = MemoryKind::leak("counts");
        let broker = broker(kind).await;
        let calls = || kind.knobs().concurrency.calls();
        let start = calls();
        broker.status(true).await;
        let one_probe = calls() - start;
        assert!(one_probe > 0);
        // Within DEEP_MIN_INTERVAL a deep Status is the last probe.
        broker.status(true).await;
        assert_eq!(calls() - start, one_probe);

        // Two deep calls at once share one probe.
        broker.health.lock().unwrap().clear();
        kind.knobs().delay_ms.store(50, Ordering::SeqCst);
        let before = calls();
        let (a, b) = tokio::join!(broker.status(true), broker.status(true));
        assert!(a.unready_keys().is_empty() && b.unready_keys().is_empty());
        assert_eq!(calls() - before, one_probe, "one probe for both");
    }

    #[tokio::test]
    async fn a_deep_status_needs_the_admin_grant() {
        let kind = MemoryKind::leak("granted");
        let broker = broker(kind).await;
        let refused = broker.status_deep_for(&unix(1000)).await.err().unwrap();
        assert!(
            matches!(
                refused,
                Error::PermissionDenied {
                    operation: "admin",
                    ..
                }
            ),
            "{refused}"
        );
        let status = broker.status_deep_for(&unix(0)).await.unwrap();
        assert!(status.unready_keys().is_empty());
    }
}
