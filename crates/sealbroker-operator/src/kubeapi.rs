//! The operator's calls to the Kubernetes API: server-side apply of desired
//! objects, the controller's reconcile (including each key's rotation step,
//! decided by [`crate::rotation`]), and the provisioner's one-shot grant.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{KeyRotationStatus, Profile, SealBroker};
use crate::desired::{self, CONTROLLER_MANAGER, Desired, Names, PROVISIONER_MANAGER};
use crate::injection::INJECTED_ANNOTATION;
use crate::render::{self, paths};
use crate::rotation::{
    self, Action as RotationAction, JobOutcome, KeyObservation, KeyPlan, KeygenJob, ServedPod,
};
use crate::signature::ImageVerifier;
use crate::status::{Outcome, Rotation, status_with_rotation};
use crate::validation::{Problem, describe, validate};

/// Why a reconcile or provisioning step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("SealBroker {0} has no namespace")]
    NoNamespace(String),
    #[error("SealBroker {name} is invalid: {problems}")]
    Invalid { name: String, problems: String },
}

/// What reconcile needs besides the object.
pub struct Context {
    pub client: Client,
    /// The clock (fixed in tests).
    pub now: fn() -> Time,
    /// Verifies a Hardened SealBroker's image signature before anything is
    /// applied for it (a [`crate::signature::RefuseAll`] when the operator
    /// has no trusted key).
    pub images: Arc<dyn ImageVerifier>,
}

/// The current time.
pub fn system_now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Server-side applies one object as `manager`, taking ownership of its fields.
pub async fn apply(client: &Client, namespace: &str, object: &Desired, manager: &str) -> Result<(), Error> {
    let params = PatchParams::apply(manager).force();
    let name = object.name();
    let patch = Patch::Apply(object.to_value());
    match object {
        Desired::ConfigMap(_) => {
            Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .patch(name, &params, &patch)
                .await?;
        }
        Desired::NetworkPolicy(_) => {
            Api::<NetworkPolicy>::namespaced(client.clone(), namespace)
                .patch(name, &params, &patch)
                .await?;
        }
        Desired::ServiceAccount(_) => {
            Api::<ServiceAccount>::namespaced(client.clone(), namespace)
                .patch(name, &params, &patch)
                .await?;
        }
        Desired::Role(_) => {
            Api::<Role>::namespaced(client.clone(), namespace)
                .patch(name, &params, &patch)
                .await?;
        }
        Desired::RoleBinding(_) => {
            Api::<RoleBinding>::namespaced(client.clone(), namespace)
                .patch(name, &params, &patch)
                .await?;
        }
    }
    tracing::info!(kind = object.kind(), %namespace, %name, %manager, "applied");
    Ok(())
}

/// Whether the provisioner's grant is in place and matches the spec. Reads only.
async fn check_grant(client: &Client, namespace: &str, sb: &SealBroker) -> Result<Outcome, Error> {
    let names = Names::of(sb);
    let hint = format!(
        "a platform admin runs `sealbroker-operator provision --namespace {namespace} {}`",
        sb.name_any()
    );
    let account = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_opt(&names.service_account)
        .await?;
    let role = Api::<Role>::namespaced(client.clone(), namespace)
        .get_opt(&names.secrets_role)
        .await?;
    let binding = Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .get_opt(&names.secrets_role)
        .await?;
    let mut missing = Vec::new();
    if account.is_none() {
        missing.push(format!("ServiceAccount {}", names.service_account));
    }
    if role.is_none() {
        missing.push(format!("Role {}", names.secrets_role));
    }
    if binding.is_none() {
        missing.push(format!("RoleBinding {}", names.secrets_role));
    }
    if !missing.is_empty() {
        return Ok(Outcome::AwaitingProvisioner(format!(
            "the broker's access grant is missing ({}); {hint}",
            missing.join(", ")
        )));
    }
    if let Some(role) = role
        && !desired::role_matches(&role, sb)
    {
        return Ok(Outcome::AwaitingProvisioner(format!(
            "Role {} does not grant exactly the Secrets the spec names; {hint}",
            names.secrets_role
        )));
    }
    if let Some(binding) = binding
        && !desired::binding_matches(&binding, sb)
    {
        return Ok(Outcome::AwaitingProvisioner(format!(
            "RoleBinding {} does not bind Role {} to exactly ServiceAccount {} (it binds {}); {hint}",
            names.secrets_role,
            names.secrets_role,
            names.service_account,
            describe_subjects(&binding)
        )));
    }
    // The served Pods' right to report on themselves (key rotation).
    let reports_role = Api::<Role>::namespaced(client.clone(), namespace)
        .get_opt(&names.reports_role)
        .await?;
    let reports_binding = Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .get_opt(&names.reports_role)
        .await?;
    let account = &sb.spec.openbao.service_account_name;
    match (reports_role, reports_binding) {
        (Some(role), Some(binding)) => {
            if desired::reports_role_matches(&role) && desired::binding_matches(&binding, sb) {
                Ok(Outcome::Ready)
            } else {
                Ok(Outcome::AwaitingProvisioner(format!(
                    "Role and RoleBinding {} do not grant exactly pods get and patch to ServiceAccount \
                     {account} (spec.openbao.serviceAccountName); {hint}",
                    names.reports_role
                )))
            }
        }
        _ => Ok(Outcome::AwaitingProvisioner(format!(
            "the served Pods' grant to report key versions is missing (Role and RoleBinding {}); {hint}",
            names.reports_role
        ))),
    }
}

