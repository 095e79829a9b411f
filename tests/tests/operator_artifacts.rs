//! The operator's rendered artifacts are real: `sealbroker-operator render`
//! turns a SealBroker into the broker config and OpenBao seal stanza exactly
//! as the controller writes them into ConfigMaps (paths re-rooted under a
//! temporary directory). The real `sealbroker` serves that config and the real
//! OpenBao 2.7.2 (raft storage) runs with that stanza: it initialises,
//! restarts and auto-unseals. The sidecar reports its key versions on its
//! Pod to an in-repo stand-in for the API server (no emulator exists), in
//! the form the controller's rotation reads. Under Hardened, OpenBao
//! initialises itself from the rendered `initialize` block (no root token is
//! ever returned) and an admin logs in with a JWT that block trusts.
//!
//! The operator binary is `$SEALBROKER_OPERATOR_BIN`, or
//! `target/debug/sealbroker-operator` once the crate joins the workspace.

use std::fs;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sealbroker_e2e::openbao::{BaoConfig, OpenBao, install_plugin};
use sealbroker_e2e::*;
use sealbroker_operator::render::config_sha256;
use sealbroker_operator::rotation::{VersionState, parse_report_text};
use sealbroker_testkit::https_stub::{HttpsStub, StubRequest, StubResponse};
use sealbroker_testkit::pki::{Leaf, TestCa};

const PIN: &str = "operator-e2e-pin-7734";
const SECRET: &str = "operator-kv-secret-value";

fn operator_bin() -> PathBuf {
    let path = std::env::var_os("SEALBROKER_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/sealbroker-operator"));
    assert!(
        path.exists(),
        "{} is missing: build crates/sealbroker-operator (or set SEALBROKER_OPERATOR_BIN)",
        path.display()
    );
    path
}

