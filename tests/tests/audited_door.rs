//! The single audited door: audit trail, metrics and readiness, end to end.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sealbroker_e2e::*;
use sealbroker_proto::sealbroker::v1::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const PIN: &str = "audit-e2e-pin-4410";

fn config(dir: &Path, token: &SoftHsmToken, audit_file: &Path, metrics_port: u16) -> std::path::PathBuf {
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n[server.metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
         [audit]\nfile = \"{}\"\nseal_key = \"unseal\"\ncheckpoint_file = \"{}\"\n[limits]\nhealth_cache_secs = 1\n{}\n\
         [keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{}",
        dir.join("sb.sock").display(),
        audit_file.display(),
        dir.join("audit-checkpoint/audit.checkpoint").display(),
        token.backend_toml("hsm"),
        allow_test_callers(),
    );
    let path = dir.join("sealbroker.toml");
    fs::write(&path, text).unwrap();
    path
}

/// Samples parsed by the real `prometheus_client` parser.
fn metrics(addr: SocketAddr) -> Vec<String> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let mut child = Command::new(peers_python())
        .arg(repo_root().join("tests/python/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sample(samples: &[String], prefix: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.starts_with(prefix))
        .and_then(|s| s.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in {samples:#?}"))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_metrics_and_readiness_tell_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "audit", "unseal-key", PIN);
    let audit = dir.path().join("audit.log");
    let port = free_port();
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let daemon = Daemon::serve(
        &config(dir.path(), &token, &audit, port),
        Some(&token),
        &dir.path().join("d.log"),
    )
    .await;
    let mut c = daemon.unix_client().await;

    // N operations -> N audit lines that verify.
    let secret = b"AUDIT-PLAINTEXT-CANARY";
    for _ in 0..3 {
        let w = c
            .wrap(WrapRequest {
                key_name: "unseal".into(),
                plaintext: secret.to_vec(),
                aad: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        c.unwrap(UnwrapRequest {
            blob: w.blob,
            aad: vec![],
            key_name: String::new(),
        })
        .await
        .unwrap();
    }
    let denied = c
        .unwrap(UnwrapRequest {
            blob: b"junk".to_vec(),
            aad: vec![],
            key_name: String::new(),
        })
        .await;
    assert_eq!(denied.unwrap_err().code(), Code::InvalidArgument);
    let text = fs::read_to_string(&audit).unwrap();
    assert_eq!(text.lines().count(), 7, "{text}");
    assert!(
        text.contains("\"operation\":\"wrap\"") && text.contains("\"outcome\":\"InvalidArgument\""),
        "{text}"
    );
    assert!(text.contains("\"caller\":\"unix:uid="), "{text}");
    assert!(
        !text.contains("AUDIT-PLAINTEXT-CANARY") && !text.contains(PIN),
        "secret material in the audit log"
    );
    // The chain is keyed: checking it unseals its key through the HSM.
    let config = dir.path().join("sealbroker.toml");
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];
    let verify_file = |file: &Path| {
        run_cli(
            &[
                "audit",
                "verify",
                "--config",
                config.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
            b"",
            &env,
        )
    };
    let verify = verify_file(&audit);
    assert!(verify.status.success(), "{verify:?}");
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("intact, 7 lines"),
        "{verify:?}"
    );
    // Without the key the chain cannot even be checked, let alone recomputed.
    let unkeyed = run_cli(&["audit", "verify", audit.to_str().unwrap()], b"", &[]);
    assert_eq!(unkeyed.status.code(), Some(1), "{unkeyed:?}");

    // Tampering is detected and located: an edited line, and a cut end.
    let copy = dir.path().join("tampered.log");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[3] = lines[3].replace("\"outcome\":\"ok\"", "\"outcome\":\"PermissionDenied\"");
    fs::write(&copy, lines.join("\n") + "\n").unwrap();
    let verify = verify_file(&copy);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("BROKEN at line 5"),
        "{verify:?}"
    );
    fs::write(&copy, text.lines().take(6).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let verify = verify_file(&copy);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("checkpoint records 7 lines"),
        "{verify:?}"
    );

    // Metrics move, and parse with a real Prometheus parser. Key names the
    // caller makes up do not become labels.
    let unknown = c
        .wrap(WrapRequest {
            key_name: "no-such-key-4471".into(),
            plaintext: b"x".to_vec(),
            aad: vec![],
        })
        .await;
    assert_eq!(
        unknown.unwrap_err().code(),
        Code::PermissionDenied,
        "hardened: existence is not revealed"
    );
    let samples = metrics(metrics_addr);
    assert!(
        !samples.iter().any(|s| s.contains("no-such-key-4471")),
        "{samples:#?}"
    );
    assert_eq!(
        sample(
            &samples,
            "sealbroker_operations_total{backend=,door=grpc,key=(other),operation=wrap,outcome=PermissionDenied}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "sealbroker_operations_total{backend=hsm,door=grpc,key=unseal,operation=wrap,outcome=ok}"
        ),
        3.0
    );
    assert_eq!(sample(&samples, "sealbroker_security_risk"), 0.0);
    assert_eq!(http_get(metrics_addr, "/livez").0, 200);

    // Readiness follows the token, from a cached probe: 30 polls in a burst
    // cost at most one real probe per TTL.
    wait_for("ready", || http_get(metrics_addr, "/readyz").0 == 200);
    let probes = |s: &[String]| sample(s, "sealbroker_health_probes_total{backend=hsm,key=unseal}");
    let before = probes(&metrics(metrics_addr));
    let burst = Instant::now();
    for _ in 0..30 {
        http_get(metrics_addr, "/readyz");
    }
    let elapsed = burst.elapsed().as_secs_f64();
    let after = probes(&metrics(metrics_addr));
    assert!(
        after - before <= elapsed.ceil() + 1.0,
        "{} probes for 30 polls in {elapsed:.2}s",
        after - before
    );

    let token_dir = fs::read_dir(token.dir.join("tokens"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::rename(&token_dir, dir.path().join("away")).unwrap();
    wait_for("not ready", || http_get(metrics_addr, "/readyz").0 == 503);
    let socket = daemon.socket.clone().unwrap();
    assert_eq!(
        grpc_health(&socket).await,
        ServingStatus::NotServing,
        "gRPC health must follow readiness"
    );
    // Hardened: the unauthenticated probe learns readiness, not which key
    // is down or why.
    let (_, body) = http_get(metrics_addr, "/readyz");
    assert!(body.starts_with("not ready"), "{body}");
    assert!(!body.contains("unseal") && !body.contains("hsm"), "{body}");
    assert_eq!(
        sample(
            &metrics(metrics_addr),
            "sealbroker_backend_up{backend=hsm,key=unseal}"
        ),
        0.0
    );
    fs::rename(dir.path().join("away"), &token_dir).unwrap();
    wait_for("ready again", || http_get(metrics_addr, "/readyz").0 == 200);
    assert_eq!(grpc_health(&socket).await, ServingStatus::Serving);
}

/// The gRPC health of `sealbroker.v1.SealService`, once it settles (it is
/// refreshed from the cached probe every `health_cache_secs`).
async fn grpc_health(socket: &Path) -> ServingStatus {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = sealbroker_server::net::client::channel(&sealbroker_server::net::client::Target::Unix(
        socket.to_owned(),
    ))
    .await
    .unwrap();
    let mut client = HealthClient::new(channel);
    let ask = HealthCheckRequest {
        service: "sealbroker.v1.SealService".into(),
    };
    let mut last = ServingStatus::Unknown;
    for _ in 0..30 {
        let status = client.check(ask.clone()).await.unwrap().into_inner().status();
        if status == last {
            return status;
        }
        last = status;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    last
}

#[tokio::test]
async fn an_unwritable_audit_log_fails_operations_closed() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "audit", "unseal-key", PIN);
    // /dev/full opens, and every write fails: a disk that filled up.
    let config = config(dir.path(), &token, Path::new("/dev/full"), free_port());
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("d.log")).await;
    let mut c = daemon.unix_client().await;
    let err = c
        .wrap(WrapRequest {
            key_name: "unseal".into(),
            plaintext: b"x".to_vec(),
            aad: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("could not be audited"), "{err:?}");
}

/// stdout is a pipe nobody reads (its reader closed): each audit line fails
/// to write, the operation is refused, and the broker lives on (it used to
/// panic mid-chain on a failed `println!`).
#[tokio::test]
async fn a_broken_stdout_refuses_the_operation_and_does_not_kill_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sealbroker.toml");
    fs::write(
        &config,
        format!(
            "profile = \"development\"\n[server]\nunix_socket = \"{}\"\n[audit]\nstdout = true\n\
             [backends.soft]\ntype = \"software\"\n[keys.dev]\nbackend = \"soft\"\nkey_file = \"{}\"\ngenerate = true\n",
            dir.path().join("sb.sock").display(),
            dir.path().join("dev.key").display()
        ),
    )
    .unwrap();
    // Runs the daemon (exec, same pid) with stdout on a pipe whose reader is closed.
    let python = peers_python();
    let broken_stdout = [
        python.to_str().unwrap(),
        "-c",
        "import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); os.execv(sys.argv[1], sys.argv[1:])",
    ];
    let daemon = Daemon::serve_under(&broken_stdout, &config, None, &dir.path().join("d.log")).await;
    let mut c = daemon.unix_client().await;
    for _ in 0..2 {
        let refused = c
            .wrap(WrapRequest {
                key_name: "dev".into(),
                plaintext: b"x".to_vec(),
                aad: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("could not be audited"), "{refused:?}");
    }
    assert!(
        daemon.logs().contains("audit line not written"),
        "{}",
        daemon.logs()
    );
    assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
}

/// A file-size limit (`prlimit --fsize`) stands in for a full disk: the
/// write that crosses it is cut short, then fails (EFBIG), as a write to a
/// full disk does (ENOSPC).
#[tokio::test]
async fn a_full_disk_refuses_the_operation_and_the_trail_verifies_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "audit", "unseal-key", PIN);
    let audit = dir.path().join("audit.log");
    let config = config(dir.path(), &token, &audit, free_port());
    let limit = 64 * 1024;
    let fsize = format!("--fsize={limit}");
    let daemon = Daemon::serve_under(
        &["prlimit", &fsize, "--"],
        &config,
        Some(&token),
        &dir.path().join("d.log"),
    )
    .await;
    let mut c = daemon.unix_client().await;
    let wrap = || WrapRequest {
        key_name: "unseal".into(),
        plaintext: b"x".to_vec(),
        aad: vec![],
    };
    let mut answered = 0;
    let refusal = loop {
        assert!(answered < 1000, "{answered} wraps fit in a {limit}-byte log");
        match c.wrap(wrap()).await {
            Ok(_) => answered += 1,
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert!(refusal.message().contains("could not be audited"), "{refusal:?}");
    // Still full: still refused, and the broker is still up.
    assert_eq!(c.wrap(wrap()).await.unwrap_err().code(), Code::Unavailable);
    // The cut-short line was taken back: every answered wrap, and nothing
    // else, is in the log, whole.
    let text = fs::read_to_string(&audit).unwrap();
    assert!(answered > 0);
    assert!(text.ends_with('\n'), "a half line stayed in the log");
    assert_eq!(text.lines().count(), answered, "{answered} answered");
    drop(c);
    drop(daemon);

    // Room again: the broker continues the same chain, and it verifies.
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("d2.log")).await;
    daemon.unix_client().await.wrap(wrap()).await.unwrap();
    drop(daemon);
    let verify = run_cli(
        &["audit", "verify", "--config", config.to_str().unwrap()],
        b"",
        &[("SOFTHSM2_CONF", token.conf.as_path())],
    );
    assert!(verify.status.success(), "{verify:?}");
    let expected = format!("intact, {} lines", answered + 1);
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains(&expected),
        "{verify:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_grant_per_operation_and_per_identity() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "acl", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let port = free_port();
    let uid = current_uid();
    let key = |name: &str, allow: &str| {
        format!("[keys.{name}]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\nallow = {allow}\n")
    };
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n{}\n{}\n{}{}{}{}",
        dir.path().join("sb.sock").display(),
        pki.tcp_toml(port),
        token.backend_toml("hsm"),
        key("wrap-only", &format!("{{ wrap = [\"uid:{uid}\"] }}")),
        key("someone-else", "{ any = [\"uid:4242424\"] }"),
        key("for-tls", "{ any = [\"dns:openbao.test\"] }"),
        audit_toml(dir.path(), "wrap-only"),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("d.log")).await;
    let mut unix = daemon.unix_client().await;
    let mut tls = sealbroker_server::net::client::connect(&pki.client_target(port))
        .await
        .unwrap();
    let wrap = |key: &str| WrapRequest {
        key_name: key.into(),
        plaintext: b"s".to_vec(),
        aad: vec![],
    };

    // Wrap but not unwrap.
    let blob = unix.wrap(wrap("wrap-only")).await.unwrap().into_inner().blob;
    let err = unix
        .unwrap(UnwrapRequest {
            blob: blob.clone(),
            aad: vec![],
            key_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("unwrap on key \"wrap-only\" is not permitted for unix:uid="),
        "{err:?}"
    );
    // Another identity's key, and a key that does not exist, look the same.
    let other = unix.wrap(wrap("someone-else")).await.unwrap_err();
    let ghost = unix.wrap(wrap("no-such-key")).await.unwrap_err();
    assert_eq!(
        (other.code(), ghost.code()),
        (Code::PermissionDenied, Code::PermissionDenied)
    );
    assert_eq!(
        other.message().replace("someone-else", "X"),
        ghost.message().replace("no-such-key", "X")
    );
    // Listings and status show only what the caller may use.
    let names: Vec<String> = unix
        .list_keys(ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["wrap-only"]);
    let status = unix
        .status(StatusRequest { deep: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status
            .keys
            .iter()
            .map(|k| k.key_name.as_str())
            .collect::<Vec<_>>(),
        ["wrap-only"],
        "{status:?}"
    );
    // The TLS client is known by its certificate's DNS SAN.
    let sealed = tls.wrap(wrap("for-tls")).await.unwrap().into_inner();
    let opened = tls
        .unwrap(UnwrapRequest {
            blob: sealed.blob,
            aad: vec![],
            key_name: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(opened.into_inner().plaintext, b"s");
    assert_eq!(
        tls.wrap(wrap("wrap-only")).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Admin needs its own grant.
    let err = unix
        .rotate_key(RotateKeyRequest {
            key_name: "wrap-only".into(),
            stage: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        daemon.logs().contains("tls:dns:openbao.test"),
        "TLS callers must be logged by their name"
    );
}

#[test]
fn hardened_refuses_keys_without_an_acl() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    fs::write(
        &config,
        format!(
            "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n[backends.hsm]\ntype = \"pkcs11\"\nlib = \"{SOFTHSM_MODULE}\"\ntoken_label = \"t\"\npin = \"1\"\n[keys.k]\nbackend = \"hsm\"\nkey_label = \"k\"\n",
            dir.path().join("s.sock").display()
        ),
    )
    .unwrap();
    let out = run_cli(&["serve", "--config", config.to_str().unwrap()], b"", &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keys.k.allow") && stderr.contains("denies every caller by default"),
        "{stderr}"
    );
}

#[test]
fn hardened_refuses_metrics_off_loopback_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    fs::write(
        &config,
        format!(
            "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n[server.metrics]\nlisten = \"0.0.0.0:{}\"\n\
             [backends.hsm]\ntype = \"pkcs11\"\nlib = \"{SOFTHSM_MODULE}\"\ntoken_label = \"t\"\npin = \"1\"\n\
             [keys.k]\nbackend = \"hsm\"\nkey_label = \"k\"\n{}",
            dir.path().join("s.sock").display(),
            free_port(),
            allow_test_callers()
        ),
    )
    .unwrap();
    let out = run_cli(&["serve", "--config", config.to_str().unwrap()], b"", &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.metrics.listen") && stderr.contains("only on loopback"),
        "{stderr}"
    );
}

/// A stand-in AWS KMS endpoint that answers every request as an Encrypt,
/// except that it throttles while `throttle` (decremented per request) is
/// above zero. Returns its address.
fn throttling_kms(throttle: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let body_complete = |request: &[u8]| {
                let end = request.windows(4).position(|w| w == b"\r\n\r\n")?;
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                (request.len() >= end + 4 + length).then_some(())
            };
            while body_complete(&request).is_none() {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => request.extend_from_slice(&buf[..read]),
                }
            }
            let throttled = throttle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let (status, body) = if throttled {
                (
                    400,
                    r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_owned(),
                )
            } else {
                (
                    200,
                    format!(
                        r#"{{"CiphertextBlob":"AAECAw==","KeyId":"{ARN}","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}}"#
                    ),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_retries_are_counted_per_backend_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let throttle = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let endpoint = throttling_kms(throttle.clone());
    let creds = dir.path().join("aws-credentials");
    fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIDTHROTTLETEST\naws_secret_access_key = throttle-secret-9921\n",
    )
    .unwrap();
    let metrics_port = free_port();
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{}\"\n[server.metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
         [backends.aws]\ntype = \"awskms\"\nregion = \"eu-west-1\"\nendpoint = \"{endpoint}\"\ncredentials_file = \"{}\"\n\
         max_in_flight = 4\n\
         [backends.aws.retry]\nmax_retries = 4\ninitial_backoff_ms = 1\nmax_backoff_ms = 5\n\
         [keys.cloud]\nbackend = \"aws\"\nkey_id = \"arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab\"\n",
        dir.path().join("sb.sock").display(),
        creds.display(),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve(&config, None, &dir.path().join("d.log")).await;
    let addr: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let counted = |samples: &[String]| {
        let name = "sealbroker_backend_throttling_retries_total{backend=aws}";
        if samples.iter().any(|s| s.starts_with(name)) {
            sample(samples, name)
        } else {
            0.0
        }
    };
    let before = counted(&metrics(addr));
    assert_eq!(before, 0.0);
    throttle.store(3, std::sync::atomic::Ordering::SeqCst);

    let mut c = daemon.unix_client().await;
    let wrapped = c
        .wrap(WrapRequest {
            key_name: "cloud".into(),
            plaintext: b"throttled but sealed".to_vec(),
            aad: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!wrapped.blob.is_empty());
    assert_eq!(
        counted(&metrics(addr)),
        3.0,
        "three throttled answers, each retried"
    );
    let logs = daemon.logs();
    assert!(
        !logs.contains("throttle-secret-9921"),
        "the AWS secret key reached the log"
    );
}
