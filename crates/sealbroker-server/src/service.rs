//! The one inner service: wrap/unwrap against the key ring, with limits,
//! timeouts and health. Front doors translate their wire format into calls
//! here and hold no crypto and no policy of their own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sealbroker_core::{
    BackendError, BackendErrorKind, Error, KeyInfo, KeyRing, SecretBytes, Unwrapped, Wrapped,
};
use tracing::Instrument;

use crate::caller::Caller;
use crate::config::{LimitsConfig, Profile};

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

/// The inner service shared by every front door.
pub struct Broker {
    ring: KeyRing,
    profile: Profile,
    limits: LimitsConfig,
    health: Mutex<HashMap<String, KeyHealth>>,
    in_flight: AtomicUsize,
}

/// Counts one operation as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut id);
    hex::encode(id)
}

impl Broker {
    pub fn new(ring: KeyRing, profile: Profile, limits: LimitsConfig) -> Self {
        if profile == Profile::Development {
            tracing::warn!(
                security_risk = true,
                "running under the DEVELOPMENT profile: this broker is not a production root of trust"
            );
        }
        Broker {
            ring,
            profile,
            limits,
            health: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Wrap, unwrap and rewrap operations running right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    pub fn key_ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Bounds a backend-bound future by the configured request timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        key: &str,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let limit = Duration::from_secs(self.limits.request_timeout_secs);
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result,
            Err(_) => Err(Error::Backend {
                backend: self
                    .ring
                    .get(key)
                    .map(|k| k.primary().backend_name.clone())
                    .unwrap_or_default(),
                key: key.to_owned(),
                source: BackendError::new(
                    BackendErrorKind::Timeout,
                    format!("{what} did not finish within {}s", limit.as_secs()),
                ),
            }),
        }
    }

    fn log_outcome<T>(op: &'static str, started: Instant, result: &Result<T, Error>) {
        let latency_us = started.elapsed().as_micros() as u64;
        match result {
            Ok(_) => tracing::debug!(op, latency_us, outcome = "ok", "request done"),
            Err(e) => {
                tracing::info!(op, latency_us, outcome = ?e.code(), error = %e, "request failed")
            }
        }
    }

    /// Seals `plaintext` under `key`.
    pub async fn wrap(
        &self,
        caller: &Caller,
        key: &str,
        plaintext: SecretBytes,
        aad: &[u8],
    ) -> Result<Wrapped, Error> {
        let _in_flight = InFlight::start(&self.in_flight);
        let span = tracing::info_span!("wrap", request_id = %request_id(), %caller, key);
        async {
            let started = Instant::now();
            let result = async {
                if key.is_empty() {
                    return Err(Error::InvalidArgument {
                        field: "key_name",
                        reason: "is empty".into(),
                    });
                }
                if plaintext.len() > self.limits.max_plaintext_bytes {
                    return Err(Error::PayloadTooLarge {
                        size: plaintext.len(),
                        limit: self.limits.max_plaintext_bytes,
                    });
                }
                self.bounded("wrap", key, self.ring.wrap(key, plaintext.expose(), aad))
                    .await
            }
            .await;
            Self::log_outcome("wrap", started, &result);
            result
        }
        .instrument(span)
        .await
    }

    /// Opens a blob; `key` (may be empty) must match the blob's key when given.
    pub async fn unwrap(
        &self,
        caller: &Caller,
        key: &str,
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Unwrapped, Error> {
        let _in_flight = InFlight::start(&self.in_flight);
        let span = tracing::info_span!("unwrap", request_id = %request_id(), %caller, key);
        async {
            let started = Instant::now();
            let expected = (!key.is_empty()).then_some(key);
            let result = self
                .bounded("unwrap", key, self.ring.unwrap(expected, blob, aad))
                .await;
            if let Ok(opened) = &result {
                tracing::Span::current().record("key", opened.key_name.as_str());
            }
            Self::log_outcome("unwrap", started, &result);
            result
        }
        .instrument(span)
        .await
    }

    /// Re-seals a blob under its key's primary version.
    pub async fn rewrap(
        &self,
        caller: &Caller,
        key: &str,
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Wrapped, Error> {
        let _in_flight = InFlight::start(&self.in_flight);
        let span = tracing::info_span!("rewrap", request_id = %request_id(), %caller, key);
        async {
            let started = Instant::now();
            let expected = (!key.is_empty()).then_some(key);
            let result = self
                .bounded("rewrap", key, self.ring.rewrap(expected, blob, aad))
                .await;
            Self::log_outcome("rewrap", started, &result);
            result
        }
        .instrument(span)
        .await
    }

    pub fn get_key(&self, _caller: &Caller, key: &str) -> Result<KeyInfo, Error> {
        self.ring.describe(key)
    }

    pub fn list_keys(&self, _caller: &Caller) -> Vec<KeyInfo> {
        self.ring
            .names()
            .filter_map(|name| self.ring.describe(name).ok())
            .collect()
    }

    /// Health of every key. Results younger than `limits.health_cache_secs`
    /// are reused unless `deep` asks for a fresh probe, so frequent status
    /// polls never hammer an HSM or a cloud quota.
    pub async fn status(&self, deep: bool) -> BrokerStatus {
        let ttl = Duration::from_secs(self.limits.health_cache_secs);
        let mut keys = Vec::new();
        for key in self.ring.keys() {
            let cached = self
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key.name)
                .cloned();
            let fresh = cached.filter(|h| !deep && h.checked_at.elapsed() < ttl);
            let health = match fresh {
                Some(health) => health,
                None => {
                    let primary = key.primary();
                    let probe = tokio::time::timeout(
                        Duration::from_secs(self.limits.request_timeout_secs),
                        primary.backend.health(),
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
                        backend_name: primary.backend_name.clone(),
                        healthy: probe.is_ok(),
                        error: probe.err().map(|e| e.to_string()),
                        checked_at: Instant::now(),
                    };
                    if let Some(error) = &health.error {
                        tracing::warn!(key = %key.name, backend = %primary.backend_name, %error, "backend unhealthy");
                    }
                    self.health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.name.clone(), health.clone());
                    health
                }
            };
            keys.push(health);
        }
        BrokerStatus {
            profile: self.profile,
            security_risk: self.profile == Profile::Development,
            keys,
        }
    }
}
