//! The KMIP door, end to end: the real daemon on SoftHSM2 behind mutual
//! TLS, driven by PyKMIP's `ProxyKmipClient` in KMIP 1.2, 1.4 and 2.0, and
//! by the real OpenBao 2.7.2's stock `seal "kmip"`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sealbroker_e2e::*;

const PIN: &str = "kmip-door-pin-3318";

/// A hardened config: SoftHSM keys `unseal` (granted to the test client,
/// `dns:openbao.test`) and `hidden` (granted to someone else), served only
/// through the KMIP door on `port`.
fn kmip_config(dir: &Path, hsm: &SoftHsmToken, pki: &Pki, port: u16) -> PathBuf {
    kmip_config_with(dir, hsm, pki, port, "")
}

/// [`kmip_config`] with more `[keys.NAME]` tables.
fn kmip_config_with(dir: &Path, hsm: &SoftHsmToken, pki: &Pki, port: u16, more_keys: &str) -> PathBuf {
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
{more_keys}
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
    pykmip_as(&pki.client_cert, &pki.client_key, &pki.ca, port, &[version, key])
}

/// Runs tests/python/kmip_client.py as the holder of `cert`.
fn pykmip_as(cert: &Path, key: &Path, ca: &Path, port: u16, args: &[&str]) -> serde_json::Value {
    let version = args[0];
    let output = Command::new(peers_python())
        .arg(repo_root().join("tests/python/kmip_client.py"))
        .arg(port.to_string())
        .args([cert, key, ca])
        .args(args)
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
                "GET_ATTRIBUTE_LIST",
                "ENCRYPT",
                "DECRYPT"
            ]),
            "{version}"
        );
        assert_eq!(
            at("object_types"),
            serde_json::json!(["SYMMETRIC_KEY", "PUBLIC_KEY", "PRIVATE_KEY"]),
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
        // AES-GCM through the door: the client's IV is used, not echoed;
        // without one the door makes a 96-bit IV and returns it.
        assert_eq!(out["decrypted"], "kmip door plaintext", "{version}: {out}");
        assert_eq!(out["encrypt_iv_echoed"], false, "{version}: {out}");
        assert_eq!(out["ciphertext_holds_plaintext"], false, "{version}: {out}");
        assert_eq!(out["made_iv_len"], 12, "{version}: {out}");
        assert_eq!(out["decrypted_made_iv"], "second", "{version}: {out}");
        assert_eq!(
            out["tampered"]["reason"], "CRYPTOGRAPHIC_FAILURE",
            "{version}: {out}"
        );
        assert_eq!(
            out["wrong_iv"], out["tampered"],
            "{version}: one answer for every failure"
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

/// The audit trail's lines as (door, caller, operation, outcome).
fn audit_lines(dir: &Path) -> Vec<(String, String, String, String)> {
    fs::read_to_string(audit_log(dir))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |name: &str| v[name].as_str().unwrap().to_owned();
            (
                field("door"),
                field("caller"),
                field("operation"),
                field("outcome"),
            )
        })
        .collect()
}

