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
    serde_json::to_value(pod).unwrap()
}

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

    let hardened = sealbroker("hardened.input.yaml");
    let (_, answer) = server
        .post("/validate-sealbrokers", &sealbroker_review(&hardened))
        .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"]["warnings"].is_null());
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
