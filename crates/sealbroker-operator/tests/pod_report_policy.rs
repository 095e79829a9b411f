//! The pod-report ValidatingAdmissionPolicy's CEL, evaluated with a CEL
//! interpreter against sample `admission.k8s.io/v1` requests, the way the
//! apiserver runs it: the match constraints and match conditions choose the
//! requests it judges, the variables are bound under `variables`, and every
//! validation must be `true` (an evaluation error denies: failurePolicy Fail).
//! No apiserver is involved; what it adds (type checking, cost limits) is
//! not tested here.

use std::collections::HashMap;
use std::path::Path;

use cel::{Context, Program, Value as CelValue};
use sealbroker_operator::policy::pod_report_policy;
use serde_json::{Value, json};

/// `Ok(true)` allowed, `Ok(false)` not judged (no match), `Err(message)` denied.
fn admit(request: &Value) -> Result<bool, String> {
    let spec = pod_report_policy().spec.unwrap();
    let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
    let matched = rules.iter().any(|r| {
        r.operations
            .iter()
            .flatten()
            .any(|o| o == request["operation"].as_str().unwrap())
            && r.resources
                .iter()
                .flatten()
                .any(|res| res == request["resource"]["resource"].as_str().unwrap())
            && request["subResource"].is_null()
    });
    if !matched {
        return Ok(false);
    }
    let mut context = Context::default();
    context.add_variable_from_value("request", cel::to_value(request).unwrap());
    context.add_variable_from_value("object", cel::to_value(&request["object"]).unwrap());
    context.add_variable_from_value("oldObject", cel::to_value(&request["oldObject"]).unwrap());
    let run = |context: &Context, expression: &str| -> Result<CelValue, String> {
        let program = Program::compile(expression).map_err(|e| format!("{expression}: {e}"))?;
        program.execute(context).map_err(|e| format!("{expression}: {e}"))
    };
    for condition in spec.match_conditions.unwrap_or_default() {
        if run(&context, &condition.expression)? != CelValue::Bool(true) {
            return Ok(false);
        }
    }
    let mut variables: HashMap<String, CelValue> = HashMap::new();
    for variable in spec.variables.unwrap_or_default() {
        let value = run(&context, &variable.expression)?;
        variables.insert(variable.name, value);
    }
    context.add_variable_from_value("variables", variables);
    for validation in spec.validations.unwrap_or_default() {
        match run(&context, &validation.expression) {
            Ok(CelValue::Bool(true)) => {}
            Ok(_) => return Err(validation.message.unwrap_or_default()),
            Err(e) => return Err(format!("evaluation error: {e}")),
        }
    }
    Ok(true)
}

const REPORT: &str = "sealbroker.io/key-versions";

/// The injected OpenBao Pod as the apiserver stores it.
fn stored_pod(name: &str, uid: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/hardened.pod.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.trim_start_matches("---\n");
    let mut pod: Value = serde_saphyr::from_str(text).unwrap();
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["uid"] = json!(uid);
    pod["metadata"]["labels"]["openbao-active"] = json!("false");
    pod["spec"]["serviceAccountName"] = json!("openbao");
    pod
}

/// An UPDATE of `old` into `new`, by the `openbao` ServiceAccount holding a
/// token bound to Pod `token_pod`.
fn update(old: &Value, new: &Value, username: &str, token_pod: Option<(&str, &str)>) -> Value {
    let mut user =
        json!({"username": username, "groups": ["system:serviceaccounts", "system:authenticated"]});
    if let Some((name, uid)) = token_pod {
        user["extra"] = json!({
            "authentication.kubernetes.io/pod-name": [name],
            "authentication.kubernetes.io/pod-uid": [uid],
        });
    }
    json!({
        "uid": "7c1f0b5e-0000-4000-8000-000000000001",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": old["metadata"]["name"],
        "namespace": "openbao",
        "operation": "UPDATE",
        "userInfo": user,
        "object": new,
        "oldObject": old,
    })
}

const OPENBAO_SA: &str = "system:serviceaccount:openbao:openbao";

fn own(old: &Value, new: &Value) -> Value {
    update(old, new, OPENBAO_SA, Some(("openbao-0", "uid-0")))
}

fn with_report(pod: &Value, text: &str) -> Value {
    let mut pod = pod.clone();
    pod["metadata"]["annotations"][REPORT] = json!(text);
    pod
}

