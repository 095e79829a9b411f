//! Every RBAC rule the Hardened overlay grants, as `kubectl kustomize`
//! renders it, plus the provisioner's grant for its SealBroker, is exactly
//! the least-privilege table in docs/operator.md: no rule more, none fewer,
//! the same verbs and resourceNames.
//!
//! The overlay is rendered by `deploy/render-check.sh` (kubectl's embedded
//! kustomize, installed by the script when missing), so the check reads
//! what `kubectl apply` would get.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One rule: identity, scope, apiGroup, resources, verbs, resourceNames.
type Row = (
    String,
    String,
    String,
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
);

fn set(text: &str) -> BTreeSet<String> {
    text.split(',')
        .map(|s| s.trim().trim_matches('`').to_owned())
        .filter(|s| !s.is_empty() && s != "—")
        .collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The table's rows, with `<name>` read as `sealbroker`.
fn table(sealbroker: &str) -> Vec<Row> {
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operator.md"))
        .unwrap();
    let section = docs
        .split("### Least-privilege RBAC")
        .nth(1)
        .expect("docs/operator.md has a Least-privilege RBAC section");
    let mut rows = Vec::new();
    for line in section
        .lines()
        .skip_while(|l| !l.starts_with("| identity"))
        .skip(2)
    {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 6, "a short row: {line}");
        let named = |text: &str| text.replace("<name>", sealbroker);
        let names = if cells[5] == "the Secrets the spec names" {
            BTreeSet::from(["<secrets>".to_owned()])
        } else {
            set(&named(cells[5]))
        };
        rows.push((
            named(cells[0]).trim_matches('`').to_owned(),
            cells[1].to_owned(),
            if cells[2] == "core" {
                String::new()
            } else {
                cells[2].to_owned()
            },
            set(cells[3]),
            set(cells[4]),
            names,
        ));
    }
    assert!(
        rows.len() > 10,
        "the table is missing or unreadable: {} rows",
        rows.len()
    );
    rows
}

fn identity(subject: &Value, sealbroker: &str, openbao_account: &str) -> String {
    let name = subject["name"].as_str().unwrap_or_default();
    match name {
        "sealbroker-operator" => "controller".into(),
        "sealbroker-operator-webhook" => "webhook".into(),
        "sealbroker-provisioner" => "provisioner".into(),
        n if n == format!("{sealbroker}-broker") => format!("{sealbroker}-broker"),
        n if n == openbao_account => "OpenBao's ServiceAccount".into(),
        other => panic!("a binding to an unexpected subject {other:?}: {subject}"),
    }
}

/// The rules each bound role grants, as rows.
fn rows_of(
    objects: &[Value],
    sealbroker: &str,
    openbao_account: &str,
    secrets: &BTreeSet<String>,
) -> Vec<Row> {
    let roles: BTreeMap<(String, String), &Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .map(|o| {
            let key = (
                o["kind"].as_str().unwrap().to_owned(),
                format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap()
                ),
            );
            (key, o)
        })
        .collect();
    let mut rows = Vec::new();
    let mut bound = BTreeSet::new();
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let scope = if binding["kind"] == "ClusterRoleBinding" {
            "cluster"
        } else if binding["metadata"]["namespace"] == "sealbroker-system" {
            "operator namespace"
        } else {
            "tenant"
        };
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap().to_owned();
        // A ClusterRole has no namespace; a Role is the binding's namespace's.
        let role_name = format!(
            "{}/{}",
            if role_kind == "Role" {
                binding["metadata"]["namespace"].as_str().unwrap_or("")
            } else {
                ""
            },
            binding["roleRef"]["name"].as_str().unwrap()
        );
        let role = roles
            .get(&(role_kind.clone(), role_name.clone()))
            .unwrap_or_else(|| panic!("{binding} binds {role_kind} {role_name}, which nothing defines"));
        bound.insert((role_kind, role_name));
        for subject in binding["subjects"].as_array().unwrap() {
            let who = identity(subject, sealbroker, openbao_account);
            for rule in role["rules"].as_array().into_iter().flatten() {
                let groups = strings(&rule["apiGroups"]);
                assert_eq!(groups.len(), 1, "one apiGroup per rule: {rule}");
                let mut names = strings(&rule["resourceNames"]);
                if strings(&rule["resources"]) == BTreeSet::from(["secrets".to_owned()]) {
                    assert_eq!(&names, secrets, "the broker reads exactly the spec's Secrets");
                    names = BTreeSet::from(["<secrets>".to_owned()]);
                }
                rows.push((
                    who.clone(),
                    scope.to_owned(),
                    groups.into_iter().next().unwrap(),
                    strings(&rule["resources"]),
                    strings(&rule["verbs"]),
                    names,
                ));
            }
        }
    }
    let unbound: Vec<_> = roles.keys().filter(|k| !bound.contains(*k)).collect();
    assert!(
        unbound.is_empty(),
        "roles nothing binds (dead grants): {unbound:?}"
    );
    rows
}

#[test]
fn the_rendered_rbac_is_exactly_the_least_privilege_table() {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/render-check.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "deploy/render-check.sh failed");
    let text = std::fs::read_to_string(out.path().join("hardened.yaml")).unwrap();
    let mut objects: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    objects.retain(|o| !o.is_null());

    let sealbroker_value = objects
        .iter()
        .find(|o| o["kind"] == "SealBroker")
        .expect("the Hardened overlay holds a SealBroker")
        .clone();
    let sb: sealbroker_operator::crd::SealBroker = serde_json::from_value(sealbroker_value).unwrap();
    let name = sb.metadata.name.clone().unwrap();
    // The provisioner's grant, as it would apply it.
    for desired in sealbroker_operator::desired::access_grant(&sb) {
        objects.push(desired.to_value());
    }
    let secrets: BTreeSet<String> = sb.spec.secret_names().into_iter().collect();
    assert!(!secrets.is_empty());

    let mut rendered = rows_of(&objects, &name, &sb.spec.openbao.service_account_name, &secrets);
    let mut documented = table(&name);
    rendered.sort();
    documented.sort();
    let extra: Vec<_> = rendered.iter().filter(|r| !documented.contains(r)).collect();
    let missing: Vec<_> = documented.iter().filter(|r| !rendered.contains(r)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "RBAC and docs/operator.md disagree.\ngranted but not in the table: {extra:#?}\nin the table but not granted: {missing:#?}"
    );
    assert_eq!(rendered, documented, "a rule is granted more than once");
}
