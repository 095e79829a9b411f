//! The controller's and provisioner's Kubernetes calls, against kube's own
//! test service (`tower_test::mock` behind `kube::Client::new`). No
//! kube-apiserver is involved: each test plays the apiserver's side of the
//! conversation and asserts on every request the client makes.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use sealbroker_operator::crd::SealBroker;
use sealbroker_operator::kubeapi::{self, Context};
use sealbroker_operator::signature::{ImageVerifier, RefuseAll, SignatureError};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Stands in for the registry check (tests/tests/images.rs runs the real
/// one against a registry): every image is signed by the trusted key.
struct SignedByTrustedKey;

impl ImageVerifier for SignedByTrustedKey {
    fn verify<'a>(&'a self, _image: &'a str) -> BoxFuture<'a, Result<(), SignatureError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The hardened example, as the controller finds it after its first
/// reconcile (with its finalizer).
fn sealbroker() -> SealBroker {
    let mut sb = fresh_sealbroker();
    sb.metadata.finalizers = Some(vec![kubeapi::FINALIZER.into()]);
    sb
}

fn fresh_sealbroker() -> SealBroker {
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

fn forbidden(send: tower_test::mock::SendResponse<Response<Body>>) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "pods is forbidden: User \"system:serviceaccount:sealbroker-system:sealbroker-operator\" cannot list resource \"pods\" in API group \"\" in the namespace \"openbao\"",
        "reason": "Forbidden", "code": 403});
    let response = Response::builder()
        .status(403)
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
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/openbao";

/// The provisioner's Role and RoleBinding for the Pods' reports, as the
/// apiserver would return them: (path, object).
fn report_grant(sb: &SealBroker) -> Vec<(String, Value)> {
    use sealbroker_operator::desired::{Desired, access_grant};
    let grant = access_grant(sb);
    let role = grant
        .iter()
        .find(|d| matches!(d, Desired::Role(_)) && d.name().ends_with("-reports"))
        .unwrap();
    let binding = grant
        .iter()
        .find(|d| matches!(d, Desired::RoleBinding(_)) && d.name().ends_with("-reports"))
        .unwrap();
    vec![
        (format!("{RBAC}/roles/openbao-broker-reports"), role.to_value()),
        (
            format!("{RBAC}/rolebindings/openbao-broker-reports"),
            binding.to_value(),
        ),
    ]
}

/// How the provisioner's grant looks to the controller in a scenario.
#[derive(Clone, Copy, PartialEq)]
enum Grant {
    Made,
    Missing,
    /// Its RoleBinding also binds another subject.
    BindingWidened,
}

/// Plays the apiserver through one reconcile; `granted` says whether the
/// provisioner's objects exist. Returns the status the controller wrote.
async fn reconcile_scenario(handle: Handle, granted: bool) -> Value {
    reconcile_with_grant(handle, if granted { Grant::Made } else { Grant::Missing }).await
}

async fn reconcile_with_grant(mut handle: Handle, grant_state: Grant) -> Value {
    let granted = grant_state != Grant::Missing;
    let sb = sealbroker();
    let uid = sb.metadata.uid.clone().unwrap();
    // The served Pods: openbao-0 injected for this spec, openbao-1 for an
    // older one, and a Pod another SealBroker injected.
    let (method, uri, _, send) = next(&mut handle).await;
    assert_eq!(method, Method::GET);
    assert_eq!(uri.split('?').next(), Some(format!("{NS}/pods").as_str()));
    let mut current = served_pod("openbao-0", None);
    current["metadata"]["annotations"]["sealbroker.io/injection-sha256"] =
        json!(sealbroker_operator::injection::injection_sha256(&sb));
    let mut stale = served_pod("openbao-1", None);
    stale["metadata"]["annotations"]["sealbroker.io/injection-sha256"] = json!("0".repeat(64));
    let mut foreign = served_pod("other-0", None);
    foreign["metadata"]["annotations"]["sealbroker.io/injected-by"] = json!("other");
    ok(send, &list("PodList", "v1", vec![current, stale, foreign]));
    // The controller's own objects: two ConfigMaps and the NetworkPolicies
    // of the served Pods and of the key-creation Jobs.
    for (path, kind) in [
        (format!("{NS}/configmaps/openbao-broker-config"), "ConfigMap"),
        (format!("{NS}/configmaps/openbao-openbao-seal"), "ConfigMap"),
        (
            "/apis/networking.k8s.io/v1/namespaces/openbao/networkpolicies/openbao-sealbroker".into(),
            "NetworkPolicy",
        ),
        (
            "/apis/networking.k8s.io/v1/namespaces/openbao/networkpolicies/openbao-sealbroker-keygen".into(),
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
            {
                let mut binding =
                    serde_json::to_value(match &sealbroker_operator::desired::access_grant(&sb)[2] {
                        sealbroker_operator::desired::Desired::RoleBinding(b) => b.clone(),
                        _ => unreachable!(),
                    })
                    .unwrap();
                if grant_state == Grant::BindingWidened {
                    binding["subjects"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"kind": "ServiceAccount", "name": "default", "namespace": "openbao"}));
                }
                binding
            },
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
    // With the broker's grant in place, the served Pods' report grant is read too.
    if grant_state == Grant::Made {
        for (path, object) in report_grant(&sb) {
            let (method, uri, _, send) = next(&mut handle).await;
            assert_eq!(method, Method::GET, "{uri}");
            assert_eq!(uri, path);
            ok(send, &object);
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
        images: Arc::new(SignedByTrustedKey),
    });
    kubeapi::reconcile(Arc::new(sealbroker()), ctx).await.unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), scenario)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    // The golden Hardened SealBroker loads SoftHSM: an in-cluster root.
    assert_eq!(status["conditions"][1]["type"], "SecurityRisk");
    assert_eq!(status["conditions"][1]["status"], "True");
    assert_eq!(status["conditions"][1]["reason"], "InClusterTrustRoot");
    let rollout = condition(&status, "PodsOutOfDate");
    assert_eq!(rollout["status"], "True", "{status}");
    let message = rollout["message"].as_str().unwrap();
    assert!(message.starts_with("openbao-1 run"), "{message}");
    assert!(
        !message.contains("openbao-0") && !message.contains("other-0"),
        "{message}"
    );
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
        images: Arc::new(SignedByTrustedKey),
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

