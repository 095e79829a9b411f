//! The Kubernetes KMS v2 front door, driven by a Python gRPC client
//! generated from the real `k8s.io/kms/apis/v2/api.proto`.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealbroker_e2e::*;
use sealbroker_proto::kms_v2::key_management_service_client::KeyManagementServiceClient;
use sealbroker_proto::kms_v2::{DecryptRequest, EncryptRequest, EncryptResponse, StatusRequest};
use sealbroker_server::net::client;
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_pattern_status_encrypt_rotate_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "k8s", "k8s-secrets", "kms-pin-8812");
    let kms_socket = dir.path().join("kms.sock");
    let admin_socket = dir.path().join("sb.sock");
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n\
         [server.kms_v2]\nsocket = \"{}\"\nkey_name = \"k8s\"\n{}\n[keys.k8s]\nbackend = \"hsm\"\nkey_label = \"k8s-secrets\"\n{}{}",
        admin_socket.display(),
        dir.path().join("state").display(),
        kms_socket.display(),
        token.backend_toml("hsm"),
        allow_test_callers(),
        audit_toml(dir.path(), "k8s"),
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
         [server.kms_v2]\nsocket = \"{}\"\nkey_name = \"k8s\"\n[audit]\nfile = \"{}\"\nseal_key = \"k8s\"\n\
         checkpoint_file = \"{}\"\n{}\n[keys.k8s]\nbackend = \"hsm\"\nkey_label = \"k8s-secrets\"\n\
         allow = {{ wrap = [\"uid:{}\"], unwrap = [\"uid:4242\"] }}\n",
        admin_socket.display(),
        kms_socket.display(),
        audit.display(),
        dir.path().join("audit-checkpoint/audit.checkpoint").display(),
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

/// One object in the shared "etcd": a DEK sealed by one apiserver's broker.
struct Stored {
    writer: usize,
    uid: String,
    plaintext: Vec<u8>,
    response: EncryptResponse,
}

/// What one apiserver saw.
#[derive(Default)]
struct Seen {
    written: usize,
    decrypted: usize,
    key_ids: BTreeSet<String>,
    failures: Vec<String>,
}

/// One kube-apiserver's use of its own KMS v2 plugin: it follows `Status`
/// (a changed key id means a new DEK seed), seals a new DEK at every step
/// (a seed rotation, as after a restart) and reads what the other
/// apiservers wrote through its own broker, as a shared etcd makes it.
async fn apiserver(
    me: usize,
    socket: PathBuf,
    etcd: Arc<Mutex<Vec<Arc<Stored>>>>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let channel = client::channel(&client::Target::Unix(socket)).await.unwrap();
    let mut kms = KeyManagementServiceClient::new(channel);
    let mut read = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let fail = |what: String| seen.lock().unwrap().failures.push(what);
    for step in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        tick.tick().await;
        match kms.status(StatusRequest {}).await {
            Ok(status) => {
                let status = status.into_inner();
                if status.healthz != "ok" || status.key_id.is_empty() {
                    fail(format!("apiserver {me}: Status {status:?}"));
                }
                seen.lock().unwrap().key_ids.insert(status.key_id);
            }
            Err(e) => fail(format!("apiserver {me}: Status failed: {e:?}")),
        }
        let uid = format!("apiserver-{me}-{step}");
        let plaintext = format!("DEK seed {me}/{step}").repeat(2).into_bytes();
        match kms
            .encrypt(EncryptRequest {
                uid: uid.clone(),
                plaintext: plaintext.clone(),
            })
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                seen.lock().unwrap().written += 1;
                etcd.lock().unwrap().push(Arc::new(Stored {
                    writer: me,
                    uid,
                    plaintext,
                    response,
                }));
            }
            Err(e) => fail(format!("apiserver {me}: Encrypt failed: {e:?}")),
        }
        let fresh: Vec<Arc<Stored>> = {
            let etcd = etcd.lock().unwrap();
            let fresh = etcd[read..].to_vec();
            read = etcd.len();
            fresh
        };
        for object in fresh.iter().filter(|o| o.writer != me) {
            match decrypt(&mut kms, object).await {
                Ok(()) => seen.lock().unwrap().decrypted += 1,
                Err(e) => fail(format!("apiserver {me}: {e}")),
            }
        }
    }
}

