//! HA key rings and rotation, end to end on real SoftHSM2 tokens.

use std::fs;
use std::path::{Path, PathBuf};

use sealbroker_e2e::*;
use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use sealbroker_proto::sealbroker::v1::*;
use tonic::Code;
use tonic::transport::Channel;

const PIN: &str = "ha-e2e-pin-5521";

trait HaConfig {
    fn config(&self, dir: &Path) -> PathBuf;
}

/// The metrics listener of the HA config in `dir`, fixed per directory.
fn metrics_addr(dir: &Path) -> std::net::SocketAddr {
    let file = dir.join("metrics-port");
    let port = fs::read_to_string(&file)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let port = free_port();
            fs::write(&file, port.to_string()).unwrap();
            port
        });
    ([127, 0, 0, 1], port).into()
}

impl HaConfig for TwoTokens {
    fn config(&self, dir: &Path) -> PathBuf {
        let text = format!(
            "profile = \"hardened\"\n[server]\nunix_socket = \"{sock}\"\nstate_dir = \"{state}\"\n\
             [server.metrics]\nlisten = \"{metrics}\"\n{backends}\n[keys.unseal]\n{members}\n{audit}",
            audit = audit_toml(dir, "unseal"),
            metrics = metrics_addr(dir),
            sock = dir.join("sb.sock").display(),
            state = dir.join("state").display(),
            backends = self.backends_toml(),
            members = self.members_toml(),
        );
        let path = dir.join("sealbroker.toml");
        fs::write(&path, text).unwrap();
        path
    }
}