/// The drift check reads the RoleBinding's subjects: one more ServiceAccount
/// bound to the Secrets Role is not the grant the provisioner makes.
#[tokio::test]
async fn a_widened_secrets_binding_is_drift_and_is_named() {
    let (client, handle) = client();
    let scenario = tokio::spawn(reconcile_with_grant(handle, Grant::BindingWidened));
    let ctx = Arc::new(Context {
        client,
        now: fixed_now,
        images: Arc::new(SignedByTrustedKey),
    });
    kubeapi::reconcile(Arc::new(sealbroker()), ctx).await.unwrap();
    let status = scenario.await.unwrap();
    assert_eq!(
        status["conditions"][0]["reason"], "AwaitingProvisioner",
        "{status}"
    );
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message
            .contains("does not bind Role openbao-broker-secrets to exactly ServiceAccount openbao-broker")
            && message.contains("ServiceAccount openbao/default"),
        "{message}"
    );
}

#[tokio::test]
async fn a_namespace_that_was_never_onboarded_gets_a_status_that_says_how() {
    let (client, mut handle) = client();
    let scenario = tokio::spawn(async move {
        // The controller's first act in the namespace is refused.
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(method, Method::GET);
        assert!(uri.starts_with(&format!("{NS}/pods")), "{uri}");
        forbidden(send);
        // Then only the status is written, through the cluster-wide grant.
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert!(uri.contains("/sealbrokers/openbao/status?"), "{uri}");
        let mut answer = serde_json::to_value(sealbroker()).unwrap();
        answer["status"] = body["status"].clone();
        ok(send, &answer);
        body["status"].clone()
    });
    let ctx = Arc::new(Context {
        client,
        now: fixed_now,
        images: Arc::new(SignedByTrustedKey),
    });
    kubeapi::reconcile(Arc::new(sealbroker()), ctx).await.unwrap();
    let status = scenario.await.unwrap();
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "NamespaceNotOnboarded");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("sealbroker-operator onboard --namespace openbao openbao")
            && message.contains("sealbroker-operator provision --namespace openbao openbao"),
        "{message}"
    );
}

