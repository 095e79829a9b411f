//! The status the controller reports, as a pure function of what it found.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{Profile, SealBroker, SealBrokerStatus};
use crate::desired::Names;

/// What one reconcile found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The spec was refused; the message says why.
    InvalidSpec(String),
    /// Config applied, but the provisioner has not granted the broker's
    /// access yet (or the grant no longer matches the spec).
    AwaitingProvisioner(String),
    /// Everything applied and granted.
    Ready,
}

fn condition(
    kind: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keeps the previous transition time when a condition's status did not change.
fn carry_transition(mut new: Condition, previous: &[Condition]) -> Condition {
    if let Some(old) = previous.iter().find(|c| c.type_ == new.type_)
        && old.status == new.status
    {
        new.last_transition_time = old.last_transition_time.clone();
    }
    new
}

/// The status to write after a reconcile with `outcome` at `now`.
pub fn status_for(sb: &SealBroker, outcome: &Outcome, now: Time) -> SealBrokerStatus {
    let generation = sb.metadata.generation;
    let previous = sb.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let names = Names::of(sb);
    let ready = match outcome {
        Outcome::InvalidSpec(message) => {
            condition("Ready", false, "InvalidSpec", message.clone(), generation, &now)
        }
        Outcome::AwaitingProvisioner(message) => condition(
            "Ready",
            false,
            "AwaitingProvisioner",
            message.clone(),
            generation,
            &now,
        ),
        Outcome::Ready => condition(
            "Ready",
            true,
            "Reconciled",
            format!(
                "broker config in ConfigMap {}, OpenBao seal stanza in ConfigMap {}",
                names.broker_config, names.seal_config
            ),
            generation,
            &now,
        ),
    };
    let risk = match sb.spec.profile {
        Profile::Development => condition(
            "SecurityRisk",
            true,
            "DevelopmentProfile",
            "the Development profile allows software keys and unpinned images; it is not a production \
             trust path. Create a new Hardened SealBroker for production; never promote this one"
                .into(),
            generation,
            &now,
        ),
        Profile::Hardened => condition(
            "SecurityRisk",
            false,
            "HardenedProfile",
            "the Hardened profile refuses software keys and unpinned images".into(),
            generation,
            &now,
        ),
    };
    let valid = !matches!(outcome, Outcome::InvalidSpec(_));
    SealBrokerStatus {
        observed_generation: generation,
        conditions: vec![
            carry_transition(ready, previous),
            carry_transition(risk, previous),
        ],
        plugin_sha256: valid.then(|| sb.spec.plugin_sha256.clone()),
        broker_config_map: valid.then_some(names.broker_config),
        seal_config_map: valid.then_some(names.seal_config),
    }
}
