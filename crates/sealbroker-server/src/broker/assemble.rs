//! The one path from a parsed [`Config`] to a [`Broker`]: the key ring
//! (with the versions `state_dir` recorded), the ACLs, the audit trail and
//! the metrics. `sealbroker serve` and the KMS plugin's `config_file` mode
//! both build their broker here, so one config file means the same broker
//! whichever process reads it.

use std::sync::Arc;

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
        let acls = Acls::from_config(config)?;
        if !acls.is_enforcing() {
            tracing::warn!(
                security_risk = true,
                "no key has an `allow` list: every caller may use every key"
            );
        }
        let audit = AuditLog::open(&config.audit)?;
        if !audit.is_enabled() {
            tracing::warn!("no audit trail configured: set [audit] file = \"...\" to record every operation");
        }
        let templates = config
            .keys
            .iter()
            .map(|(name, spec)| (name.clone(), spec.versions.last().map_or(1, |v| v.version)))
            .collect();
        let mut broker = Broker::new(ring, config.profile, config.limits.clone())
            .with_templates(templates)
            .with_acls(acls)
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
