//! Backends behind the daemon, against their real upstreams.

use std::fs;

use sealbroker_e2e::openbao::DevServer;
use sealbroker_e2e::*;
use sealbroker_proto::sealbroker::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_backend_round_trip_and_rotation_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = DevServer::start(dir.path());
    upstream.transit_key("sealbroker");
    let token_file = dir.path().join("token");
    fs::write(&token_file, &upstream.root_token).unwrap();
    fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n\
         [backends.upstream]\ntype = \"transit\"\naddress = \"{}\"\ntoken_file = \"{}\"\n\
         [keys.unseal]\nbackend = \"upstream\"\nkey_name = \"sealbroker\"\n",
        dir.path().join("sb.sock").display(),
        dir.path().join("state").display(),
        upstream.bao.addr,
        token_file.display()
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, &text).unwrap();
    let daemon = Daemon::serve(&config, None, &dir.path().join("d.log")).await;
    let mut c = daemon.unix_client().await;
    let wrapped = c
        .wrap(WrapRequest {
            key_name: "unseal".into(),
            plaintext: b"via transit".to_vec(),
            aad: b"a".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    // Upstream rotation: old blobs still open.
    upstream.bao.must(
        &["write", "-f", "transit/keys/sealbroker/rotate"],
        Some(&upstream.root_token),
    );
    let opened = c
        .unwrap(UnwrapRequest {
            blob: wrapped.blob.clone(),
            aad: b"a".to_vec(),
            key_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, b"via transit");

    // Broker rotation: a new broker version over a rotated upstream key,
    // kept across a restart; Rewrap moves the old blob forward.
    let rotated = c
        .rotate_key(RotateKeyRequest {
            key_name: "unseal".into(),
            stage: false,
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(rotated.primary_version, 2);
    assert_ne!(rotated.primary_key_id, wrapped.key_id);
    let upstream_key = upstream.bao.must(
        &["read", "-field=latest_version", "transit/keys/sealbroker"],
        Some(&upstream.root_token),
    );
    assert_eq!(
        upstream_key.trim(),
        "3",
        "one upstream rotation by hand, one by the broker"
    );
    let logs = daemon.logs();
    daemon.terminate();
    let daemon = Daemon::serve(&config, None, &dir.path().join("d2.log")).await;
    let mut c = daemon.unix_client().await;
    let rewrapped = c
        .rewrap(RewrapRequest {
            blob: wrapped.blob.clone(),
            aad: b"a".to_vec(),
            key_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rewrapped.key_version, rewrapped.key_id.as_str()),
        (2, rotated.primary_key_id.as_str())
    );
    for blob in [wrapped.blob, rewrapped.blob] {
        let opened = c
            .unwrap(UnwrapRequest {
                blob,
                aad: b"a".to_vec(),
                key_name: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(opened.plaintext, b"via transit");
    }
    for log in [logs, daemon.logs()] {
        assert!(
            !log.contains(&upstream.root_token),
            "the upstream token reached the log"
        );
    }

    // Hardened refuses a plaintext upstream, and says why.
    let hardened = dir.path().join("hardened.toml");
    fs::write(&hardened, text.replace("\"development\"", "\"hardened\"")).unwrap();
    let out = run_cli(&["serve", "--config", hardened.to_str().unwrap()], b"", &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("backends.upstream.address") && stderr.contains("plaintext http://"),
        "{stderr}"
    );
}

#[test]
fn cloud_backends_are_selectable_from_the_config_and_refuse_plaintext_under_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let config = dir.path().join(name);
        fs::write(&config, text).unwrap();
        run_cli(
            &["serve", "--config", config.to_str().unwrap(), "--check"],
            b"",
            &[],
        )
    };
    let socket = dir.path().join("sb.sock");
    let gcp = |profile: &str, endpoint: &str| {
        format!(
            "profile = \"{profile}\"\n[server]\nunix_socket = \"{}\"\n\
             [backends.gcp]\ntype = \"gcpckms\"\nendpoint = \"{endpoint}\"\n\
             [keys.k]\nbackend = \"gcp\"\nkey_name = \"projects/p/locations/global/keyRings/r/cryptoKeys/k\"\n\
             allow = {{ any = [\"uid:0\"] }}\n",
            socket.display()
        )
    };
    let out = check("gcp-hardened.toml", &gcp("hardened", "http://127.0.0.1:1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("backends.gcp.endpoint") && stderr.contains("plaintext http://"),
        "{stderr}"
    );

    let azure = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n\
         [backends.vault]\ntype = \"azurekeyvault\"\nvault_url = \"http://my-vault.vault.azure.net\"\ncredential = \"managed_identity\"\n\
         [keys.k]\nbackend = \"vault\"\nkey_name = \"unseal\"\nallow = {{ any = [\"uid:0\"] }}\n",
        socket.display()
    );
    let out = check("azure.toml", &azure);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("backends.vault.vault_url") && stderr.contains("https://"),
        "{stderr}"
    );
}

/// Every cloud backend bounds each call by `timeout_ms`; a bound of zero is
/// refused at start, naming the field under its backend.
#[test]
fn a_zero_cloud_timeout_is_refused_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let tables = [
        (
            "type = \"awskms\"\nregion = \"eu-west-1\"\n",
            "key_id = \"alias/unseal\"",
        ),
        (
            "type = \"gcpckms\"\n",
            "key_name = \"projects/p/locations/global/keyRings/r/cryptoKeys/unseal\"",
        ),
        (
            "type = \"azurekeyvault\"\nvault_url = \"https://sealbroker.vault.azure.net\"\ncredential = \"managed_identity\"\n",
            "key_name = \"unseal\"",
        ),
    ];
    for (table, key) in tables {
        let config = dir.path().join("zero-timeout.toml");
        fs::write(
            &config,
            format!(
                "profile = \"development\"\n[server]\nunix_socket = \"{}\"\n[backends.cloud]\n{table}timeout_ms = 0\n\
                 [keys.unseal]\nbackend = \"cloud\"\n{key}\n",
                dir.path().join("sb.sock").display()
            ),
        )
        .unwrap();
        let out = run_cli(&["serve", "--config", config.to_str().unwrap()], b"", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{table}: {stderr}");
        assert!(
            stderr.contains("backends.cloud.timeout_ms") && stderr.contains("must be at least 1"),
            "{table}: {stderr}"
        );
    }
}
