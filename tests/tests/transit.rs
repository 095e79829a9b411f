//! The transit front door, end to end: the real daemon on SoftHSM2 behind
//! mutual TLS, driven by hvac (Python) and by OpenBao's stock
//! `seal "transit"`; and a plaintext development listener driven by hand.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealbroker_e2e::openbao::{BaoConfig, OpenBao};
use sealbroker_e2e::*;

const PIN: &str = "transit-pin-5521";

/// A fresh random token, written to `dir/name` (mode 0600, trailing newline).
fn token_file(dir: &Path, name: &str) -> (String, PathBuf) {
    let mut bytes = [0u8; 18];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let token = format!("hvs.{}", STANDARD.encode(bytes).replace(['+', '/'], "x"));
    let path = dir.join(name);
    fs::write(&path, format!("{token}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    (token, path)
}

/// A hardened config: one SoftHSM key `unseal`, a unix socket, and the
/// transit listener on `port` with mutual TLS, for `identity`'s token.
fn hardened_transit_config(
    dir: &Path,
    hsm: &SoftHsmToken,
    pki: &Pki,
    port: u16,
    identity: &str,
    token_file: &Path,
) -> PathBuf {
    let text = format!(
        r#"profile = "hardened"
[log]
level = "debug"
[server]
unix_socket = "{socket}"
[server.transit]
listen = "127.0.0.1:{port}"
[server.transit.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
[[server.transit.tokens]]
identity = "{identity}"
token_file = "{token_file}"
keys = ["unseal"]
{backend}
[keys.unseal]
backend = "hsm"
key_label = "unseal-key"
allow = {{ any = ["token:{identity}", "uid:{uid}"] }}
{audit}"#,
        audit = audit_toml(dir, "unseal"),
        uid = current_uid(),
        socket = dir.join("sb.sock").display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
        token_file = token_file.display(),
        backend = hsm.backend_toml("hsm"),
    );
    let path = dir.join("sealbroker.toml");
    fs::write(&path, text).unwrap();
    path
}

/// Python from the peers venv (tests/peers/install.sh), which has hvac.
fn peers_python() -> PathBuf {
    let venv = std::env::var_os("SEALBROKER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            home.join(".cache/sealbroker-peers/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `source <(bash tests/peers/install.sh)` or tests/run.sh",
        python.display()
    );
    python
}

/// Asserts that none of `secrets` (nor their base64) appears in `logs`.
fn assert_logs_hold_none_of(logs: &str, secrets: &[&str]) {
    assert!(!logs.is_empty(), "the daemon wrote no logs at all");
    for secret in secrets {
        for form in [secret.to_string(), STANDARD.encode(secret)] {
            assert!(
                !logs.contains(&form),
                "the daemon logs contain a secret ({form:?}):\n{logs}"
            );
        }
    }
}

#[tokio::test]
async fn hvac_uses_the_transit_door_over_mutual_tls_on_softhsm() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create(&dir.path().join("hsm"), "transit", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let (token, token_path) = token_file(dir.path(), "transit-token");
    let port = free_port();
    let config = hardened_transit_config(dir.path(), &hsm, &pki, port, "hvac-e2e", &token_path);
    let log = dir.path().join("daemon.log");
    let daemon = Daemon::serve(&config, Some(&hsm), &log).await;

    let plaintext = "hvac plaintext 7d1e0a";
    let aad = "cluster-a";
    let output = Command::new(peers_python())
        .arg(repo_root().join("tests/python/transit_hvac.py"))
        .args(["--url", &format!("https://127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(&token_path)
        .arg("--ca")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .arg("--rogue-cert")
        .arg(&pki.rogue_cert)
        .arg("--rogue-key")
        .arg(&pki.rogue_key)
        .args([
            "--mount",
            "transit",
            "--key-name",
            "unseal",
            "--identity",
            "hvac-e2e",
        ])
        .args(["--plaintext", plaintext, "--aad", aad])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "transit_hvac.py failed ({}):\n{report}\n--- daemon log ---\n{}",
        output.status,
        daemon.logs()
    );
    assert!(report.contains("all transit checks passed"), "{report}");

    let logs = daemon.logs();
    assert!(
        logs.contains("transit listening on HTTPS with mutual TLS"),
        "{logs}"
    );
    assert!(
        logs.contains("token:hvac-e2e"),
        "calls are not attributed to the token's identity:\n{logs}"
    );
    assert!(
        logs.contains("transit request refused"),
        "refusals are not logged:\n{logs}"
    );
    assert_logs_hold_none_of(&logs, &[&token, plaintext]);
    assert!(daemon.terminate().success());
}

#[tokio::test]
async fn openbao_stock_transit_seal_auto_unseals_through_sealbroker() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create(&dir.path().join("hsm"), "transit", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let (token, token_path) = token_file(dir.path(), "transit-token");
    let port = free_port();
    let config = hardened_transit_config(dir.path(), &hsm, &pki, port, "openbao-e2e", &token_path);
    let daemon = Daemon::serve(&config, Some(&hsm), &dir.path().join("daemon.log")).await;

    // OpenBao's built-in seal; nothing sealbroker-specific on its side.
    let seal = format!(
        r#"seal "transit" {{
  address         = "https://127.0.0.1:{port}"
  token           = "{token}"
  key_name        = "unseal"
  mount_path      = "transit/"
  tls_ca_cert     = "{ca}"
  tls_client_cert = "{cert}"
  tls_client_key  = "{key}"
  tls_server_name = "localhost"
}}"#,
        ca = pki.ca.display(),
        cert = pki.client_cert.display(),
        key = pki.client_key.display(),
    );
    let bao_dir = dir.path().join("bao");
    let bao_config = BaoConfig::write(&bao_dir, &seal);
    let bao = OpenBao::start(&bao_config, &[], "bao-1.log");
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    let secret_value = "kv value 3b8f";
    bao.write_secret(&root, secret_value);
    bao.stop();

    // A restart unseals through the broker alone: no keys typed in.
    let bao = OpenBao::start(&bao_config, &[], "bao-2.log");
    let took = bao.wait_unsealed(Duration::from_secs(30));
    eprintln!("MEASURED stock seal \"transit\" through sealbroker: unseal after restart {took:?}");
    assert_eq!(bao.read_secret(&root), secret_value);
    let bao_logs = bao.logs();
    bao.stop();

    let logs = daemon.logs();
    assert!(
        logs.contains("token:openbao-e2e"),
        "no call attributed to OpenBao:\n{logs}"
    );
    // Without disable_renewal the seal first renews its token; we answer non-renewable.
    assert!(
        logs.contains("\"/v1/auth/token/renew-self\""),
        "the seal never asked to renew:\n{logs}"
    );
    assert!(
        !logs.contains("transit request refused"),
        "the stock seal sent something we refused:\n{logs}\n--- OpenBao ---\n{bao_logs}"
    );
    assert_logs_hold_none_of(&logs, &[&token, &root]);
    assert!(daemon.terminate().success());
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http(address: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let token_header = token
        .map(|t| format!("X-Vault-Token: {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{token_header}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json_field(body: &str, pointer: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    match value.pointer(pointer) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => panic!("no {pointer} in {body}"),
    }
}

#[tokio::test]
async fn development_profile_serves_plaintext_transit_with_a_software_key() {
    let dir = tempfile::tempdir().unwrap();
    let (token, token_path) = token_file(dir.path(), "token");
    let port = free_port();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = dir.path().join("dev.toml");
    fs::write(
        &config,
        format!(
            r#"profile = "development"
[server.transit]
listen = "{address}"
plaintext = true
mount_path = "kms/transit"
[[server.transit.tokens]]
identity = "dev-app"
token_file = "{token_file}"
keys = ["dev"]
[backends.soft]
type = "software"
[keys.dev]
backend = "soft"
key_file = "{key_file}"
generate = true
"#,
            token_file = token_path.display(),
            key_file = dir.path().join("dev.key").display(),
        ),
    )
    .unwrap();
    let daemon = Daemon::serve(&config, None, &dir.path().join("daemon.log")).await;

    let plaintext = "dev plaintext 0c44";
    let (status, body) = http(
        address,
        "PUT",
        "/v1/kms/transit/encrypt/dev",
        Some(&token),
        &format!(r#"{{"plaintext":"{}"}}"#, STANDARD.encode(plaintext)),
    );
    assert_eq!(status, 200, "{body}");
    let ciphertext = json_field(&body, "/data/ciphertext");
    assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");

    let (status, body) = http(
        address,
        "POST",
        "/v1/kms/transit/decrypt/dev",
        Some(&token),
        &format!(r#"{{"ciphertext":"{ciphertext}"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_field(&body, "/data/plaintext"), STANDARD.encode(plaintext));

    let (status, body) = http(address, "PUT", "/v1/kms/transit/decrypt/dev", Some("nope"), "{}");
    assert_eq!(
        (status, json_field(&body, "/errors/0")),
        (403, "permission denied".into())
    );
    let (status, body) = http(
        address,
        "PUT",
        "/v1/kms/transit/decrypt/dev",
        Some(&token),
        "{oops",
    );
    assert_eq!(status, 400, "{body}");
    assert!(json_field(&body, "/errors/0").contains("`body`"), "{body}");
    let (status, body) = http(address, "GET", "/v1/kms/transit/encrypt/dev", Some(&token), "");
    assert_eq!(status, 405, "{body}");
    let (status, body) = http(address, "GET", "/v1/transit/keys/dev", Some(&token), "");
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(address, "GET", "/v1/sys/health", None, "");
    assert_eq!(status, 200, "{body}");

    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(address).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(idle, "GET /v1/sys/health HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut first = [0u8; 512];
    let read = idle.read(&mut first).unwrap();
    assert!(
        first[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..read])
    );

    let logs = daemon.logs();
    assert!(logs.contains("transit listening on PLAINTEXT HTTP"), "{logs}");
    assert_logs_hold_none_of(&logs, &[&token, plaintext]);
    let started = std::time::Instant::now();
    assert!(
        daemon.terminate().success(),
        "SIGTERM did not stop the daemon cleanly"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn hardened_profile_refuses_plaintext_transit_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_, token_path) = token_file(dir.path(), "token");
    let config = dir.path().join("bad.toml");
    fs::write(
        &config,
        format!(
            "profile = \"hardened\"\n[server.transit]\nlisten = \"127.0.0.1:{}\"\nplaintext = true\n\
             [[server.transit.tokens]]\nidentity = \"x\"\ntoken_file = \"{}\"\nkeys = [\"k\"]\n\
             [backends.b]\ntype = \"pkcs11\"\n[keys.k]\nbackend = \"b\"\n",
            free_port(),
            token_path.display()
        ),
    )
    .unwrap();
    let out = run_cli(&["serve", "--config", config.to_str().unwrap()], b"", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("server.transit.plaintext"), "{stderr}");
    assert!(
        stderr.contains("hardened profile refuses plaintext HTTP"),
        "{stderr}"
    );
}