#[tokio::test]
async fn the_first_reconcile_adds_the_finalizer_that_guards_deletion() {
    let (client, mut handle) = client();
    let scenario = tokio::spawn(async move {
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert!(
            uri.starts_with("/apis/sealbroker.io/v1alpha1/namespaces/openbao/sealbrokers/openbao?"),
            "{uri}"
        );
        assert_eq!(body, json!({"metadata": {"finalizers": [kubeapi::FINALIZER]}}));
        ok(send, &serde_json::to_value(sealbroker()).unwrap());
        // The rest of the reconcile is the usual one; stop here.
    });
    let ctx = Arc::new(Context {
        client,
        now: fixed_now,
        images: Arc::new(SignedByTrustedKey),
    });
    // The rest of the reconcile meets a closed API and fails: only the
    // finalizer patch, first of all, is asserted.
    let _ = kubeapi::reconcile(Arc::new(fresh_sealbroker()), ctx).await;
    scenario.await.unwrap();
}

#[tokio::test]
async fn deletion_waits_for_the_served_pods_and_then_removes_the_finalizer() {
    let mut deleting = sealbroker();
    deleting.metadata.deletion_timestamp = Some(fixed_now());
    // Two served pods: the deletion is held, and the status says by whom.
    let state: Shared = Arc::default();
    state.lock().unwrap().pods = vec![served_pod("openbao-0", None), served_pod("openbao-1", None)];
    let (client, handle) = client();
    let server = tokio::spawn(serve(handle, state.clone(), deleting.clone()));
    let ctx = Arc::new(Context {
        client,
        now: fixed_now,
        images: Arc::new(SignedByTrustedKey),
    });
    let action = kubeapi::reconcile(Arc::new(deleting.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(30))
    );
    {
        let api = state.lock().unwrap();
        let ready = condition(&api.status, "Ready");
        assert_eq!(ready["reason"], "DeletionBlocked", "{}", api.status);
        let message = ready["message"].as_str().unwrap();
        assert!(message.contains("openbao-0, openbao-1 still do"), "{message}");
        assert!(
            api.finalizer_patches.is_empty(),
            "the finalizer went while pods were served"
        );
        assert!(
            api.events.iter().any(|e| e["reason"] == "DeletionBlocked"),
            "{:#?}",
            api.events
        );
    }
    // The pods are gone: the finalizer goes, and nothing else is written.
    state.lock().unwrap().pods.clear();
    kubeapi::reconcile(Arc::new(deleting), ctx).await.unwrap();
    assert_eq!(
        state.lock().unwrap().finalizer_patches,
        [json!({"metadata": {"finalizers": []}})]
    );
    drop(server);
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
        images: Arc::new(SignedByTrustedKey),
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

/// What the registry check says of an image pushed without a signature.
struct Unsigned;

impl ImageVerifier for Unsigned {
    fn verify<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), SignatureError>> {
        Box::pin(async move {
            Err(SignatureError::Unsigned {
                image: image.to_owned(),
                tag: "sha256-....sig".into(),
            })
        })
    }
}

/// Plays the apiserver for a refused reconcile: the only request allowed is
/// the status write. Returns the status written.
async fn only_the_status_is_written(mut handle: Handle) -> Value {
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
}

