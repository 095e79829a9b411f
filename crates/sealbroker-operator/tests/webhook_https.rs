//! The admission webhook as a real HTTPS server (rustls), fed real
//! `admission.k8s.io/v1` AdmissionReview JSON. Returned JSONPatches are
//! applied to the Pod with the `json-patch` crate and the result inspected.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use sealbroker_operator::crd::SealBroker;
use sealbroker_operator::webhook;
use sealbroker_testkit::pki::{Leaf, TestCa};
use serde_json::{Value, json};

const PIN_SECRET: &str = "hsm-pin";

struct Server {
    addr: std::net::SocketAddr,
    ca: CertificateDer<'static>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

fn sealbroker(file: &str) -> SealBroker {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    sealbroker_operator::parse_sealbroker(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pod_json() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pod.input.yaml");
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut pod = serde_json::to_value(pod).unwrap();
    // Hardened pins every image of a served Pod.
    pod["spec"]["containers"][0]["image"] = json!(OPENBAO_IMAGE);
    pod
}

const OPENBAO_IMAGE: &str =
    "quay.io/openbao/openbao@sha256:2222222222222222222222222222222222222222222222222222222222222222";

async fn start(brokers: Vec<SealBroker>) -> Server {
    start_with(brokers, webhook::Bounds::default()).await
}

async fn start_with(brokers: Vec<SealBroker>, bounds: webhook::Bounds) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("sealbroker webhook test CA");
    let files = ca.issue(&Leaf::server(&["localhost"])).write(dir.path(), "tls");
    let tls = webhook::tls_config(&files.cert, &files.key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(webhook::serve(
        listener,
        Arc::new(tls),
        Arc::new(brokers),
        bounds,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        ca: ca.der(),
        _stop: stop,
        _dir: dir,
    }
}

impl Server {
    /// POSTs `body` to `path` over TLS, verifying the server certificate.
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let tls = self.tls().await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = http::Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A TLS connection to the webhook, the server certificate verified.
    async fn tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }
}

fn review(kind: &str, resource: &str, group: &str, namespace: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": if group.is_empty() { "v1" } else { "v1alpha1" }, "kind": kind},
            "resource": {"group": group, "version": if group.is_empty() { "v1" } else { "v1alpha1" }, "resource": resource},
            "requestKind": {"group": group, "version": if group.is_empty() { "v1" } else { "v1alpha1" }, "kind": kind},
            "requestResource": {"group": group, "version": if group.is_empty() { "v1" } else { "v1alpha1" }, "resource": resource},
            "name": object["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:statefulset-controller", "uid": "u", "groups": ["system:serviceaccounts"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn pod_review(pod: Value) -> Value {
    review("Pod", "pods", "", "openbao", pod)
}

/// Applies the response's JSONPatch (if any) to `object`.
fn apply_patch(object: &Value, response: &Value) -> Value {
    let mut out = object.clone();
    if let Some(patch) = response["response"]["patch"].as_str() {
        assert_eq!(response["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(patch).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut out, &patch).unwrap();
    }
    out
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

#[tokio::test]
async fn mutate_injects_sidecar_and_a_second_admission_changes_nothing() {
    let server = start(vec![sealbroker("hardened.input.yaml")]).await;
    let pod = pod_json();
    let (status, answer) = server.post("/mutate-pods", &pod_review(pod.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let injected = apply_patch(&pod, &answer);

    let init = &injected["spec"]["initContainers"];
    let plugin = named(init, "sealbroker-plugin").unwrap_or_else(|| panic!("no plugin installer: {answer}"));
    let sidecar = named(init, "sealbroker").expect("sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(
        sidecar["args"],
        json!(["serve", "--config", "/etc/sealbroker/sealbroker.toml"])
    );
    for c in [plugin, sidecar] {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    }
    // The credentials reach the sidecar and nothing else.
    let cred_volume = named(&injected["spec"]["volumes"], "sealbroker-cred-hsm").expect("credential volume");
    assert_eq!(
        cred_volume["projected"]["sources"][0]["secret"]["name"],
        PIN_SECRET
    );
    assert!(named(&sidecar["volumeMounts"], "sealbroker-cred-hsm").is_some());
    let openbao = named(&injected["spec"]["containers"], "openbao").unwrap();
    let openbao_mounts = serde_json::to_string(&openbao["volumeMounts"]).unwrap();
    assert!(!openbao_mounts.contains("sealbroker-cred"), "{openbao_mounts}");
    assert!(
        !serde_json::to_string(&openbao["env"])
            .unwrap()
            .contains(PIN_SECRET)
    );
    // OpenBao gets the plugin directory, the socket and the stanza, read-only.
    for (volume, path) in [
        ("sealbroker-plugins", "/openbao/plugins"),
        ("sealbroker-socket", "/run/sealbroker"),
        ("sealbroker-seal", "/openbao/sealbroker"),
    ] {
        let m = named(&openbao["volumeMounts"], volume).unwrap_or_else(|| panic!("{volume} not mounted"));
        assert_eq!(m["mountPath"], path);
        assert_eq!(m["readOnly"], true);
    }
    // The user's own mounts are untouched.
    assert!(named(&openbao["volumeMounts"], "config").is_some());

    // Re-admitting the injected Pod is a no-op.
    let (_, again) = server.post("/mutate-pods", &pod_review(injected.clone())).await;
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"]["patch"].is_null(), "{again}");
    assert_eq!(apply_patch(&injected, &again), injected);

    // And the injected Pod passes the validating webhook.
    let (_, validated) = server.post("/validate-pods", &pod_review(injected)).await;
    assert_eq!(validated["response"]["allowed"], true, "{validated}");
}

/// The webhook fails closed, so idle sockets must not stall admission: the
/// oldest connection still in its handshake gives way to a new one, and a
/// client that trickles its headers is dropped at the header timeout.
#[tokio::test]
async fn an_idle_flood_cannot_stall_admission_and_slow_headers_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bounds = webhook::Bounds {
        max_connections: 8,
        header_timeout: std::time::Duration::from_secs(1),
        idle: std::time::Duration::from_secs(60),
    };
    let server = start_with(vec![], bounds).await;
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let (status, response) = server.post("/mutate-pods", &pod_review(pod_json())).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["response"]["allowed"], true, "{response}");

    let mut slow = server.tls().await;
    slow.write_all(b"POST /mutate-pods HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a client that never finished its headers was kept past 10 s"
    );
    drop(flood);
}

#[tokio::test]
async fn pods_not_selected_are_left_alone() {
    let server = start(vec![sealbroker("hardened.input.yaml")]).await;
    let mut pod = pod_json();
    pod["metadata"]["labels"] = json!({"app": "web"});
    let (_, answer) = server.post("/mutate-pods", &pod_review(pod)).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_null());
}

#[tokio::test]
async fn hardened_denies_a_pod_that_gives_openbao_the_credentials() {
    let server = start(vec![sealbroker("hardened.input.yaml")]).await;
    let pod = pod_json();
    let (_, answer) = server.post("/mutate-pods", &pod_review(pod.clone())).await;
    let mut injected = apply_patch(&pod, &answer);
    // Someone also hands OpenBao the PIN, by volume and by environment.
    let openbao = injected["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "openbao")
        .unwrap();
    openbao["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sealbroker-cred-hsm", "mountPath": "/pin", "readOnly": true}));
    openbao["env"] =
        json!([{"name": "PIN", "valueFrom": {"secretKeyRef": {"name": PIN_SECRET, "key": "pin"}}}]);
    let (_, denied) = server.post("/validate-pods", &pod_review(injected)).await;
    assert_eq!(denied["response"]["allowed"], false, "{denied}");
    let message = denied["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("Hardened SealBroker openbao refuses this Pod"),
        "{message}"
    );
    assert!(
        message.contains("mounts volume \"sealbroker-cred-hsm\""),
        "{message}"
    );
    assert!(
        message.contains("env \"PIN\" reads Secret \"hsm-pin\""),
        "{message}"
    );
    assert!(message.contains("never to OpenBao"), "{message}");
}

fn sealbroker_review(sb: &SealBroker) -> Value {
    review(
        "SealBroker",
        "sealbrokers",
        "sealbroker.io",
        sb.metadata.namespace.as_deref().unwrap(),
        serde_json::to_value(sb).unwrap(),
    )
}

#[tokio::test]
async fn hardened_sealbroker_with_software_key_or_tag_image_is_denied_with_the_reason() {
    let server = start(Vec::new()).await;
    let mut sb = sealbroker("development.input.yaml");
    sb.spec.profile = sealbroker_operator::crd::Profile::Hardened;
    let (_, answer) = server
        .post("/validate-sealbrokers", &sealbroker_review(&sb))
        .await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("spec.backends[0].software"), "{message}");
    assert!(message.contains("no external root of trust"), "{message}");
    assert!(message.contains("spec.image"), "{message}");
    assert!(message.contains("pinned by digest"), "{message}");

    // Allowed, but SoftHSM keeps the root in the cluster: a warning says so.
    let hardened = sealbroker("hardened.input.yaml");
    let (_, answer) = server
        .post("/validate-sealbrokers", &sealbroker_review(&hardened))
        .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let warning = answer["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("keeps its unseal root inside the cluster") && warning.contains("loads SoftHSM"),
        "{warning}"
    );
    // A vendor's module: no warning.
    let mut vendor = hardened.clone();
    vendor.spec.backends[0].pkcs11.as_mut().unwrap().lib = "/opt/vendor/libpkcs11.so".into();
    let (_, answer) = server
        .post("/validate-sealbrokers", &sealbroker_review(&vendor))
        .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"]["warnings"].is_null(), "{answer}");
    // Without OpenBao's TLS Secret it is refused, naming the field.
    let mut no_tls = vendor;
    no_tls.spec.openbao.tls_secret = None;
    let (_, answer) = server
        .post("/validate-sealbrokers", &sealbroker_review(&no_tls))
        .await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("spec.openbao.tlsSecret"), "{message}");
}

/// Under Hardened, OpenBao's container mounts its TLS from the Secret the
/// SealBroker names: without that mount, or with another Secret, the Pod
/// is refused naming the container and the Secret.
#[tokio::test]
async fn hardened_requires_openbao_to_mount_its_tls_from_the_named_secret() {
    let sb = sealbroker("hardened.input.yaml");
    let server = start(vec![sb.clone()]).await;
    let mut pod = injected_pod(&sb);
    let (_, answer) = server.post("/validate-pods", &pod_review(pod.clone())).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let tls_volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v["name"] == "tls")
        .unwrap();
    for change in ["unmounted", "another secret"] {
        let mut bad = pod.clone();
        match change {
            "unmounted" => {
                let mounts = bad["spec"]["containers"][0]["volumeMounts"]
                    .as_array_mut()
                    .unwrap();
                mounts.retain(|m| m["name"] != "tls");
            }
            _ => bad["spec"]["volumes"][tls_volume]["secret"]["secretName"] = json!("self-signed-in-pod"),
        }
        let message = denial(&server.post("/validate-pods", &pod_review(bad)).await.1);
        assert!(
            message.contains(
                "spec.containers[openbao].volumeMounts: mount OpenBao's TLS from Secret \"openbao-tls\""
            ),
            "{change}: {message}"
        );
    }
    // A projected volume holding the Secret counts too.
    pod["spec"]["volumes"][tls_volume] =
        json!({"name": "tls", "projected": {"sources": [{"secret": {"name": "openbao-tls"}}]}});
    let (_, answer) = server.post("/validate-pods", &pod_review(pod)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

#[tokio::test]
async fn development_sealbroker_is_allowed_with_a_risk_warning() {
    let server = start(Vec::new()).await;
    let sb = sealbroker("development.input.yaml");
    let (_, answer) = server
        .post("/validate-sealbrokers", &sealbroker_review(&sb))
        .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let warning = answer["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("SecurityRisk"), "{warning}");
}

#[tokio::test]
async fn garbage_and_unknown_paths_get_clear_answers() {
    let server = start(Vec::new()).await;
    let (status, answer) = server.post("/mutate-pods", &json!({"hello": "world"})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let (status, _) = server.post("/nowhere", &json!({})).await;
    assert_eq!(status, 404);
}

/// `review` turned into an UPDATE of `old` (or of the subresource `sub`).
fn as_update(mut review: Value, old: Value, sub: Option<&str>) -> Value {
    review["request"]["operation"] = json!("UPDATE");
    review["request"]["oldObject"] = old;
    review["request"]["options"] = json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"});
    if let Some(sub) = sub {
        review["request"]["subResource"] = json!(sub);
        review["request"]["requestSubResource"] = json!(sub);
    }
    review
}

#[tokio::test]
async fn an_update_that_changes_the_profile_is_denied_naming_the_field() {
    let server = start(Vec::new()).await;
    let hardened = sealbroker("hardened.input.yaml");
    let mut relaxed = hardened.clone();
    relaxed.spec.profile = sealbroker_operator::crd::Profile::Development;
    let request = as_update(
        sealbroker_review(&relaxed),
        serde_json::to_value(&hardened).unwrap(),
        None,
    );
    let (_, answer) = server.post("/validate-sealbrokers", &request).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.profile: is immutable (was Hardened, now Development)"),
        "{message}"
    );

    // Development to Hardened is no promotion either.
    let development = sealbroker("development.input.yaml");
    let mut promoted = development.clone();
    promoted.spec.profile = sealbroker_operator::crd::Profile::Hardened;
    let request = as_update(
        sealbroker_review(&promoted),
        serde_json::to_value(&development).unwrap(),
        None,
    );
    let (_, answer) = server.post("/validate-sealbrokers", &request).await;
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("spec.profile: is immutable"), "{message}");

    // An UPDATE that keeps the profile passes.
    let mut rotated = hardened.clone();
    rotated.spec.seal.aad = Some("cluster-prod-2".into());
    let request = as_update(
        sealbroker_review(&rotated),
        serde_json::to_value(&hardened).unwrap(),
        None,
    );
    let (_, answer) = server.post("/validate-sealbrokers", &request).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

/// The Development SealBroker, moved into the namespace the reviews name.
fn development_in_openbao() -> SealBroker {
    let mut sb = sealbroker("development.input.yaml");
    sb.metadata.namespace = Some("openbao".into());
    sb
}

/// The Pod as the mutating webhook left it under `sb`.
fn injected_pod(sb: &SealBroker) -> Value {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod_json()).unwrap();
    serde_json::to_value(sealbroker_operator::injection::inject(&pod, sb).unwrap()).unwrap()
}

fn denial(answer: &Value) -> String {
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    answer["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A debug container, as `kubectl debug` adds it.
fn debug_container(mounts: Value, target: Option<&str>) -> Value {
    let mut c = json!({
        "name": "debugger",
        "image": "busybox@sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "command": ["sh"],
        "stdin": true,
        "tty": true,
        "volumeMounts": mounts,
    });
    if let Some(target) = target {
        c["targetContainerName"] = json!(target);
    }
    c
}

#[tokio::test]
async fn the_webhook_configuration_covers_ephemeral_containers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base/operator/webhook.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .unwrap();
    let pods = named(&config["webhooks"], "pods.validate.sealbroker.io").unwrap();
    let rule = &pods["rules"][0];
    assert_eq!(rule["resources"], json!(["pods", "pods/ephemeralcontainers"]));
    assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
    assert_eq!(pods["failurePolicy"], "Fail");
}

#[tokio::test]
async fn an_ephemeral_container_may_not_mount_the_pin_secret() {
    let sb = sealbroker("hardened.input.yaml");
    let server = start(vec![sb.clone()]).await;
    let old = injected_pod(&sb);
    // The clean injected Pod passes.
    let (_, answer) = server.post("/validate-pods", &pod_review(old.clone())).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    let mut debugged = old.clone();
    debugged["spec"]["ephemeralContainers"] = json!([debug_container(
        json!([{"name": "sealbroker-cred-hsm", "mountPath": "/pin", "readOnly": true}]),
        None
    )]);
    let request = as_update(
        pod_review(debugged.clone()),
        old.clone(),
        Some("ephemeralcontainers"),
    );
    let message = denial(&server.post("/validate-pods", &request).await.1);
    assert!(
        message.contains("spec.ephemeralContainers[debugger]: mounts volume \"sealbroker-cred-hsm\""),
        "{message}"
    );

    // By environment too.
    let mut by_env = old.clone();
    let mut debug = debug_container(json!([]), None);
    debug["env"] =
        json!([{"name": "PIN", "valueFrom": {"secretKeyRef": {"name": PIN_SECRET, "key": "pin"}}}]);
    debug["envFrom"] = json!([{"secretRef": {"name": "transit-token"}}]);
    by_env["spec"]["ephemeralContainers"] = json!([debug]);
    let request = as_update(pod_review(by_env), old.clone(), Some("ephemeralcontainers"));
    let message = denial(&server.post("/validate-pods", &request).await.1);
    assert!(
        message.contains("env \"PIN\" reads Secret \"hsm-pin\""),
        "{message}"
    );
    assert!(
        message.contains("envFrom reads Secret \"transit-token\""),
        "{message}"
    );

    // Nor attach to the broker's process namespace, mounting nothing.
    let mut attached = old.clone();
    attached["spec"]["ephemeralContainers"] = json!([debug_container(json!([]), Some("sealbroker"))]);
    let request = as_update(pod_review(attached), old.clone(), Some("ephemeralcontainers"));
    let message = denial(&server.post("/validate-pods", &request).await.1);
    assert!(
        message
            .contains("spec.ephemeralContainers[debugger].targetContainerName: targets the broker container"),
        "{message}"
    );

    // A debug container next to OpenBao, holding nothing, is allowed.
    let mut harmless = old.clone();
    harmless["spec"]["ephemeralContainers"] = json!([debug_container(json!([]), Some("openbao"))]);
    let request = as_update(pod_review(harmless), old, Some("ephemeralcontainers"));
    let (_, answer) = server.post("/validate-pods", &request).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

#[tokio::test]
async fn a_container_named_sealbroker_with_another_image_is_not_trusted() {
    let sb = sealbroker("hardened.input.yaml");
    let server = start(vec![sb.clone()]).await;
    let injected = injected_pod(&sb);
    let impostor_image =
        "ghcr.io/evil/sealbroker@sha256:9999999999999999999999999999999999999999999999999999999999999999";
    let mut impostor = injected.clone();
    let sidecar = impostor["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "sealbroker")
        .unwrap();
    sidecar["image"] = json!(impostor_image);
    // At CREATE.
    let message = denial(
        &server
            .post("/validate-pods", &pod_review(impostor.clone()))
            .await
            .1,
    );
    assert!(
        message.contains("spec.initContainers[sealbroker]: mounts volume \"sealbroker-cred-hsm\""),
        "{message}"
    );
    // And as an UPDATE of the image of the running Pod.
    let request = as_update(pod_review(impostor), injected.clone(), None);
    let message = denial(&server.post("/validate-pods", &request).await.1);
    assert!(message.contains("spec.initContainers[sealbroker]"), "{message}");

    // The right image with another command or a looser security context is no broker either.
    for change in ["command", "securityContext"] {
        let mut other = injected.clone();
        let sidecar = other["spec"]["initContainers"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["name"] == "sealbroker")
            .unwrap();
        if change == "command" {
            sidecar["command"] = json!(["/bin/sh", "-c", "cat /etc/sealbroker/secrets/hsm/pin"]);
        } else {
            sidecar["securityContext"]["runAsUser"] = json!(100);
        }
        let message = denial(&server.post("/validate-pods", &pod_review(other)).await.1);
        assert!(
            message.contains("spec.initContainers[sealbroker]"),
            "{change}: {message}"
        );
    }

    // A plain container named sealbroker in an unselected Pod is no broker either.
    let mut stray = pod_json();
    stray["metadata"]["labels"] = json!({"app": "web"});
    stray["spec"]["containers"] = json!([{
        "name": "sealbroker",
        "image": sb.spec.image,
        "command": ["/usr/local/bin/sealbroker"],
        "env": [{"name": "PIN", "valueFrom": {"secretKeyRef": {"name": PIN_SECRET, "key": "pin"}}}],
    }]);
    let message = denial(&server.post("/validate-pods", &pod_review(stray)).await.1);
    assert!(
        message.contains("spec.containers[sealbroker]: env \"PIN\""),
        "{message}"
    );
}

#[tokio::test]
async fn any_pod_of_a_served_namespace_is_checked_and_the_keygen_job_passes() {
    let sb = sealbroker("hardened.input.yaml");
    let server = start(vec![sb.clone()]).await;
    // A Pod no SealBroker selects, mounting the PIN.
    let mut other = pod_json();
    other["metadata"]["labels"] = json!({"app": "web"});
    other["spec"]["volumes"] = json!([{"name": "pin", "secret": {"secretName": PIN_SECRET}}]);
    other["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "pin", "mountPath": "/pin"}]);
    let message = denial(&server.post("/validate-pods", &pod_review(other)).await.1);
    assert!(
        message.contains("spec.containers[openbao]: mounts volume \"pin\""),
        "{message}"
    );

    // The controller's key-creation Job's Pod mounts the credentials and passes.
    let job = sealbroker_operator::desired::keygen_job(&sb, "openbao-unseal", 2, 1);
    let template = serde_json::to_value(job.spec.unwrap().template).unwrap();
    let keygen = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "openbao-keygen-x", "namespace": "openbao", "labels": template["metadata"]["labels"]},
        "spec": template["spec"]});
    let (_, answer) = server.post("/validate-pods", &pod_review(keygen.clone())).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    // ... unless a second container rides along with the credentials.
    let mut riding = keygen;
    let mut extra = riding["spec"]["containers"][0].clone();
    extra["name"] = json!("exfiltrate");
    extra["command"] = json!(["/bin/sh"]);
    riding["spec"]["containers"].as_array_mut().unwrap().push(extra);
    let message = denial(&server.post("/validate-pods", &pod_review(riding)).await.1);
    assert!(message.contains("spec.containers[exfiltrate]"), "{message}");
}

#[tokio::test]
async fn a_served_pod_may_not_share_its_process_namespace() {
    let sb = sealbroker("hardened.input.yaml");
    let server = start(vec![sb.clone()]).await;
    let mut shared = injected_pod(&sb);
    shared["spec"]["shareProcessNamespace"] = json!(true);
    let message = denial(&server.post("/validate-pods", &pod_review(shared.clone())).await.1);
    assert!(
        message.contains("spec.shareProcessNamespace: must not be true"),
        "{message}"
    );
    // Under Development too: the PIN is as readable through /proc.
    let development = development_in_openbao();
    let server = start(vec![development.clone()]).await;
    let mut shared = injected_pod(&development);
    shared["spec"]["shareProcessNamespace"] = json!(true);
    let message = denial(&server.post("/validate-pods", &pod_review(shared)).await.1);
    assert!(message.contains("spec.shareProcessNamespace"), "{message}");
    // A Pod the broker does not serve may.
    let mut web = pod_json();
    web["metadata"]["labels"] = json!({"app": "web"});
    web["spec"]["shareProcessNamespace"] = json!(true);
    let (_, answer) = server.post("/validate-pods", &pod_review(web)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

#[tokio::test]
async fn hardened_requires_every_image_of_a_served_pod_pinned_by_digest() {
    let sb = sealbroker("hardened.input.yaml");
    let server = start(vec![sb.clone()]).await;
    let injected = injected_pod(&sb);
    let mut tagged = injected.clone();
    tagged["spec"]["containers"][0]["image"] = json!("quay.io/openbao/openbao:2.7.2");
    let message = denial(&server.post("/validate-pods", &pod_review(tagged.clone())).await.1);
    assert!(
        message.contains("spec.containers[openbao].image: the Hardened profile requires every image"),
        "{message}"
    );
    assert!(message.contains("quay.io/openbao/openbao:2.7.2"), "{message}");
    // An UPDATE to a tag is refused too, and so is a tagged debug container.
    let request = as_update(pod_review(tagged), injected.clone(), None);
    denial(&server.post("/validate-pods", &request).await.1);
    let mut debugged = injected.clone();
    let mut debug = debug_container(json!([]), None);
    debug["image"] = json!("busybox:latest");
    debugged["spec"]["ephemeralContainers"] = json!([debug]);
    let request = as_update(pod_review(debugged), injected, Some("ephemeralcontainers"));
    let message = denial(&server.post("/validate-pods", &request).await.1);
    assert!(
        message.contains("spec.ephemeralContainers[debugger].image"),
        "{message}"
    );

    // Development allows tags.
    let development = development_in_openbao();
    let server = start(vec![development.clone()]).await;
    let mut tagged = injected_pod(&development);
    assert!(named(&tagged["spec"]["initContainers"], "sealbroker").is_some());
    tagged["spec"]["containers"][0]["image"] = json!("quay.io/openbao/openbao:2.7.2");
    let (_, answer) = server.post("/validate-pods", &pod_review(tagged)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

#[tokio::test]
async fn several_sealbrokers_in_one_namespace_keep_their_credentials_apart() {
    let a = sealbroker("hardened.input.yaml");
    let mut b = a.clone();
    b.metadata.name = Some("second".into());
    b.spec.openbao.selector.match_labels =
        Some([("app.kubernetes.io/name".to_string(), "second".to_string())].into());
    b.spec.backends.truncate(1);
    b.spec.keys.truncate(1);
    b.spec.backends[0].pkcs11.as_mut().unwrap().pin_secret.name = "second-pin".into();
    let server = start(vec![a.clone(), b.clone()]).await;

    // Each broker's own injected Pod passes.
    let pod_a = injected_pod(&a);
    let (_, answer) = server.post("/validate-pods", &pod_review(pod_a.clone())).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let pod_b = {
        let mut plain: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod_json()).unwrap();
        plain.metadata.labels = Some([("app.kubernetes.io/name".to_string(), "second".to_string())].into());
        serde_json::to_value(sealbroker_operator::injection::inject(&plain, &b).unwrap()).unwrap()
    };
    let (_, answer) = server.post("/validate-pods", &pod_review(pod_b.clone())).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // A's sidecar (same image, same uid) may not also hold B's PIN.
    let mut greedy = pod_a.clone();
    greedy["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "b-pin", "secret": {"secretName": "second-pin"}}));
    let sidecar = greedy["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "sealbroker")
        .unwrap();
    sidecar["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "b-pin", "mountPath": "/b", "readOnly": true}));
    let message = denial(&server.post("/validate-pods", &pod_review(greedy)).await.1);
    assert!(
        message.contains("Hardened SealBroker second refuses this Pod"),
        "{message}"
    );
    assert!(
        message.contains("spec.initContainers[sealbroker]: mounts volume \"b-pin\""),
        "{message}"
    );
    assert!(!message.contains("SealBroker openbao refuses"), "{message}");

    // A Pod both select is refused outright.
    let mut both = pod_json();
    both["metadata"]["labels"] = json!({"app.kubernetes.io/name": "openbao"});
    let mut b2 = b.clone();
    b2.spec.openbao.selector = a.spec.openbao.selector.clone();
    let server = start(vec![a, b2]).await;
    let message = denial(&server.post("/validate-pods", &pod_review(both)).await.1);
    assert!(
        message.contains("selected by several SealBrokers (openbao, second)"),
        "{message}"
    );
}