fn operator(args: &[&str]) -> Output {
    Command::new(operator_bin()).args(args).output().unwrap()
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A SealBroker manifest for one backend, admitting this test's uid as OpenBao.
/// A platform admin's JWT signer (ES256), whose public key the Hardened
/// SealBroker's self-init makes OpenBao's `jwt` auth method trust.
struct AdminSigner {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl AdminSigner {
    fn new() -> Self {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        AdminSigner { key, rng }
    }

    fn public_pem(&self) -> String {
        use ring::signature::KeyPair;
        sealbroker_core::PublicKey::ec(
            sealbroker_core::KeyAlgorithm::EcdsaP256,
            self.key.public_key().as_ref(),
        )
        .unwrap()
        .pem()
    }

    /// A JWT for `subject`, audience `openbao`, valid for five minutes.
    fn jwt(&self, subject: &str) -> String {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({"sub": subject, "aud": "openbao", "iat": now, "nbf": now - 5, "exp": now + 300});
        let input = format!(
            "{}.{}",
            b64(r#"{"alg":"ES256","typ":"JWT"}"#.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.key.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }
}

/// `spec.openbao.selfInit` for a Hardened SealBroker: an admin policy, the
/// `jwt` auth method trusting `pem`, and role `admin` for subject
/// `platform-admin`.
fn self_init_yaml(pem: &str) -> String {
    format!(
        "    selfInit:
      requests:
        - name: admin-policy
          operation: update
          path: sys/policies/acl/admin
          data:
            policy: 'path \"*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\", \"sudo\"] }}'
        - name: enable-jwt
          operation: update
          path: sys/auth/jwt
          data: {{ type: jwt }}
        - name: jwt-config
          operation: update
          path: auth/jwt/config
          data: {{ jwt_validation_pubkeys: [{pem}] }}
        - name: admin-role
          operation: update
          path: auth/jwt/role/admin
          data:
            role_type: jwt
            user_claim: sub
            bound_subject: platform-admin
            bound_audiences: [openbao]
            token_policies: [admin]
            token_ttl: 15m
",
        pem = serde_json::to_string(pem).unwrap()
    )
}

fn sealbroker_yaml(profile: &str, image: &str, backend: &str, key: &str) -> String {
    sealbroker_yaml_with(profile, image, backend, key, "")
}

/// As [`sealbroker_yaml`], with `openbao_extra` (indented YAML) added under
/// `spec.openbao`.
fn sealbroker_yaml_with(profile: &str, image: &str, backend: &str, key: &str, openbao_extra: &str) -> String {
    let uid = current_uid();
    // The broker's own uid only matters in the Pod; it must differ from OpenBao's.
    let broker_uid = if uid == 65532 { 65533 } else { 65532 };
    format!(
        "apiVersion: sealbroker.io/v1alpha1
kind: SealBroker
metadata:
  name: openbao
  namespace: openbao
spec:
  profile: {profile}
  image: {image}
  pluginSha256: {sha}
  brokerUid: {broker_uid}
  openbao:
    selector:
      matchLabels:
        app.kubernetes.io/name: openbao
    uid: {uid}
    tlsSecret: openbao-tls
{openbao_extra}  seal:
    key: openbao-unseal
    aad: e2e-cluster
  backends:
    - name: hsm
{backend}
  keys:
    - name: openbao-unseal
      backend: hsm
{key}
",
        sha = sha256_of(&sealbroker_bin()),
    )
}

const PKCS11_BACKEND: &str = "      pkcs11:
        lib: /usr/lib/softhsm/libsofthsm2.so
        tokenLabel: bao
        pinSecret:
          name: hsm-pin";
const PKCS11_KEY: &str = "      keyLabel: unseal-key";

/// What `render --out` reported: credential destinations, socket, plugin dir.
struct Rendered {
    config: PathBuf,
    stanza: PathBuf,
    secrets: Vec<(String, PathBuf)>,
    plugin_dir: PathBuf,
}

fn render(dir: &Path, manifest: &str) -> Rendered {
    let input = dir.join("sealbroker.yaml");
    fs::write(&input, manifest).unwrap();
    let root = dir.join("root");
    let out_dir = dir.join("rendered");
    let out = operator(&[
        "render",
        "-f",
        input.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "render failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut secrets = Vec::new();
    let mut plugin_dir = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("secret ") {
            let (secret, path) = rest.split_once(" -> ").unwrap();
            secrets.push((secret.to_owned(), PathBuf::from(path)));
        }
        if let Some(path) = line.strip_prefix("plugin_directory ") {
            plugin_dir = Some(PathBuf::from(path));
        }
    }
    // The printed text is the same as the files (and as the ConfigMaps).
    let printed = operator(&[
        "render",
        "-f",
        input.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    let config = out_dir.join("sealbroker.toml");
    let stanza = out_dir.join("seal.hcl");
    assert!(printed.contains(&fs::read_to_string(&config).unwrap()));
    assert!(printed.contains(&fs::read_to_string(&stanza).unwrap()));
    Rendered {
        config,
        stanza,
        secrets,
        plugin_dir: plugin_dir.expect("render names the plugin directory"),
    }
}

/// Puts each Secret value where the kubelet would project it.
fn project_secrets(rendered: &Rendered) {
    for (secret, path) in &rendered.secrets {
        assert_eq!(secret, "hsm-pin/pin", "unexpected credential {secret}");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, PIN).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o400)).unwrap();
    }
    fs::create_dir_all(
        rendered
            .config
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("root/run/sealbroker"),
    )
    .unwrap();
    fs::create_dir_all(
        rendered
            .config
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("root/var/lib/sealbroker"),
    )
    .unwrap();
}

/// OpenBao's own config (storage, listener) plus the rendered stanza, as the
/// StatefulSet passes them: two -config files, in one directory here.
fn bao_config(dir: &Path, rendered: &Rendered) -> BaoConfig {
    let port = free_port();
    let cluster_port = free_port();
    let config_dir = dir.join("bao-config");
    fs::create_dir_all(&config_dir).unwrap();
    fs::write(
        config_dir.join("config.hcl"),
        BaoConfig::storage_and_listener(dir, port, cluster_port),
    )
    .unwrap();
    fs::copy(&rendered.stanza, config_dir.join("seal.hcl")).unwrap();
    BaoConfig {
        dir: dir.to_owned(),
        port,
        path: config_dir,
    }
}

/// The whole path: render, check, serve, install the plugin, init, restart, auto-unseal.
async fn renders_and_unseals(profile: &str, image: &str) {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let hardened = profile.eq_ignore_ascii_case("hardened");
    let admin = AdminSigner::new();
    let self_init = if hardened {
        self_init_yaml(&admin.public_pem())
    } else {
        String::new()
    };
    let rendered = render(
        dir.path(),
        &sealbroker_yaml_with(profile, image, PKCS11_BACKEND, PKCS11_KEY, &self_init),
    );
    let config_text = fs::read_to_string(&rendered.config).unwrap();
    assert!(
        config_text.contains(&format!("profile = \"{}\"", profile.to_lowercase())),
        "{config_text}"
    );
    assert!(
        config_text.contains(&format!("unwrap = [\"uid:{}\"]", current_uid())),
        "{config_text}"
    );
    assert!(!config_text.contains(PIN));
    project_secrets(&rendered);

    // The real broker accepts the rendered config and reaches the key.
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];
    let check = run_cli(
        &["serve", "--config", rendered.config.to_str().unwrap(), "--check"],
        b"",
        &env,
    );
    assert!(
        check.status.success(),
        "sealbroker serve --check refused the rendered config:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The sidecar's Pod: its name, its API token and a stand-in API server
    // (no kube-apiserver emulator exists) that takes its report.
    let api_dir = dir
        .path()
        .join("root/var/run/secrets/kubernetes.io/serviceaccount");
    fs::create_dir_all(&api_dir).unwrap();
    let api_ca = TestCa::new("stand-in API server CA");
    api_ca.write(&api_dir.join("ca.crt"));
    fs::write(api_dir.join("token"), "operator-artifacts-pod-token-5c1d\n").unwrap();
    let patches = Arc::new(Mutex::new(Vec::<StubRequest>::new()));
    let api = HttpsStub::start(api_ca.issue(&Leaf::server(&["localhost"])).server_config(), {
        let patches = patches.clone();
        move |request| {
            patches.lock().unwrap().push(request.clone());
            StubResponse::json(200, &serde_json::json!({"kind": "Pod"}))
        }
    })
    .await;
    let api_port = api.port().to_string();
    let socket = fs::read_to_string(&rendered.config)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("unix_socket = ")
                .map(|v| PathBuf::from(v.trim_matches('"')))
        });
    let daemon = Daemon::start(
        &["serve", "--config", rendered.config.to_str().unwrap()],
        &[
            ("SOFTHSM2_CONF", token.conf.as_path()),
            ("SEALBROKER_POD_NAME", Path::new("openbao-0")),
            ("SEALBROKER_POD_NAMESPACE", Path::new("openbao")),
            ("KUBERNETES_SERVICE_HOST", Path::new("localhost")),
            ("KUBERNETES_SERVICE_PORT", Path::new(&api_port)),
        ],
        &dir.path().join("daemon.log"),
        socket,
        None,
    )
    .await;
    // It reports on its Pod under the config the operator rendered, which
    // is what the controller's rotation counts.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let found = patches.lock().unwrap().iter().find_map(|request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).ok()?;
            let text = body["metadata"]["annotations"]["sealbroker.io/key-versions"].as_str()?;
            (request.path == "/api/v1/namespaces/openbao/pods/openbao-0").then(|| parse_report_text(text))
        });
        if let Some(report) = found {
            break report.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no report reached the stand-in API server:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report.config, config_sha256(&config_text));
    assert!(
        report
            .keys
            .values()
            .any(|versions| versions.get(&1) == Some(&VersionState::Usable)),
        "{report:?}"
    );

    // What the init container does: the binary into the plugin directory, whose
    // digest must be the one the stanza expects.
    let sha = install_plugin(&rendered.plugin_dir);
    let stanza = fs::read_to_string(&rendered.stanza).unwrap();
    assert!(stanza.contains(&format!("sha256sum = \"{sha}\"")), "{stanza}");

    // OpenBao gets no SoftHSM config, PIN or token: only the stanza and socket.
    let config = bao_config(dir.path(), &rendered);
    let bao = OpenBao::start(&config, &[], "bao-1.log");
    // Hardened: OpenBao initialises itself from the rendered `initialize`
    // block and no root token ever leaves it; an admin logs in with a JWT.
    // Development: `operator init`, which returns a root token.
    let login = |bao: &OpenBao| {
        let jwt = admin.jwt("platform-admin");
        let token = bao.must(
            &[
                "write",
                "-field=token",
                "auth/jwt/login",
                "role=admin",
                &format!("jwt={jwt}"),
            ],
            None,
        );
        token.trim().to_owned()
    };
    let root = if hardened {
        bao.wait_unsealed(Duration::from_secs(60));
        let again = bao.cli(&["operator", "init", "-format=json"], None);
        assert!(
            !again.status.success(),
            "operator init ran on a self-initialised OpenBao"
        );
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("already initialized"),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        // Another subject is refused: the role binds platform-admin only.
        let stranger = bao.cli(
            &[
                "write",
                "auth/jwt/login",
                "role=admin",
                &format!("jwt={}", admin.jwt("someone-else")),
            ],
            None,
        );
        assert!(!stranger.status.success(), "a JWT for another subject logged in");
        login(&bao)
    } else {
        let root = bao.init_auto();
        bao.wait_unsealed(Duration::from_secs(30));
        root
    };
    bao.write_secret(&root, SECRET);
    let status: serde_json::Value =
        serde_json::from_str(&bao.must(&["status", "-format=json"], None)).unwrap();
    assert_eq!(status["type"], "sealbroker", "{status}");
    bao.stop();

    let bao = OpenBao::start(&config, &[], "bao-2.log");
    let took = bao.wait_unsealed(Duration::from_secs(30));
    eprintln!("MEASURED operator-rendered {profile} (SoftHSM) unseal after restart: {took:?}");
    let token = if hardened { login(&bao) } else { root };
    assert_eq!(bao.read_secret(&token), SECRET);
    assert!(bao.logs().contains("unsealed with stored key"), "{}", bao.logs());
    assert!(!bao.logs().contains(PIN), "the HSM PIN reached OpenBao's log");
    bao.stop();

    let logs = daemon.logs();
    assert!(
        !logs.contains(PIN) && !logs.contains(SECRET),
        "secret material in the broker log"
    );
    // Audited with OpenBao's identity: on stdout, for the pod's log
    // collector, and (Development) also in the state directory.
    let audit = daemon.stdout();
    if profile.eq_ignore_ascii_case("development") {
        let file = fs::read_to_string(dir.path().join("root/var/lib/sealbroker/audit.jsonl")).unwrap();
        assert_eq!(file, audit, "the file and stdout trails differ");
    }
    assert!(
        audit.contains(&format!("uid={}", current_uid())),
        "no audit line names OpenBao's uid:\n{audit}"
    );
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_hardened_softhsm_artifacts_init_restart_and_auto_unseal_openbao() {
    let digest = "0".repeat(64);
    renders_and_unseals(
        "Hardened",
        &format!("registry.example/sealbroker@sha256:{digest}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_development_softhsm_artifacts_init_restart_and_auto_unseal_openbao() {
    renders_and_unseals("Development", "registry.example/sealbroker:dev").await;
}

#[test]
fn operator_render_refuses_hardened_software_key_and_tag_image_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sealbroker.yaml");
    fs::write(
        &input,
        sealbroker_yaml(
            "Hardened",
            "registry.example/sealbroker:latest",
            "      software: {}",
            "",
        ),
    )
    .unwrap();
    let out = operator(&["render", "-f", input.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refuses the software backend"), "{stderr}");
    assert!(stderr.contains("pinned by digest"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing rendered for a refused spec");
}

#[test]
fn operator_development_software_artifacts_pass_the_broker_check() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(
        dir.path(),
        &sealbroker_yaml(
            "Development",
            "registry.example/sealbroker:dev",
            "      software: {}",
            "",
        ),
    );
    project_secrets(&rendered);
    let check = run_cli(
        &["serve", "--config", rendered.config.to_str().unwrap(), "--check"],
        b"",
        &[],
    );
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
