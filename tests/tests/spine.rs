//! The spine, end to end: the real binary, real SoftHSM2 tokens, real TLS.

use std::fs;
use std::path::Path;

use base64::Engine;
use prost::Message;
use sealbroker_e2e::*;
use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use sealbroker_proto::sealbroker::v1::*;
use sealbroker_server::net::client;
use tonic::Code;
use tonic::transport::Channel;

const PIN: &str = "e2e-pin-73910";

fn hardened_hsm_config(
    dir: &Path,
    token: &SoftHsmToken,
    pki: Option<(&Pki, u16)>,
    extra: &str,
) -> std::path::PathBuf {
    let tcp = pki.map(|(pki, port)| pki.tcp_toml(port)).unwrap_or_default();
    let text = format!(
        "profile = \"hardened\"\n{extra}\n[server]\nunix_socket = \"{}\"\n{tcp}\n{}\n[keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{allow}\n[keys.other]\nbackend = \"hsm\"\nkey_label = \"other-key\"\n{allow}{audit}",
        dir.join("sb.sock").display(),
        token.backend_toml("hsm"),
        allow = allow_test_callers(),
        audit = audit_toml(dir, "unseal"),
    );
    let path = dir.join("sealbroker.toml");
    fs::write(&path, text).unwrap();
    path
}