#[tokio::test]
async fn reconcile_of_a_hardened_sealbroker_whose_image_is_unsigned_applies_nothing() {
    for (images, says) in [
        (Arc::new(Unsigned) as Arc<dyn ImageVerifier>, "is not signed"),
        (
            Arc::new(RefuseAll(
                "the operator was started without --image-trust-key".into(),
            )),
            "without --image-trust-key",
        ),
    ] {
        let (client, handle) = client();
        let scenario = tokio::spawn(only_the_status_is_written(handle));
        let ctx = Arc::new(Context {
            client,
            now: fixed_now,
            images,
        });
        kubeapi::reconcile(Arc::new(sealbroker()), ctx).await.unwrap();
        let status = scenario.await.unwrap();
        assert_eq!(status["conditions"][0]["status"], "False", "{status}");
        assert_eq!(status["conditions"][0]["reason"], "InvalidSpec", "{status}");
        let message = status["conditions"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with("spec.image: the Hardened profile runs only images signed"),
            "{message}"
        );
        assert!(message.contains(says), "{message}");
    }
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

/// A stateful stand-in for the apiserver, enough for a rotation: Pods (with
/// their reports), Jobs, the ConfigMaps and NetworkPolicy the controller
/// applies, the provisioner's grant, and the SealBroker's status.
#[derive(Default)]
struct FakeApi {
    pods: Vec<Value>,
    jobs: std::collections::BTreeMap<String, Value>,
    config_maps: std::collections::BTreeMap<String, Value>,
    status: Value,
    job_creates: Vec<Value>,
    job_deletes: Vec<String>,
    /// Events posted (or patched, for a repeat) on the SealBroker.
    events: Vec<Value>,
    /// Merge patches of the SealBroker itself (its finalizers).
    finalizer_patches: Vec<Value>,
}

type Shared = Arc<std::sync::Mutex<FakeApi>>;

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {}, "items": items})
}

fn conflict(send: tower_test::mock::SendResponse<Response<Body>>) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "already exists", "reason": "AlreadyExists", "code": 409});
    let response = Response::builder()
        .status(409)
        .body(Body::from(serde_json::to_vec(&status).unwrap()))
        .unwrap();
    send.send_response(response);
}

/// Answers every request until the client goes away.
async fn serve(mut handle: Handle, state: Shared, sb: SealBroker) {
    let grant: Vec<(String, Value)> = {
        use sealbroker_operator::desired::{Desired, access_grant};
        let mut objects: Vec<(String, Value)> = access_grant(&sb)
            .iter()
            .map(|d| {
                let path = match d {
                    Desired::ServiceAccount(_) => format!("{NS}/serviceaccounts/{}", d.name()),
                    Desired::Role(_) => format!("{RBAC}/roles/{}", d.name()),
                    Desired::RoleBinding(_) => format!("{RBAC}/rolebindings/{}", d.name()),
                    _ => unreachable!(),
                };
                (path, d.to_value())
            })
            .collect();
        objects.extend(report_grant(&sb));
        objects
    };
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let path = uri.split_once('?').map_or(uri.as_str(), |(p, _)| p).to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let jobs_path = "/apis/batch/v1/namespaces/openbao/jobs";
        let mut api = state.lock().unwrap();
        match (method, path.as_str()) {
            (Method::GET, p) if p == format!("{NS}/pods") => {
                ok(send, &list("PodList", "v1", api.pods.clone()));
            }
            (Method::GET, p) if p == jobs_path => {
                assert!(uri.contains("labelSelector="), "Jobs are listed by label: {uri}");
                ok(
                    send,
                    &list("JobList", "batch/v1", api.jobs.values().cloned().collect()),
                );
            }
            (Method::POST, p) if p == jobs_path => {
                let name = body["metadata"]["name"].as_str().unwrap().to_owned();
                api.job_creates.push(body.clone());
                match api.jobs.entry(name) {
                    std::collections::btree_map::Entry::Occupied(_) => conflict(send),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(body.clone());
                        ok(send, &body);
                    }
                }
            }
            (Method::DELETE, p) if p.starts_with(jobs_path) => {
                let name = p.rsplit('/').next().unwrap().to_owned();
                api.job_deletes.push(name.clone());
                match api.jobs.remove(&name) {
                    Some(job) => ok(send, &job),
                    None => not_found(send),
                }
            }
            (Method::PATCH, p) if p.starts_with(&format!("{NS}/configmaps/")) => {
                let name = p.rsplit('/').next().unwrap().to_owned();
                api.config_maps.insert(name, body.clone());
                ok(send, &body);
            }
            (Method::PATCH, p) if p.contains("/networkpolicies/") => ok(send, &body),
            (Method::POST | Method::PATCH, p)
                if p.starts_with("/apis/events.k8s.io/v1/namespaces/openbao/events") =>
            {
                api.events.push(body.clone());
                ok(send, &body);
            }
            (Method::PATCH, p) if p.ends_with("/sealbrokers/openbao") => {
                api.finalizer_patches.push(body.clone());
                ok(send, &serde_json::to_value(&sb).unwrap());
            }
            (Method::PATCH, p) if p.ends_with("/sealbrokers/openbao/status") => {
                api.status = body["status"].clone();
                let mut answer = serde_json::to_value(&sb).unwrap();
                answer["status"] = body["status"].clone();
                ok(send, &answer);
            }
            (Method::GET, p) => match grant.iter().find(|(path, _)| path == p) {
                Some((_, object)) => ok(send, object),
                None => panic!("unexpected GET {uri}"),
            },
            (method, _) => panic!("unexpected {method} {uri}"),
        }
    }
}