async fn decrypt(kms: &mut KeyManagementServiceClient<Channel>, object: &Stored) -> Result<(), String> {
    let opened = kms
        .decrypt(DecryptRequest {
            ciphertext: object.response.ciphertext.clone(),
            uid: object.uid.clone(),
            key_id: object.response.key_id.clone(),
            annotations: object.response.annotations.clone(),
        })
        .await
        .map_err(|e| format!("Decrypt of {} failed: {e:?}", object.uid))?
        .into_inner();
    if opened.plaintext == object.plaintext {
        Ok(())
    } else {
        Err(format!("Decrypt of {} returned other bytes", object.uid))
    }
}

/// Three kube-apiservers, each with its own broker and its own state_dir on
/// one SoftHSM2 token, keep writing and reading one another's DEKs while
/// the key is staged and then promoted broker by broker through live
/// reloads: not one call fails, and every apiserver ends on the new key id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_brokers_serve_three_apiservers_across_a_rotation_with_no_failed_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "k8s", "k8s-secrets", "kms-pin-8814");
    let names = ["a", "b", "c"];
    let write_config = |name: &str, extra: &str| {
        let d = dir.path().display();
        let text = format!(
            "profile = \"hardened\"\n[server]\nunix_socket = \"{d}/{name}.sock\"\nstate_dir = \"{d}/{name}-state\"\n\
             reload_poll_secs = 3600\n[server.kms_v2]\nsocket = \"{d}/{name}-kms.sock\"\nkey_name = \"k8s\"\n{}\n\
             [keys.k8s]\nbackend = \"hsm\"\nkey_label = \"k8s-secrets\"\n{extra}{}{}",
            token.backend_toml("hsm"),
            allow_test_callers(),
            audit_toml(&dir.path().join(name), "k8s"),
        );
        let path = dir.path().join(format!("{name}.toml"));
        let staging = dir.path().join(format!("{name}.toml.new"));
        fs::write(&staging, text).unwrap();
        fs::rename(&staging, &path).unwrap();
        path
    };
    let mut brokers = Vec::new();
    for name in names {
        let config = write_config(name, "");
        let log = dir.path().join(format!("{name}.log"));
        brokers.push(Daemon::serve(&config, Some(&token), &log).await);
    }
    let etcd = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Seen>>> = (0..3).map(|_| Arc::default()).collect();
    let apiservers: Vec<_> = (0..3)
        .map(|me| {
            let socket = dir.path().join(format!("{}-kms.sock", names[me]));
            tokio::spawn(apiserver(
                me,
                socket,
                etcd.clone(),
                seen[me].clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Waits until every apiserver has sealed `more` new DEKs: traffic
    // really flows through every phase.
    let progress = |more: usize| {
        let seen = &seen;
        async move {
            let marks: Vec<usize> = seen.iter().map(|s| s.lock().unwrap().written).collect();
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen
                .iter()
                .zip(&marks)
                .any(|(s, mark)| s.lock().unwrap().written < mark + more)
            {
                assert!(Instant::now() < deadline, "an apiserver stopped making progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Applies `extra` to every broker's config, one broker at a time, and
    // waits for each reload; every apiserver seals and reads in between.
    let reload_all = |extra: &'static str, round: usize| {
        let brokers = &brokers;
        let write_config = &write_config;
        let progress = &progress;
        async move {
            for (name, broker) in names.iter().zip(brokers) {
                write_config(name, extra);
                broker.hangup();
                broker.logged("config reloaded", round).await;
                progress(3).await;
            }
        }
    };

    progress(5).await;

    // Stage v2 on A's admin socket; then every broker is told it exists
    // and reports it usable (the promotion gate).
    let admin = dir.path().join("a.sock");
    let out = run_cli(
        &[
            "keys",
            "--socket",
            admin.to_str().unwrap(),
            "rotate",
            "k8s",
            "--stage",
        ],
        b"",
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    progress(5).await;
    reload_all("newest_version = 2\n", 1).await;
    let staged = vec![(1, "primary".to_owned(), true), (2, "staged".to_owned(), true)];
    for broker in &brokers {
        let roles = broker.version_roles().await;
        assert_eq!(roles, staged);
    }
    progress(5).await;
    let before: Vec<usize> = seen.iter().map(|s| s.lock().unwrap().key_ids.len()).collect();
    assert_eq!(before, [1, 1, 1], "no key id may change before the promotion");

    // Promote broker by broker: for a while A seals under v2 while B and C
    // still seal under v1, and everyone reads everything.
    reload_all("newest_version = 2\nprimary_version = 2\n", 2).await;
    progress(5).await;
    stop.store(true, Ordering::SeqCst);
    for apiserver in apiservers {
        apiserver.await.unwrap();
    }

    // Every apiserver followed the rotation and then reads all of etcd.
    let etcd = etcd.lock().unwrap().clone();
    let generations: BTreeSet<&str> = etcd.iter().map(|o| o.response.key_id.as_str()).collect();
    assert_eq!(generations.len(), 2, "DEKs sealed under both versions");
    for (me, name) in names.iter().enumerate() {
        let socket = dir.path().join(format!("{name}-kms.sock"));
        let mut kms =
            KeyManagementServiceClient::new(client::channel(&client::Target::Unix(socket)).await.unwrap());
        for object in &etcd {
            if let Err(e) = decrypt(&mut kms, object).await {
                seen[me]
                    .lock()
                    .unwrap()
                    .failures
                    .push(format!("final read by {name}: {e}"));
            }
        }
    }
    for (me, seen) in seen.iter().enumerate() {
        let seen = seen.lock().unwrap();
        assert!(seen.failures.is_empty(), "apiserver {me}: {:#?}", seen.failures);
        assert_eq!(seen.key_ids.len(), 2, "apiserver {me} saw the key id change once");
        assert!(
            seen.decrypted > 10,
            "apiserver {me} read only {} objects",
            seen.decrypted
        );
    }
    for broker in brokers {
        assert!(broker.terminate().success());
    }
}

/// The KMS v2 door on the crash-on-demand module (tests/pkcs11-crashy) in
/// a helper process: a tampered ciphertext is refused, and `healthz` says
/// the backend is down while the module crashes and ok once it is healed,
/// with the broker up throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_v2_refuses_tampered_ciphertext_and_healthz_follows_a_crashing_module() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "k8s", "k8s-secrets", "kms-pin-8814");
    let module = crashy_module(dir.path());
    let trigger = dir.path().join("crash-now");
    let kms_socket = dir.path().join("kms.sock");
    let admin_socket = dir.path().join("sb.sock");
    let backend = token
        .backend_toml("hsm")
        .replace(SOFTHSM_MODULE, module.to_str().unwrap())
        + "isolation = \"process\"\nhelper_env = [\"SOFTHSM2_CONF\", \"SEALBROKER_CRASH_TRIGGER\"]\n";
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n\
         [server.kms_v2]\nsocket = \"{}\"\nkey_name = \"k8s\"\n[limits]\nhealth_cache_secs = 1\n{backend}\n\
         [keys.k8s]\nbackend = \"hsm\"\nkey_label = \"k8s-secrets\"\n{}{}",
        admin_socket.display(),
        kms_socket.display(),
        allow_test_callers(),
        audit_toml(dir.path(), "k8s"),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(
        &["serve", "--config", config.to_str().unwrap()],
        &[
            ("SOFTHSM2_CONF", &token.conf),
            ("SEALBROKER_CRASH_TRIGGER", &trigger),
        ],
        &dir.path().join("daemon.log"),
        Some(admin_socket.clone()),
        None,
    )
    .await;
    let channel = client::channel(&client::Target::Unix(kms_socket)).await.unwrap();
    let mut kms = KeyManagementServiceClient::new(channel);
    let healthz = |kms: &mut KeyManagementServiceClient<Channel>| {
        let mut kms = kms.clone();
        async move { kms.status(StatusRequest {}).await.unwrap().into_inner().healthz }
    };
    assert_eq!(healthz(&mut kms).await, "ok");

    let sealed = kms
        .encrypt(EncryptRequest {
            uid: "tamper".into(),
            plaintext: b"a DEK seed".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let stored = Stored {
        writer: 0,
        uid: "tamper".into(),
        plaintext: b"a DEK seed".to_vec(),
        response: sealed.clone(),
    };
    decrypt(&mut kms, &stored).await.unwrap();
    // Flip one bit of the sealed payload itself (not of a wrapped DEK):
    // the data key still opens, the payload's GCM tag must not.
    use prost::Message;
    let mut blob = sealbroker_core::WrappedBlob::decode(sealed.ciphertext.as_slice()).unwrap();
    assert!(!blob.ciphertext.is_empty() && !blob.deks.is_empty());
    blob.ciphertext[0] ^= 0x01;
    let refused = kms
        .decrypt(DecryptRequest {
            ciphertext: blob.encode_to_vec(),
            uid: "tamper".into(),
            key_id: sealed.key_id.clone(),
            annotations: sealed.annotations.clone(),
        })
        .await
        .expect_err("a tampered ciphertext must not open");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");

    fs::write(&trigger, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let down = loop {
        let now = healthz(&mut kms).await;
        if now != "ok" {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "healthz stayed ok while the module crashed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        down.contains("hsm") || down.contains("k8s"),
        "says what is down: {down}"
    );
    assert!(daemon.exit_status().is_none(), "the broker survived the module");

    fs::remove_file(&trigger).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(&mut kms).await != "ok" {
        assert!(
            Instant::now() < deadline,
            "healthz never came back after the module healed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    decrypt(&mut kms, &stored).await.unwrap();
    assert!(!daemon.logs().contains("kms-pin-8814"));
    assert!(daemon.terminate().success());
}

/// A KMS v2 call whose backend accepts the connection and never answers
/// ends at the broker's request timeout with DEADLINE_EXCEEDED naming the
/// backend and key, instead of holding the apiserver; `healthz` also answers
/// in that bound and says which backend is not ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_v2_calls_to_a_hung_backend_end_deadline_exceeded_naming_it() {
    const TIMEOUT_SECS: u64 = 2;
    let dir = tempfile::tempdir().unwrap();
    let hung = sealbroker_testkit::silent::SilentListener::bind().await;
    let kms_socket = dir.path().join("kms.sock");
    let admin_socket = dir.path().join("sb.sock");
    let credentials = dir.path().join("aws-credentials");
    fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIAHUNGTESTEXAMPLE1\naws_secret_access_key = hung-test-secret\n",
    )
    .unwrap();
    // The backend's own bound (a minute) is far above the broker's: the
    // broker's request timeout must end the call.
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{}\"\n\
         [server.kms_v2]\nsocket = \"{}\"\nkey_name = \"k8s\"\n\
         [limits]\nrequest_timeout_secs = {TIMEOUT_SECS}\nhealth_cache_secs = 1\n\
         [backends.aws]\ntype = \"awskms\"\nregion = \"eu-west-1\"\nendpoint = \"http://{}\"\n\
         credentials_file = \"{}\"\ntimeout_ms = 60000\n\
         [keys.k8s]\nbackend = \"aws\"\nkey_id = \"alias/k8s\"\n{}",
        admin_socket.display(),
        kms_socket.display(),
        hung.addr(),
        credentials.display(),
        allow_test_callers(),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::start(
        &["serve", "--config", config.to_str().unwrap()],
        &[("AWS_CONFIG_FILE", &dir.path().join("no-aws-config"))],
        &dir.path().join("daemon.log"),
        Some(admin_socket.clone()),
        None,
    )
    .await;
    let channel = client::channel(&client::Target::Unix(kms_socket)).await.unwrap();
    let mut kms = KeyManagementServiceClient::new(channel);
    // Whatever the broker does, the test itself never waits unboundedly.
    let bound = Duration::from_secs(TIMEOUT_SECS + 8);

    let started = Instant::now();
    let refused = tokio::time::timeout(
        bound,
        kms.encrypt(EncryptRequest {
            uid: "hung".into(),
            plaintext: b"a DEK seed".to_vec(),
        }),
    )
    .await
    .expect("the KMS v2 Encrypt hung past the broker's request timeout")
    .expect_err("nothing can be sealed by a backend that never answers");
    let took = started.elapsed();
    eprintln!("Encrypt refused after {took:?}: {refused:?}");
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
    assert!(
        refused.message().contains("backend \"aws\"") && refused.message().contains("key \"k8s\""),
        "names the backend and key: {refused:?}"
    );
    assert!(
        took >= Duration::from_secs(TIMEOUT_SECS) && took < Duration::from_secs(TIMEOUT_SECS + 3),
        "ended after {took:?}, not at request_timeout_secs = {TIMEOUT_SECS}"
    );
    assert!(hung.accepted() >= 1, "the call reached the hung backend");

    let started = Instant::now();
    let healthz = tokio::time::timeout(bound, kms.status(StatusRequest {}))
        .await
        .expect("the KMS v2 Status hung on the backend")
        .unwrap()
        .into_inner()
        .healthz;
    eprintln!("healthz after {:?}: {healthz}", started.elapsed());
    assert_ne!(healthz, "ok");
    assert!(
        healthz.contains("aws") || healthz.contains("k8s"),
        "says what is down: {healthz}"
    );
    assert!(daemon.terminate().success());
}
