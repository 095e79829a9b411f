//! Onboarding a tenant namespace: what a platform admin applies once per
//! namespace, for the SealBrokers it will hold, before any of them can be
//! provisioned. `sealbroker-operator onboard` prints it;
//! `deploy/base/openbao-example/onboarding.yaml` is that output.
//!
//! - The namespace's labels: `sealbroker.io/tenant: enabled` (the webhooks'
//!   scope) and Pod Security `restricted` for `enforce`, `warn` and `audit`,
//!   each pinned to a Kubernetes version so a cluster upgrade does not
//!   change the rules under the tenant.
//! - A default-deny NetworkPolicy for every Pod of the namespace, ingress and
//!   egress. The controller's per-SealBroker policies then open exactly
//!   what the served Pods and the key-creation Jobs need; the tenant adds
//!   its own for whatever else its Pods reach.
//! - The provisioner's and the controller's Roles in this namespace, with
//!   `resourceNames` set to the objects of the SealBrokers named here:
//!   `escalate` and `bind` only on those SealBrokers' Roles, `patch` only on
//!   their objects. RBAC cannot narrow `create` by name (the name is not
//!   known when it authorizes), nor the controller's key-creation Jobs,
//!   whose names carry the key and version; the admission policies
//!   (`tenant-policies.yaml`) fence those.
//!
//! Adding a SealBroker to an onboarded namespace is onboarding it again
//! with the longer list: the provisioner cannot grant itself the power.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::policy::{OPERATOR_NAMESPACE, TENANT_LABEL};

/// The Kubernetes minor version Pod Security's `restricted` level is pinned
/// to unless `--pod-security-version` says otherwise.
pub const POD_SECURITY_VERSION: &str = "v1.33";

/// The controller's and the provisioner's ServiceAccounts, in the
/// operator's namespace.
const CONTROLLER_ACCOUNT: &str = "sealbroker-operator";
const PROVISIONER_ACCOUNT: &str = "sealbroker-provisioner";

/// The names of the onboarding objects in the tenant namespace.
pub const PROVISIONER_ROLE: &str = "sealbroker-provisioner";
pub const CONTROLLER_ROLE: &str = "sealbroker-controller";
pub const DEFAULT_DENY: &str = "sealbroker-default-deny";

/// Why onboarding cannot be rendered.
#[derive(Debug, PartialEq, Eq)]
pub struct OnboardingError(pub String);

impl std::fmt::Display for OnboardingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: Option<Vec<String>>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| (*r).into()).collect()),
        verbs: verbs.iter().map(|v| (*v).into()).collect(),
        resource_names: names,
        ..PolicyRule::default()
    }
}

fn each(sealbrokers: &[String], suffixes: &[&str]) -> Option<Vec<String>> {
    Some(
        sealbrokers
            .iter()
            .flat_map(|sb| suffixes.iter().map(move |suffix| format!("{sb}{suffix}")))
            .collect(),
    )
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/part-of".into(),
            "sealbroker".into(),
        )])),
        ..ObjectMeta::default()
    }
}

fn binding(namespace: &str, role: &str, account: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(namespace, role),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account.into(),
            namespace: Some(OPERATOR_NAMESPACE.into()),
            ..Subject::default()
        }]),
    }
}

/// The provisioner's rules for `sealbrokers`: read them, write their
/// broker ServiceAccounts and the two Roles and RoleBindings each has, and
/// `escalate`/`bind` those Roles only.
pub fn provisioner_rules(sealbrokers: &[String]) -> Vec<PolicyRule> {
    let grant_roles = each(sealbrokers, &["-broker-secrets", "-broker-reports"]);
    vec![
        rule(
            "sealbroker.io",
            &["sealbrokers"],
            &["get"],
            Some(sealbrokers.to_vec()),
        ),
        rule("", &["serviceaccounts"], &["create"], None),
        rule(
            "",
            &["serviceaccounts"],
            &["get", "patch"],
            each(sealbrokers, &["-broker"]),
        ),
        rule(
            "rbac.authorization.k8s.io",
            &["roles", "rolebindings"],
            &["create"],
            None,
        ),
        rule(
            "rbac.authorization.k8s.io",
            &["roles", "rolebindings"],
            &["get", "patch"],
            grant_roles.clone(),
        ),
        rule(
            "rbac.authorization.k8s.io",
            &["roles"],
            &["escalate", "bind"],
            grant_roles,
        ),
    ]
}

