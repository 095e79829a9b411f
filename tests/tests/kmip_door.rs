//! The KMIP door, end to end: the real daemon on SoftHSM2 behind mutual
//! TLS, driven by PyKMIP's `ProxyKmipClient` in KMIP 1.2, 1.4 and 2.0.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sealbroker_e2e::*;

const PIN: &str = "kmip-door-pin-3318";

/// A hardened config: SoftHSM keys `unseal` (granted to the test client,
/// `dns:openbao.test`) and `hidden` (granted to someone else), served only
/// through the KMIP door on `port`.
fn kmip_config(dir: &Path, hsm: &SoftHsmToken, pki: &Pki, port: u16) -> PathBuf {
    let text = format!(
        r#"profile = "hardened"
[log]
level = "debug"
[server.kmip]
listen = "127.0.0.1:{port}"
[server.kmip.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
{backend}
[keys.unseal]
backend = "hsm"
key_label = "unseal-key"
allow = {{ wrap = ["dns:openbao.test"], unwrap = ["dns:openbao.test"] }}
[keys.hidden]
backend = "hsm"
key_label = "unseal-key"
allow = {{ any = ["dns:someone-else.test"] }}
{audit}"#,
        audit = audit_toml(dir, "unseal"),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
        backend = hsm.backend_toml("hsm"),
    );
    let path = dir.join("sealbroker.toml");
    fs::write(&path, text).unwrap();
    path
}

fn pykmip(pki: &Pki, port: u16, version: &str, key: &str) -> serde_json::Value {
    let output = Command::new(peers_python())
        .arg(repo_root().join("tests/python/kmip_client.py"))
        .arg(port.to_string())
        .args([&pki.client_cert, &pki.client_key, &pki.ca])
        .args([version, key])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "PyKMIP {version} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "PyKMIP printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test]
async fn pykmip_queries_locates_and_reads_attributes_but_never_gets_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create(&dir.path().join("hsm"), "kmipdoor", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let config = kmip_config(dir.path(), &hsm, &pki, port);
    let daemon = Daemon::serve(&config, Some(&hsm), &dir.path().join("daemon.log")).await;

    for version in ["1.2", "1.4", "2.0"] {
        let out = pykmip(&pki, port, version, "unseal");
        let at = |field: &str| out[field].clone();
        assert_eq!(at("discover_status"), "SUCCESS", "{version}: {out}");
        assert_eq!(
            at("versions"),
            serde_json::json!(["2.0", "1.4", "1.3", "1.2"]),
            "{version}"
        );
        assert_eq!(at("query_status"), "SUCCESS", "{version}: {out}");
        assert_eq!(
            at("operations"),
            serde_json::json!([
                "DISCOVER_VERSIONS",
                "QUERY",
                "LOCATE",
                "GET_ATTRIBUTES",
                "GET_ATTRIBUTE_LIST"
            ]),
            "{version}"
        );
        assert_eq!(
            at("object_types"),
            serde_json::json!(["SYMMETRIC_KEY"]),
            "{version}"
        );
        assert_eq!(at("located"), serde_json::json!(["unseal"]), "{version}: {out}");
        assert_eq!(at("located_missing"), serde_json::json!([]), "{version}");
        assert_eq!(at("attributes_uid"), "unseal", "{version}");
        assert_eq!(
            at("attributes"),
            serde_json::json!({
                "Name": "unseal",
                "Object Type": "SYMMETRIC_KEY",
                "Cryptographic Algorithm": "AES",
                "Cryptographic Length": 256,
                "State": "ACTIVE",
            }),
            "{version}: {out}"
        );
        assert_eq!(out["get"]["reason"], "PERMISSION_DENIED", "{version}: {out}");
        assert!(
            out["get"]["message"].as_str().unwrap().contains("never leaves"),
            "{out}"
        );
        assert_eq!(
            out["destroy"]["reason"], "OPERATION_NOT_SUPPORTED",
            "{version}: {out}"
        );
        assert_eq!(
            out["create"]["reason"], "OPERATION_NOT_SUPPORTED",
            "{version}: {out}"
        );
        assert_eq!(
            out["get_attributes_missing"]["reason"], "ITEM_NOT_FOUND",
            "{version}: {out}"
        );
    }

    // A key granted to someone else is as invisible as one that does not exist.
    let out = pykmip(&pki, port, "1.4", "hidden");
    assert_eq!(out["located"], serde_json::json!([]), "{out}");

    let logs = daemon.logs();
    assert!(logs.contains("KMIP listening with mutual TLS"), "{logs}");
    assert!(logs.contains("KMIP operation refused"), "{logs}");
    assert!(!logs.contains(PIN), "the PIN reached the logs");
    daemon.terminate();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_at_tls() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create(&dir.path().join("hsm"), "kmipdoor", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let config = kmip_config(dir.path(), &hsm, &pki, port);
    let daemon = Daemon::serve(&config, Some(&hsm), &dir.path().join("daemon.log")).await;

    let output = Command::new(peers_python())
        .arg(repo_root().join("tests/python/tls_without_cert.py"))
        .arg(port.to_string())
        .arg(&pki.ca)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.starts_with("refused"),
        "{said}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    daemon.logged("TLS handshake refused", 1).await;
    daemon.terminate();
}
