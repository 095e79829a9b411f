//! The CRD's `x-kubernetes-validations` (CEL transition rules), read from
//! the generated CRD and evaluated with a CEL interpreter the way the
//! apiserver binds them: `self` is the field's new value, `oldSelf` its
//! value before the UPDATE. No apiserver is involved; its type checking and
//! cost limits are not tested here.

use cel::{Context, Program, Value as CelValue};
use kube::CustomResourceExt;
use sealbroker_operator::crd::SealBroker;
use serde_json::{Value, json};

/// Every rule in the CRD's schema, with the JSON pointer of the field it sits on.
fn rules() -> Vec<(String, Value)> {
    fn walk(path: &str, schema: &Value, out: &mut Vec<(String, Value)>) {
        if let Some(list) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
            for rule in list {
                out.push((path.to_string(), rule.clone()));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                walk(&format!("{path}/{name}"), sub, out);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}/*"), items, out);
        }
    }
    let crd = serde_json::to_value(SealBroker::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut out = Vec::new();
    walk("", schema, &mut out);
    out
}

/// Runs the rule on `field` of an UPDATE from `old` to `new`: `Ok(())`
/// admitted, `Err(message)` refused with the rule's message.
fn update(field: &str, old: &Value, new: &Value) -> Result<(), String> {
    let (_, rule) = rules()
        .into_iter()
        .find(|(path, _)| path == field)
        .unwrap_or_else(|| panic!("no rule on {field}"));
    let program = Program::compile(rule["rule"].as_str().unwrap()).unwrap();
    let mut context = Context::default();
    context.add_variable_from_value("self", cel::to_value(new).unwrap());
    context.add_variable_from_value("oldSelf", cel::to_value(old).unwrap());
    match program.execute(&context) {
        Ok(CelValue::Bool(true)) => Ok(()),
        Ok(_) => Err(rule["message"].as_str().unwrap_or_default().to_string()),
        Err(e) => Err(format!("evaluation error: {e}")),
    }
}

#[test]
fn the_crd_carries_exactly_the_profile_transition_rule() {
    let found: Vec<(String, String)> = rules()
        .into_iter()
        .map(|(path, rule)| (path, rule["rule"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        found,
        [("/spec/profile".to_string(), "self == oldSelf".to_string())]
    );
}

#[test]
fn hardened_cannot_be_relaxed_to_development_in_place() {
    let denied = update("/spec/profile", &json!("Hardened"), &json!("Development")).unwrap_err();
    assert!(denied.contains("spec.profile is immutable"), "{denied}");
    assert!(denied.contains("creating a new SealBroker"), "{denied}");
}

#[test]
fn development_cannot_be_promoted_to_hardened_in_place() {
    let denied = update("/spec/profile", &json!("Development"), &json!("Hardened")).unwrap_err();
    assert!(denied.contains("spec.profile is immutable"), "{denied}");
}

#[test]
fn an_update_that_keeps_the_profile_is_admitted() {
    for profile in ["Hardened", "Development"] {
        assert_eq!(update("/spec/profile", &json!(profile), &json!(profile)), Ok(()));
    }
}
