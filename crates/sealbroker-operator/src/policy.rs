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

/// The operator's namespace, as `deploy/base/operator` installs it.
pub const OPERATOR_NAMESPACE: &str = "sealbroker-system";
/// The controller's identity (the Deployment's ServiceAccount).
pub const CONTROLLER_USER: &str = "system:serviceaccount:sealbroker-system:sealbroker-operator";
/// The provisioner's identity.
pub const PROVISIONER_USER: &str = "system:serviceaccount:sealbroker-system:sealbroker-provisioner";
/// People (or automation) allowed to change an onboarded namespace's
/// tenant and Pod Security labels, besides `system:masters`.
pub const PLATFORM_ADMIN_GROUP: &str = "sealbroker.io:platform-admins";

/// The three tenant-isolation policies' names.
pub const PROVISIONER_POLICY: &str = "sealbroker-provisioner-grants";
pub const CONTROLLER_POLICY: &str = "sealbroker-controller-scope";
pub const TENANT_LABELS_POLICY: &str = "sealbroker-tenant-labels";

fn rule(group: &str, resources: &[&str], operations: &[&str]) -> NamedRuleWithOperations {
    NamedRuleWithOperations {
        api_groups: Some(vec![group.into()]),
        api_versions: Some(vec!["v1".into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        operations: Some(operations.iter().map(|o| o.to_string()).collect()),
        ..NamedRuleWithOperations::default()
    }
}

fn condition(name: &str, expression: String) -> MatchCondition {
    MatchCondition {
        name: name.into(),
        expression,
    }
}

fn policy(
    name: &str,
    rules: Vec<NamedRuleWithOperations>,
    conditions: Vec<MatchCondition>,
    variables: Vec<Variable>,
    validations: Vec<Validation>,
) -> ValidatingAdmissionPolicy {
    ValidatingAdmissionPolicy {
        metadata: metadata(name),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(rules),
                ..MatchResources::default()
            }),
            match_conditions: Some(conditions),
            variables: Some(variables),
            validations: Some(validations),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// `'key' in map && map['key'] == value`, for a label map variable.
fn label_is(map: &str, key: &str, value: &str) -> String {
    format!("'{key}' in {map} && {map}['{key}'] == {value}")
}

/// What the provisioner may write: ServiceAccount `<name>-broker`, Role and
/// RoleBinding `<name>-broker-secrets` (exactly `get` on named Secrets,
/// bound to exactly that ServiceAccount) and `<name>-broker-reports`
/// (`pods: get, patch`, bound to one ServiceAccount of the namespace),
/// `<name>` being the object's `sealbroker.io/name` label. Its `escalate`
/// and `bind` cannot reach anything else: no other Role, no ClusterRole
/// binding, no wildcard, no Secret without a name.
pub fn provisioner_policy() -> ValidatingAdmissionPolicy {
    let owner_label = "sealbroker.io/name";
    policy(
        PROVISIONER_POLICY,
        vec![
            rule(
                "rbac.authorization.k8s.io",
                &["roles", "rolebindings"],
                &["CREATE", "UPDATE"],
            ),
            rule("", &["serviceaccounts"], &["CREATE", "UPDATE"]),
        ],
        vec![condition(
            "the-provisioner",
            format!("request.userInfo.username == '{PROVISIONER_USER}'"),
        )],
        vec![
            variable("labels", or_empty("object.metadata.labels", "{}")),
            variable(
                "owner",
                format!("'{owner_label}' in variables.labels ? variables.labels['{owner_label}'] : ''"),
            ),
            variable("kind", "request.resource.resource".into()),
            variable("secretsName", "variables.owner + '-broker-secrets'".into()),
            variable("reportsName", "variables.owner + '-broker-reports'".into()),
            variable("rules", "has(object.rules) ? object.rules : []".into()),
            variable("subjects", "has(object.subjects) ? object.subjects : []".into()),
        ],
        vec![
            validation(
                "variables.owner != ''",
                format!(
                    "the provisioner writes only objects labelled {owner_label} with their SealBroker's name"
                ),
            ),
            validation(
                "variables.kind == 'serviceaccounts' ? object.metadata.name == variables.owner + '-broker' \
                 : (object.metadata.name == variables.secretsName || object.metadata.name == variables.reportsName)",
                "the provisioner writes only ServiceAccount <name>-broker and Roles and RoleBindings \
                 <name>-broker-secrets and <name>-broker-reports"
                    .into(),
            ),
            validation(
                "variables.kind != 'roles' || object.metadata.name != variables.secretsName || \
                 variables.rules.all(r, has(r.verbs) && r.verbs == ['get'] \
                 && has(r.apiGroups) && r.apiGroups == [''] \
                 && has(r.resources) && r.resources == ['secrets'] \
                 && has(r.resourceNames) && size(r.resourceNames) > 0 \
                 && !has(r.nonResourceURLs))",
                "Role <name>-broker-secrets may grant only `get` on Secrets named in resourceNames".into(),
            ),
            validation(
                "variables.kind != 'roles' || object.metadata.name != variables.reportsName || \
                 (size(variables.rules) == 1 && variables.rules.all(r, has(r.verbs) && r.verbs == ['get', 'patch'] \
                 && has(r.apiGroups) && r.apiGroups == [''] \
                 && has(r.resources) && r.resources == ['pods'] \
                 && !has(r.resourceNames) && !has(r.nonResourceURLs)))",
                "Role <name>-broker-reports may grant only `get` and `patch` on Pods".into(),
            ),
            validation(
                "variables.kind != 'rolebindings' || (object.roleRef.kind == 'Role' \
                 && object.roleRef.apiGroup == 'rbac.authorization.k8s.io' \
                 && object.roleRef.name == object.metadata.name)",
                "a provisioner RoleBinding binds only the Role of its own name, never a ClusterRole".into(),
            ),
            validation(
                "variables.kind != 'rolebindings' || object.metadata.name != variables.secretsName || \
                 (size(variables.subjects) == 1 && variables.subjects.all(s, s.kind == 'ServiceAccount' \
                 && s.name == variables.owner + '-broker' \
                 && has(s.__namespace__) && s.__namespace__ == request.namespace))",
                "RoleBinding <name>-broker-secrets binds exactly the broker's ServiceAccount <name>-broker \
                 of this namespace"
                    .into(),
            ),
            validation(
                "variables.kind != 'rolebindings' || object.metadata.name != variables.reportsName || \
                 (size(variables.subjects) == 1 && variables.subjects.all(s, s.kind == 'ServiceAccount' \
                 && has(s.__namespace__) && s.__namespace__ == request.namespace))",
                "RoleBinding <name>-broker-reports binds exactly one ServiceAccount of this namespace".into(),
            ),
        ],
    )
}

/// What the controller may touch: ConfigMaps `<name>-broker-config` and
/// `<name>-openbao-seal`, NetworkPolicies `<name>-sealbroker` and
/// `<name>-sealbroker-keygen`, and Jobs
/// `<name>-keygen-*`, each labelled `app.kubernetes.io/managed-by:
/// sealbroker-operator` and `sealbroker.io/name: <name>` before and after
/// (no taking an object over by labelling it). A Job it creates runs
/// `sealbroker keygen` alone, under `<name>-broker` with no API token: the
/// power to create Jobs is the power to mount Secrets, and this is its fence.
pub fn controller_policy() -> ValidatingAdmissionPolicy {
    let managed = |map: &str| {
        format!(
            "{} && 'sealbroker.io/name' in {map} && {map}['sealbroker.io/name'] == variables.owner",
            label_is(
                map,
                "app.kubernetes.io/managed-by",
                &format!("'{CONTROLLER_MANAGER}'")
            )
        )
    };
    policy(
        CONTROLLER_POLICY,
        vec![
            rule("", &["configmaps"], &["CREATE", "UPDATE", "DELETE"]),
            rule(
                "networking.k8s.io",
                &["networkpolicies"],
                &["CREATE", "UPDATE", "DELETE"],
            ),
            rule("batch", &["jobs"], &["CREATE", "UPDATE", "DELETE"]),
        ],
        vec![condition(
            "the-controller",
            format!("request.userInfo.username == '{CONTROLLER_USER}'"),
        )],
        vec![
            variable(
                "target",
                "request.operation == 'DELETE' ? oldObject : object".into(),
            ),
            variable("labels", or_empty("variables.target.metadata.labels", "{}")),
            variable(
                "owner",
                "'sealbroker.io/name' in variables.labels ? variables.labels['sealbroker.io/name'] : ''"
                    .into(),
            ),
            variable("kind", "request.resource.resource".into()),
            variable("name", "variables.target.metadata.name".into()),
        ],
        vec![
            validation(
                &format!("variables.owner != '' && {}", managed("variables.labels")),
                format!(
                    "the controller touches only objects labelled app.kubernetes.io/managed-by: \
                     {CONTROLLER_MANAGER} and sealbroker.io/name"
                ),
            ),
            validation(
                &format!(
                    "request.operation != 'UPDATE' || (has(oldObject.metadata.labels) && {})",
                    managed("oldObject.metadata.labels")
                ),
                "the controller may not take an object over by labelling it: it must have been its own"
                    .into(),
            ),
            validation(
                "variables.kind == 'configmaps' ? (variables.name == variables.owner + '-broker-config' \
                 || variables.name == variables.owner + '-openbao-seal') \
                 : variables.kind == 'networkpolicies' ? (variables.name == variables.owner + '-sealbroker' \
                   || variables.name == variables.owner + '-sealbroker-keygen') \
                 : variables.name.startsWith(variables.owner + '-keygen-')",
                "the controller touches only <name>-broker-config, <name>-openbao-seal, <name>-sealbroker, \
                 <name>-sealbroker-keygen and <name>-keygen-* of its SealBroker <name>"
                    .into(),
            ),
            validation(
                "variables.kind != 'jobs' || request.operation == 'DELETE' || \
                 (object.spec.template.spec.serviceAccountName == variables.owner + '-broker' \
                 && has(object.spec.template.spec.automountServiceAccountToken) \
                 && object.spec.template.spec.automountServiceAccountToken == false \
                 && !has(object.spec.template.spec.initContainers) \
                 && !has(object.spec.template.spec.ephemeralContainers) \
                 && size(object.spec.template.spec.containers) == 1 \
                 && object.spec.template.spec.containers.all(c, has(c.command) \
                    && c.command == ['/usr/local/bin/sealbroker'] \
                    && has(c.args) && size(c.args) > 0 && c.args[0] == 'keygen'))",
                "a controller Job runs `sealbroker keygen` alone, under <name>-broker without an API token"
                    .into(),
            ),
        ],
    )
}

/// Onboarding's labels stay: a tenant (anyone but `system:masters` and
/// [`PLATFORM_ADMIN_GROUP`]) may not remove or change the tenant label or a
/// Pod Security label of an onboarded namespace, which would take it out of
/// the webhooks' scope or out of the Restricted profile.
pub fn tenant_labels_policy() -> ValidatingAdmissionPolicy {
    let (key, _) = TENANT_LABEL;
    policy(
        TENANT_LABELS_POLICY,
        vec![rule("", &["namespaces"], &["UPDATE"])],
        vec![
            condition(
                "an-onboarded-namespace",
                format!("has(oldObject.metadata.labels) && '{key}' in oldObject.metadata.labels"),
            ),
            condition(
                "not-a-platform-admin",
                format!(
                    "!('system:masters' in request.userInfo.groups) && \
                     !('{PLATFORM_ADMIN_GROUP}' in request.userInfo.groups)"
                ),
            ),
        ],
        vec![
            variable("oldLabels", "oldObject.metadata.labels".into()),
            variable("newLabels", or_empty("object.metadata.labels", "{}")),
        ],
        vec![validation(
            &format!(
                "variables.oldLabels.all(k, !(k == '{key}' || k.startsWith('pod-security.kubernetes.io/')) \
                 || (k in variables.newLabels && variables.newLabels[k] == variables.oldLabels[k]))"
            ),
            format!(
                "only a platform admin may remove or change {key} or a pod-security.kubernetes.io/ label \
                 of an onboarded namespace"
            ),
        )],
    )
}

/// A binding for every namespace, denying what fails.
fn binding(name: &str) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: metadata(name),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(name.into()),
            validation_actions: Some(vec!["Deny".into()]),
            match_resources: None,
            param_ref: None,
        }),
    }
}

/// The tenant-isolation policies with their bindings, as
/// `deploy/base/operator/tenant-policies.yaml` holds them.
pub fn tenant_policies_yaml() -> String {
    let header = "# Generated by `sealbroker-operator policy tenant-isolation`; do not edit. The crate's\n\
                  # golden test fails when this file drifts from crates/sealbroker-operator/src/policy.rs.\n";
    let mut values = Vec::new();
    for policy in [provisioner_policy(), controller_policy(), tenant_labels_policy()] {
        let name = policy.metadata.name.clone().unwrap_or_default();
        values.push(serde_json::to_value(policy).unwrap_or_default());
        values.push(serde_json::to_value(binding(&name)).unwrap_or_default());
    }
    format!("{header}{}", crate::desired::yaml_documents(&values))
}
