//! The tenant-isolation ValidatingAdmissionPolicies' CEL (provisioner
//! grants, controller scope, onboarded namespaces' labels), evaluated with a
//! CEL interpreter against allowed and denied `admission.k8s.io/v1`
//! requests, the way the apiserver runs them: the match constraints and
//! match conditions choose the requests a policy judges, the variables are
//! bound in order under `variables`, and every validation must be `true`
//! (an evaluation error denies: failurePolicy Fail). Object fields named
//! like a CEL reserved word are escaped as the apiserver escapes them
//! (`namespace` is `__namespace__`). No apiserver is involved; its type
//! checking and cost limits are not tested here.

use std::collections::HashMap;

use cel::{Context, Program, Value as CelValue};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use sealbroker_operator::policy::{
    CONTROLLER_USER, PROVISIONER_USER, controller_policy, provisioner_policy, tenant_labels_policy,
};
use serde_json::{Value, json};

#[derive(Debug, PartialEq)]
enum Verdict {
    Allowed,
    NotJudged,
    Denied(String),
}
use Verdict::*;

/// Renames keys that are CEL reserved words, as the apiserver does for
/// schema-typed objects.
fn escape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let k = if k == "namespace" {
                        "__namespace__".to_string()
                    } else {
                        k.clone()
                    };
                    (k, escape(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(escape).collect()),
        other => other.clone(),
    }
}

fn judge(policy: &ValidatingAdmissionPolicy, request: &Value) -> Verdict {
    let spec = policy.spec.clone().unwrap();
    let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
    let resource = request["resource"]["resource"].as_str().unwrap();
    let group = request["resource"]["group"].as_str().unwrap();
    let matched = rules.iter().any(|r| {
        r.operations
            .iter()
            .flatten()
            .any(|o| o == request["operation"].as_str().unwrap())
            && r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|res| res == resource)
            && request["subResource"].is_null()
    });
    if !matched {
        return NotJudged;
    }
    let mut context = Context::default();
    context.add_variable_from_value("request", cel::to_value(request).unwrap());
    context.add_variable_from_value("object", cel::to_value(escape(&request["object"])).unwrap());
    context.add_variable_from_value("oldObject", cel::to_value(escape(&request["oldObject"])).unwrap());
    let run = |context: &Context, expression: &str| -> Result<CelValue, String> {
        let program = Program::compile(expression).map_err(|e| format!("{expression}: {e}"))?;
        program.execute(context).map_err(|e| format!("{expression}: {e}"))
    };
    for condition in spec.match_conditions.unwrap_or_default() {
        match run(&context, &condition.expression) {
            Ok(CelValue::Bool(true)) => {}
            Ok(_) => return NotJudged,
            Err(e) => return Denied(format!("match condition error: {e}")),
        }
    }
    let mut variables: HashMap<String, CelValue> = HashMap::new();
    for variable in spec.variables.unwrap_or_default() {
        context.add_variable_from_value("variables", variables.clone());
        match run(&context, &variable.expression) {
            Ok(value) => {
                variables.insert(variable.name, value);
            }
            Err(e) => return Denied(format!("variable error: {e}")),
        }
    }
    context.add_variable_from_value("variables", variables);
    for validation in spec.validations.unwrap_or_default() {
        match run(&context, &validation.expression) {
            Ok(CelValue::Bool(true)) => {}
            Ok(_) => return Denied(validation.message.unwrap_or_default()),
            Err(e) => return Denied(format!("evaluation error: {e}")),
        }
    }
    Allowed
}

fn denied(verdict: Verdict, words: &str) {
    match verdict {
        Denied(message) => assert!(message.contains(words), "{message:?} lacks {words:?}"),
        other => panic!("expected a denial containing {words:?}, got {other:?}"),
    }
}

