//! The broker: the one inner service every front door calls. Wrap, unwrap
//! and rewrap against the key ring, with the caller's ACL checked first,
//! limits and timeouts, an audit line and metrics for every operation.
//! Front doors translate their wire format into calls here and hold no
//! crypto and no policy of their own.

pub mod acl;
mod assemble;
pub mod audit;
pub mod caller;
mod discovery;
mod health;
pub mod inflight;
pub mod keystate;
pub mod metrics;
pub mod registry;
mod rotation;
pub mod signing;

pub use assemble::key_ring_of;
pub use health::{BrokerStatus, KeyHealth, VersionReport, VersionRole};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sealbroker_core::{
    BackendError, BackendErrorKind, Error, KeyInfo, KeyRing, LogicalKey, SecretBytes, Unwrapped, Wrapped,
};
use tracing::Instrument;

use self::acl::{Acls, Operation};
use self::audit::{AuditLog, AuditRecord};
use self::caller::{Call, Caller, Door};
use self::keystate::KeyStateStore;
use self::metrics::Metrics;
use crate::config::{LimitsConfig, Profile};

/// The inner service shared by every front door.
pub struct Broker {
    /// Swapped whole on rotation; requests work on the snapshot they started with.
    ring: RwLock<Arc<KeyRing>>,
    profile: Profile,
    limits: LimitsConfig,
    health: Mutex<HashMap<String, KeyHealth>>,
    in_flight: AtomicUsize,
    state: Option<Arc<KeyStateStore>>,
    audit: Arc<AuditLog>,
    metrics: Option<Arc<Metrics>>,
    /// The ACLs and key templates, swapped whole by a reload.
    policy: RwLock<Arc<Policy>>,
    /// One lock per probed member (`health::probe_lock`): probes are
    /// single-flight per member, and a cached answer never waits for one.
    probing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes rotations and other key changes.
    changing_keys: tokio::sync::Mutex<()>,
    /// Why the last reload was refused, while the config before it serves.
    config_error: Mutex<Option<String>>,
    /// SHA-256 (hex) of the config file's bytes the broker was built from.
    loaded_config: Mutex<Option<String>>,
}

/// What a reload replaces besides the key ring.
#[derive(Default)]
struct Policy {
    acls: Acls,
    /// Per key, the configured version new and found versions are made from.
    templates: HashMap<String, u32>,
}

/// What an audit line says about the operation besides its result.
struct Op<'a> {
    name: &'static str,
    request_id: &'a str,
    call: &'a Call,
    key: &'a str,
    started: Instant,
}

/// What a finished data operation names: the key (and version) it used.
trait Done {
    fn key_name(&self) -> &str;
    fn key_version(&self) -> u32;
}

impl Done for Wrapped {
    fn key_name(&self) -> &str {
        &self.key_name
    }
    fn key_version(&self) -> u32 {
        self.key_version
    }
}

impl Done for Unwrapped {
    fn key_name(&self) -> &str {
        &self.key_name
    }
    fn key_version(&self) -> u32 {
        self.key_version
    }
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

/// A fresh random request id. The system RNG failing is an error, never an
/// all-zero id that would make audit lines indistinguishable.
fn request_id() -> Result<String, Error> {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| Error::Internal("the system random number generator failed".into()))?;
    Ok(hex::encode(id))
}

/// The request id audit lines carry when the RNG could not make one.
const NO_REQUEST_ID: &str = "-";

/// The `key` metric label of operations on keys that are not configured or
/// that the caller may not use.
pub const OTHER_KEY: &str = "(other)";

impl Broker {
    pub fn new(ring: KeyRing, profile: Profile, limits: LimitsConfig) -> Self {
        if profile == Profile::Development {
            tracing::warn!(
                security_risk = true,
                "running under the DEVELOPMENT profile: this broker is not a production root of trust"
            );
        }
        Broker {
            ring: RwLock::new(Arc::new(ring)),
            profile,
            limits,
            health: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            state: None,
            audit: Arc::new(AuditLog::disabled()),
            metrics: None,
            policy: RwLock::new(Arc::default()),
            probing: Mutex::default(),
            changing_keys: tokio::sync::Mutex::new(()),
            config_error: Mutex::new(None),
            loaded_config: Mutex::new(None),
        }
    }

    /// Enforces `policy`: per-key ACLs on every operation, and the
    /// configured versions rotations and found versions derive from.
    fn with_policy(self, policy: Policy) -> Self {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self
    }

    /// Whether the caller may see `key` (any grant), for listings and status.
    pub fn visible(&self, call: &Call, key: &str) -> bool {
        self.policy().acls.visible(&call.caller, key)
    }