#[test]
fn a_sidecar_may_write_its_report_on_its_own_pod() {
    let old = stored_pod("openbao-0", "uid-0");
    let first = with_report(&old, r#"{"config":"ab","keys":{}}"#);
    assert_eq!(admit(&own(&old, &first)), Ok(true));
    let second = with_report(&old, r#"{"config":"cd","keys":{"k":{"2":"usable"}}}"#);
    assert_eq!(admit(&own(&first, &second)), Ok(true));
    // Removing its own report is a change of that annotation too.
    assert_eq!(admit(&own(&second, &old)), Ok(true));
}

#[test]
fn openbao_service_registration_labels_stay_writable() {
    let old = stored_pod("openbao-0", "uid-0");
    let mut new = old.clone();
    new["metadata"]["labels"]["openbao-active"] = json!("true");
    new["metadata"]["labels"]["openbao-sealed"] = json!("false");
    assert_eq!(admit(&own(&old, &new)), Ok(true));
}

#[test]
fn another_label_is_denied() {
    let old = stored_pod("openbao-0", "uid-0");
    let mut new = with_report(&old, "{}");
    new["metadata"]["labels"]["app.kubernetes.io/name"] = json!("not-openbao");
    let denied = admit(&own(&old, &new)).unwrap_err();
    assert!(
        denied.contains("no Pod label but OpenBao's service registration labels"),
        "{denied}"
    );
    let mut removed = old.clone();
    removed["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("app.kubernetes.io/instance");
    assert_eq!(admit(&own(&old, &removed)).unwrap_err(), denied);
}

#[test]
fn another_annotation_is_denied() {
    let old = stored_pod("openbao-0", "uid-0");
    let mut new = old.clone();
    new["metadata"]["annotations"]["sealbroker.io/injected-by"] = json!("someone-else");
    let denied = admit(&own(&old, &new)).unwrap_err();
    assert!(
        denied.contains("no Pod annotation but sealbroker.io/key-versions"),
        "{denied}"
    );
    let mut added = old.clone();
    added["metadata"]["annotations"]["example.com/x"] = json!("y");
    assert_eq!(admit(&own(&old, &added)).unwrap_err(), denied);
}

#[test]
fn a_spec_change_is_denied() {
    let old = stored_pod("openbao-0", "uid-0");
    let mut new = with_report(&old, "{}");
    new["spec"]["containers"][0]["image"] = json!("evil.example/openbao:latest");
    let denied = admit(&own(&old, &new)).unwrap_err();
    assert!(denied.contains("may not change a Pod's spec"), "{denied}");
}

#[test]
fn finalizers_and_owner_references_stay() {
    let old = stored_pod("openbao-0", "uid-0");
    let mut new = old.clone();
    new["metadata"]["finalizers"] = json!(["example.com/hold"]);
    let denied = admit(&own(&old, &new)).unwrap_err();
    assert!(denied.contains("finalizers or owner references"), "{denied}");
}

#[test]
fn another_pod_is_denied() {
    // Same ServiceAccount, but the token is bound to openbao-1.
    let old = stored_pod("openbao-0", "uid-0");
    let new = with_report(&old, "{}");
    let request = update(&old, &new, OPENBAO_SA, Some(("openbao-1", "uid-1")));
    let denied = admit(&request).unwrap_err();
    assert!(
        denied.contains("only with the token bound to that Pod"),
        "{denied}"
    );
    // A Pod recreated under the same name has a new uid: the old token is not its own.
    let request = update(
        &old,
        &new,
        OPENBAO_SA,
        Some(("openbao-0", "uid-of-the-previous-pod")),
    );
    assert_eq!(admit(&request).unwrap_err(), denied);
    // A token bound to no Pod (a legacy Secret token) proves no Pod.
    let request = update(&old, &new, OPENBAO_SA, None);
    assert_eq!(admit(&request).unwrap_err(), denied);
}

#[test]
fn a_pod_of_another_service_account_is_denied() {
    let old = stored_pod("openbao-0", "uid-0");
    let new = with_report(&old, "{}");
    let request = update(
        &old,
        &new,
        "system:serviceaccount:openbao:some-app",
        Some(("some-app-0", "uid-9")),
    );
    let denied = admit(&request).unwrap_err();
    assert!(denied.contains("only the Pods that run under it"), "{denied}");
}

#[test]
fn requests_from_outside_the_namespace_are_not_judged() {
    // Controllers (kube-system ServiceAccounts), the kubelet and people are
    // left to RBAC: the policy fences only the tenant's own ServiceAccounts.
    let old = stored_pod("openbao-0", "uid-0");
    let mut new = old.clone();
    new["metadata"]["labels"]["app.kubernetes.io/name"] = json!("moved");
    for user in [
        "system:serviceaccount:kube-system:generic-garbage-collector",
        "system:node:worker-1",
        "alice@example.com",
    ] {
        assert_eq!(admit(&update(&old, &new, user, None)), Ok(false), "{user}");
    }
    let mut create = own(&old, &new);
    create["operation"] = json!("CREATE");
    assert_eq!(admit(&create), Ok(false));
}