fn request(user: &str, operation: &str, group: &str, resource: &str, object: Value, old: Value) -> Value {
    json!({
        "uid": "0f0e0d0c-0000-4000-8000-000000000001",
        "kind": {"group": group, "version": "v1", "kind": "X"},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "name": if object.is_null() { old["metadata"]["name"].clone() } else { object["metadata"]["name"].clone() },
        "namespace": "openbao",
        "operation": operation,
        "userInfo": {"username": user, "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": object,
        "oldObject": old,
    })
}

/// The provisioner's objects for SealBroker `openbao`, as `access_grant` makes them.
fn grant() -> Vec<Value> {
    let text = include_str!("golden/hardened.input.yaml");
    let sb = sealbroker_operator::parse_sealbroker(text).unwrap();
    sealbroker_operator::desired::access_grant(&sb)
        .iter()
        .map(|d| d.to_value())
        .collect()
}

fn grant_object(kind: &str, name: &str) -> Value {
    grant()
        .into_iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn by_provisioner(operation: &str, object: Value) -> Value {
    let (group, resource) = match object["kind"].as_str().unwrap() {
        "Role" => ("rbac.authorization.k8s.io", "roles"),
        "RoleBinding" => ("rbac.authorization.k8s.io", "rolebindings"),
        "ServiceAccount" => ("", "serviceaccounts"),
        other => panic!("{other}"),
    };
    let old = if operation == "UPDATE" {
        object.clone()
    } else {
        Value::Null
    };
    request(PROVISIONER_USER, operation, group, resource, object, old)
}

fn provisioner(object: Value) -> Verdict {
    judge(&provisioner_policy(), &by_provisioner("CREATE", object))
}

// ---- the provisioner ----

#[test]
fn provisioner_may_write_exactly_what_access_grant_makes() {
    for object in grant() {
        assert_eq!(provisioner(object.clone()), Allowed, "{object}");
        assert_eq!(
            judge(&provisioner_policy(), &by_provisioner("UPDATE", object.clone())),
            Allowed,
            "{object}"
        );
    }
}

#[test]
fn provisioner_may_not_grant_secrets_without_names() {
    let mut role = grant_object("Role", "openbao-broker-secrets");
    role["rules"][0].as_object_mut().unwrap().remove("resourceNames");
    denied(
        provisioner(role.clone()),
        "only `get` on Secrets named in resourceNames",
    );
    role["rules"][0]["resourceNames"] = json!([]);
    denied(provisioner(role), "only `get` on Secrets named in resourceNames");
}

#[test]
fn provisioner_may_not_grant_list_watch_or_wildcards() {
    for verbs in [
        json!(["get", "list"]),
        json!(["watch"]),
        json!(["*"]),
        json!(["get", "update"]),
    ] {
        let mut role = grant_object("Role", "openbao-broker-secrets");
        role["rules"][0]["verbs"] = verbs.clone();
        denied(provisioner(role), "only `get` on Secrets");
    }
    let mut role = grant_object("Role", "openbao-broker-secrets");
    role["rules"][0]["resources"] = json!(["*"]);
    denied(provisioner(role), "only `get` on Secrets");
    let mut role = grant_object("Role", "openbao-broker-secrets");
    role["rules"][0]["apiGroups"] = json!(["*"]);
    denied(provisioner(role), "only `get` on Secrets");
}

#[test]
fn provisioner_may_not_smuggle_a_second_rule_into_the_secrets_role() {
    let mut role = grant_object("Role", "openbao-broker-secrets");
    role["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate", "bind"]}));
    denied(provisioner(role), "only `get` on Secrets");
}

#[test]
fn provisioner_may_not_broaden_the_reports_role() {
    let mut role = grant_object("Role", "openbao-broker-reports");
    role["rules"][0]["resources"] = json!(["pods", "secrets"]);
    denied(provisioner(role), "only `get` and `patch` on Pods");
    let mut role = grant_object("Role", "openbao-broker-reports");
    role["rules"][0]["verbs"] = json!(["get", "patch", "delete"]);
    denied(provisioner(role), "only `get` and `patch` on Pods");
    let mut role = grant_object("Role", "openbao-broker-reports");
    let copy = role["rules"][0].clone();
    role["rules"].as_array_mut().unwrap().push(copy);
    denied(provisioner(role), "only `get` and `patch` on Pods");
}

#[test]
fn provisioner_may_not_write_a_role_of_another_name() {
    let mut role = grant_object("Role", "openbao-broker-secrets");
    role["metadata"]["name"] = json!("tenant-admin");
    denied(provisioner(role), "writes only ServiceAccount <name>-broker");
    // Nor one named for another SealBroker than its label says.
    let mut role = grant_object("Role", "openbao-broker-secrets");
    role["metadata"]["name"] = json!("other-broker-secrets");
    denied(provisioner(role), "writes only ServiceAccount <name>-broker");
}

