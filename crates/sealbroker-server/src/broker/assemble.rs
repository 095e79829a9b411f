//! The one path from a parsed [`Config`] to a [`Broker`]: the key ring
//! (with the versions `state_dir` recorded), the ACLs, the audit trail and
//! the metrics. `sealbroker serve` and the KMS plugin's `config_file` mode
//! both build their broker here, so one config file means the same broker
//! whichever process reads it.

use std::sync::Arc;

use sealbroker_core::keyring::KeyRing;

use super::Policy;
use crate::broker::Broker;
use crate::broker::acl::Acls;
use crate::broker::audit::AuditLog;
use crate::broker::keystate::KeyStateStore;
use crate::broker::metrics::Metrics;
use crate::broker::registry::BackendRegistry;
use crate::config::{Config, ConfigError, Profile};

impl Broker {
    /// Builds the broker `config` describes from the backend kinds in
    /// `registry`. Every refusal names the config field it is about.
    pub async fn from_config(config: &Config, registry: &BackendRegistry) -> Result<Broker, ConfigError> {
        let state = match &config.server.state_dir {
            Some(dir) => Some(Arc::new(KeyStateStore::open(dir)?)),
            None => None,
        };
        let snapshot = match &state {
            Some(store) => store.snapshot().await,
            None => Default::default(),
        };
        let ring = registry.build_keyring_with_state(config, &snapshot).await?;
        let policy = Policy::of(config)?;
        if !policy.acls.is_enforcing() {
            tracing::warn!(
                security_risk = true,
                "no key has an `allow` list: every caller may use every key"
            );
        }
        config.check_audit()?;
        let audit = AuditLog::open(&config.audit, config.server.state_dir.as_deref(), &ring).await?;
        if !audit.is_enabled() {
            tracing::warn!("no audit trail configured: set [audit] file = \"...\" to record every operation");
        }
        let mut broker = Broker::new(ring, config.profile, config.limits.clone())
            .with_policy(policy)
            .with_audit(Arc::new(audit));
        if let Some(store) = state {
            broker = broker.with_state(store);
        }
        if config.server.metrics.is_some() {
            broker = broker.with_metrics(Arc::new(Metrics::new(config.profile == Profile::Development)));
        }
        Ok(broker)
    }
}

/// The key ring `config` describes, with the versions `state_dir` recorded,
/// and nothing else: no audit trail is opened and nothing is written. For
/// the commands that run beside a live broker (`keygen --version`,
/// `audit verify`), which must not touch its audit trail.
pub async fn key_ring_of(config: &Config, registry: &BackendRegistry) -> Result<KeyRing, ConfigError> {
    let snapshot = match &config.server.state_dir {
        Some(dir) => KeyStateStore::open(dir)?.snapshot().await,
        None => Default::default(),
    };
    registry.build_keyring_with_state(config, &snapshot).await
}

impl Policy {
    /// The ACLs `config` declares, and per key its newest configured
    /// version: what rotations and versions found on the backend derive from.
    fn of(config: &Config) -> Result<Policy, ConfigError> {
        let templates = config
            .keys
            .iter()
            .map(|(name, spec)| (name.clone(), spec.versions.last().map_or(1, |v| v.version)))
            .collect();
        Ok(Policy {
            acls: Acls::from_config(config)?,
            templates,
        })
    }
}

impl Broker {
    /// Applies a new config's keys and ACLs to this running broker (a
    /// reload). Everything is built first; on any refusal nothing changes
    /// and the error names the field. Requests already running finish on
    /// the key ring they started with. The profile, state directory, audit
    /// trail, limits and metrics stay as they started: they need a restart.
    pub async fn reconfigure(&self, config: &Config, registry: &BackendRegistry) -> Result<(), ConfigError> {
        let snapshot = match &self.state {
            Some(store) => store.snapshot().await,
            None => Default::default(),
        };
        let ring = registry.build_keyring_with_state(config, &snapshot).await?;
        let policy = Arc::new(Policy::of(config)?);
        let _changing = self.changing_keys.lock().await;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
        // Health of keys and members that may be gone: probe afresh.
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // A new primary of the audit seal key: the chain key follows it now,
        // before a later reload can retire the version it was sealed under.
        if let Err(e) = self.audit.reseal(&self.key_ring()).await {
            tracing::error!(error = %e, "the audit chain key stays sealed under its old version");
        }
        Ok(())
    }

    /// Records the outcome of a reload: audited (operation `reload`),
    /// counted, and, while refused, reported by `Status`.
    pub fn reloaded(&self, refused: Option<String>) {
        let call = crate::broker::caller::Call::internal(crate::broker::caller::Door::Admin);
        let result = match &refused {
            None => Ok(()),
            Some(reason) => Err(sealbroker_core::Error::InvalidArgument {
                field: "config",
                reason: reason.clone(),
            }),
        };
        let request_id = super::request_id().unwrap_or_else(|_| super::NO_REQUEST_ID.to_owned());
        let op = super::Op {
            name: "reload",
            request_id: &request_id,
            call: &call,
            key: "",
            started: std::time::Instant::now(),
        };
        if let Err(e) = self.audited(op, |_: &()| 0, result)
            && refused.is_none()
        {
            tracing::error!(error = %e, "cannot audit the reload");
        }
        if let Some(metrics) = &self.metrics {
            metrics.reloaded(refused.is_none());
        }
        *self.config_error.lock().unwrap_or_else(|p| p.into_inner()) = refused;
    }

    /// Records which config file's bytes this broker now runs on (at
    /// start-up and after each reload), as the SHA-256 its reports carry.
    pub fn set_loaded_config(&self, bytes: &[u8]) {
        let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
        *self.loaded_config.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
    }

    /// The SHA-256 (hex) of the config file this broker runs on, when it
    /// was read from a file.
    pub fn loaded_config(&self) -> Option<String> {
        self.loaded_config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the last reload was refused, if it was.
    pub fn config_error(&self) -> Option<String> {
        self.config_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