/// A token with two AES keys: `unseal-key` and `other-key`.
fn two_key_token(dir: &Path) -> SoftHsmToken {
    let token = SoftHsmToken::create(&dir.join("hsm"), "e2e", "unseal-key", PIN);
    let out = std::process::Command::new("pkcs11-tool")
        .args([
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            "e2e",
            "--login",
            "--pin",
            PIN,
        ])
        .args([
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            "other-key",
            "--id",
            "02",
            "--sensitive",
        ])
        .env("SOFTHSM2_CONF", &token.conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    token
}

async fn round_trip(
    client: &mut SealServiceClient<Channel>,
    key: &str,
    secret: &[u8],
    aad: &[u8],
) -> WrapResponse {
    let wrapped = client
        .wrap(WrapRequest {
            key_name: key.into(),
            plaintext: secret.to_vec(),
            aad: aad.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let opened = client
        .unwrap(UnwrapRequest {
            blob: wrapped.blob.clone(),
            aad: aad.to_vec(),
            key_name: key.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, secret);
    assert_eq!(opened.key_id, wrapped.key_id);
    wrapped
}

#[tokio::test]
async fn dev_profile_serves_software_key_on_socket_and_loopback_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::dev(dir.path()).await;
    let data = dir.path().join("data");
    let port = daemon.tcp.unwrap().port();
    let key_mode = fs::metadata(data.join("dev.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );

    let mut unix = daemon.unix_client().await;
    let wrapped = round_trip(&mut unix, "dev", b"dev secret", b"aad").await;
    let mut tcp = client::connect(&client::Target::Tcp {
        address: format!("127.0.0.1:{port}"),
        tls: None,
    })
    .await
    .unwrap();
    let opened = tcp
        .unwrap(UnwrapRequest {
            blob: wrapped.blob,
            aad: b"aad".to_vec(),
            key_name: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(opened.into_inner().plaintext, b"dev secret");

    let status = unix
        .status(StatusRequest { deep: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.profile, "development");
    assert!(status.security_risk, "development must report a security risk");
    assert!(!status.keys.is_empty(), "{status:?}");
    assert!(status.keys.iter().all(|k| k.healthy), "{status:?}");

    // The CLI, as the README shows it.
    let socket = data.join("sealbroker.sock");
    let wrap = run_cli(
        &["wrap", "--socket", socket.to_str().unwrap(), "--key", "dev"],
        b"from the cli",
        &[],
    );
    assert!(wrap.status.success(), "{}", String::from_utf8_lossy(&wrap.stderr));
    let unwrap = run_cli(
        &["unwrap", "--socket", socket.to_str().unwrap()],
        &wrap.stdout,
        &[],
    );
    assert!(
        unwrap.status.success(),
        "{}",
        String::from_utf8_lossy(&unwrap.stderr)
    );
    assert_eq!(unwrap.stdout, b"from the cli");

    assert!(daemon.terminate().success());
    assert!(!socket.exists(), "socket must be removed on shutdown");
}

#[tokio::test]
async fn softhsm_round_trip_over_unix_socket_and_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let token = two_key_token(dir.path());
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let config = hardened_hsm_config(dir.path(), &token, Some((&pki, port)), "");
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("log")).await;

    let mut unix = daemon.unix_client().await;
    let mut tls = client::connect(&pki.client_target(port)).await.unwrap();
    let wrapped = round_trip(&mut tls, "unseal", b"hsm secret", b"cluster-a").await;
    round_trip(&mut unix, "unseal", b"hsm secret", b"").await;
    // Sealed over TLS, opened over the socket.
    let opened = unix
        .unwrap(UnwrapRequest {
            blob: wrapped.blob,
            aad: b"cluster-a".to_vec(),
            key_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, b"hsm secret");

    let status = tls
        .status(StatusRequest { deep: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.profile, "hardened");
    assert!(!status.security_risk);
    let keys = unix
        .list_keys(ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(
        keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["other", "unseal"]
    );
    assert!(
        keys.iter()
            .all(|k| k.backend_kind == "pkcs11" && k.primary_key_id.len() == 32)
    );

    let socket_mode = fs::metadata(daemon.socket.as_ref().unwrap()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&socket_mode.permissions()) & 0o777,
        0o600
    );
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_cert_or_with_a_foreign_ca() {
    let dir = tempfile::tempdir().unwrap();
    let token = two_key_token(dir.path());
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let config = hardened_hsm_config(dir.path(), &token, Some((&pki, port)), "");
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("log")).await;

    for client_cert in [
        None,
        Some((pki.rogue_cert.as_path(), pki.rogue_key.as_path())),
        Some((pki.expired_cert.as_path(), pki.expired_key.as_path())),
    ] {
        let refused = match tls_channel(port, &pki.ca, client_cert).await {
            Err(_) => true,
            Ok(channel) => SealServiceClient::new(channel)
                .status(StatusRequest { deep: false })
                .await
                .is_err(),
        };
        assert!(refused, "a client with {:?} was served", client_cert.map(|c| c.0));
    }
    let ok = tls_channel(port, &pki.ca, Some((&pki.client_cert, &pki.client_key)))
        .await
        .unwrap();
    SealServiceClient::new(ok)
        .status(StatusRequest { deep: false })
        .await
        .unwrap();
    let logs = daemon.logs();
    let refused = logs.matches("TLS handshake refused").count();
    assert!(refused >= 3, "{logs}");
    assert!(
        logs.contains("certificate expired"),
        "the expired certificate should be refused as expired:\n{logs}"
    );
    // Each refused handshake is in the audit trail too, as door grpc.
    daemon.terminate();
    let audited = fs::read_to_string(audit_log(dir.path()))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v["door"] == "grpc" && v["operation"] == "connect" && v["outcome"] == "Unauthenticated")
        .count();
    assert_eq!(audited, refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_wraps_and_unwraps_on_softhsm() {
    // The other SoftHSM tests use the default placement (the helper
    // process); these run every device call in the daemon, on its request
    // threads.
    for dispatch in ["inline", "direct"] {
        let dir = tempfile::tempdir().unwrap();
        let token = two_key_token(dir.path());
        let config = hardened_hsm_config(dir.path(), &token, None, "");
        let text = fs::read_to_string(&config).unwrap();
        let placed = text.replacen(
            "type = \"pkcs11\"\n",
            &format!("type = \"pkcs11\"\nisolation = \"in-process\"\ndispatch = \"{dispatch}\"\n"),
            1,
        );
        assert_ne!(text, placed);
        fs::write(&config, placed).unwrap();
        let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("log")).await;
        let client = daemon.unix_client().await;
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let secret = format!("secret number {i}").into_bytes();
                let aad = i.to_be_bytes().to_vec();
                round_trip(&mut client, "unseal", &secret, &aad).await;
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            child_pids(daemon.pid()),
            Vec::<u32>::new(),
            "{dispatch}: the calls ran in the daemon, with no helper process"
        );
    }
}

fn expect(result: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} does not mention {needle:?}",
        status.message()
    );
}

#[tokio::test]
async fn bad_input_gets_a_specific_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let token = two_key_token(dir.path());
    let config = hardened_hsm_config(dir.path(), &token, None, "[limits]\nmax_plaintext_bytes = 1024\n");
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("log")).await;
    let mut c = daemon.unix_client().await;
    let wrapped = round_trip(&mut c, "unseal", b"s3cret", b"aad").await;
    let unwrap = |blob: Vec<u8>, aad: &[u8], key: &str| UnwrapRequest {
        blob,
        aad: aad.to_vec(),
        key_name: key.into(),
    };

    // Wrong AAD.
    expect(
        c.unwrap(unwrap(wrapped.blob.clone(), b"other", "")).await,
        Code::FailedPrecondition,
        "AAD",
    );
    // Tampered payload: one bit of the sealed payload itself flipped, the
    // wrapped DEKs left intact, so the DEK opens and the payload's GCM tag
    // must refuse it.
    let mut blob = sealbroker_core::WrappedBlob::decode(wrapped.blob.as_slice()).unwrap();
    assert!(!blob.ciphertext.is_empty() && !blob.deks.is_empty());
    blob.ciphertext[0] ^= 0x01;
    expect(
        c.unwrap(unwrap(blob.encode_to_vec(), b"aad", "")).await,
        Code::FailedPrecondition,
        "does not authenticate",
    );
    // Truncated blob.
    expect(
        c.unwrap(unwrap(
            wrapped.blob[..wrapped.blob.len() / 2].to_vec(),
            b"aad",
            "",
        ))
        .await,
        Code::InvalidArgument,
        "malformed blob",
    );
    // Garbage.
    expect(
        c.unwrap(unwrap(b"definitely not a blob".to_vec(), b"", "")).await,
        Code::InvalidArgument,
        "malformed blob",
    );
    expect(
        c.unwrap(unwrap(Vec::new(), b"", "")).await,
        Code::InvalidArgument,
        "empty",
    );
    // Unknown key: with ACLs in force it reads exactly like a key the
    // caller may not use, so callers learn nothing about other keys.
    expect(
        c.wrap(WrapRequest {
            key_name: "nope".into(),
            plaintext: b"x".to_vec(),
            aad: vec![],
        })
        .await,
        Code::PermissionDenied,
        "wrap on key \"nope\" is not permitted",
    );
    expect(
        c.get_key(GetKeyRequest {
            key_name: "nope".into(),
        })
        .await,
        Code::PermissionDenied,
        "\"nope\"",
    );
    // Blob from another key.
    expect(
        c.unwrap(unwrap(wrapped.blob.clone(), b"aad", "other")).await,
        Code::FailedPrecondition,
        "not \"other\"",
    );
    // Payload over the limit.
    expect(
        c.wrap(WrapRequest {
            key_name: "unseal".into(),
            plaintext: vec![0; 1025],
            aad: vec![],
        })
        .await,
        Code::InvalidArgument,
        "1025 bytes; the limit is 1024",
    );
    // Missing key name.
    expect(
        c.wrap(WrapRequest {
            key_name: String::new(),
            plaintext: b"x".to_vec(),
            aad: vec![],
        })
        .await,
        Code::InvalidArgument,
        "key_name",
    );
    // After all that, the broker still works.
    round_trip(&mut c, "other", b"still fine", b"").await;
}

fn refused(config_text: &str, dir: &Path) -> String {
    let path = dir.join("bad.toml");
    fs::write(&path, config_text).unwrap();
    let out = run_cli(&["serve", "--config", path.to_str().unwrap()], b"", &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected refusal, got {:?}",
        out.status
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_refusals_name_the_field_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let soft = format!(
        "[server]\nunix_socket = \"{}\"\n[backends.dev]\ntype = \"software\"\n[keys.k]\nbackend = \"dev\"\nkey_file = \"{}\"\ngenerate = true\n",
        d.join("s.sock").display(),
        d.join("k").display()
    );

    let err = refused(&format!("profile = \"hardened\"\n{soft}"), d);
    assert!(
        err.contains("backends.dev.type")
            && err.contains("hardened profile refuses the \"software\" backend"),
        "{err}"
    );
    // No profile means hardened.
    let err = refused(&soft, d);
    assert!(err.contains("hardened profile refuses"), "{err}");

    let err = refused(
        &format!("profile = \"hardened\"\n{soft}[server.tcp]\nlisten = \"127.0.0.1:1\"\nplaintext = true\n"),
        d,
    );
    assert!(
        err.contains("server.tcp.plaintext") && err.contains("refuses plaintext TCP"),
        "{err}"
    );

    let err = refused(
        &format!(
            "profile = \"development\"\n{soft}[server.tcp]\nlisten = \"127.0.0.1:1\"\n[server.tcp.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n"
        ),
        d,
    );
    assert!(
        err.contains("server.tcp.tls.client_ca_file") && err.contains("mutual TLS"),
        "{err}"
    );

    let err = refused(
        &format!("profile = \"development\"\n{soft}").replace("key_file", "keyfile"),
        d,
    );
    assert!(
        err.contains("keys.k.keyfile") && err.contains("unknown field"),
        "{err}"
    );

    let err = refused(
        &format!("profile = \"development\"\n{soft}[limits]\nmax_plaintext_bytes = -1\n"),
        d,
    );
    assert!(err.contains("limits.max_plaintext_bytes"), "{err}");

    let err = refused(
        "profile = \"hardened\"\n[server]\nunix_socket = \"/tmp/x\"\n[backends.hsm]\ntype = \"pkcs11\"\nlib = \"/x.so\"\ntoken_label = \"t\"\n[keys.k]\nbackend = \"hsm\"\nkey_label = \"k\"\n",
        d,
    );
    assert!(err.contains("backends.hsm.pin_file"), "{err}");

    let err = refused(
        "profile = \"hardened\"\n[server]\nunix_socket = \"/tmp/x\"\n[backends.hsm]\ntype = \"pkcs11\"\nlib = \"/x.so\"\ntoken_label = \"t\"\npin = \"1\"\n[keys.k]\nbackend = \"hsm\"\nkey_label = \"k\"\nmechanism = \"AES_CBC\"\n",
        d,
    );
    assert!(
        err.contains("keys.k.mechanism") && err.contains("AES_GCM"),
        "{err}"
    );

    let err = refused("profile = \n", d);
    assert!(err.contains("line 1"), "{err}");
}

#[tokio::test]
async fn no_pin_or_plaintext_in_trace_logs() {
    let dir = tempfile::tempdir().unwrap();
    let token = two_key_token(dir.path());
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let config = hardened_hsm_config(
        dir.path(),
        &token,
        Some((&pki, port)),
        "[log]\nlevel = \"trace\"\n",
    );
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("log")).await;
    let secret = b"PLAINTEXT-CANARY-5d41402abc";
    let aad = b"AAD-CANARY-7f1e";
    let mut unix = daemon.unix_client().await;
    let mut tls = client::connect(&pki.client_target(port)).await.unwrap();
    let wrapped = round_trip(&mut unix, "unseal", secret, aad).await;
    round_trip(&mut tls, "other", secret, aad).await;
    let _ = unix
        .unwrap(UnwrapRequest {
            blob: wrapped.blob,
            aad: b"wrong".to_vec(),
            key_name: String::new(),
        })
        .await;
    let logs = daemon.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "trace logging was not on:\n{}",
        &logs[..logs.len().min(2000)]
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for needle in [
        String::from_utf8_lossy(secret).into_owned(),
        b64.encode(secret),
        format!("{:?}", &secret[..8]),
        PIN.to_owned(),
        String::from_utf8_lossy(aad).into_owned(),
    ] {
        assert!(!logs.contains(&needle), "secret {needle:?} found in the logs");
    }
    assert!(
        !logs.contains('\x1b'),
        "stderr is a file here, so the log must carry no terminal colour codes"
    );
}
