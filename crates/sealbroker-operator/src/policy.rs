//! The ValidatingAdmissionPolicy that fences the sidecars' pod reports.
//!
//! A sidecar reports which key versions it can use in an annotation on its
//! own Pod ([`crate::rotation::REPORT_ANNOTATION`]), so the Pods'
//! ServiceAccount gets `get` and `patch` on Pods in the tenant namespace
//! (the provisioner's `<name>-broker-reports` Role). RBAC cannot say "only
//! this annotation" nor "only your own Pod", and `patch` on a Pod reaches
//! its container images. This policy says both, for every request a
//! ServiceAccount of a tenant namespace makes to change a Pod there:
//!
//! - the Pod runs under that ServiceAccount, and the request carries the
//!   token bound to that very Pod (its name and uid in the token's claims);
//! - nothing changes but the report annotation and, because OpenBao's
//!   Kubernetes service registration patches its own Pod with the same
//!   identity (a Pod has one), OpenBao's `openbao-*` registration labels.
//!
//! The policy is cluster-scoped and the same for every tenant, so it ships
//! with the operator (`deploy/base/operator/pod-report-policy.yaml`, printed
//! by `sealbroker-operator policy`), not per SealBroker.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec,
    Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::desired::CONTROLLER_MANAGER;
use crate::rotation::REPORT_ANNOTATION;

/// The policy's and its binding's name.
pub const POLICY_NAME: &str = "sealbroker-pod-reports";

/// The label that marks an onboarded tenant namespace (as the webhooks use it).
pub const TENANT_LABEL: (&str, &str) = ("sealbroker.io/tenant", "enabled");

/// The labels OpenBao's `service_registration "kubernetes"` keeps on its Pod.
pub const OPENBAO_REGISTRATION_LABELS: [&str; 5] = [
    "openbao-active",
    "openbao-initialized",
    "openbao-perf-standby",
    "openbao-sealed",
    "openbao-version",
];

fn variable(name: &str, expression: String) -> Variable {
    Variable {
        name: name.into(),
        expression,
    }
}

fn validation(expression: &str, message: String) -> Validation {
    Validation {
        expression: expression.into(),
        message: Some(message),
        reason: Some("Forbidden".into()),
        message_expression: None,
    }
}

fn or_empty(path: &str, empty: &str) -> String {
    let (parent, field) = path.rsplit_once('.').unwrap_or(("", path));
    format!("has({parent}.{field}) ? {path} : {empty}")
}

fn extra(claim: &str) -> String {
    format!(
        "has(request.userInfo.extra) && '{claim}' in request.userInfo.extra ? \
         request.userInfo.extra['{claim}'] : []"
    )
}

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".into(), CONTROLLER_MANAGER.into()),
            ("app.kubernetes.io/part-of".into(), "sealbroker".into()),
        ])),
        ..ObjectMeta::default()
    }
}

/// The policy: what a ServiceAccount of a tenant namespace may change on a Pod.
pub fn pod_report_policy() -> ValidatingAdmissionPolicy {
    let labels = OPENBAO_REGISTRATION_LABELS
        .iter()
        .map(|l| format!("'{l}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let only_changed = |old: &str, new: &str, allowed: &str| {
        format!(
            "variables.{new}.all(k, {allowed} || (k in variables.{old} && variables.{old}[k] == variables.{new}[k])) \
             && variables.{old}.all(k, {allowed} || k in variables.{new})"
        )
    };
    let annotations = only_changed("oldAnnotations", "newAnnotations", "k == variables.reportKey");
    let labels_ok = only_changed("oldLabels", "newLabels", "k in variables.registrationLabels");
    ValidatingAdmissionPolicy {
        metadata: metadata(POLICY_NAME),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    resources: Some(vec!["pods".into()]),
                    operations: Some(vec!["UPDATE".into()]),
                    ..NamedRuleWithOperations::default()
                }]),
                ..MatchResources::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "a-service-account-of-the-pods-namespace".into(),
                expression: "request.userInfo.username.startsWith('system:serviceaccount:' + request.namespace + ':')"
                    .into(),
            }]),
            variables: Some(vec![
                variable("reportKey", format!("'{REPORT_ANNOTATION}'")),
                variable("registrationLabels", format!("[{labels}]")),
                variable("oldAnnotations", or_empty("oldObject.metadata.annotations", "{}")),
                variable("newAnnotations", or_empty("object.metadata.annotations", "{}")),
                variable("oldLabels", or_empty("oldObject.metadata.labels", "{}")),
                variable("newLabels", or_empty("object.metadata.labels", "{}")),
                variable("podName", extra("authentication.kubernetes.io/pod-name")),
                variable("podUid", extra("authentication.kubernetes.io/pod-uid")),
            ]),
            validations: Some(vec![
                validation(
                    &format!(
                        "request.userInfo.username == 'system:serviceaccount:' + request.namespace + ':' + ({})",
                        or_empty("oldObject.spec.serviceAccountName", "'default'")
                    ),
                    "a ServiceAccount of this namespace may change only the Pods that run under it".into(),
                ),
                validation(
                    "variables.podName == [oldObject.metadata.name] && variables.podUid == [oldObject.metadata.uid]",
                    "a ServiceAccount of this namespace may change a Pod only with the token bound to that Pod"
                        .into(),
                ),
                validation(
                    "object.spec == oldObject.spec",
                    "a ServiceAccount of this namespace may not change a Pod's spec".into(),
                ),
                validation(
                    &annotations,
                    format!("a ServiceAccount of this namespace may change no Pod annotation but {REPORT_ANNOTATION}"),
                ),
                validation(
                    &labels_ok,
                    format!(
                        "a ServiceAccount of this namespace may change no Pod label but OpenBao's service \
                         registration labels ({})",
                        OPENBAO_REGISTRATION_LABELS.join(", ")
                    ),
                ),
                validation(
                    &format!(
                        "({}) == ({}) && ({}) == ({})",
                        or_empty("object.metadata.finalizers", "[]"),
                        or_empty("oldObject.metadata.finalizers", "[]"),
                        or_empty("object.metadata.ownerReferences", "[]"),
                        or_empty("oldObject.metadata.ownerReferences", "[]"),
                    ),
                    "a ServiceAccount of this namespace may not change a Pod's finalizers or owner references"
                        .into(),
                ),
            ]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// The binding: every onboarded tenant namespace, denying what fails.
pub fn pod_report_policy_binding() -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: metadata(POLICY_NAME),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(POLICY_NAME.into()),
            validation_actions: Some(vec!["Deny".into()]),
            match_resources: Some(MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        TENANT_LABEL.0.to_string(),
                        TENANT_LABEL.1.to_string(),
                    )])),
                    match_expressions: None,
                }),
                ..MatchResources::default()
            }),
            param_ref: None,
        }),
    }
}

/// Both objects as YAML, as `deploy/base/operator/pod-report-policy.yaml` holds them.
pub fn pod_report_policy_yaml() -> String {
    let header = "# Generated by `sealbroker-operator policy`; do not edit. The crate's golden\n\
                  # test fails when this file drifts from crates/sealbroker-operator/src/policy.rs.\n";
    let values = [
        serde_json::to_value(pod_report_policy()).unwrap_or_default(),
        serde_json::to_value(pod_report_policy_binding()).unwrap_or_default(),
    ];
    format!("{header}{}", crate::desired::yaml_documents(&values))
}
