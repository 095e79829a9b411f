//! Prometheus metrics and health endpoints, on their own listener
//! (`[server.metrics]`): `/metrics`, `/livez`, `/readyz`.
//!
//! Every front door's operations pass through the broker, which counts them
//! here, so one registry covers them all.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::broker::Broker;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    door: String,
    key: String,
    backend: String,
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    door: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    key: String,
    backend: String,
}

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    backend_up: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    health_probes: Family<BackendLabels, Counter>,
    in_flight: Gauge<i64, AtomicI64>,
    security_risk: Gauge<i64, AtomicI64>,
    throttling_retries: Family<BackendNameLabels, Counter>,
    helper_restarts: Family<BackendNameLabels, Counter>,
    degraded_wraps: Family<BackendLabels, Counter>,
    primary_version: Family<KeyLabels, Gauge<i64, AtomicI64>>,
    min_decryption_version: Family<KeyLabels, Gauge<i64, AtomicI64>>,
    version_usable: Family<VersionLabels, Gauge<i64, AtomicI64>>,
    reloads: Family<OutcomeLabels, Counter>,
    reload_failed: Gauge<i64, AtomicI64>,
    connection_limits: Family<LimitLabels, Counter>,
    transit_throttled: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    key: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendNameLabels {
    backend: String,
}