async fn wrap(c: &mut SealServiceClient<Channel>, secret: &[u8]) -> WrapResponse {
    c.wrap(WrapRequest {
        key_name: "unseal".into(),
        plaintext: secret.to_vec(),
        aad: b"ha".to_vec(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn unwrap(c: &mut SealServiceClient<Channel>, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    c.unwrap(UnwrapRequest {
        blob: blob.to_vec(),
        aad: b"ha".to_vec(),
        key_name: String::new(),
    })
    .await
    .map(|r| r.into_inner().plaintext)
}

async fn health(c: &mut SealServiceClient<Channel>) -> Vec<(String, bool)> {
    let status = c.status(StatusRequest { deep: true }).await.unwrap().into_inner();
    status
        .keys
        .into_iter()
        .map(|k| (k.backend_name, k.healthy))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_key_ring_survives_a_lost_member_and_rewrap_repairs_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TwoTokens::create(dir.path(), PIN);
    let config = tokens.config(dir.path());
    let log = |n: &str| dir.path().join(n);

    // Both members up: the blob is sealed under both.
    let daemon = Daemon::serve(&config, Some(&tokens.a), &log("1.log")).await;
    let mut c = daemon.unix_client().await;
    let both = wrap(&mut c, b"sealed under both").await;
    assert!(both.missing_backends.is_empty(), "{:?}", both.missing_backends);
    assert!(daemon.terminate().success());

    // Token B is lost: unwraps keep working through A, wraps are degraded
    // and say so, status shows B unhealthy.
    let b_dir = tokens.token_dir("tok-b");
    let b_saved = dir.path().join("saved-b");
    fs::rename(&b_dir, &b_saved).unwrap();
    let daemon = Daemon::serve(&config, Some(&tokens.a), &log("2.log")).await;
    let mut c = daemon.unix_client().await;
    assert_eq!(unwrap(&mut c, &both.blob).await.unwrap(), b"sealed under both");
    let degraded = wrap(&mut c, b"sealed while B was down").await;
    assert_eq!(degraded.missing_backends, ["b"]);
    assert_eq!(
        health(&mut c).await,
        [("a".to_owned(), true), ("b".to_owned(), false)]
    );
    assert!(
        daemon.logs().contains("wrap is degraded"),
        "degraded wrap not logged"
    );
    let (status, metrics) = http_get(metrics_addr(dir.path()), "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sealbroker_degraded_wraps_total{key=\"unseal\",backend=\"b\"} 1"),
        "{metrics}"
    );
    assert!(daemon.terminate().success());

    // B is back: Rewrap repairs the degraded blob.
    fs::rename(&b_saved, &b_dir).unwrap();
    let daemon = Daemon::serve(&config, Some(&tokens.a), &log("3.log")).await;
    let mut c = daemon.unix_client().await;
    assert_eq!(
        health(&mut c).await,
        [("a".to_owned(), true), ("b".to_owned(), true)]
    );
    let repaired = c
        .rewrap(RewrapRequest {
            blob: degraded.blob.clone(),
            aad: b"ha".to_vec(),
            key_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(repaired.missing_backends.is_empty());
    assert!(daemon.terminate().success());

    // Now A is lost: the repaired blob opens through B alone; the
    // unrepaired one cannot, and says why.
    let a_dir = tokens.token_dir("tok-a");
    fs::rename(&a_dir, dir.path().join("saved-a")).unwrap();
    let daemon = Daemon::serve(&config, Some(&tokens.a), &log("4.log")).await;
    let mut c = daemon.unix_client().await;
    assert_eq!(
        unwrap(&mut c, &repaired.blob).await.unwrap(),
        b"sealed while B was down"
    );
    assert_eq!(unwrap(&mut c, &both.blob).await.unwrap(), b"sealed under both");
    let err = unwrap(&mut c, &degraded.blob).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("backend \"a\"") && err.message().contains("tok-a"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_blobs_moves_them_forward_and_retires_them() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "rot", "unseal", PIN);
    let soft_key = dir.path().join("dev.key");
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n{}\n\
         [backends.soft]\ntype = \"software\"\n\
         [keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal\"\n\
         [keys.dev]\nbackend = \"soft\"\nkey_file = \"{}\"\ngenerate = true\n",
        dir.path().join("sb.sock").display(),
        dir.path().join("state").display(),
        token.backend_toml("hsm"),
        soft_key.display()
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("1.log")).await;
    let mut c = daemon.unix_client().await;

    let mut ids = Vec::new();
    for key in ["unseal", "dev"] {
        let v1 = c
            .wrap(WrapRequest {
                key_name: key.into(),
                plaintext: b"old".to_vec(),
                aad: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        let rotated = c
            .rotate_key(RotateKeyRequest {
                key_name: key.into(),
                stage: false,
            })
            .await
            .unwrap()
            .into_inner()
            .key
            .unwrap();
        assert_eq!(rotated.primary_version, 2);
        assert_ne!(
            rotated.primary_key_id, v1.key_id,
            "rotation must change the key id"
        );
        let v2 = c
            .wrap(WrapRequest {
                key_name: key.into(),
                plaintext: b"new".to_vec(),
                aad: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (v2.key_version, v2.key_id.as_str()),
            (2, rotated.primary_key_id.as_str())
        );
        // Old blobs still open; Rewrap moves them to v2.
        let old = UnwrapRequest {
            blob: v1.blob.clone(),
            aad: vec![],
            key_name: key.into(),
        };
        assert_eq!(
            c.unwrap(old.clone()).await.unwrap().into_inner().plaintext,
            b"old"
        );
        let moved = c
            .rewrap(RewrapRequest {
                blob: v1.blob.clone(),
                aad: vec![],
                key_name: key.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(moved.key_version, 2);
        // Retire v1: its blobs are refused, the moved one opens.
        let retired = c
            .set_min_decryption_version(SetMinDecryptionVersionRequest {
                key_name: key.into(),
                min_decryption_version: 2,
            })
            .await
            .unwrap();
        assert_eq!(retired.into_inner().key.unwrap().min_decryption_version, 2);
        let err = c.unwrap(old).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("version 1 is retired"), "{err:?}");
        let opened = c
            .unwrap(UnwrapRequest {
                blob: moved.blob,
                aad: vec![],
                key_name: key.into(),
            })
            .await
            .unwrap();
        assert_eq!(opened.into_inner().plaintext, b"old");
        // A third version: ids never repeat.
        let v3 = c
            .rotate_key(RotateKeyRequest {
                key_name: key.into(),
                stage: false,
            })
            .await
            .unwrap()
            .into_inner()
            .key
            .unwrap();
        let all: Vec<String> = v3.versions.iter().map(|v| v.key_id.clone()).collect();
        assert_eq!(all.len(), 3);
        assert!(
            all[0] != all[1] && all[1] != all[2] && all[0] != all[2],
            "{all:?}"
        );
        ids.push((key, v3, v2.blob));
    }
    assert!(daemon.terminate().success());

    // The versions survive a restart with the same ids, and v2 blobs open.
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("2.log")).await;
    let mut c = daemon.unix_client().await;
    for (key, before, v2_blob) in ids {
        let after = c
            .get_key(GetKeyRequest { key_name: key.into() })
            .await
            .unwrap()
            .into_inner()
            .key
            .unwrap();
        assert_eq!(after, before, "{key} changed across a restart");
        let opened = c
            .unwrap(UnwrapRequest {
                blob: v2_blob,
                aad: vec![],
                key_name: key.into(),
            })
            .await
            .unwrap();
        assert_eq!(opened.into_inner().plaintext, b"new");
    }
    // The CLI speaks the same RPCs.
    let socket = dir.path().join("sb.sock");
    let out = run_cli(
        &["keys", "--socket", socket.to_str().unwrap(), "show", "unseal"],
        b"",
        &[],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version=3"),
        "{out:?}"
    );
}

#[tokio::test]
async fn rotation_without_a_state_dir_says_how_to_enable_it() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::dev(dir.path()).await;
    let mut c = daemon.unix_client().await;
    let err = c
        .rotate_key(RotateKeyRequest {
            key_name: "dev".into(),
            stage: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("server.state_dir"), "{err:?}");
}

/// Defect 1 of issue 14: restart rebuilt rotated members from the whole key
/// table, so a Hardened key's `allow` reached the PKCS#11 backend as an
/// unknown setting and the broker refused to start after its first rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_hardened_key_with_an_acl_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "hard", "unseal", PIN);
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n{}\n\
         [keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal\"\n{}{}",
        dir.path().join("sb.sock").display(),
        dir.path().join("state").display(),
        token.backend_toml("hsm"),
        allow_test_callers(),
        audit_toml(dir.path(), "unseal"),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();

    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("1.log")).await;
    let mut c = daemon.unix_client().await;
    let old = wrap(&mut c, b"before rotation").await;
    let socket = dir.path().join("sb.sock");
    let out = run_cli(
        &["keys", "--socket", socket.to_str().unwrap(), "rotate", "unseal"],
        b"",
        &[],
    );
    assert!(out.status.success(), "keys rotate failed: {out:?}");
    let new = wrap(&mut c, b"after rotation").await;
    assert_eq!((old.key_version, new.key_version), (1, 2));
    assert!(daemon.terminate().success());

    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("2.log")).await;
    let mut c = daemon.unix_client().await;
    assert_eq!(unwrap(&mut c, &old.blob).await.unwrap(), b"before rotation");
    assert_eq!(unwrap(&mut c, &new.blob).await.unwrap(), b"after rotation");
    assert_eq!(wrap(&mut c, b"x").await.key_version, 2, "v2 stays primary");
}

/// Issue 15: several brokers serve one key on a shared token, each with its
/// own disk. A version staged on one is opened by the others without being
/// told; the config promotes and retires; a replica whose state directory
/// is wiped loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_token_agree_on_a_rotation_and_a_wiped_disk_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "shared", "unseal", PIN);
    let config = |replica: &str, extra: &str| {
        let text = format!(
            "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n{}\n\
             [keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal\"\n{extra}{}{}",
            dir.path().join(format!("{replica}.sock")).display(),
            dir.path().join(format!("{replica}-state")).display(),
            token.backend_toml("hsm"),
            allow_test_callers(),
            audit_toml(&dir.path().join(format!("{replica}-audit")), "unseal"),
        );
        let path = dir.path().join(format!("{replica}.toml"));
        fs::write(&path, text).unwrap();
        path
    };
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let keys = |replica: &str, args: &[&str]| {
        let socket = dir.path().join(format!("{replica}.sock"));
        let mut argv = vec!["keys", "--socket", socket.to_str().unwrap()];
        argv.extend_from_slice(args);
        let out = run_cli(&argv, b"", &[]);
        assert!(out.status.success(), "sealbroker {argv:?} failed: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let versions = |c: &mut SealServiceClient<Channel>| {
        let mut c = c.clone();
        async move {
            let key = c
                .get_key(GetKeyRequest {
                    key_name: "unseal".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .key
                .unwrap();
            let numbers: Vec<u32> = key.versions.iter().map(|v| v.version).collect();
            (numbers, key.primary_version)
        }
    };

    let a = Daemon::serve(&config("a", ""), Some(&token), &log("a1")).await;
    let b = Daemon::serve(&config("b", ""), Some(&token), &log("b1")).await;
    // C is told by its config that v2 is coming; until it exists, C says so.
    let c = Daemon::serve(&config("c", "newest_version = 2\n"), Some(&token), &log("c1")).await;
    let (mut ca, mut cb, mut cc) = (
        a.unix_client().await,
        b.unix_client().await,
        c.unix_client().await,
    );
    let v1 = wrap(&mut cb, b"under v1").await;
    let staged = |usable: bool| vec![(1, "primary".to_owned(), true), (2, "staged".to_owned(), usable)];
    assert_eq!(c.version_roles().await, staged(false));

    // Stage on A: the version exists, nothing wraps under it yet.
    keys("a", &["rotate", "unseal", "--stage"]);
    assert_eq!(versions(&mut ca).await, (vec![1, 2], 1));
    assert_eq!(wrap(&mut ca, b"x").await.key_version, 1);
    // Every replica that knows of v2 reports it usable: the promotion gate.
    assert_eq!(a.version_roles().await, staged(true));
    // C probed v2 (unusable) just before: its next deep probe of v2 runs
    // within a second.
    c.wait_version_roles(&staged(true)).await;
    assert_eq!(wrap(&mut cc, b"x").await.key_version, 1);
    assert!(c.terminate().success());
    // Staging again on B converges on the same key instead of a second one.
    keys("b", &["rotate", "unseal", "--stage"]);
    assert_eq!(versions(&mut cb).await, (vec![1, 2], 1));
    // So does a rotation Job's offline `keygen --version 2`, with the
    // broker's credentials and no running broker.
    let c_config = dir.path().join("c.toml");
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];
    for _ in 0..2 {
        let out = run_cli(
            &[
                "keygen",
                "--config",
                c_config.to_str().unwrap(),
                "--key",
                "unseal",
                "--version",
                "2",
            ],
            b"",
            &env,
        );
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{out:?}");
        assert!(
            printed.contains("version 2 of unseal on backend hsm") && printed.contains("unseal-v2"),
            "{printed}"
        );
    }
    let objects = std::process::Command::new("pkcs11-tool")
        .args([
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            "shared",
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            "secrkey",
        ])
        .env("SOFTHSM2_CONF", &token.conf)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&objects.stdout);
    let labelled = |label: &str| {
        listing
            .lines()
            .filter(|l| l.trim_start().starts_with("label:") && l.split_whitespace().nth(1) == Some(label))
            .count()
    };
    assert_eq!(labelled("unseal-v2"), 1, "one v2 key on the token:\n{listing}");

    // Promote A through its config; B is not told.
    assert!(a.terminate().success());
    let a = Daemon::serve(&config("a", "primary_version = 2\n"), Some(&token), &log("a2")).await;
    let mut ca = a.unix_client().await;
    let v2 = wrap(&mut ca, b"under v2").await;
    assert_eq!(v2.key_version, 2);
    assert_eq!(unwrap(&mut cb, &v2.blob).await.unwrap(), b"under v2");

    // Promote B, with its disk wiped: it wraps under A's v2, same id, and
    // opens both generations.
    assert!(b.terminate().success());
    fs::remove_dir_all(dir.path().join("b-state")).unwrap();
    let b = Daemon::serve(&config("b", "primary_version = 2\n"), Some(&token), &log("b2")).await;
    let mut cb = b.unix_client().await;
    let from_b = wrap(&mut cb, b"b under v2").await;
    assert_eq!((from_b.key_version, &from_b.key_id), (2, &v2.key_id));
    assert_eq!(unwrap(&mut cb, &v1.blob).await.unwrap(), b"under v1");
    assert_eq!(unwrap(&mut ca, &from_b.blob).await.unwrap(), b"b under v2");

    // Retire v1 in the config; a wiped disk does not bring it back.
    assert!(a.terminate().success());
    fs::remove_dir_all(dir.path().join("a-state")).unwrap();
    let retire = "primary_version = 2\nmin_decryption_version = 2\n";
    let a = Daemon::serve(&config("a", retire), Some(&token), &log("a3")).await;
    let mut ca = a.unix_client().await;
    let refused = unwrap(&mut ca, &v1.blob).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(unwrap(&mut ca, &v2.blob).await.unwrap(), b"under v2");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
