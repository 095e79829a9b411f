//! The controller's and provisioner's Kubernetes calls, against kube's own
//! test service (`tower_test::mock` behind `kube::Client::new`). No
//! kube-apiserver is involved: each test plays the apiserver's side of the
//! conversation and asserts on every request the client makes.

use std::path::Path;
use std::sync::Arc;

use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use sealbroker_operator::crd::SealBroker;
use sealbroker_operator::kubeapi::{self, Context};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn sealbroker() -> SealBroker {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/hardened.input.yaml");
    sealbroker_operator::parse_sealbroker(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fixed_now() -> Time {
    Time("2026-01-02T03:04:05Z".parse().unwrap())
}

fn client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// The next request: (method, path and query, JSON body).
async fn next(
    handle: &mut Handle,
) -> (
    Method,
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, send) = handle
        .next_request()
        .await
        .expect("the client made no further request");
    let method = request.method().clone();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (method, uri, body, send)
}

fn ok(send: tower_test::mock::SendResponse<Response<Body>>, body: &Value) {
    send.send_response(Response::new(Body::from(serde_json::to_vec(body).unwrap())));
}

fn not_found(send: tower_test::mock::SendResponse<Response<Body>>) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "not found", "reason": "NotFound", "code": 404});
    let response = Response::builder()
        .status(404)
        .body(Body::from(serde_json::to_vec(&status).unwrap()))
        .unwrap();
    send.send_response(response);
}

/// Asserts a server-side-apply PATCH of `path` by `manager`, owned by the SealBroker.
fn assert_apply(method: &Method, uri: &str, body: &Value, path: &str, manager: &str, uid: &str) {
    assert_eq!(method, Method::PATCH, "{uri}");
    let (p, query) = uri.split_once('?').unwrap();
    assert_eq!(p, path);
    assert!(query.contains(&format!("fieldManager={manager}")), "{uri}");
    assert!(query.contains("force=true"), "{uri}");
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "SealBroker", "{body}");
    assert_eq!(owner["uid"], uid);
    assert_eq!(owner["controller"], true);
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sealbroker-operator"
    );
}

const NS: &str = "/api/v1/namespaces/openbao";

/// Plays the apiserver through one reconcile; `granted` says whether the
/// provisioner's objects exist. Returns the status the controller wrote.
async fn reconcile_scenario(mut handle: Handle, granted: bool) -> Value {
    let sb = sealbroker();
    let uid = sb.metadata.uid.clone().unwrap();
    // The controller's own objects: two ConfigMaps and the NetworkPolicy.
    for (path, kind) in [
        (format!("{NS}/configmaps/openbao-broker-config"), "ConfigMap"),
        (format!("{NS}/configmaps/openbao-openbao-seal"), "ConfigMap"),
        (
            "/apis/networking.k8s.io/v1/namespaces/openbao/networkpolicies/openbao-sealbroker".into(),
            "NetworkPolicy",
        ),
    ] {
        let (method, uri, body, send) = next(&mut handle).await;
        assert_apply(&method, &uri, &body, &path, "sealbroker-operator", &uid);
        assert_eq!(body["kind"], kind);
        if kind == "ConfigMap" && path.ends_with("broker-config") {
            let toml = body["data"]["sealbroker.toml"].as_str().unwrap();
            assert!(toml.contains("profile = \"hardened\""), "{toml}");
            assert!(
                toml.contains("pin_file = \"/var/run/secrets/sealbroker/hsm/pin\""),
                "{toml}"
            );
        }
        ok(send, &body);
    }
    // Reads (never writes) of the provisioner's grant.
    let grant = [
        (
            format!("{NS}/serviceaccounts/openbao-broker"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "openbao-broker", "namespace": "openbao"}}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/openbao/roles/openbao-broker-secrets".into(),
            serde_json::to_value(match &sealbroker_operator::desired::access_grant(&sb)[1] {
                sealbroker_operator::desired::Desired::Role(r) => r.clone(),
                _ => unreachable!(),
            })
            .unwrap(),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/openbao/rolebindings/openbao-broker-secrets"
                .into(),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "openbao-broker-secrets", "namespace": "openbao"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "openbao-broker-secrets"}}),
        ),
    ];
    for (path, object) in grant {
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(method, Method::GET, "{uri}");
        assert_eq!(uri, path);
        if granted {
            ok(send, &object)
        } else {
            not_found(send)
        }
    }
    // The status, through the status subresource, by server-side apply.
    let (method, uri, body, send) = next(&mut handle).await;
    assert_eq!(method, Method::PATCH);
    let (path, query) = uri.split_once('?').unwrap();
    assert_eq!(
        path,
        "/apis/sealbroker.io/v1alpha1/namespaces/openbao/sealbrokers/openbao/status"
    );
    assert!(query.contains("fieldManager=sealbroker-operator"), "{uri}");
    assert_eq!(body["kind"], "SealBroker");
    let mut answer = serde_json::to_value(&sb).unwrap();
    answer["status"] = body["status"].clone();
    ok(send, &answer);
    body["status"].clone()
}

