//! The Kubernetes KMS v2 front door, driven by a Python gRPC client
//! generated from the real `k8s.io/kms/apis/v2/api.proto`.

use std::fs;
use std::process::Command;

use sealbroker_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_pattern_status_encrypt_rotate_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "k8s", "k8s-secrets", "kms-pin-8812");
    let kms_socket = dir.path().join("kms.sock");
    let admin_socket = dir.path().join("sb.sock");
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n\
         [server.kms_v2]\nsocket = \"{}\"\nkey_name = \"k8s\"\n{}\n[keys.k8s]\nbackend = \"hsm\"\nkey_label = \"k8s-secrets\"\n{}",
        admin_socket.display(),
        dir.path().join("state").display(),
        kms_socket.display(),
        token.backend_toml("hsm"),
        allow_test_callers(),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("daemon.log")).await;
    assert!(kms_socket.exists());

    let out = Command::new(peers_python())
        .arg(repo_root().join("tests/python/kms_v2_client.py"))
        .args([
            kms_socket.as_os_str(),
            sealbroker_bin().as_os_str(),
            admin_socket.as_os_str(),
        ])
        .arg("k8s")
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "KMS v2 client failed:\n{report}\n--- daemon ---\n{}",
        daemon.logs()
    );
    assert!(report.contains("passed, 0 failed"), "{report}");
    assert!(!daemon.logs().contains("kms-pin-8812"));
    assert!(daemon.terminate().success());
    assert!(!kms_socket.exists(), "the KMS socket must be removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_v2_door_enforces_the_key_acl_per_operation() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "k8s", "k8s-secrets", "kms-pin-8813");
    let kms_socket = dir.path().join("kms.sock");
    let admin_socket = dir.path().join("sb.sock");
    let audit = dir.path().join("audit.jsonl");
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n\
         [server.kms_v2]\nsocket = \"{}\"\nkey_name = \"k8s\"\n[audit]\nfile = \"{}\"\n{}\n\
         [keys.k8s]\nbackend = \"hsm\"\nkey_label = \"k8s-secrets\"\n\
         allow = {{ wrap = [\"uid:{}\"], unwrap = [\"uid:4242\"] }}\n",
        admin_socket.display(),
        kms_socket.display(),
        audit.display(),
        token.backend_toml("hsm"),
        current_uid(),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("daemon.log")).await;
    let out = Command::new(peers_python())
        .arg(repo_root().join("tests/python/kms_v2_client.py"))
        .args([
            kms_socket.as_os_str(),
            sealbroker_bin().as_os_str(),
            admin_socket.as_os_str(),
        ])
        .args(["k8s", "wrap-only"])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{report}\n--- daemon ---\n{}",
        daemon.logs()
    );
    assert!(report.contains("4 passed, 0 failed"), "{report}");
    assert!(daemon.terminate().success());

    // Every KMS v2 call is audited as door kms-v2: one Encrypt, two refused Decrypts.
    let lines: Vec<serde_json::Value> = fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let seen: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["door"].as_str().unwrap(),
                l["operation"].as_str().unwrap(),
                l["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("kms-v2", "wrap", "ok"),
            ("kms-v2", "unwrap", "PermissionDenied"),
            ("kms-v2", "unwrap", "PermissionDenied"),
        ],
        "{lines:#?}"
    );
}