fn served_pod(name: &str, report: Option<String>) -> Value {
    let mut annotations = json!({"sealbroker.io/injected-by": "openbao"});
    if let Some(report) = report {
        annotations["sealbroker.io/key-versions"] = json!(report);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "openbao", "uid": format!("uid-{name}"),
            "labels": {"app.kubernetes.io/name": "openbao"}, "annotations": annotations},
        "spec": {"containers": [{"name": "openbao"}]},
        "status": {"phase": "Running"},
    })
}

fn report(config_sha256: &str, v2: &str) -> String {
    json!({"config": config_sha256, "keys": {"openbao-unseal": {"1": "usable", "2": v2}}}).to_string()
}

/// Runs one reconcile of `sb` (with the status the fake holds) against the fake.
async fn reconcile_once(state: &Shared, sb: &SealBroker) -> SealBroker {
    let mut sb = sb.clone();
    let status = state.lock().unwrap().status.clone();
    if !status.is_null() {
        sb.status = Some(serde_json::from_value(status).unwrap());
    }
    let (client, handle) = client();
    let server = tokio::spawn(serve(handle, state.clone(), sb.clone()));
    let ctx = Arc::new(Context {
        client,
        now: fixed_now,
        images: Arc::new(SignedByTrustedKey),
    });
    kubeapi::reconcile(Arc::new(sb.clone()), ctx).await.unwrap();
    // The client is gone with the context: the fake stops after its last answer.
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    sb
}