/// A RoleBinding's subjects, for a status message.
fn describe_subjects(binding: &RoleBinding) -> String {
    let subjects: Vec<String> = binding
        .subjects
        .iter()
        .flatten()
        .map(|s| match &s.namespace {
            Some(ns) => format!("{} {ns}/{}", s.kind, s.name),
            None => format!("{} {}", s.kind, s.name),
        })
        .collect();
    if subjects.is_empty() {
        "no subject".into()
    } else {
        subjects.join(", ")
    }
}

/// Whether a Kubernetes API error has this HTTP status.
fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// The Pods this SealBroker serves, with their reports: selected, injected
/// by it, and neither finished nor being deleted (a Pod that went away is
/// not waited for; its replacement reports for itself).
/// Also returns the names of those whose sidecar was injected for an older
/// spec.
async fn served_pods(
    client: &Client,
    namespace: &str,
    sb: &SealBroker,
) -> Result<(Vec<ServedPod>, Vec<String>), Error> {
    let name = sb.name_any();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let live: Vec<&Pod> = pods
        .items
        .iter()
        .filter(|pod| desired::selector_matches(&sb.spec.openbao.selector, pod.labels()))
        .filter(|pod| pod.annotations().get(INJECTED_ANNOTATION) == Some(&name))
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect();
    let stale = crate::injection::out_of_date(live.iter().copied(), sb);
    let mut served: Vec<ServedPod> = live
        .into_iter()
        .map(|pod| ServedPod {
            name: pod.name_any(),
            report: rotation::parse_report(pod.metadata.annotations.as_ref()),
        })
        .collect();
    served.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((served, stale))
}

/// This SealBroker's key-creation Jobs, by key.
async fn keygen_jobs(
    client: &Client,
    namespace: &str,
    sb: &SealBroker,
) -> Result<Vec<(String, KeygenJob)>, Error> {
    let selector = format!(
        "sealbroker.io/name={},{}={}",
        sb.name_any(),
        desired::COMPONENT_LABEL,
        desired::KEYGEN_COMPONENT
    );
    let jobs = Api::<Job>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(jobs.items.iter().filter_map(keygen_job_state).collect())
}

/// A listed Job as the rotation sees it; `None` when its labels are not ours.
fn keygen_job_state(job: &Job) -> Option<(String, KeygenJob)> {
    let labels = job.labels();
    let key = labels.get(desired::KEY_LABEL)?.clone();
    let version = labels.get(desired::VERSION_LABEL)?.parse::<u32>().ok()?;
    let attempt = job
        .annotations()
        .get(desired::ATTEMPT_ANNOTATION)
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(1);
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[]);
    let holds = |kind: &str| conditions.iter().find(|c| c.type_ == kind && c.status == "True");
    let outcome = if holds("Complete").is_some() {
        JobOutcome::Succeeded
    } else if let Some(failed) = holds("Failed") {
        JobOutcome::Failed {
            message: format!(
                "{}: {}",
                failed.reason.as_deref().unwrap_or("Failed"),
                failed.message.as_deref().unwrap_or("")
            ),
            at: failed.last_transition_time.clone(),
        }
    } else {
        JobOutcome::Running
    };
    Some((
        key,
        KeygenJob {
            version,
            attempt,
            outcome,
        },
    ))
}

