//! Every TCP door is bounded: a flood of idle connections cannot lock out a
//! caller that completes its handshake, and a client that trickles its
//! headers is dropped at the header timeout. The broker runs Hardened on a
//! SoftHSM2 token with its file limit at 1024 (`prlimit --nofile`).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sealbroker_e2e::*;
use sealbroker_proto::sealbroker::v1::WrapRequest;
use sealbroker_server::net::client;

const PIN: &str = "limits-pin-7310";

/// The value of the sample `name{labels}` in a Prometheus text page.
fn sample(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_floods_cannot_lock_out_callers_and_a_slowloris_is_dropped_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "limits", "unseal-key", PIN);
    let pki = Pki::create(&dir.path().join("pki"));
    let (grpc, transit, metrics) = (free_port(), free_port(), free_port());
    let token_path = dir.path().join("transit.token");
    fs::write(
        &token_path,
        "hvs.limitsE2eTokenWithWellOver128BitsOfEntropy0x7f3a\n",
    )
    .unwrap();
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{sock}\"\n{tcp}\n\
         [server.transit]\nlisten = \"127.0.0.1:{transit}\"\n[server.transit.tls]\ncert_file = \"{cert}\"\n\
         key_file = \"{key}\"\nclient_ca_file = \"{ca}\"\n\
         [[server.transit.tokens]]\nidentity = \"limits\"\ntoken_file = \"{token_file}\"\nkeys = [\"unseal\"]\n\
         [server.metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [limits]\nheader_timeout_secs = 2\n[audit]\nstdout = true\n{backend}\n\
         [keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{allow}",
        sock = dir.path().join("sb.sock").display(),
        tcp = pki.tcp_toml(grpc),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
        token_file = token_path.display(),
        backend = token.backend_toml("hsm"),
        allow = allow_test_callers(),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve_under(
        &["prlimit", "--nofile=1024:1024", "--"],
        &config,
        Some(&token),
        &dir.path().join("d.log"),
    )
    .await;

    // 1,100 idle connections to each TCP door: more than the broker's
    // whole file limit.
    let script = repo_root().join("tests/python/idle_flood.py");
    let mut flood = Command::new(peers_python())
        .arg(&script)
        .args(["hold", "--count", "1100", &grpc.to_string(), &transit.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(flood.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held 2200", "the flood could not connect");

    let wrap = || WrapRequest {
        key_name: "unseal".into(),
        plaintext: b"still here".to_vec(),
        aad: vec![],
    };
    let started = Instant::now();
    daemon.unix_client().await.wrap(wrap()).await.unwrap();
    let unix_took = started.elapsed();
    let started = Instant::now();
    let mut tcp = client::connect(&pki.client_target(grpc)).await.unwrap();
    tcp.wrap(wrap()).await.unwrap();
    let tcp_took = started.elapsed();
    eprintln!(
        "MEASURED under a 2,200-connection idle flood: unix Wrap {unix_took:?}, fresh mTLS TCP Wrap {tcp_took:?}"
    );
    assert!(unix_took < Duration::from_secs(2), "unix Wrap took {unix_took:?}");
    assert!(
        tcp_took < Duration::from_secs(2),
        "fresh TCP Wrap took {tcp_took:?}"
    );

    let metrics_addr: SocketAddr = ([127, 0, 0, 1], metrics).into();
    let (status, page) = http_get(metrics_addr, "/metrics");
    assert_eq!(status, 200);
    for listener in ["grpc-tcp", "transit"] {
        let evicted = sample(
            &page,
            &format!("sealbroker_connection_limits_total{{listener=\"{listener}\",reason=\"evicted\"}}"),
        );
        assert!(evicted >= 1100.0 - 256.0, "{listener}: {evicted} evicted\n{page}");
    }
    drop(flood.stdin.take());
    flood.wait().unwrap();
    let logs = daemon.logs();
    assert!(!logs.contains("Too many open files"), "{logs}");

    // A client that completes mutual TLS, then sends a header byte a second.
    let out = Command::new(peers_python())
        .arg(&script)
        .args(["slowloris", "--port", &transit.to_string()])
        .args(["--ca", pki.ca.to_str().unwrap()])
        .args(["--cert", pki.client_cert.to_str().unwrap()])
        .args(["--key", pki.client_key.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let after: f64 = said
        .trim()
        .strip_prefix("dropped after ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{said} {}", String::from_utf8_lossy(&out.stderr)));
    // Dropped by the 2 s header timeout: not at once, and well before the
    // idle (300 s) or handshake (10 s) bounds.
    assert!((1.5..8.0).contains(&after), "dropped after {after} s");
}