#[tokio::test]
async fn another_cas_certificate_is_refused_at_tls_and_an_ungranted_one_by_kmip_both_audited() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create(&dir.path().join("hsm"), "kmipdoor", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let config = kmip_config(dir.path(), &hsm, &pki, port);
    let daemon = Daemon::serve(&config, Some(&hsm), &dir.path().join("daemon.log")).await;

    let rogue = pykmip_as(
        &pki.rogue_cert,
        &pki.rogue_key,
        &pki.ca,
        port,
        &["1.4", "unseal", "encrypt"],
    );
    assert_eq!(rogue["refused_at"], "tls", "{rogue}");
    daemon.logged("TLS handshake refused", 1).await;

    let stranger = pykmip_as(
        &pki.stranger_cert,
        &pki.stranger_key,
        &pki.ca,
        port,
        &["1.4", "unseal", "encrypt"],
    );
    assert_eq!(stranger["refused_at"], "kmip", "{stranger}");
    assert_eq!(stranger["reason"], "PERMISSION_DENIED", "{stranger}");
    assert!(
        stranger["message"].as_str().unwrap().contains("unseal"),
        "{stranger}"
    );

    let granted = pykmip(&pki, port, "1.4", "unseal");
    assert_eq!(granted["decrypted"], "kmip door plaintext", "{granted}");
    // PyKMIP may try its connection more than once; each refusal is
    // logged once and audited once.
    let handshakes_refused = daemon.logs().matches("TLS handshake refused").count();
    daemon.terminate();

    let lines = audit_lines(dir.path());
    let refused_at_tls: Vec<_> = lines
        .iter()
        .filter(|(door, who, op, outcome)| {
            door == "kmip"
                && who.starts_with("anonymous:127.0.0.1:")
                && op == "connect"
                && outcome == "Unauthenticated"
        })
        .collect();
    assert!(handshakes_refused >= 1);
    assert_eq!(refused_at_tls.len(), handshakes_refused, "{lines:#?}");
    let denied: Vec<_> = lines
        .iter()
        .filter(|(door, who, op, outcome)| {
            door == "kmip" && who == "tls:dns:stranger.test" && op == "wrap" && outcome == "PermissionDenied"
        })
        .collect();
    assert_eq!(denied.len(), 1, "{lines:#?}");
    // The granted client's round trips, audited as the door's.
    for op in ["wrap", "unwrap"] {
        assert!(
            lines.iter().any(|(door, who, o, outcome)| door == "kmip"
                && who == "tls:dns:openbao.test"
                && o == op
                && outcome == "ok"),
            "no {op}: {lines:#?}"
        );
    }
    let verify = run_cli(
        &["audit", "verify", "--config", config.to_str().unwrap()],
        b"",
        &[("SOFTHSM2_CONF", hsm.conf.as_path())],
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The stock `seal "kmip"` of the real OpenBao 2.7.2, unchanged, pointed at
/// the door over mutual TLS with a SoftHSM key behind it: it initialises,
/// restarts, auto-unseals, and the secret is intact. OpenBao asks for
/// AES-GCM with its own IV and a 16-byte tag in KMIP 1.4.
#[test]
fn openbao_stock_kmip_seal_inits_restarts_and_auto_unseals_through_the_door() {
    use sealbroker_e2e::openbao::{BaoConfig, OpenBao};
    const SECRET: &str = "kmip-door-kv-secret-5521";

    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create(&dir.path().join("hsm"), "kmipdoor", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let config = kmip_config(dir.path(), &hsm, &pki, port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let daemon = runtime.block_on(Daemon::serve(&config, Some(&hsm), &dir.path().join("daemon.log")));

    let seal = format!(
        "seal \"kmip\" {{\n  endpoint = \"127.0.0.1:{port}\"\n  kms_key_id = \"unseal\"\n  \
         ca_cert = \"{ca}\"\n  client_cert = \"{cert}\"\n  client_key = \"{key}\"\n  \
         server_name = \"localhost\"\n}}",
        ca = pki.ca.display(),
        cert = pki.client_cert.display(),
        key = pki.client_key.display(),
    );
    let bao_dir = dir.path().join("bao");
    fs::create_dir_all(&bao_dir).unwrap();
    let bao_config = BaoConfig::write(&bao_dir, &seal);
    let bao = OpenBao::start(&bao_config, &[], "bao-1.log");
    let root = bao.init_auto();
    bao.wait_unsealed(std::time::Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    let status: serde_json::Value =
        serde_json::from_str(&bao.must(&["status", "-format=json"], None)).unwrap();
    assert_eq!(status["type"], "kmip", "{status}");
    bao.stop();

    let bao = OpenBao::start(&bao_config, &[], "bao-2.log");
    bao.wait_unsealed(std::time::Duration::from_secs(30));
    assert_eq!(bao.read_secret(&root), SECRET);
    let logs = bao.logs();
    assert!(logs.contains("unsealed with stored key"), "{logs}");
    bao.stop();
    daemon.terminate();

    // Every seal call went through the door as OpenBao's certificate, and
    // the restart opened what the first run sealed.
    let lines = audit_lines(dir.path());
    let ours: Vec<_> = lines
        .iter()
        .filter(|(door, who, _, _)| door == "kmip" && who == "tls:dns:openbao.test")
        .collect();
    assert!(!ours.is_empty(), "{lines:#?}");
    assert!(
        ours.iter().all(|(_, _, _, outcome)| outcome == "ok"),
        "{lines:#?}"
    );
    for op in ["wrap", "unwrap"] {
        assert!(ours.iter().any(|(_, _, o, _)| o == op), "no {op}: {lines:#?}");
    }
}

/// Malformed TTLV over the wire gets a KMIP error answer (Invalid Message)
/// or a closed connection, never a crash: the door keeps serving.
#[tokio::test]
async fn malformed_ttlv_gets_an_invalid_message_answer_or_a_closed_connection() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create(&dir.path().join("hsm"), "kmipdoor", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let config = kmip_config(dir.path(), &hsm, &pki, port);
    let mut daemon = Daemon::serve(&config, Some(&hsm), &dir.path().join("daemon.log")).await;

    let output = Command::new(peers_python())
        .arg(repo_root().join("tests/python/kmip_raw.py"))
        .arg(port.to_string())
        .args([&pki.client_cert, &pki.client_key, &pki.ca])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    const INVALID_MESSAGE: u64 = 0x04;
    // A readable frame with bad content is answered, and the connection
    // serves the next request.
    for case in ["garbage_body", "wrong_tag", "too_deep"] {
        assert_eq!(out[case]["reason"], INVALID_MESSAGE, "{case}: {out}");
        assert_eq!(out[case]["open_after"], true, "{case}: {out}");
    }
    // A frame too long to read loses the framing: answered once, closed.
    assert_eq!(out["oversized"]["reason"], INVALID_MESSAGE, "{out}");
    assert_eq!(out["oversized"]["open_after"], false, "{out}");

    assert!(daemon.exit_status().is_none(), "the daemon died");
    let granted = pykmip(&pki, port, "2.0", "unseal");
    assert_eq!(granted["decrypted"], "kmip door plaintext", "{granted}");
    daemon.terminate();
}

/// An RSA-2048 encryption key pair on SoftHSM2 behind the door: PyKMIP
/// finds the Private Key by name and its Public Key as `NAME/public`,
/// linked both ways; RSA-OAEP encrypts to either and decrypts with the
/// private key, also what `cryptography` encrypted to the token's public
/// key outside sealbroker. A signing key pair is not served over KMIP.
#[tokio::test]
async fn pykmip_encrypts_and_decrypts_with_an_rsa_oaep_key_pair_on_the_hsm() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsmToken::create(&dir.path().join("hsm"), "kmipdoor", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    // SoftHSM2 does OAEP with SHA-1 only.
    let config = kmip_config_with(
        dir.path(),
        &hsm,
        &pki,
        port,
        r#"[keys.pair]
backend = "hsm"
key_label = "pair"
algorithm = "rsa-2048"
mechanism = "RSA_PKCS_OAEP"
rsa_oaep_hash = "sha1"
allow = { encrypt = ["dns:openbao.test"], decrypt = ["dns:openbao.test"] }
[keys.signer]
backend = "hsm"
key_label = "signer"
algorithm = "ecdsa-p256"
allow = { sign = ["dns:openbao.test"], verify = ["dns:openbao.test"] }
"#,
    );
    for key in ["pair", "signer"] {
        let out = run_cli(
            &["keygen", "--config", config.to_str().unwrap(), "--key", key],
            b"",
            &[("SOFTHSM2_CONF", hsm.conf.as_path())],
        );
        assert!(
            out.status.success(),
            "keygen {key}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The public key as the token holds it, read by OpenSC, not by us.
    let public_der = dir.path().join("pair-public.der");
    let out = Command::new("pkcs11-tool")
        .args(["--module", SOFTHSM_MODULE, "--token-label", "kmipdoor"])
        .args([
            "--read-object",
            "--type",
            "pubkey",
            "--label",
            "pair",
            "--output-file",
        ])
        .arg(&public_der)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let daemon = Daemon::serve(&config, Some(&hsm), &dir.path().join("daemon.log")).await;

    for version in ["1.4", "2.0"] {
        let out = pykmip_as(
            &pki.client_cert,
            &pki.client_key,
            &pki.ca,
            port,
            &[version, "pair", "oaep", public_der.to_str().unwrap()],
        );
        assert_eq!(
            out["located_private"],
            serde_json::json!(["pair"]),
            "{version}: {out}"
        );
        assert_eq!(
            out["located_public"],
            serde_json::json!(["pair/public"]),
            "{version}: {out}"
        );
        assert_eq!(out["located_signer"], serde_json::json!([]), "{version}: {out}");
        assert_eq!(
            out["private_attributes"],
            serde_json::json!({
                "Name": "pair",
                "Object Type": "PRIVATE_KEY",
                "Cryptographic Algorithm": "RSA",
                "Cryptographic Length": 2048,
            }),
            "{version}: {out}"
        );
        assert_eq!(
            out["public_attributes"],
            serde_json::json!({
                "Name": "pair/public",
                "Object Type": "PUBLIC_KEY",
                "Cryptographic Algorithm": "RSA",
                "Cryptographic Length": 2048,
            }),
            "{version}: {out}"
        );
        // PyKMIP cannot parse a Link's value; it sees that there is one (the
        // door's unit tests check its value).
        assert!(
            out["private_attribute_list"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("Link")),
            "{version}: {out}"
        );
        // One RSA-2048 block, randomised, and it opens.
        assert_eq!(out["ciphertext_len"], 256, "{version}: {out}");
        assert_eq!(out["randomised"], true, "{version}: {out}");
        assert_eq!(out["decrypted_public"], "to the public key", "{version}: {out}");
        assert_eq!(out["decrypted_private"], "to the private uid", "{version}: {out}");
        assert_eq!(
            out["decrypted_outside"], "made by cryptography",
            "{version}: {out}"
        );
        assert_eq!(
            out["tampered"]["reason"], "CRYPTOGRAPHIC_FAILURE",
            "{version}: {out}"
        );
        assert_eq!(
            out["decrypt_with_public"]["reason"], "ILLEGAL_OPERATION",
            "{version}: {out}"
        );
        assert_eq!(out["wrong_hash"]["reason"], "INVALID_FIELD", "{version}: {out}");
        assert!(
            out["wrong_hash"]["message"]
                .as_str()
                .unwrap()
                .contains("OAEP with sha1"),
            "{out}"
        );
        assert_eq!(out["gcm_on_pair"]["reason"], "INVALID_FIELD", "{version}: {out}");
        assert_eq!(
            out["get_private"]["reason"], "PERMISSION_DENIED",
            "{version}: {out}"
        );
        assert_eq!(
            out["signer_attributes"]["reason"], "ITEM_NOT_FOUND",
            "{version}: {out}"
        );
        assert!(
            out["signer_attributes"]["message"]
                .as_str()
                .unwrap()
                .contains("signing key pair"),
            "{out}"
        );
    }
    daemon.terminate();

    // Every RSA-OAEP operation is audited as the door's, under its grant.
    let lines = audit_lines(dir.path());
    let count = |op: &str, outcome: &str| {
        lines
            .iter()
            .filter(|(door, who, o, res)| {
                door == "kmip" && who == "tls:dns:openbao.test" && o == op && res == outcome
            })
            .count()
    };
    // Per version: three encrypts, three decrypts that open, one tampered.
    assert_eq!(count("encrypt", "ok"), 6, "{lines:#?}");
    assert_eq!(count("decrypt", "ok"), 6, "{lines:#?}");
    assert_eq!(count("decrypt", "FailedPrecondition"), 2, "{lines:#?}");
}