#[tokio::test]
async fn reconcile_applies_owned_objects_then_reports_ready() {
    let (client, handle) = client();
    let scenario = tokio::spawn(reconcile_scenario(handle, true));
    let ctx = Arc::new(Context {
        client,
        now: fixed_now,
    });
    kubeapi::reconcile(Arc::new(sealbroker()), ctx).await.unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), scenario)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    assert_eq!(status["conditions"][1]["type"], "SecurityRisk");
    assert_eq!(status["conditions"][1]["status"], "False");
    assert_eq!(
        status["pluginSha256"],
        "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
    );
}

#[tokio::test]
async fn reconcile_without_the_grant_waits_for_the_provisioner() {
    let (client, handle) = client();
    let scenario = tokio::spawn(reconcile_scenario(handle, false));
    let ctx = Arc::new(Context {
        client,
        now: fixed_now,
    });
    kubeapi::reconcile(Arc::new(sealbroker()), ctx).await.unwrap();
    let status = scenario.await.unwrap();
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "AwaitingProvisioner");
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("sealbroker-operator provision --namespace openbao openbao"),
        "{message}"
    );
}

#[tokio::test]
async fn reconcile_of_an_invalid_spec_applies_nothing_and_says_why() {
    let (client, mut handle) = client();
    let mut sb = sealbroker();
    sb.spec.image = "ghcr.io/example/sealbroker:latest".into();
    let scenario = tokio::spawn(async move {
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert!(
            uri.contains("/sealbrokers/openbao/status?"),
            "only the status is written: {uri}"
        );
        ok(
            send,
            &json!({"apiVersion": "sealbroker.io/v1alpha1", "kind": "SealBroker", "metadata": {"name": "openbao"}, "spec": serde_json::to_value(sealbroker().spec).unwrap()}),
        );
        body["status"].clone()
    });
    let ctx = Arc::new(Context {
        client,
        now: fixed_now,
    });
    kubeapi::reconcile(Arc::new(sb), ctx).await.unwrap();
    let status = scenario.await.unwrap();
    assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
    assert!(
        status["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("pinned by digest")
    );
}

#[tokio::test]
async fn provisioner_applies_identity_and_name_scoped_role_as_its_own_manager() {
    let (client, mut handle) = client();
    let sb = sealbroker();
    let uid = sb.metadata.uid.clone().unwrap();
    let scenario = tokio::spawn(async move {
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(method, Method::GET);
        assert_eq!(
            uri,
            "/apis/sealbroker.io/v1alpha1/namespaces/openbao/sealbrokers/openbao"
        );
        ok(send, &serde_json::to_value(sealbroker()).unwrap());
        let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/openbao";
        for path in [
            format!("{NS}/serviceaccounts/openbao-broker"),
            format!("{rbac}/roles/openbao-broker-secrets"),
            format!("{rbac}/rolebindings/openbao-broker-secrets"),
            format!("{rbac}/roles/openbao-broker-reports"),
            format!("{rbac}/rolebindings/openbao-broker-reports"),
        ] {
            let (method, uri, body, send) = next(&mut handle).await;
            assert_apply(&method, &uri, &body, &path, "sealbroker-provisioner", &uid);
            if path.ends_with("roles/openbao-broker-secrets") {
                assert_eq!(
                    body["rules"],
                    json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                        "resourceNames": ["hsm-pin", "transit-ca", "transit-token"]}])
                );
            }
            if path.ends_with("rolebindings/openbao-broker-secrets") {
                assert_eq!(body["subjects"][0]["name"], "openbao-broker");
            }
            // The served Pods report on themselves: pods get/patch, no Secrets.
            if path.ends_with("roles/openbao-broker-reports") {
                assert_eq!(
                    body["rules"],
                    json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}])
                );
            }
            if path.ends_with("rolebindings/openbao-broker-reports") {
                assert_eq!(
                    body["subjects"][0]["name"], "default",
                    "spec.openbao.serviceAccountName"
                );
            }
            ok(send, &body);
        }
    });
    let applied = kubeapi::provision(&client, "openbao", "openbao").await.unwrap();
    scenario.await.unwrap();
    assert_eq!(applied.len(), 5);
}