    /// Authorizes an unwrap or rewrap: against the named key, or else the
    /// key the blob names. A blob that does not even decode names no key;
    /// it is let through to fail as malformed, which reveals nothing.
    fn check_blob(&self, caller: &Caller, operation: Operation, key: &str, blob: &[u8]) -> Result<(), Error> {
        if !key.is_empty() {
            return self.policy().acls.check(caller, operation, key);
        }
        match sealbroker_core::WrappedBlob::from_bytes(blob) {
            Ok(decoded) => self.policy().acls.check(caller, operation, &decoded.key_name),
            Err(_) => Ok(()),
        }
    }

    /// Counts every operation and backend probe in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The metrics registry itself, for counters outside the broker (the
    /// listeners' bounds).
    pub fn metrics_handle(&self) -> Option<Arc<Metrics>> {
        self.metrics.clone()
    }

    /// The metrics, with the in-flight gauge brought up to date.
    pub fn metrics(&self) -> Option<&Metrics> {
        let metrics = self.metrics.as_deref()?;
        metrics.set_in_flight(self.in_flight());
        Some(metrics)
    }

    /// Writes an audit line for every operation to `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = audit;
        self
    }

    /// Records the outcome of one operation; an unwritable audit log turns
    /// a success into an error (fail closed).
    fn audited<T>(
        &self,
        op: Op<'_>,
        version_of: impl Fn(&T) -> u32,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        let latency_us = op.started.elapsed().as_micros() as u64;
        let outcome = |result: &Result<T, Error>| match result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("{:?}", e.code()),
        };
        // Building the record costs a timestamp and a few strings: skip it
        // when there is no audit sink.
        let result = if self.audit.is_enabled() {
            let record = AuditRecord {
                time: self::audit::rfc3339(std::time::SystemTime::now()),
                request_id: op.request_id.to_owned(),
                door: op.call.door.as_str().to_owned(),
                caller: op.call.caller.to_string(),
                operation: op.name.to_owned(),
                key: op.key.to_owned(),
                key_version: result.as_ref().map(&version_of).unwrap_or(0),
                outcome: outcome(&result),
                latency_us,
                prev: String::new(),
            };
            match self.audit.record(record) {
                Ok(()) => result,
                Err(e) => Err(Error::AuditUnavailable(e.to_string())),
            }
        } else {
            result
        };
        if let Some(metrics) = &self.metrics {
            // Label only configured keys, and never a key the caller may not
            // use: caller-chosen names must not grow the registry (or reveal
            // which keys exist) without bound.
            let denied = matches!(result, Err(Error::PermissionDenied { .. }));
            let (key, backend) = match self.key_ring().get(op.key) {
                Ok(k) if !denied => (op.key, k.primary().backend_names()),
                _ => (OTHER_KEY, String::new()),
            };
            let seconds = latency_us as f64 / 1e6;
            metrics.observe(
                op.call.door.as_str(),
                key,
                &backend,
                op.name,
                &outcome(&result),
                seconds,
            );
        }
        result
    }

    /// Audits a connection `door` refused before it could name a caller (a
    /// failed TLS handshake from `peer`), so refusals sit in the same chain
    /// as operations. An unwritable log is only logged: there is no caller
    /// to fail.
    pub fn audit_refused_connection(&self, door: Door, peer: &str) {
        if !self.audit.is_enabled() {
            return;
        }
        let record = AuditRecord {
            time: self::audit::rfc3339(std::time::SystemTime::now()),
            request_id: request_id().unwrap_or_else(|_| NO_REQUEST_ID.to_owned()),
            door: door.as_str().to_owned(),
            caller: Caller::Anonymous {
                peer: peer.to_owned(),
            }
            .to_string(),
            operation: "connect".to_owned(),
            key: String::new(),
            key_version: 0,
            outcome: "Unauthenticated".to_owned(),
            latency_us: 0,
            prev: String::new(),
        };
        if let Err(e) = self.audit.record(record) {
            tracing::warn!(door = %door, peer, error = %e, "a refused connection could not be audited");
        }
    }

    /// Records rotations in `state` so they survive restarts.
    pub fn with_state(mut self, state: Arc<KeyStateStore>) -> Self {
        self.state = Some(state);
        self
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

    /// The current ACLs and templates.
    fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current key ring.
    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces one key (after a rotation or a policy change).
    pub fn replace_key(&self, key: LogicalKey) {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        *ring = Arc::new(ring.with_key(key));
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
                    .key_ring()
                    .get(key)
                    .map(|k| k.primary().backend_names())
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

    /// Runs one data operation: counts it in flight, gives it a request id
    /// and a span, logs, audits and measures it. `span` makes the span from
    /// the request id. The key audited is the one the result names (a blob
    /// names its own key), else the one asked for.
    async fn operate<T>(
        &self,
        name: &'static str,
        call: &Call,
        key: &str,
        span: impl FnOnce(&str) -> tracing::Span,
        body: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error>
    where
        T: Done,
    {
        let _in_flight = InFlight::start(&self.in_flight);
        let started = Instant::now();
        let request_id = match request_id() {
            Ok(id) => id,
            Err(e) => {
                let op = Op {
                    name,
                    request_id: NO_REQUEST_ID,
                    call,
                    key,
                    started,
                };
                return self.audited(op, T::key_version, Err(e));
            }
        };
        let span = span(&request_id);
        async {
            let result = body.await;
            if let Ok(done) = &result {
                tracing::Span::current().record("key", done.key_name());
            }
            Self::log_outcome(name, started, &result);
            // A denial names the key it was about: for an unwrap that named
            // no key, the blob's.
            let audited_key = match &result {
                Ok(done) => done.key_name().to_owned(),
                Err(Error::PermissionDenied { key: denied, .. }) => denied.clone(),
                Err(_) => key.to_owned(),
            };
            self.audited(
                Op {
                    name,
                    request_id: &request_id,
                    call,
                    key: &audited_key,
                    started,
                },
                T::key_version,
                result,
            )
        }
        .instrument(span)
        .await
    }

    /// Seals `plaintext` under `key`.
    pub async fn wrap(
        &self,
        call: &Call,
        key: &str,
        plaintext: SecretBytes,
        aad: &[u8],
    ) -> Result<Wrapped, Error> {
        let body = async {
            if key.is_empty() {
                return Err(Error::InvalidArgument {
                    field: "key_name",
                    reason: "is empty".into(),
                });
            }
            self.policy().acls.check(&call.caller, Operation::Wrap, key)?;
            self.refuse_signing_key(key)?;
            if plaintext.len() > self.limits.max_plaintext_bytes {
                return Err(Error::PayloadTooLarge {
                    size: plaintext.len(),
                    limit: self.limits.max_plaintext_bytes,
                });
            }
            let wrapped = self
                .bounded("wrap", key, self.key_ring().wrap(key, plaintext.expose(), aad))
                .await?;
            self.report_degraded(&wrapped);
            Ok(wrapped)
        };
        self.operate(
            "wrap",
            call,
            key,
            |request_id| tracing::info_span!("wrap", %request_id, door = %call.door, caller = %call.caller, key),
            body,
        )
        .await
    }

    /// Opens a blob; `key` (may be empty) must match the blob's key when given.
    pub async fn unwrap(&self, call: &Call, key: &str, blob: &[u8], aad: &[u8]) -> Result<Unwrapped, Error> {
        self.unwrap_checked(call, key, None, blob, aad).await
    }

    /// Opens a blob for a door whose callers also name the key version id
    /// they expect (KMS v2's `key_id`). The ACL runs first; then the id must
    /// be one this broker issued for `key`, so an unauthorized caller learns
    /// nothing about which ids exist.
    pub async fn unwrap_issued(
        &self,
        call: &Call,
        key: &str,
        key_id: &str,
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Unwrapped, Error> {
        self.unwrap_checked(call, key, Some(key_id), blob, aad).await
    }

    /// Whether `blob` is sealed under `key` and has an entry for a version
    /// `ring` does not hold (one another replica may have made): an unknown
    /// version under a member id `ring` does not know either. An entry under
    /// a known member opens, if at all, under that member's known version.
    fn names_an_unknown_version(&self, ring: &KeyRing, key: &str, blob: &[u8]) -> bool {
        let (Ok(decoded), Ok(key)) = (sealbroker_core::WrappedBlob::from_bytes(blob), ring.get(key)) else {
            return false;
        };
        let known_member = |id: &str| {
            key.versions()
                .any(|v| v.members.iter().any(|m| m.key_id.as_str() == id))
        };
        decoded.key_name == key.name
            && decoded
                .deks
                .iter()
                .any(|entry| key.version(entry.key_version).is_none() && !known_member(&entry.key_id))
    }

    async fn unwrap_checked(
        &self,
        call: &Call,
        key: &str,
        key_id: Option<&str>,
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Unwrapped, Error> {
        let expected = (!key.is_empty()).then_some(key);
        let body = async {
            self.check_blob(&call.caller, Operation::Unwrap, key, blob)?;
            let ring = self.key_ring();
            let not_issued = || Error::InvalidArgument {
                field: "key_id",
                reason: format!("key id {key_id:?} was not issued by this broker for key {key:?}"),
            };
            // An id this broker does not know may name a version another
            // replica made: it must then be the id the blob opened under.
            let known = match key_id {
                Some(id) => ring.get(key)?.has_version_id(id),
                None => true,
            };
            // An unknown id on a blob whose every version this broker knows
            // cannot be right: refused before any backend call.
            if !known && !self.names_an_unknown_version(&ring, key, blob) {
                return Err(not_issued());
            }
            let opened = self
                .bounded("unwrap", key, self.open_blob(&ring, expected, blob, aad))
                .await;
            match (known, key_id, opened) {
                (false, Some(id), Ok(opened)) if opened.key_id.as_str() != id => Err(not_issued()),
                (false, Some(_), Err(Error::UnknownKeyVersion { .. })) => Err(not_issued()),
                (_, _, opened) => opened,
            }
        };
        self.operate(
            "unwrap",
            call,
            key,
            |request_id| tracing::info_span!("unwrap", %request_id, door = %call.door, caller = %call.caller, key),
            body,
        )
        .await
    }

    /// A blob some key ring members could not seal: log and count it, so an
    /// operator knows to Rewrap once the members are back.
    fn report_degraded(&self, wrapped: &Wrapped) {
        if wrapped.missing_members.is_empty() {
            return;
        }
        tracing::warn!(
            missing = %wrapped.missing_members.join(","),
            "wrap is degraded: some key ring members could not seal the data key; Rewrap later to repair"
        );
        if let Some(metrics) = &self.metrics {
            for member in &wrapped.missing_members {
                metrics.degraded_wrap(&wrapped.key_name, member);
            }
        }
    }

    /// Re-seals a blob under its key's primary version.
    pub async fn rewrap(&self, call: &Call, key: &str, blob: &[u8], aad: &[u8]) -> Result<Wrapped, Error> {
        let expected = (!key.is_empty()).then_some(key);
        let body = async {
            self.check_blob(&call.caller, Operation::Rewrap, key, blob)?;
            let ring = self.key_ring();
            let wrapped = match self
                .bounded("rewrap", key, ring.rewrap(expected, blob, aad))
                .await
            {
                // A version another replica made: find it, then rewrap with it.
                Err(Error::UnknownKeyVersion { .. }) => {
                    self.bounded("rewrap", key, self.open_blob(&ring, expected, blob, aad))
                        .await?;
                    self.bounded("rewrap", key, self.key_ring().rewrap(expected, blob, aad))
                        .await?
                }
                done => done?,
            };
            self.report_degraded(&wrapped);
            Ok(wrapped)
        };
        self.operate(
            "rewrap",
            call,
            key,
            |request_id| tracing::info_span!("rewrap", %request_id, door = %call.door, caller = %call.caller, key),
            body,
        )
        .await
    }

    pub fn get_key(&self, call: &Call, key: &str) -> Result<KeyInfo, Error> {
        self.policy().acls.check_any(&call.caller, key)?;
        self.key_ring().describe(key)
    }

    pub fn list_keys(&self, call: &Call) -> Vec<KeyInfo> {
        let ring = self.key_ring();
        let policy = self.policy();
        ring.names()
            .filter(|name| policy.acls.visible(&call.caller, name))
            .filter_map(|name| ring.describe(name).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use sealbroker_testkit::memory::MemoryKind;

    use super::caller::Door;
    use super::*;
    use crate::broker::registry::BackendRegistry;
    use crate::config::Config;

    #[tokio::test]
    async fn a_denied_unwrap_naming_no_key_is_audited_under_the_blobs_key() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let text = format!(
            "profile = \"development\"\n[server]\nunix_socket = \"/tmp/unused.sock\"\n[audit]\nfile = {audit:?}\n\
             [backends.hsm]\ntype = \"audited\"\n[keys.unseal]\nbackend = \"hsm\"\n\
             allow = {{ wrap = [\"uid:7\"], unwrap = [\"uid:8\"] }}\n"
        );
        let registry = BackendRegistry::default().with(MemoryKind::leak("audited"));
        let broker = Broker::from_config(&Config::parse(&text).unwrap(), &registry)
            .await
            .unwrap();
        let caller = Call::new(
            Door::Grpc,
            Caller::Unix {
                uid: 7,
                gid: 7,
                pid: None,
            },
        );
        let blob = broker
            .wrap(&caller, "unseal", SecretBytes::copy_from(b"x"), b"")
            .await
            .unwrap()
            .blob;
        let err = broker.unwrap(&caller, "", &blob, b"").await.err().unwrap();
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
        drop(broker);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let denied = lines.iter().find(|l| l["operation"] == "unwrap").unwrap();
        assert_eq!(denied["outcome"], "PermissionDenied", "{denied}");
        assert_eq!(denied["key"], "unseal", "{denied}");
    }
}
