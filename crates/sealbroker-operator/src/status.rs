//! The status the controller reports, as a pure function of what it found.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{KeyRotationStatus, Profile, SealBroker, SealBrokerStatus};
use crate::desired::Names;
use crate::rotation::Finding;

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
    /// The controller may not act in the SealBroker's namespace (the API
    /// answered 403): the namespace was never onboarded, or its grant was
    /// removed. The message says how to onboard it.
    NotOnboarded(String),
    /// Being deleted while OpenBao pods still unseal through it: the
    /// finalizer holds the deletion until they are gone.
    DeletionBlocked(String),
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

/// Where the rotations stand after a reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rotation {
    /// Whether the rotation was evaluated; `false` when the spec was refused
    /// (then `keys` and `config_sha256` are carried over unchanged, since
    /// they are the controller's memory of what it rendered).
    pub evaluated: bool,
    pub config_sha256: Option<String>,
    pub keys: Vec<KeyRotationStatus>,
    pub pending: Vec<Finding>,
    pub blocked: Vec<Finding>,
    /// Served pods whose sidecar was injected for an older spec; `None`
    /// when the pods were not looked at.
    pub stale_pods: Option<Vec<String>>,
}

impl Rotation {
    /// The previous status's rotation state, not re-evaluated.
    pub fn carried(sb: &SealBroker) -> Rotation {
        let previous = sb.status.as_ref();
        Rotation {
            evaluated: false,
            config_sha256: previous.and_then(|s| s.config_sha256.clone()),
            keys: previous.map(|s| s.keys.clone()).unwrap_or_default(),
            pending: Vec::new(),
            blocked: Vec::new(),
            stale_pods: None,
        }
    }
}

/// `PodsOutOfDate`: whether served pods run a sidecar injected for an older
/// spec (injection happens at Pod creation; a ConfigMap change reaches
/// running sidecars by live reload, a change to the injected Pod spec needs
/// the pods replaced).
fn rollout_condition(sb: &SealBroker, stale: &[String], generation: Option<i64>, now: &Time) -> Condition {
    if stale.is_empty() {
        return condition(
            "PodsOutOfDate",
            false,
            "UpToDate",
            "every served pod runs the sidecar this spec injects".into(),
            generation,
            now,
        );
    }
    let namespace = sb.metadata.namespace.as_deref().unwrap_or("default");
    condition(
        "PodsOutOfDate",
        true,
        "InjectionChanged",
        format!(
            "{} run a sidecar injected for an older spec (image, credentials, resources or ports); \
             replace them one at a time, e.g. `kubectl -n {namespace} rollout restart statefulset/<openbao>`",
            stale.join(", ")
        ),
        generation,
        now,
    )
}

fn joined(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| f.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

fn rotation_conditions(rotation: &Rotation, generation: Option<i64>, now: &Time) -> [Condition; 2] {
    if !rotation.evaluated {
        let unknown = |kind: &str| Condition {
            type_: kind.into(),
            status: "Unknown".into(),
            reason: "InvalidSpec".into(),
            message: "the spec was refused, so no rotation step was taken".into(),
            observed_generation: generation,
            last_transition_time: now.clone(),
        };
        return [unknown("RotationPending"), unknown("RotationBlocked")];
    }
    let pending = match rotation.pending.first() {
        Some(first) => condition(
            "RotationPending",
            true,
            first.reason,
            joined(&rotation.pending),
            generation,
            now,
        ),
        None => condition(
            "RotationPending",
            false,
            "Settled",
            "every key's rendered versions are the ones its spec wants".into(),
            generation,
            now,
        ),
    };
    let blocked = match rotation.blocked.first() {
        Some(first) => condition(
            "RotationBlocked",
            true,
            first.reason,
            joined(&rotation.blocked),
            generation,
            now,
        ),
        None => condition(
            "RotationBlocked",
            false,
            "NotBlocked",
            "nothing holds a rotation back".into(),
            generation,
            now,
        ),
    };
    [pending, blocked]
}

/// The status to write after a reconcile with `outcome` at `now`, when no
/// key's rotation was evaluated.
pub fn status_for(sb: &SealBroker, outcome: &Outcome, now: Time) -> SealBrokerStatus {
    let rotation = Rotation {
        evaluated: true,
        ..Rotation::default()
    };
    status_with_rotation(sb, outcome, &rotation, now)
}

/// The status to write after a reconcile with `outcome` and `rotation` at `now`.
pub fn status_with_rotation(
    sb: &SealBroker,
    outcome: &Outcome,
    rotation: &Rotation,
    now: Time,
) -> SealBrokerStatus {
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
        Outcome::NotOnboarded(message) => condition(
            "Ready",
            false,
            "NamespaceNotOnboarded",
            message.clone(),
            generation,
            &now,
        ),
        Outcome::DeletionBlocked(message) => condition(
            "Ready",
            false,
            "DeletionBlocked",
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
        Profile::Hardened => {
            let roots = crate::validation::in_cluster_roots(sb);
            if roots.is_empty() {
                condition(
                    "SecurityRisk",
                    false,
                    "HardenedProfile",
                    "the Hardened profile refuses software keys and unpinned images".into(),
                    generation,
                    &now,
                )
            } else {
                condition(
                    "SecurityRisk",
                    true,
                    "InClusterTrustRoot",
                    format!(
                        "the Hardened profile keeps the unseal root outside the cluster, but {}; use an HSM, a \
                         cloud KMS, or a KMIP or transit service that runs elsewhere",
                        roots.join("; ")
                    ),
                    generation,
                    &now,
                )
            }
        }
    };
    let valid = !matches!(outcome, Outcome::InvalidSpec(_));
    let [pending, blocked] = rotation_conditions(rotation, generation, &now);
    let mut conditions = vec![
        carry_transition(ready, previous),
        carry_transition(risk, previous),
        carry_transition(pending, previous),
        carry_transition(blocked, previous),
    ];
    if let Some(stale) = &rotation.stale_pods {
        conditions.push(carry_transition(
            rollout_condition(sb, stale, generation, &now),
            previous,
        ));
    }
    SealBrokerStatus {
        observed_generation: generation,
        conditions,
        plugin_sha256: valid.then(|| sb.spec.plugin_sha256.clone()),
        broker_config_map: valid.then_some(names.broker_config),
        seal_config_map: valid.then_some(names.seal_config),
        config_sha256: rotation.config_sha256.clone(),
        keys: rotation.keys.clone(),
    }
}
