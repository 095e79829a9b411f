//! The operator's calls to the Kubernetes API: server-side apply of desired
//! objects, the controller's reconcile, and the provisioner's one-shot grant.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::crd::SealBroker;
use crate::desired::{self, CONTROLLER_MANAGER, Desired, Names, PROVISIONER_MANAGER};
use crate::status::{Outcome, status_for};
use crate::validation::{describe, validate};

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
    Ok(Outcome::Ready)
}

/// One reconcile: render and apply the controller's objects, check the
/// provisioner's grant, write the status.
pub async fn reconcile(sb: Arc<SealBroker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = sb.name_any();
    let namespace = sb.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let problems = validate(&sb);
    let outcome = if problems.is_empty() {
        for object in desired::controller_objects(&sb) {
            apply(&ctx.client, &namespace, &object, CONTROLLER_MANAGER).await?;
        }
        check_grant(&ctx.client, &namespace, &sb).await?
    } else {
        Outcome::InvalidSpec(describe(&problems))
    };
    let status = status_for(&sb, &outcome, (ctx.now)());
    let patch = json!({
        "apiVersion": "sealbroker.io/v1alpha1",
        "kind": "SealBroker",
        "status": status,
    });
    Api::<SealBroker>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    tracing::info!(%namespace, %name, outcome = ?outcome_kind(&outcome), "reconciled");
    Ok(match outcome {
        Outcome::Ready => Action::requeue(Duration::from_secs(300)),
        Outcome::AwaitingProvisioner(_) => Action::requeue(Duration::from_secs(30)),
        Outcome::InvalidSpec(_) => Action::await_change(),
    })
}

fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ready => "Ready",
        Outcome::AwaitingProvisioner(_) => "AwaitingProvisioner",
        Outcome::InvalidSpec(_) => "InvalidSpec",
    }
}

fn error_policy(sb: Arc<SealBroker>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %sb.name_any(), %error, "reconcile failed; retrying in 30s");
    Action::requeue(Duration::from_secs(30))
}

/// Runs the controller until `shutdown` completes.
pub async fn run_controller(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={CONTROLLER_MANAGER}"));
    let context = Arc::new(Context {
        client: client.clone(),
        now: system_now,
    });
    Controller::new(Api::<SealBroker>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
        .owns(Api::<Role>::all(client.clone()), owned.clone())
        .owns(Api::<RoleBinding>::all(client), owned)
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