#[test]
fn provisioner_may_not_write_an_unlabelled_object() {
    let mut role = grant_object("Role", "openbao-broker-secrets");
    role["metadata"].as_object_mut().unwrap().remove("labels");
    denied(provisioner(role), "labelled sealbroker.io/name");
}

#[test]
fn provisioner_may_not_bind_a_cluster_role() {
    let mut binding = grant_object("RoleBinding", "openbao-broker-secrets");
    binding["roleRef"] =
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"});
    denied(provisioner(binding), "never a ClusterRole");
    // Nor a Role of another name (say, one a tenant made).
    let mut binding = grant_object("RoleBinding", "openbao-broker-secrets");
    binding["roleRef"]["name"] = json!("openbao-broker-reports");
    denied(provisioner(binding), "binds only the Role of its own name");
}

#[test]
fn provisioner_may_bind_the_secrets_role_to_the_broker_service_account_only() {
    for subject in [
        json!({"kind": "ServiceAccount", "name": "openbao", "namespace": "openbao"}),
        json!({"kind": "ServiceAccount", "name": "openbao-broker", "namespace": "other-tenant"}),
        json!({"kind": "User", "name": "openbao-broker"}),
        json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}),
        json!({"kind": "ServiceAccount", "name": "openbao-broker"}),
    ] {
        let mut binding = grant_object("RoleBinding", "openbao-broker-secrets");
        binding["subjects"] = json!([subject]);
        denied(provisioner(binding), "binds exactly the broker's ServiceAccount");
    }
    let mut binding = grant_object("RoleBinding", "openbao-broker-secrets");
    let extra = json!({"kind": "ServiceAccount", "name": "default", "namespace": "openbao"});
    binding["subjects"].as_array_mut().unwrap().push(extra);
    denied(provisioner(binding), "binds exactly the broker's ServiceAccount");
}

#[test]
fn provisioner_may_bind_the_reports_role_to_one_local_service_account() {
    let mut binding = grant_object("RoleBinding", "openbao-broker-reports");
    binding["subjects"] =
        json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:serviceaccounts"}]);
    denied(
        provisioner(binding),
        "exactly one ServiceAccount of this namespace",
    );
    let mut binding = grant_object("RoleBinding", "openbao-broker-reports");
    binding["subjects"][0]["namespace"] = json!("kube-system");
    denied(
        provisioner(binding),
        "exactly one ServiceAccount of this namespace",
    );
}

#[test]
fn provisioner_service_account_is_named_for_its_broker() {
    let mut account = grant_object("ServiceAccount", "openbao-broker");
    account["metadata"]["name"] = json!("default");
    denied(provisioner(account), "writes only ServiceAccount <name>-broker");
}

#[test]
fn others_are_not_judged_by_the_provisioner_policy() {
    let mut role = grant_object("Role", "openbao-broker-secrets");
    role["metadata"]["name"] = json!("anything");
    let mut req = by_provisioner("CREATE", role);
    req["userInfo"]["username"] = json!("alice@example.com");
    assert_eq!(judge(&provisioner_policy(), &req), NotJudged);
}

// ---- the controller ----

fn controller_objects() -> Vec<(Value, &'static str, &'static str)> {
    let text = include_str!("golden/hardened.input.yaml");
    let sb = sealbroker_operator::parse_sealbroker(text).unwrap();
    let mut out: Vec<(Value, &str, &str)> = sealbroker_operator::desired::controller_objects(&sb)
        .iter()
        .map(|d| {
            let v = d.to_value();
            let (g, r) = match v["kind"].as_str().unwrap() {
                "ConfigMap" => ("", "configmaps"),
                "NetworkPolicy" => ("networking.k8s.io", "networkpolicies"),
                other => panic!("{other}"),
            };
            (v, g, r)
        })
        .collect();
    let job = sealbroker_operator::desired::keygen_job(&sb, "openbao-unseal", 2, 1);
    out.push((serde_json::to_value(job).unwrap(), "batch", "jobs"));
    out
}

fn keygen_job() -> Value {
    controller_objects().pop().unwrap().0
}

fn controller(operation: &str, resource: (&str, &str), object: Value, old: Value) -> Verdict {
    judge(
        &controller_policy(),
        &request(CONTROLLER_USER, operation, resource.0, resource.1, object, old),
    )
}