fn rendered_config(state: &Shared) -> String {
    state.lock().unwrap().config_maps["openbao-broker-config"]["data"]["sealbroker.toml"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn unseal_table(config: &str) -> Vec<String> {
    config
        .split("[keys.openbao-unseal]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap()
        .lines()
        .filter(|l| l.contains("_version"))
        .map(str::to_owned)
        .collect()
}

fn sha256_hex(text: &str) -> String {
    sealbroker_operator::render::config_sha256(text)
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
}

#[tokio::test]
async fn a_rotation_from_v1_to_v2_runs_end_to_end_through_the_reconciler() {
    // The controller rendered v1; the spec now wants v2 created and promoted.
    let mut sb = sealbroker();
    sb.spec.keys[0].versions = Some(sealbroker_operator::crd::KeyVersions {
        newest: Some(2),
        primary: Some(2),
        min_decryption: None,
    });
    let state: Shared = Arc::default();
    {
        let mut api = state.lock().unwrap();
        api.status = json!({"keys": [{"name": "openbao-unseal", "newest": 1, "primary": 1}]});
        api.pods = vec![served_pod("openbao-0", None), served_pod("openbao-1", None)];
        // Not served: another app's Pod, and one selected but never injected.
        let mut other = served_pod("other-0", None);
        other["metadata"]["labels"] = json!({"app": "other"});
        let mut uninjected = served_pod("openbao-9", None);
        uninjected["metadata"]["annotations"] = json!({});
        api.pods.extend([other, uninjected]);
    }

    // 1. The version does not exist: one key-creation Job.
    reconcile_once(&state, &sb).await;
    let first_config = rendered_config(&state);
    assert_eq!(
        unseal_table(&first_config),
        ["primary_version = 1", "newest_version = 1"]
    );
    {
        let api = state.lock().unwrap();
        assert_eq!(api.job_creates.len(), 1);
        let job = &api.job_creates[0];
        assert_eq!(job["metadata"]["name"], "openbao-keygen-openbao-unseal-v2");
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["args"],
            json!([
                "keygen",
                "--config",
                "/etc/sealbroker/sealbroker.toml",
                "--key",
                "openbao-unseal",
                "--version",
                "2"
            ])
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "SealBroker");
        assert_eq!(condition(&api.status, "RotationPending")["status"], "True");
        assert_eq!(
            condition(&api.status, "RotationPending")["reason"],
            "AwaitingKeygen"
        );
        assert_eq!(api.status["configSha256"], sha256_hex(&first_config));
    }

    // 2. A second reconcile finds the running Job instead of making another.
    reconcile_once(&state, &sb).await;
    assert_eq!(state.lock().unwrap().job_creates.len(), 1);
    assert_eq!(state.lock().unwrap().jobs.len(), 1);

    // 3. The Job succeeds: v2 is recorded as created and staged.
    state
        .lock()
        .unwrap()
        .jobs
        .get_mut("openbao-keygen-openbao-unseal-v2")
        .unwrap()["status"] = json!({"succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-02T03:00:00Z"}]});
    reconcile_once(&state, &sb).await;
    let staged_config = rendered_config(&state);
    assert_eq!(
        unseal_table(&staged_config),
        ["primary_version = 1", "newest_version = 2"]
    );
    let staged_sha = sha256_hex(&staged_config);
    {
        let api = state.lock().unwrap();
        assert_eq!(api.status["keys"][0]["created"], json!([2]));
        assert_eq!(api.status["keys"][0]["primary"], 1);
        assert_eq!(api.status["configSha256"], staged_sha);
        assert_eq!(api.job_creates.len(), 1);
    }

    // 4. Every pod reports v2 usable, but under the config before staging:
    //    that proves nothing about this one.
    let old_sha = sha256_hex(&first_config);
    state.lock().unwrap().pods[..2].clone_from_slice(&[
        served_pod("openbao-0", Some(report(&old_sha, "usable"))),
        served_pod("openbao-1", Some(report(&old_sha, "usable"))),
    ]);
    reconcile_once(&state, &sb).await;
    assert_eq!(
        unseal_table(&rendered_config(&state)),
        ["primary_version = 1", "newest_version = 2"]
    );
    {
        let api = state.lock().unwrap();
        let pending = condition(&api.status, "RotationPending");
        assert_eq!(pending["reason"], "AwaitingPodReports");
        let message = pending["message"].as_str().unwrap();
        assert!(message.contains("openbao-0 (reported under config"), "{message}");
        assert!(message.contains("openbao-1 (reported under config"), "{message}");
        let v2 = &api.status["keys"][0]["versions"][1];
        assert_eq!(v2["version"], 2);
        assert_eq!(v2["missing"].as_array().unwrap().len(), 2, "{v2}");
    }

    // 5. One pod reports under the staged config, the other not yet.
    state.lock().unwrap().pods[0] = served_pod("openbao-0", Some(report(&staged_sha, "usable")));
    reconcile_once(&state, &sb).await;
    assert_eq!(
        unseal_table(&rendered_config(&state)),
        ["primary_version = 1", "newest_version = 2"]
    );
    {
        let api = state.lock().unwrap();
        let v2 = &api.status["keys"][0]["versions"][1];
        assert_eq!(v2["usable"], json!(["openbao-0"]));
        assert_eq!(v2["missing"][0]["pod"], "openbao-1");
        let message = condition(&api.status, "RotationPending")["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !message.contains("openbao-9") && !message.contains("other-0"),
            "{message}"
        );
    }

    // 6. Every served pod reports v2 usable under the staged config: promoted.
    state.lock().unwrap().pods[1] = served_pod("openbao-1", Some(report(&staged_sha, "usable")));
    reconcile_once(&state, &sb).await;
    let promoted = rendered_config(&state);
    assert_eq!(
        unseal_table(&promoted),
        ["primary_version = 2", "newest_version = 2"]
    );
    {
        let api = state.lock().unwrap();
        assert_eq!(api.status["keys"][0]["primary"], 2);
        assert_eq!(api.status["configSha256"], sha256_hex(&promoted));
        assert_eq!(condition(&api.status, "RotationPending")["status"], "False");
        assert_eq!(condition(&api.status, "RotationBlocked")["status"], "False");
        assert_eq!(api.job_creates.len(), 1, "one Job for the whole rotation");
        assert!(api.job_deletes.is_empty());
        // Every decision is an Event on the SealBroker.
        let said = |reason: &str, words: &str| {
            api.events.iter().any(|e| {
                e["reason"] == reason
                    && e["regarding"]["name"] == "openbao"
                    && e["note"].as_str().is_some_and(|n| n.contains(words))
            })
        };
        assert!(said("Reconciled", "applied"), "{:#?}", api.events);
        assert!(said("Rotation", "openbao-unseal"), "{:#?}", api.events);
        assert!(
            api.events.iter().all(|e| e["reason"] != "InvalidSpec"),
            "{:#?}",
            api.events
        );
    }
}