impl Metrics {
    pub fn new(security_risk: bool) -> Self {
        let mut registry = Registry::with_prefix("sealbroker");
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "operations",
            "Operations by front door, key, backend, operation and outcome",
            operations.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register("operation_duration_seconds", "Operation latency", latency.clone());
        let backend_up = Family::<BackendLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "backend_up",
            "1 when the last health probe of a key's backend succeeded",
            backend_up.clone(),
        );
        let health_probes = Family::<BackendLabels, Counter>::default();
        registry.register(
            "health_probes",
            "Real health probes sent to a key's backend",
            health_probes.clone(),
        );
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register("in_flight", "Operations running now", in_flight.clone());
        let risk = Gauge::<i64, AtomicI64>::default();
        risk.set(i64::from(security_risk));
        registry.register(
            "security_risk",
            "1 under the Development profile: not a production root of trust",
            risk.clone(),
        );
        let throttling_retries = Family::<BackendNameLabels, Counter>::default();
        registry.register(
            "backend_throttling_retries",
            "Calls a backend retried because its service throttled them",
            throttling_retries.clone(),
        );
        let helper_restarts = Family::<BackendNameLabels, Counter>::default();
        registry.register(
            "backend_helper_restarts",
            "Helper processes a backend started to replace one that died (a PKCS#11 module crash or hang)",
            helper_restarts.clone(),
        );
        let degraded_wraps = Family::<BackendLabels, Counter>::default();
        registry.register(
            "degraded_wraps",
            "Blobs sealed without a key ring member (backend); Rewrap repairs them",
            degraded_wraps.clone(),
        );
        let primary_version = Family::<KeyLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "key_primary_version",
            "The version new wraps of a key use on this replica",
            primary_version.clone(),
        );
        let min_decryption_version = Family::<KeyLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "key_min_decryption_version",
            "Blobs under older versions of a key are refused",
            min_decryption_version.clone(),
        );
        let version_usable = Family::<VersionLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "key_version_usable",
            "1 for each key version this replica knows and can use (primary and staged versions: \
             every member passed its last health probe); promote a staged version once every replica shows 1",
            version_usable.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP or a changed file) by outcome: ok, or refused (the old config keeps serving)",
            reloads.clone(),
        );
        let reload_failed = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_reload_failed",
            "1 while the last reload was refused and the config before it serves",
            reload_failed.clone(),
        );
        let connection_limits = Family::<LimitLabels, Counter>::default();
        registry.register(
            "connection_limits",
            "Connections a listener bound dropped, by listener and reason: evicted (still in its \
             handshake when the listener was full), refused (full of established connections), \
             handshake_timeout, idle",
            connection_limits.clone(),
        );
        let transit_throttled = Counter::default();
        registry.register(
            "transit_throttled_requests",
            "Transit requests refused with 429, unchecked, because their peer failed too many token \
             attempts within the window",
            transit_throttled.clone(),
        );
        Metrics {
            registry,
            connection_limits,
            transit_throttled,
            reloads,
            reload_failed,
            primary_version,
            min_decryption_version,
            version_usable,
            throttling_retries,
            helper_restarts,
            degraded_wraps,
            operations,
            latency,
            backend_up,
            health_probes,
            in_flight,
            security_risk: risk,
        }
    }

    /// Counts one finished operation.
    pub fn observe(
        &self,
        door: &str,
        key: &str,
        backend: &str,
        operation: &str,
        outcome: &str,
        seconds: f64,
    ) {
        self.operations
            .get_or_create(&OperationLabels {
                door: door.into(),
                key: key.into(),
                backend: backend.into(),
                operation: operation.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                door: door.into(),
                operation: operation.into(),
            })
            .observe(seconds);
    }

    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(n as i64);
    }

    pub fn set_backend_up(&self, key: &str, backend: &str, up: bool) {
        self.health_probes
            .get_or_create(&BackendLabels {
                key: key.into(),
                backend: backend.into(),
            })
            .inc();
        self.backend_up
            .get_or_create(&BackendLabels {
                key: key.into(),
                backend: backend.into(),
            })
            .set(i64::from(up));
    }

    /// What this replica knows of `key`'s versions, as the last status saw it.
    pub fn set_key_versions(&self, key: &str, primary: u32, min_decryption: u32, usable: &[(u32, bool)]) {
        let labels = KeyLabels { key: key.into() };
        self.primary_version
            .get_or_create(&labels)
            .set(i64::from(primary));
        self.min_decryption_version
            .get_or_create(&labels)
            .set(i64::from(min_decryption));
        for (version, up) in usable {
            self.version_usable
                .get_or_create(&VersionLabels {
                    key: key.into(),
                    version: version.to_string(),
                })
                .set(i64::from(*up));
        }
    }

    /// Counts a connection dropped by a bound of `listener`.
    pub fn connection_limited(&self, listener: &str, reason: &str) {
        self.connection_limits
            .get_or_create(&LimitLabels {
                listener: listener.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn reloaded(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "refused" };
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        self.reload_failed.set(i64::from(!ok));
    }

    /// Counts a transit request refused because its peer is throttled.
    pub fn transit_throttled(&self) {
        self.transit_throttled.inc();
    }

    /// Counts a blob of `key` sealed without member `backend`.
    pub fn degraded_wrap(&self, key: &str, backend: &str) {
        self.degraded_wraps
            .get_or_create(&BackendLabels {
                key: key.into(),
                backend: backend.into(),
            })
            .inc();
    }

    /// Brings a backend's throttling-retry counter up to `total`, the
    /// cumulative count the backend itself keeps.
    pub fn sync_throttling_retries(&self, backend: &str, total: u64) {
        let counter = self.throttling_retries.get_or_create(&BackendNameLabels {
            backend: backend.into(),
        });
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// Brings a backend's helper-restart counter up to `total`, the
    /// cumulative count the backend itself keeps.
    pub fn sync_helper_restarts(&self, backend: &str, total: u64) {
        let counter = self.helper_restarts.get_or_create(&BackendNameLabels {
            backend: backend.into(),
        });
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    pub fn security_risk(&self) -> bool {
        self.security_risk.get() == 1
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let body = match broker.metrics() {
        Some(metrics) => {
            // Backends count their own retries; read them at scrape time. Keys
            // on one backend share its client, so take the largest count.
            let mut totals = std::collections::BTreeMap::<String, (u64, u64)>::new();
            for key in broker.key_ring().keys() {
                for member in key.versions().flat_map(|v| &v.members) {
                    let (retries, restarts) = totals.entry(member.backend_name.clone()).or_default();
                    *retries = (*retries).max(member.backend.throttling_retries());
                    *restarts = (*restarts).max(member.backend.helper_restarts());
                }
            }
            for (backend, (retries, restarts)) in totals {
                metrics.sync_throttling_retries(&backend, retries);
                metrics.sync_helper_restarts(&backend, restarts);
            }
            metrics.encode()
        }
        None => String::new(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn livez() -> &'static str {
    "ok\n"
}

/// Ready when every key can be used through at least one member, judged by
/// the cached deep probe (so probes never hammer an HSM or a cloud quota).
/// The probe is unauthenticated: under Hardened it learns readiness only,
/// not which keys are down or the backends' error text (an admin's
/// `sealbroker status` and the log say that).
async fn readyz(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let down = broker.status(false).await.unready_keys();
    if down.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else if broker.profile() == crate::config::Profile::Hardened {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready (see `sealbroker status` or the broker's log)\n".to_owned(),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", down.join("\n")),
        )
    }
}

/// The router for the metrics listener.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(broker)
}
