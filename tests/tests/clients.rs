//! Stock clients, with their default options, on every gRPC door of a
//! Hardened broker: Python grpcio (gRPC C-core) over the unix socket and
//! over mutual TLS, grpcurl (Go) through server reflection, and the
//! standard grpc.health.v1 check. C-core sends a percent-encoded socket path
//! as `:authority` on unix sockets, which the HTTP/2 server refuses unless
//! the door accepts it (see sealbroker_server::net::authority).

use std::fs;
use std::process::{Command, Output};

use sealbroker_e2e::*;

struct Broker {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    socket: std::path::PathBuf,
    port: u16,
    pki: Pki,
}

async fn hardened_broker() -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(
        &dir.path().join("hsm"),
        "clients",
        "clients-key",
        "clients-pin-5521",
    );
    let pki = Pki::create(&dir.path().join("pki"));
    let socket = dir.path().join("sb.sock");
    let port = free_port();
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n{}{}\n[keys.unseal]\nbackend = \"hsm\"\nkey_label = \"clients-key\"\n{}{}",
        socket.display(),
        pki.tcp_toml(port),
        token.backend_toml("hsm"),
        allow_test_callers(),
        audit_toml(dir.path(), "unseal"),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("daemon.log")).await;
    Broker {
        _dir: dir,
        daemon,
        socket,
        port,
        pki,
    }
}

fn report(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn python_client(args: &[&str]) -> Output {
    Command::new(peers_python())
        .arg(repo_root().join("tests/python/grpc_client.py"))
        .args(args)
        .output()
        .unwrap()
}

fn grpcurl(args: &[&str]) -> Output {
    let venv = peers_python().parent().unwrap().to_owned();
    Command::new(venv.join("grpcurl")).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_with_default_options_on_the_unix_socket_and_mtls() {
    let b = hardened_broker().await;
    let unix = format!("unix:{}", b.socket.display());
    let unix_uri = format!("unix://{}", b.socket.display());
    let tcp = format!("127.0.0.1:{}", b.port);
    let tls = [
        b.pki.ca.to_str().unwrap(),
        b.pki.client_cert.to_str().unwrap(),
        b.pki.client_key.to_str().unwrap(),
    ];
    let runs: [Vec<&str>; 3] = [
        vec!["unseal", &unix],
        vec!["unseal", &unix_uri],
        [&["unseal", tcp.as_str()][..], &tls[..]].concat(),
    ];
    for args in runs {
        let out = python_client(&args);
        let text = report(&out);
        assert!(
            out.status.success(),
            "grpcio {args:?}:\n{text}\n--- daemon ---\n{}",
            b.daemon.logs()
        );
        assert!(text.contains("11 passed, 0 failed"), "{text}");
    }
    // An authority no client sends by default is refused by name, not reset.
    for bad in ["bad authority", "a%zz"] {
        let out = python_client(&["--authority", bad, &unix]);
        assert!(out.status.success(), "authority {bad:?}:\n{}", report(&out));
    }
    assert!(!b.daemon.logs().contains("clients-pin-5521"));
    assert!(b.daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_through_reflection_on_the_unix_socket_and_mtls() {
    let b = hardened_broker().await;
    let socket = b.socket.to_str().unwrap();
    let tcp = format!("127.0.0.1:{}", b.port);
    let tls = [
        "-cacert",
        b.pki.ca.to_str().unwrap(),
        "-cert",
        b.pki.client_cert.to_str().unwrap(),
        "-key",
        b.pki.client_key.to_str().unwrap(),
    ];
    let doors: [Vec<&str>; 2] = [vec!["-plaintext", "-unix"], tls.to_vec()];
    let addresses = [socket, tcp.as_str()];
    for (door, address) in doors.iter().zip(addresses) {
        // grpcurl FLAGS ADDRESS VERB-OR-METHOD
        let call = |flags: &[&str], method: &str| {
            let mut args = door.clone();
            args.extend_from_slice(flags);
            args.extend([address, method]);
            grpcurl(&args)
        };
        let out = call(&[], "list");
        let listed = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "grpcurl list on {address}: {}",
            report(&out)
        );
        assert_eq!(
            listed.lines().collect::<Vec<_>>(),
            ["grpc.health.v1.Health", "sealbroker.v1.SealService"],
            "reflection lists what this door serves"
        );

        let out = call(&[], "grpc.health.v1.Health/Check");
        assert!(
            report(&out).contains("\"SERVING\""),
            "health on {address}: {}",
            report(&out)
        );

        // "aGVsbG8=" is "hello"; "YQ==" and "Yg==" are the AADs "a" and "b".
        let out = call(
            &[
                "-d",
                r#"{"key_name":"unseal","plaintext":"aGVsbG8=","aad":"YQ=="}"#,
            ],
            "sealbroker.v1.SealService/Wrap",
        );
        assert!(out.status.success(), "Wrap on {address}: {}", report(&out));
        let wrapped: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(wrapped["keyName"], "unseal");
        let blob = wrapped["blob"].as_str().unwrap();

        let good = format!(r#"{{"blob":"{blob}","aad":"YQ=="}}"#);
        let out = call(&["-d", &good], "sealbroker.v1.SealService/Unwrap");
        assert!(out.status.success(), "Unwrap on {address}: {}", report(&out));
        let opened: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(opened["plaintext"], "aGVsbG8=");

        let wrong = format!(r#"{{"blob":"{blob}","aad":"Yg=="}}"#);
        let out = call(&["-d", &wrong], "sealbroker.v1.SealService/Unwrap");
        assert!(!out.status.success(), "a wrong AAD must be refused on {address}");
        assert!(
            report(&out).contains("Code: FailedPrecondition"),
            "wrong AAD on {address}: {}",
            report(&out)
        );
    }
    assert!(b.daemon.terminate().success());
}