/// Each rotating key's plan, from what the cluster shows now.
async fn plan_rotations(
    client: &Client,
    namespace: &str,
    sb: &SealBroker,
    now: &Time,
    pods: &[ServedPod],
) -> Result<Vec<KeyPlan>, Error> {
    let rotating: Vec<_> = sb.spec.keys.iter().filter(|k| k.versions.is_some()).collect();
    if rotating.is_empty() {
        return Ok(Vec::new());
    }
    let jobs = keygen_jobs(client, namespace, sb).await?;
    let previous: &[KeyRotationStatus] = sb.status.as_ref().map(|s| s.keys.as_slice()).unwrap_or(&[]);
    // The config the pods should run now: this spec, rendered with what the
    // last reconcile rendered. Reports count only under it.
    let current = rotation::with_rendered_versions(sb, previous);
    let current_sha256 = render::config_sha256(&render::broker_config(&current, &render::Layout::pod()));
    let plans = rotating
        .into_iter()
        .map(|key| {
            let can_create = sb
                .spec
                .backends
                .iter()
                .find(|b| b.name == key.backend)
                .is_some_and(|b| b.software.is_none());
            rotation::plan_key(&KeyObservation {
                key: &key.name,
                declared: key.versions.clone().unwrap_or_default(),
                previous: previous.iter().find(|p| p.name == key.name),
                jobs: jobs
                    .iter()
                    .filter(|(k, _)| *k == key.name)
                    .map(|(_, j)| j.clone())
                    .collect(),
                pods,
                config_sha256: &current_sha256,
                can_create,
                now,
            })
        })
        .collect();
    Ok(plans)
}