/// The controller's rules in the tenant namespace for `sealbrokers`.
pub fn controller_rules(sealbrokers: &[String]) -> Vec<PolicyRule> {
    vec![
        rule("", &["configmaps"], &["create"], None),
        rule(
            "",
            &["configmaps"],
            &["get", "patch"],
            each(sealbrokers, &["-broker-config", "-openbao-seal"]),
        ),
        rule("networking.k8s.io", &["networkpolicies"], &["create"], None),
        rule(
            "networking.k8s.io",
            &["networkpolicies"],
            &["get", "patch"],
            each(sealbrokers, &["-sealbroker", "-sealbroker-keygen"]),
        ),
        // Read-only: the provisioner's grant, to report AwaitingProvisioner.
        rule(
            "",
            &["serviceaccounts"],
            &["get"],
            each(sealbrokers, &["-broker"]),
        ),
        rule(
            "rbac.authorization.k8s.io",
            &["roles", "rolebindings"],
            &["get"],
            each(sealbrokers, &["-broker-secrets", "-broker-reports"]),
        ),
        // Key rotation: the key-creation Jobs (named for key and version;
        // fenced by sealbroker-controller-scope), and the served Pods'
        // reports, read from the Pods.
        rule("batch", &["jobs"], &["get", "create", "delete"], None),
        rule("", &["pods"], &["list"], None),
        // Events on the SealBroker for every decision.
        rule("events.k8s.io", &["events"], &["create", "patch"], None),
    ]
}

/// Checks a Kubernetes object name (RFC 1123 label: what a namespace and,
/// for our derived names, a SealBroker must be).
fn check_name(what: &str, name: &str) -> Result<(), OnboardingError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(OnboardingError(format!(
            "{what} {name:?} is not a valid name (lowercase letters, digits and '-', at most 63)"
        )))
    }
}

/// Every object onboarding applies, in apply order.
pub fn onboarding(
    namespace: &str,
    sealbrokers: &[String],
    pod_security_version: &str,
) -> Result<Vec<serde_json::Value>, OnboardingError> {
    check_name("the namespace", namespace)?;
    if sealbrokers.is_empty() {
        return Err(OnboardingError(
            "name at least one SealBroker: the grants are scoped to the SealBrokers the namespace will hold"
                .into(),
        ));
    }
    for sb in sealbrokers {
        check_name("SealBroker", sb)?;
    }
    if !pod_security_version.starts_with("v1.") && pod_security_version != "latest" {
        return Err(OnboardingError(format!(
            "--pod-security-version {pod_security_version:?}: give a Kubernetes minor version such as \
             {POD_SECURITY_VERSION} (\"latest\" follows the cluster, which a pin exists to avoid)"
        )));
    }
    let mut sealbrokers = sealbrokers.to_vec();
    sealbrokers.sort();
    sealbrokers.dedup();
    let mut labels = BTreeMap::from([(TENANT_LABEL.0.to_owned(), TENANT_LABEL.1.to_owned())]);
    for mode in ["enforce", "warn", "audit"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), "restricted".into());
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            pod_security_version.into(),
        );
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let deny = NetworkPolicy {
        metadata: meta(namespace, DEFAULT_DENY),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    };
    let provisioner = Role {
        metadata: meta(namespace, PROVISIONER_ROLE),
        rules: Some(provisioner_rules(&sealbrokers)),
    };
    let controller = Role {
        metadata: meta(namespace, CONTROLLER_ROLE),
        rules: Some(controller_rules(&sealbrokers)),
    };
    let values = [
        serde_json::to_value(ns),
        serde_json::to_value(deny),
        serde_json::to_value(provisioner),
        serde_json::to_value(binding(namespace, PROVISIONER_ROLE, PROVISIONER_ACCOUNT)),
        serde_json::to_value(controller),
        serde_json::to_value(binding(namespace, CONTROLLER_ROLE, CONTROLLER_ACCOUNT)),
    ];
    values
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OnboardingError(e.to_string()))
}