#[tokio::test]
async fn a_failed_key_creation_job_is_reported_and_never_promoted_past() {
    let mut sb = sealbroker();
    sb.spec.keys[0].versions = Some(sealbroker_operator::crd::KeyVersions {
        newest: Some(2),
        primary: Some(2),
        min_decryption: None,
    });
    let state: Shared = Arc::default();
    {
        let mut api = state.lock().unwrap();
        api.status = json!({"keys": [{"name": "openbao-unseal", "newest": 1, "primary": 1}]});
        api.pods = vec![served_pod("openbao-0", None)];
        let mut job = serde_json::to_value(sealbroker_operator::desired::keygen_job(
            &sb,
            "openbao-unseal",
            2,
            1,
        ))
        .unwrap();
        job["status"] = json!({"failed": 4, "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit",
            "lastTransitionTime": "2026-01-02T03:04:00Z"}]});
        api.jobs.insert("openbao-keygen-openbao-unseal-v2".into(), job);
    }
    reconcile_once(&state, &sb).await;
    let api = state.lock().unwrap();
    let blocked = condition(&api.status, "RotationBlocked");
    assert_eq!(blocked["status"], "True");
    assert_eq!(blocked["reason"], "KeygenFailed");
    let message = blocked["message"].as_str().unwrap();
    assert!(
        message.contains("BackoffLimitExceeded: Job has reached the specified backoff limit"),
        "{message}"
    );
    // Within its 30 s backoff: the failed Job stays (its Pod's log is readable), none is made.
    assert!(api.job_creates.is_empty() && api.job_deletes.is_empty());
    assert_eq!(api.status["keys"][0]["keygenFailures"][0]["attempts"], 1);
    assert_eq!(api.status["keys"][0]["primary"], 1);
    assert_eq!(
        unseal_table(&rendered_config_of(&api)),
        ["primary_version = 1", "newest_version = 1"]
    );
}

fn rendered_config_of(api: &FakeApi) -> String {
    api.config_maps["openbao-broker-config"]["data"]["sealbroker.toml"]
        .as_str()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------
// Leader election on the controller's Lease.

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/sealbroker-system/leases";

fn lease_json(holder: &str, renewed: &str, transitions: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "sealbroker-operator", "namespace": "sealbroker-system", "resourceVersion": "41"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
            "acquireTime": "2026-01-02T03:00:00.000000Z", "renewTime": renewed, "leaseTransitions": transitions}})
}

/// 409 Conflict: the Lease changed since it was read.
fn modified(send: tower_test::mock::SendResponse<Response<Body>>) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Operation cannot be fulfilled on leases.coordination.k8s.io \"sealbroker-operator\": the object has been modified",
        "reason": "Conflict", "code": 409});
    send.send_response(
        Response::builder()
            .status(409)
            .body(Body::from(serde_json::to_vec(&status).unwrap()))
            .unwrap(),
    );
}

fn election(identity: &str) -> sealbroker_operator::leader::Election {
    sealbroker_operator::leader::Election::new(identity, "sealbroker-system")
}

fn at(text: &str) -> k8s_openapi::jiff::Timestamp {
    text.parse().unwrap()
}

/// One `try_acquire` round of replica `controller-a` at 03:04:05, against
/// the mock API the test then plays.
fn acquire_round() -> (tokio::task::JoinHandle<Result<bool, kube::Error>>, Handle) {
    let (client, handle) = client();
    let api = kube::Api::namespaced(client, "sealbroker-system");
    let round = tokio::spawn(async move {
        sealbroker_operator::leader::try_acquire(&api, &election("controller-a"), at("2026-01-02T03:04:05Z"))
            .await
    });
    (round, handle)
}