/// Creates and deletes the key-creation Jobs a plan asks for. Creating a Job
/// that exists finds it: the name is the same every time.
async fn carry_out(client: &Client, namespace: &str, sb: &SealBroker, plan: &KeyPlan) -> Result<(), Error> {
    let jobs = Api::<Job>::namespaced(client.clone(), namespace);
    let key = &plan.status.name;
    for action in &plan.actions {
        match *action {
            RotationAction::CreateJob { version, attempt } => {
                let job = desired::keygen_job(sb, key, version, attempt);
                let name = job.metadata.name.clone().unwrap_or_default();
                match jobs.create(&PostParams::default(), &job).await {
                    Ok(_) => {
                        tracing::info!(%namespace, job = %name, %key, version, attempt, "key-creation Job created")
                    }
                    Err(e) if is_status(&e, 409) => {
                        tracing::info!(%namespace, job = %name, %key, version, "key-creation Job exists")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            RotationAction::DeleteJob { version } => {
                let name = Names::keygen_job(sb, key, version);
                match jobs.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {
                        tracing::info!(%namespace, job = %name, %key, version, "failed key-creation Job deleted for its retry")
                    }
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// One reconcile: decide each key's rotation step, render and apply the
/// controller's objects, create or delete key-creation Jobs, check the
/// provisioner's grant, write the status.
pub async fn reconcile(sb: Arc<SealBroker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = sb.name_any();
    let namespace = sb.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let now = (ctx.now)();
    if sb.metadata.deletion_timestamp.is_some() {
        return guard_deletion(&sb, &ctx, &namespace, now).await;
    }
    if !sb.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = sb.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        set_finalizers(&ctx.client, &namespace, &name, finalizers).await?;
    }
    let mut problems = validate(&sb);
    // Hardened runs only an image signed by the trusted key; a spec that is
    // refused anyway is not worth a registry round trip.
    if problems.is_empty()
        && sb.spec.profile == Profile::Hardened
        && let Err(refusal) = ctx.images.verify(&sb.spec.image).await
    {
        problems.push(Problem {
            field: "spec.image".into(),
            message: format!(
                "the Hardened profile runs only images signed by the operator's trusted key: {refusal}"
            ),
        });
    }
    if !problems.is_empty() {
        let outcome = Outcome::InvalidSpec(describe(&problems));
        // What was rendered stays remembered: a fixed spec resumes from it.
        let status = status_with_rotation(&sb, &outcome, &Rotation::carried(&sb), now);
        write_status(&ctx.client, &namespace, &name, &status).await?;
        record_events(&ctx.client, &sb, &outcome, &[]).await;
        tracing::info!(%namespace, %name, outcome = "InvalidSpec", "reconciled");
        return Ok(Action::await_change());
    }

    match reconcile_in_namespace(&sb, &ctx, &namespace, now.clone()).await {
        Err(Error::Kube(e)) if is_status(&e, 403) => {
            let outcome = Outcome::NotOnboarded(format!(
                "the controller may not act in namespace {namespace} ({e}): it was never onboarded for \
                 SealBroker {name}, or its onboarding was removed; a platform admin applies \
                 `sealbroker-operator onboard --namespace {namespace} {name}` (naming every SealBroker the \
                 namespace holds), then runs `sealbroker-operator provision --namespace {namespace} {name}`"
            ));
            // What was rendered stays remembered, as for an invalid spec.
            let status = status_with_rotation(&sb, &outcome, &Rotation::carried(&sb), now);
            write_status(&ctx.client, &namespace, &name, &status).await?;
            record_events(&ctx.client, &sb, &outcome, &[]).await;
            tracing::warn!(%namespace, %name, outcome = "NotOnboarded", "reconciled");
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        other => other,
    }
}

/// The part of a reconcile that acts in the SealBroker's own namespace.
async fn reconcile_in_namespace(
    sb: &Arc<SealBroker>,
    ctx: &Arc<Context>,
    namespace: &str,
    now: Time,
) -> Result<Action, Error> {
    let (sb, namespace, name) = (sb.clone(), namespace.to_owned(), sb.name_any());
    let (pods, stale) = served_pods(&ctx.client, &namespace, &sb).await?;
    let plans = plan_rotations(&ctx.client, &namespace, &sb, &now, &pods).await?;
    let mut keys: Vec<KeyRotationStatus> = plans.iter().map(|p| p.status.clone()).collect();
    let rendered = rotation::with_rendered_versions(&sb, &keys);
    let objects = desired::controller_objects(&rendered);
    let config_sha256 = objects.iter().find_map(|o| match o {
        Desired::ConfigMap(cm) => cm
            .data
            .as_ref()
            .and_then(|d| d.get(paths::CONFIG_FILE))
            .map(|text| render::config_sha256(text)),
        _ => None,
    });
    for object in &objects {
        apply(&ctx.client, &namespace, object, CONTROLLER_MANAGER).await?;
    }
    for plan in &plans {
        for step in &plan.steps {
            tracing::info!(%namespace, %name, key = %plan.status.name, %step, "rotation");
        }
        carry_out(&ctx.client, &namespace, &sb, plan).await?;
    }
    let outcome = check_grant(&ctx.client, &namespace, &sb).await?;

    if let Some(hash) = &config_sha256 {
        for key in &mut keys {
            key.versions = rotation::version_reports(key, &pods, hash);
        }
    }
    let rotation = Rotation {
        evaluated: true,
        config_sha256,
        keys,
        pending: plans.iter().flat_map(|p| p.pending.clone()).collect(),
        blocked: plans.iter().flat_map(|p| p.blocked.clone()).collect(),
        stale_pods: Some(stale),
    };
    let status = status_with_rotation(&sb, &outcome, &rotation, now);
    write_status(&ctx.client, &namespace, &name, &status).await?;
    let steps: Vec<String> = plans
        .iter()
        .flat_map(|p| p.steps.iter().map(|s| format!("{}: {s}", p.status.name)))
        .collect();
    record_events(&ctx.client, &sb, &outcome, &steps).await;
    tracing::info!(%namespace, %name, outcome = ?outcome_kind(&outcome), "reconciled");
    let base = match outcome {
        Outcome::Ready => READY_RECHECK,
        _ => Duration::from_secs(30),
    };
    let recheck = plans.iter().filter_map(|p| p.recheck).min();
    Ok(Action::requeue(recheck.map_or(base, |r| r.min(base))))
}

/// Holds a SealBroker's deletion while OpenBao pods still unseal through it:
/// deleting it would leave them unable to unseal at their next restart.
pub const FINALIZER: &str = "sealbroker.io/served-pods";

async fn set_finalizers(
    client: &Client,
    namespace: &str,
    name: &str,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    Api::<SealBroker>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
        )
        .await?;
    Ok(())
}

/// A SealBroker being deleted: its finalizer goes once no pod is served,
/// and until then the status and an Event name the pods that hold it.
async fn guard_deletion(sb: &SealBroker, ctx: &Context, namespace: &str, now: Time) -> Result<Action, Error> {
    let name = sb.name_any();
    if !sb.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let (pods, _) = served_pods(&ctx.client, namespace, sb).await?;
    if pods.is_empty() {
        let rest: Vec<String> = sb
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        set_finalizers(&ctx.client, namespace, &name, rest).await?;
        tracing::info!(%namespace, %name, "no pod is served any more; deletion goes ahead");
        return Ok(Action::await_change());
    }
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let outcome = Outcome::DeletionBlocked(format!(
        "deletion waits until no OpenBao pod unseals through this SealBroker: {} still do. Migrate their \
         seal (or scale them down), then the deletion completes on its own; removing the finalizer {FINALIZER} \
         by hand leaves them unable to unseal at their next restart",
        names.join(", ")
    ));
    let status = status_with_rotation(sb, &outcome, &Rotation::carried(sb), now);
    write_status(&ctx.client, namespace, &name, &status).await?;
    record_events(&ctx.client, sb, &outcome, &[]).await;
    tracing::warn!(%namespace, %name, pods = %names.join(","), "deletion blocked by served pods");
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Records this reconcile's decisions as Events on the SealBroker (shown
/// by `kubectl describe sealbroker`): the outcome when it changed since the
/// last status, and every rotation step. Best effort: an Event that cannot
/// be written is logged, never fatal.
async fn record_events(client: &Client, sb: &SealBroker, outcome: &Outcome, steps: &[String]) {
    let (type_, reason, note) = match outcome {
        Outcome::Ready => (
            EventType::Normal,
            "Reconciled",
            "broker config and seal stanza applied; access granted".to_owned(),
        ),
        Outcome::InvalidSpec(m) => (EventType::Warning, "InvalidSpec", m.clone()),
        Outcome::AwaitingProvisioner(m) => (EventType::Warning, "AwaitingProvisioner", m.clone()),
        Outcome::NotOnboarded(m) => (EventType::Warning, "NamespaceNotOnboarded", m.clone()),
        Outcome::DeletionBlocked(m) => (EventType::Warning, "DeletionBlocked", m.clone()),
    };
    let previous = sb
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.as_str());
    let mut events = Vec::new();
    if previous != Some(reason) {
        events.push(Event {
            type_,
            reason: reason.into(),
            note: Some(clip(&note)),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    events.extend(steps.iter().map(|step| Event {
        type_: EventType::Normal,
        reason: "Rotation".into(),
        note: Some(clip(step)),
        action: "Rotate".into(),
        secondary: None,
    }));
    if events.is_empty() {
        return;
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let reference = sb.object_ref(&());
    for event in &events {
        if let Err(e) = recorder.publish(event, &reference).await {
            tracing::debug!(reason = %event.reason, error = %e, "event not recorded");
        }
    }
}

/// An Event note is at most 1 kB.
fn clip(text: &str) -> String {
    match text.char_indices().nth(1000) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

async fn write_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &crate::crd::SealBrokerStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": "sealbroker.io/v1alpha1",
        "kind": "SealBroker",
        "status": status,
    });
    Api::<SealBroker>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ready => "Ready",
        Outcome::AwaitingProvisioner(_) => "AwaitingProvisioner",
        Outcome::InvalidSpec(_) => "InvalidSpec",
        Outcome::NotOnboarded(_) => "NotOnboarded",
        Outcome::DeletionBlocked(_) => "DeletionBlocked",
    }
}

fn error_policy(sb: Arc<SealBroker>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %sb.name_any(), %error, "reconcile failed; retrying in 30s");
    Action::requeue(Duration::from_secs(30))
}

/// Runs the controller until `shutdown` completes.
/// How soon a Ready SealBroker is reconciled again: the bound on drift
/// repair and on noticing a finished key-creation Job, since the controller
/// watches nothing but SealBrokers.
pub const READY_RECHECK: Duration = Duration::from_secs(60);

pub async fn run_controller(
    client: Client,
    images: Arc<dyn ImageVerifier>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let context = Arc::new(Context {
        client: client.clone(),
        now: system_now,
        images,
    });
    // Only SealBrokers are watched. Watching what it owns would need
    // cluster-wide list/watch of ConfigMaps, NetworkPolicies, Jobs, Roles and
    // RoleBindings (RBAC cannot narrow a list by label), so instead every
    // reconcile requeues itself: drift is repaired and Jobs are followed
    // within READY_RECHECK, reading only named objects in onboarded namespaces.
    Controller::new(Api::<SealBroker>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// The provisioner: applies the broker's ServiceAccount, Role and RoleBinding
/// for one SealBroker, as its own field manager. Returns what it applied.
pub async fn provision(client: &Client, namespace: &str, name: &str) -> Result<Vec<String>, Error> {
    let sb = Api::<SealBroker>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    let problems = validate(&sb);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            name: name.into(),
            problems: describe(&problems),
        });
    }
    let mut applied = Vec::new();
    for object in desired::access_grant(&sb) {
        apply(client, namespace, &object, PROVISIONER_MANAGER).await?;
        applied.push(format!("{} {namespace}/{}", object.kind(), object.name()));
    }
    Ok(applied)
}