/// [`onboarding`] as YAML documents, with a header saying how it was made.
pub fn onboarding_yaml(
    namespace: &str,
    sealbrokers: &[String],
    pod_security_version: &str,
) -> Result<String, OnboardingError> {
    let values = onboarding(namespace, sealbrokers, pod_security_version)?;
    let mut list = sealbrokers.to_vec();
    list.sort();
    list.dedup();
    let header = format!(
        "# Onboarding of namespace {namespace} for SealBroker(s) {}: a platform admin applies this once,\n\
         # and again with the longer list to add a SealBroker. Generated by\n\
         # `sealbroker-operator onboard --namespace {namespace} {}`; do not edit (docs/operator.md).\n",
        list.join(", "),
        list.join(" ")
    );
    Ok(format!("{header}{}", crate::desired::yaml_documents(&values)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn escalate_bind_and_patch_name_exactly_the_sealbrokers_objects() {
        let rules = provisioner_rules(&names(&["a", "b"]));
        let escalate = rules
            .iter()
            .find(|r| r.verbs.contains(&"escalate".into()))
            .unwrap();
        assert_eq!(escalate.verbs, vec!["escalate", "bind"]);
        assert_eq!(
            escalate.resource_names.as_deref().unwrap(),
            [
                "a-broker-secrets",
                "a-broker-reports",
                "b-broker-secrets",
                "b-broker-reports"
            ]
        );
        // Every verb but create carries resourceNames.
        for rules in [
            provisioner_rules(&names(&["a"])),
            controller_rules(&names(&["a"])),
        ] {
            for r in rules {
                let unnamed_ok = r.verbs.iter().all(|v| v == "create")
                    || r.resources.as_deref() == Some(&["jobs".to_owned()][..])
                    || r.resources.as_deref() == Some(&["pods".to_owned()][..])
                    || r.resources.as_deref() == Some(&["events".to_owned()][..]);
                assert!(r.resource_names.is_some() || unnamed_ok, "{r:?}");
                assert!(!r.verbs.iter().any(|v| v == "*" || v == "watch"), "{r:?}");
            }
        }
    }

    #[test]
    fn the_namespace_is_labelled_and_pod_security_is_pinned() {
        let objects = onboarding("t1", &names(&["sb"]), "v1.31").unwrap();
        let labels = &objects[0]["metadata"]["labels"];
        assert_eq!(labels[TENANT_LABEL.0], TENANT_LABEL.1);
        for mode in ["enforce", "warn", "audit"] {
            assert_eq!(labels[format!("pod-security.kubernetes.io/{mode}")], "restricted");
            assert_eq!(
                labels[format!("pod-security.kubernetes.io/{mode}-version")],
                "v1.31"
            );
        }
        let deny = &objects[1];
        assert_eq!(deny["kind"], "NetworkPolicy");
        assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
        assert_eq!(
            deny["spec"]["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());
        let kinds: Vec<_> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "NetworkPolicy",
                "Role",
                "RoleBinding",
                "Role",
                "RoleBinding"
            ]
        );
        assert_eq!(objects[3]["subjects"][0]["namespace"], OPERATOR_NAMESPACE);
    }

    #[test]
    fn bad_input_is_refused_naming_what() {
        let e = onboarding("T1", &names(&["sb"]), POD_SECURITY_VERSION).unwrap_err();
        assert!(e.0.contains("the namespace \"T1\""), "{e}");
        let e = onboarding("t1", &[], POD_SECURITY_VERSION).unwrap_err();
        assert!(e.0.contains("at least one SealBroker"), "{e}");
        let e = onboarding("t1", &names(&["sb_1"]), POD_SECURITY_VERSION).unwrap_err();
        assert!(e.0.contains("SealBroker \"sb_1\""), "{e}");
        let e = onboarding("t1", &names(&["sb"]), "1.31").unwrap_err();
        assert!(e.0.contains("--pod-security-version"), "{e}");
    }
}