/// No Lease yet: the replica creates it, naming itself.
#[tokio::test]
async fn an_absent_lease_is_created_with_this_replica_as_holder() {
    let (round, mut handle) = acquire_round();
    let (method, uri, _, send) = next(&mut handle).await;
    assert_eq!(
        (method, uri.as_str()),
        (Method::GET, format!("{LEASES}/sealbroker-operator").as_str())
    );
    not_found(send);
    let (method, uri, body, send) = next(&mut handle).await;
    assert_eq!(method, Method::POST);
    assert_eq!(uri.split('?').next(), Some(LEASES));
    assert_eq!(body["spec"]["holderIdentity"], "controller-a");
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    ok(send, &body);
    assert!(round.await.unwrap().unwrap());
}

/// Another replica's fresh Lease is left alone: nothing is written.
#[tokio::test]
async fn a_fresh_lease_of_another_replica_is_not_written() {
    let (round, mut handle) = acquire_round();
    let (method, _, _, send) = next(&mut handle).await;
    assert_eq!(method, Method::GET);
    ok(
        send,
        &lease_json("controller-b", "2026-01-02T03:04:00.000000Z", 2),
    );
    assert!(!round.await.unwrap().unwrap());
    // The round ended (its client is gone) without another request.
    assert!(handle.next_request().await.is_none(), "a write followed");
}

/// An expired Lease is taken with the resourceVersion read; when another
/// replica took it first (409), this one is not the leader.
#[tokio::test]
async fn an_expired_lease_is_taken_with_the_version_read_and_a_lost_race_is_not_leading() {
    let (round, mut handle) = acquire_round();
    let (_, _, _, send) = next(&mut handle).await;
    ok(
        send,
        &lease_json("controller-b", "2026-01-02T03:03:00.000000Z", 2),
    );
    let (method, uri, body, send) = next(&mut handle).await;
    assert_eq!(method, Method::PUT);
    assert_eq!(
        uri.split('?').next(),
        Some(format!("{LEASES}/sealbroker-operator").as_str())
    );
    assert_eq!(body["metadata"]["resourceVersion"], "41");
    assert_eq!(body["spec"]["holderIdentity"], "controller-a");
    assert_eq!(body["spec"]["leaseTransitions"], 3);
    modified(send);
    assert!(!round.await.unwrap().unwrap());
}

/// `lead` runs the work only once the Lease is held, and stops it (with an
/// error, so the process restarts) when a renewal finds another holder.
#[tokio::test(start_paused = true)]
async fn the_work_runs_only_while_the_lease_is_held() {
    let (client, mut handle) = client();
    let api = kube::Api::namespaced(client, "sealbroker-system");
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let work = async move {
        let _ = started_tx.send(());
        std::future::pending::<()>().await;
    };
    let leading = tokio::spawn(sealbroker_operator::leader::lead(
        api,
        election("controller-a"),
        || at("2026-01-02T03:04:05Z"),
        work,
        std::future::pending::<()>(),
    ));
    // Round 1: another replica holds it; the work has not started.
    let (_, _, _, send) = next(&mut handle).await;
    ok(
        send,
        &lease_json("controller-b", "2026-01-02T03:04:00.000000Z", 2),
    );
    // Round 2 (after renew_every): it expired, and this replica takes it.
    let (_, _, _, send) = next(&mut handle).await;
    assert!(
        started_rx.try_recv().is_err(),
        "the work ran before the Lease was held"
    );
    ok(
        send,
        &lease_json("controller-b", "2026-01-02T03:03:00.000000Z", 2),
    );
    let (method, _, body, send) = next(&mut handle).await;
    assert_eq!(method, Method::PUT);
    ok(send, &body);
    // The work starts; at the next renewal another replica holds the Lease.
    let (_, _, _, send) = next(&mut handle).await;
    assert!(
        started_rx.try_recv().is_ok(),
        "the work did not start once the Lease was held"
    );
    ok(
        send,
        &lease_json("controller-c", "2026-01-02T03:04:04.000000Z", 4),
    );
    let lost = leading.await.unwrap().unwrap_err();
    assert!(lost.0.contains("another replica holds"), "{lost:?}");
}