#[test]
fn controller_may_create_update_and_delete_its_own_objects() {
    for (object, group, resource) in controller_objects() {
        assert_eq!(
            controller("CREATE", (group, resource), object.clone(), Value::Null),
            Allowed,
            "{object}"
        );
        assert_eq!(
            controller("UPDATE", (group, resource), object.clone(), object.clone()),
            Allowed,
            "{object}"
        );
        assert_eq!(
            controller("DELETE", (group, resource), Value::Null, object.clone()),
            Allowed,
            "{object}"
        );
    }
}

#[test]
fn controller_may_not_touch_an_unmanaged_config_map() {
    let foreign = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "openbao-config", "namespace": "openbao"}, "data": {"config.hcl": "x"}});
    denied(
        controller("UPDATE", ("", "configmaps"), foreign.clone(), foreign.clone()),
        "only objects labelled app.kubernetes.io/managed-by",
    );
    denied(
        controller("DELETE", ("", "configmaps"), Value::Null, foreign),
        "only objects labelled app.kubernetes.io/managed-by",
    );
}

#[test]
fn controller_may_not_take_an_object_over_by_labelling_it() {
    let (mine, _, _) = controller_objects().into_iter().next().unwrap();
    let mut before = mine.clone();
    before["metadata"].as_object_mut().unwrap().remove("labels");
    denied(
        controller("UPDATE", ("", "configmaps"), mine, before),
        "may not take an object over by labelling it",
    );
}

#[test]
fn controller_may_not_patch_a_tenant_network_policy() {
    let tenant = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all", "namespace": "openbao"},
        "spec": {"podSelector": {}, "ingress": [{}]}});
    denied(
        controller(
            "UPDATE",
            ("networking.k8s.io", "networkpolicies"),
            tenant.clone(),
            tenant,
        ),
        "only objects labelled",
    );
}

#[test]
fn controller_labels_do_not_reach_objects_of_other_names() {
    let (mut object, _, _) = controller_objects().into_iter().next().unwrap();
    object["metadata"]["name"] = json!("kube-root-ca.crt");
    denied(
        controller("CREATE", ("", "configmaps"), object, Value::Null),
        "touches only <name>-broker-config",
    );
    // The two NetworkPolicies are named exactly; a third of its own is not.
    let (mut policy, group, resource) = controller_objects()
        .into_iter()
        .find(|(v, _, _)| v["kind"] == "NetworkPolicy")
        .unwrap();
    policy["metadata"]["name"] = json!("openbao-sealbroker-allow-all");
    denied(
        controller("CREATE", (group, resource), policy, Value::Null),
        "touches only <name>-broker-config",
    );
}

#[test]
fn controller_jobs_run_keygen_alone_without_an_api_token() {
    let job = keygen_job();
    let create = |job: Value| controller("CREATE", ("batch", "jobs"), job, Value::Null);
    let mut shell = job.clone();
    shell["spec"]["template"]["spec"]["containers"][0]["command"] =
        json!(["/bin/sh", "-c", "cat /etc/sealbroker/secrets/*/*"]);
    denied(create(shell), "runs `sealbroker keygen` alone");
    let mut serve = job.clone();
    serve["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["serve"]);
    denied(create(serve), "runs `sealbroker keygen` alone");
    let mut riding = job.clone();
    let mut extra = riding["spec"]["template"]["spec"]["containers"][0].clone();
    extra["name"] = json!("exfiltrate");
    riding["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(extra);
    denied(create(riding), "runs `sealbroker keygen` alone");
    let mut token = job.clone();
    token["spec"]["template"]["spec"]["automountServiceAccountToken"] = json!(true);
    denied(create(token), "without an API token");
    let mut account = job.clone();
    account["spec"]["template"]["spec"]["serviceAccountName"] = json!("default");
    denied(create(account), "under <name>-broker");
    let mut init = job;
    init["spec"]["template"]["spec"]["initContainers"] = json!([{"name": "x", "image": "busybox"}]);
    denied(create(init), "runs `sealbroker keygen` alone");
}

#[test]
fn others_are_not_judged_by_the_controller_policy() {
    let foreign =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "openbao"}});
    let mut req = request(
        "alice@example.com",
        "CREATE",
        "",
        "configmaps",
        foreign,
        Value::Null,
    );
    assert_eq!(judge(&controller_policy(), &req), NotJudged);
    req["userInfo"]["username"] = json!(CONTROLLER_USER);
    req["resource"]["resource"] = json!("secrets");
    assert_eq!(
        judge(&controller_policy(), &req),
        NotJudged,
        "Secrets are RBAC's: the controller has none"
    );
}

// ---- onboarded namespaces' labels ----

fn onboarded() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "openbao", "labels": {
        "kubernetes.io/metadata.name": "openbao",
        "sealbroker.io/tenant": "enabled",
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "v1.33",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
    }}})
}

fn relabel(user: &str, groups: Value, change: impl Fn(&mut serde_json::Map<String, Value>)) -> Verdict {
    let old = onboarded();
    let mut new = old.clone();
    change(new["metadata"]["labels"].as_object_mut().unwrap());
    let mut req = request(user, "UPDATE", "", "namespaces", new, old);
    req["namespace"] = json!("");
    req["userInfo"]["groups"] = groups;
    judge(&tenant_labels_policy(), &req)
}

const TENANT: &str = "system:serviceaccount:openbao:gitops";

fn tenant_relabel(change: impl Fn(&mut serde_json::Map<String, Value>)) -> Verdict {
    relabel(
        TENANT,
        json!(["system:serviceaccounts", "system:authenticated"]),
        change,
    )
}

#[test]
fn a_tenant_may_not_remove_the_tenant_label() {
    denied(
        tenant_relabel(|l| {
            l.remove("sealbroker.io/tenant");
        }),
        "only a platform admin may remove or change sealbroker.io/tenant",
    );
    denied(
        tenant_relabel(|l| {
            l.insert("sealbroker.io/tenant".into(), json!("disabled"));
        }),
        "only a platform admin",
    );
}

#[test]
fn a_tenant_may_not_relax_or_remove_pod_security() {
    denied(
        tenant_relabel(|l| {
            l.insert("pod-security.kubernetes.io/enforce".into(), json!("privileged"));
        }),
        "pod-security.kubernetes.io/",
    );
    denied(
        tenant_relabel(|l| {
            l.remove("pod-security.kubernetes.io/enforce");
        }),
        "pod-security.kubernetes.io/",
    );
    denied(
        tenant_relabel(|l| {
            l.insert("pod-security.kubernetes.io/enforce-version".into(), json!("v1.0"));
        }),
        "pod-security.kubernetes.io/",
    );
    denied(
        tenant_relabel(|l| {
            l.remove("pod-security.kubernetes.io/audit");
        }),
        "pod-security.kubernetes.io/",
    );
}

#[test]
fn a_tenant_may_change_other_labels() {
    assert_eq!(
        tenant_relabel(|l| {
            l.insert("team".into(), json!("vault"));
        }),
        Allowed
    );
}

#[test]
fn a_platform_admin_may_offboard_a_namespace() {
    let offboard = |l: &mut serde_json::Map<String, Value>| {
        l.remove("sealbroker.io/tenant");
        l.remove("pod-security.kubernetes.io/enforce");
    };
    assert_eq!(relabel("admin", json!(["system:masters"]), offboard), NotJudged);
    assert_eq!(
        relabel("platform-bot", json!(["sealbroker.io:platform-admins"]), offboard),
        NotJudged
    );
}

#[test]
fn a_namespace_never_onboarded_is_not_judged() {
    let old = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web", "labels": {
        "pod-security.kubernetes.io/enforce": "baseline"}}});
    let mut new = old.clone();
    new["metadata"]["labels"] = json!({});
    let req = request(TENANT, "UPDATE", "", "namespaces", new, old);
    assert_eq!(judge(&tenant_labels_policy(), &req), NotJudged);
}

#[test]
fn every_policy_ships_with_a_deny_binding() {
    let text = sealbroker_operator::policy::tenant_policies_yaml();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    for name in [
        sealbroker_operator::policy::PROVISIONER_POLICY,
        sealbroker_operator::policy::CONTROLLER_POLICY,
        sealbroker_operator::policy::TENANT_LABELS_POLICY,
    ] {
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no binding for {name}"));
        assert_eq!(binding["spec"]["policyName"], name);
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        let policy = docs
            .iter()
            .find(|d| d["kind"] == "ValidatingAdmissionPolicy" && d["metadata"]["name"] == name)
            .unwrap();
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    }
}
