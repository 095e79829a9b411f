//! The KMIP backend against a real PyKMIP server over mutual TLS.
//!
//! Each test makes its own PKI with rcgen (a CA, a server certificate for
//! 127.0.0.1 and localhost, client certificates with and without the
//! clientAuth usage, and a client certificate from another CA), starts
//! `pykmip-server` on a free port of 127.0.0.1 with its database in a temp
//! dir, and stops it with SIGINT when done. PyKMIP comes from the peers venv
//! (`$SEALBROKER_PEERS_VENV`, else `~/.cache/sealbroker-peers/venv`); see
//! `tests/install-pykmip.sh`. A missing PyKMIP fails the tests; it never
//! skips them.
//!
//! AES-GCM is exercised in the unit tests (requests checked byte for byte
//! against PyKMIP's own encoder); against the server only AES-CBC-PAD runs.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::Pki;
use sealbroker_backend_kmip::{
    BackendConfig, EncryptAlg, KeyConfig, KmipKey, KmipPool, METADATA_UNIQUE_ID, ProtocolVersion, create_key,
};
use sealbroker_core::{
    Backend, BackendErrorKind, Error, KeyRing, KeyVersion, LogicalKey, Mechanism, WrappedBlob,
};
use sealbroker_testkit::free_port;

// ---------------------------------------------------------------------------
// The PyKMIP server

fn peers_venv_bin(name: &str) -> PathBuf {
    let home_venv =
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sealbroker-peers/venv");
    let candidates = std::env::var_os("SEALBROKER_PEERS_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([home_venv]);
    let mut tried = Vec::new();
    for venv in candidates {
        let path = venv.join("bin").join(name);
        if path.exists() {
            return path;
        }
        tried.push(path.display().to_string());
    }
    panic!(
        "PyKMIP is not installed (looked for {}); run backends/kmip/tests/install-pykmip.sh",
        tried.join(" and ")
    );
}

/// A running `pykmip-server`, stopped with SIGINT when dropped.
struct PyKmip {
    child: Option<Child>,
    port: u16,
    state: PathBuf,
}

/// How long a SIGINT may take before the server is killed. PyKMIP joins each
/// open client session for up to 10 s on the way down.
const STOP_GRACE: Duration = Duration::from_secs(25);

impl PyKmip {
    /// Starts a server whose config, database and logs live in `state`;
    /// starting again with the same `state` and port reopens the same keys.
    fn start(pki: &Pki, state: &Path, port: u16) -> Self {
        let server = peers_venv_bin("pykmip-server");
        std::fs::create_dir_all(state.join("policies")).unwrap();
        let conf = state.join("server.conf");
        std::fs::write(
            &conf,
            format!(
                "[server]\n\
                 hostname=127.0.0.1\n\
                 port={port}\n\
                 certificate_path={}\n\
                 key_path={}\n\
                 ca_path={}\n\
                 auth_suite=TLS1.2\n\
                 policy_path={}\n\
                 enable_tls_client_auth=True\n\
                 logging_level=DEBUG\n\
                 database_path={}\n",
                pki.path("server.pem").display(),
                pki.path("server.key").display(),
                pki.path("ca.pem").display(),
                state.join("policies").display(),
                state.join("pykmip.db").display(),
            ),
        )
        .unwrap();
        let output = std::fs::File::create(state.join("stdout.log")).unwrap();
        let child = Command::new(&server)
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(state.join("server.log"))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let mut pykmip = PyKmip {
            child: Some(child),
            port,
            state: state.to_owned(),
        };
        pykmip.wait_until_listening();
        pykmip
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "pykmip-server exited ({status}) before listening:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pykmip-server did not listen within 30 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        let read = |file: &str| std::fs::read_to_string(self.state.join(file)).unwrap_or_default();
        let tail = |text: String| {
            text.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "--- stdout ---\n{}\n--- server.log ---\n{}",
            tail(read("stdout.log")),
            tail(read("server.log"))
        )
    }

    /// SIGINT, then SIGKILL if the server outlives `STOP_GRACE`. Returns how
    /// long the server took to exit.
    fn stop(&mut self) -> Duration {
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status();
        while started.elapsed() < STOP_GRACE {
            if child.try_wait().ok().flatten().is_some() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("pykmip-server ignored SIGINT for {STOP_GRACE:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
        started.elapsed()
    }
}

impl Drop for PyKmip {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PKI, a state dir and a running server on a fresh port.
struct Fixture {
    pki: Pki,
    state: tempfile::TempDir,
    server: PyKmip,
}

impl Fixture {
    fn start() -> Self {
        let pki = Pki::new();
        let state = tempfile::tempdir().unwrap();
        let server = PyKmip::start(&pki, state.path(), free_port());
        Fixture { pki, state, server }
    }

    /// Backend config for the server, authenticating with `client` (a name
    /// from [`Pki::new`]).
    fn backend(&self, client: &str) -> BackendConfig {
        self.pki.backend(&self.server.endpoint(), client)
    }

    fn helper(&self, command: &str, arg: &str) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pykmip_helper.py");
        let out = Command::new(peers_venv_bin("python"))
            .arg(script)
            .arg(self.server.port.to_string())
            .arg(self.pki.path("client.pem"))
            .arg(self.pki.path("client.key"))
            .arg(self.pki.path("ca.pem"))
            .arg(command)
            .arg(arg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pykmip_helper {command} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server.logs()
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

fn key_by_id(pool: &KmipPool, id: &str) -> KmipKey {
    KmipKey::new(
        pool.clone(),
        &KeyConfig {
            kms_key_id: Some(id.into()),
            key_name: None,
            encrypt_alg: EncryptAlg::AesCbcPad,
            algorithm: None,
        },
    )
    .unwrap()
}

const DEK: [u8; 32] = [0x5A; 32];

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_key_then_locate_it_by_name() {
    let fx = Fixture::start();
    let config = fx.backend("client");
    let id = create_key(&config, "seal-key").await.unwrap();

    let pool = config.pool().unwrap();
    assert_eq!(pool.locate("seal-key").await.unwrap(), vec![id.clone()]);
    assert!(pool.locate("no-such-key").await.unwrap().is_empty());

    let again = create_key(&config, "seal-key").await.unwrap_err();
    assert_eq!(again.kind, BackendErrorKind::InvalidInput, "{again}");
    assert!(
        again.message.contains("already has an object named \"seal-key\""),
        "{again}"
    );

    // A key named in the config is found with Locate, and the data key
    // records which object sealed it.
    let by_name = KmipKey::new(
        pool,
        &KeyConfig {
            kms_key_id: None,
            key_name: Some("seal-key".into()),
            encrypt_alg: EncryptAlg::AesCbcPad,
            algorithm: None,
        },
    )
    .unwrap();
    let sealed = by_name.encrypt(&DEK, b"aad").await.unwrap();
    assert_eq!(sealed.metadata[METADATA_UNIQUE_ID], id);
    assert_eq!(by_name.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_cbc_pad_round_trip_through_the_broker() {
    let fx = Fixture::start();
    let config = fx.backend("client");
    let id = create_key(&config, "openbao-unseal").await.unwrap();
    let pool = config.pool().unwrap();
    let key = Arc::new(key_by_id(&pool, &id));
    assert_eq!(key.kind(), "kmip");
    assert_eq!(
        key.key_identity(),
        format!("kmip:{}:id={id}:AES_CBC_PAD", fx.server.endpoint())
    );

    let sealed = key.encrypt(&DEK, b"dek aad").await.unwrap();
    assert_eq!(sealed.mechanism, Mechanism::AesCbcPad);
    assert_eq!(sealed.iv.len(), 16);
    assert_eq!(
        sealed.ciphertext.len(),
        48,
        "32 bytes plus a block of PKCS#7 padding"
    );
    assert_ne!(&sealed.ciphertext[..32], DEK);
    assert_eq!(key.decrypt(&sealed, b"dek aad").await.unwrap().expose(), DEK);

    let ring = KeyRing::new([LogicalKey::single(
        "openbao",
        KeyVersion::new("openbao", 1, "kmip", key.clone()),
    )]);
    let wrapped = ring
        .wrap("openbao", b"root key material", b"caller aad")
        .await
        .unwrap();
    let unwrapped = ring
        .unwrap(Some("openbao"), &wrapped.blob, b"caller aad")
        .await
        .unwrap();
    assert_eq!(unwrapped.plaintext.expose(), b"root key material");

    // The server cannot bind AAD under CBC; the broker's payload AEAD does.
    let err = ring
        .unwrap(Some("openbao"), &wrapped.blob, b"other aad")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotAuthentic), "{err}");
    // Nor can CBC detect a flipped ciphertext bit. Flipping one in the first
    // block garbles the first half of the data key but leaves the padding in
    // the last block intact, so the server returns 32 wrong bytes; the
    // payload AEAD then refuses them.
    let mut tampered = WrappedBlob::from_bytes(&wrapped.blob).unwrap();
    tampered.deks[0].wrapped_dek[0] ^= 1;
    let err = ring
        .unwrap(Some("openbao"), &tampered.to_bytes(), b"caller aad")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotAuthentic), "{err}");
    // Flipping the last bit of the second block flips the last byte of the
    // third, the padding length (16 -> 17): PyKMIP refuses that Decrypt
    // (General Failure). The caller must not tell it from the refusal above,
    // or the answers would be a padding oracle.
    let mut bad_padding = WrappedBlob::from_bytes(&wrapped.blob).unwrap();
    bad_padding.deks[0].wrapped_dek[31] ^= 1;
    let padding_err = ring
        .unwrap(Some("openbao"), &bad_padding.to_bytes(), b"caller aad")
        .await
        .err()
        .unwrap();
    assert!(matches!(padding_err, Error::NotAuthentic), "{padding_err}");
    assert_eq!(
        (padding_err.code(), padding_err.to_string()),
        (err.code(), err.to_string())
    );

    // All of it ran on one pooled connection, under the newest common version.
    assert_eq!(pool.connections_opened(), 1);
    assert_eq!(pool.protocol_version(), Some(ProtocolVersion::V2_0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_version_makes_a_new_named_key_and_old_blobs_still_open() {
    let fx = Fixture::start();
    let config = fx.backend("client");
    let first = create_key(&config, "unseal").await.unwrap();
    let pool = config.pool().unwrap();
    let v1: Arc<dyn Backend> = Arc::new(
        KmipKey::new(
            pool.clone(),
            &KeyConfig {
                kms_key_id: None,
                key_name: Some("unseal".into()),
                encrypt_alg: EncryptAlg::AesCbcPad,
                algorithm: None,
            },
        )
        .unwrap(),
    );
    let old = v1.encrypt(&DEK, b"aad").await.unwrap();

    // Derived by name, before it exists: nothing is looked up.
    let derived = v1.derive_version(2).expect("KMIP versions are derived by name");
    assert_eq!(derived.settings["key_name"], "unseal-v2");
    assert!(pool.locate("unseal-v2").await.unwrap().is_empty());

    let created = v1.create_version(2).await.unwrap();
    assert_eq!(created.settings["key_name"], "unseal-v2");
    assert_eq!(created.settings["kms_key_id"], "", "the id selector is dropped");
    let ids = pool.locate("unseal-v2").await.unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(ids[0], first);
    assert_ne!(created.backend.key_identity(), v1.key_identity());
    assert_eq!(created.backend.key_identity(), derived.backend.key_identity());

    let new = created.backend.encrypt(&DEK, b"aad").await.unwrap();
    assert_eq!(new.metadata[METADATA_UNIQUE_ID], ids[0]);
    assert_eq!(created.backend.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(derived.backend.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(v1.decrypt(&old, b"aad").await.unwrap().expose(), DEK);

    // Creating it again (another replica, a retried job) converges on the
    // same key instead of a second object of that name.
    let again = v1.create_version(2).await.unwrap();
    assert_eq!(again.backend.key_identity(), created.backend.key_identity());
    assert_eq!(pool.locate("unseal-v2").await.unwrap(), ids);
    // The next version is named from the base name, not "unseal-v2-v3".
    let v3 = created.backend.derive_version(3).unwrap();
    assert_eq!(v3.settings["key_name"], "unseal-v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_a_bounded_pool() {
    let fx = Fixture::start();
    let config = fx.backend("client");
    let id = create_key(&config, "busy").await.unwrap();
    let pool = config.pool().unwrap();
    let key = Arc::new(key_by_id(&pool, &id));
    let tasks: Vec<_> = (0..24u8)
        .map(|i| {
            let key = key.clone();
            tokio::spawn(async move {
                let secret = [i; 32];
                let sealed = key.encrypt(&secret, b"").await.unwrap();
                assert_eq!(key.decrypt(&sealed, b"").await.unwrap().expose(), secret);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let opened = pool.connections_opened();
    assert!(
        (1..=4).contains(&opened),
        "{opened} connections for max_connections = 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_version_round_trips() {
    let fx = Fixture::start();
    let config = fx.backend("client");
    let pool = config.pool().unwrap();
    for version in [
        ProtocolVersion::V1_2,
        ProtocolVersion::V1_3,
        ProtocolVersion::V1_4,
        ProtocolVersion::V2_0,
    ] {
        pool.set_max_protocol_version(version);
        let name = format!("key-{version}");
        let id = create_key(&config, &name).await.unwrap();
        assert_eq!(
            pool.locate(&name).await.unwrap(),
            vec![id.clone()],
            "Locate under {version}"
        );
        let key = key_by_id(&pool, &id);
        let sealed = key.encrypt(&DEK, b"").await.unwrap();
        assert_eq!(
            key.decrypt(&sealed, b"").await.unwrap().expose(),
            DEK,
            "under {version}"
        );
        assert_eq!(pool.protocol_version(), Some(version));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kms_key_id_is_key_not_found() {
    let fx = Fixture::start();
    let pool = fx.backend("client").pool().unwrap();
    let err = key_by_id(&pool, "424242").encrypt(&DEK, b"").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("key id \"424242\""), "{err}");
    assert!(err.message.contains("Item Not Found"), "{err}");
    assert!(err.message.contains(&fx.server.endpoint()), "{err}");

    let by_name = KmipKey::new(
        pool,
        &KeyConfig {
            kms_key_id: None,
            key_name: Some("never-created".into()),
            encrypt_alg: EncryptAlg::AesCbcPad,
            algorithm: None,
        },
    )
    .unwrap();
    let err = by_name.encrypt(&DEK, b"").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(
        err.message.contains("has no object named \"never-created\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_are_not_active_are_refused_with_their_state() {
    let fx = Fixture::start();
    let config = fx.backend("client");
    let pool = config.pool().unwrap();

    let pre_active = fx.helper("create-pre-active", "not-yet");
    let err = key_by_id(&pool, &pre_active)
        .encrypt(&DEK, b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("is in state Pre-Active"), "{err}");

    // A key that was usable, then deactivated behind our back: the cached
    // check is redone and the error names the new state.
    let id = create_key(&config, "retired").await.unwrap();
    let key = key_by_id(&pool, &id);
    let sealed = key.encrypt(&DEK, b"").await.unwrap();
    // While it is Active, a ciphertext whose padding no longer checks out is
    // refused by the server (General Failure).
    let mut bad_padding = sealed.clone();
    bad_padding.ciphertext[31] ^= 1;
    let padding_err = key.decrypt(&bad_padding, b"").await.err().unwrap();
    assert_eq!(padding_err.kind, BackendErrorKind::NotAuthentic, "{padding_err}");
    fx.helper("revoke", &id);
    let err = key.encrypt(&DEK, b"").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("is in state Deactivated"), "{err}");
    // KMIP lets a deactivated key decrypt; PyKMIP refuses (Permission
    // Denied, "Active state"). Every refused Decrypt reads the same, so this
    // one is word for word the padding refusal; the reason is only logged.
    let err = key.decrypt(&sealed, b"").await.err().unwrap();
    assert_eq!((err.kind, &err.message), (padding_err.kind, &padding_err.message));
    assert!(!err.message.contains("Active state"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_unavailable_then_recovers_when_restarted() {
    let mut fx = Fixture::start();
    let config = fx.backend("client");
    let id = create_key(&config, "through-an-outage").await.unwrap();
    let pool = config.pool().unwrap();
    let key = key_by_id(&pool, &id);
    let sealed = key.encrypt(&DEK, b"").await.unwrap();
    assert_eq!(pool.connections_opened(), 1);

    // The pool still holds the connection it used.
    let took = fx.server.stop();
    eprintln!("pykmip-server stopped {took:?} after SIGINT");

    let err = key.encrypt(&DEK, b"").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains(&fx.server.endpoint()), "{err}");
    let err = key.decrypt(&sealed, b"").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");

    fx.server = PyKmip::start(&fx.pki, fx.state.path(), fx.server.port);
    // Same database: what was sealed before the outage opens after it.
    assert_eq!(key.decrypt(&sealed, b"").await.unwrap().expose(), DEK);
    key.encrypt(&DEK, b"").await.unwrap();
    assert_eq!(pool.connections_opened(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_problems_are_clear_errors() {
    let fx = Fixture::start();
    let endpoint = fx.server.endpoint();

    // A client certificate from another CA: the server refuses the handshake.
    let rogue = key_by_id(&fx.backend("rogue-client").pool().unwrap(), "1");
    let err = rogue.encrypt(&DEK, b"").await.unwrap_err();
    assert!(
        matches!(
            err.kind,
            BackendErrorKind::PermissionDenied | BackendErrorKind::Unavailable
        ),
        "{err}"
    );
    assert!(
        err.message.contains("TLS") && err.message.contains(&endpoint),
        "{err}"
    );
    eprintln!("rogue client certificate: {err}");

    // A certificate whose extended key usage excludes clientAuth: the
    // server's TLS stack (OpenSSL) refuses it in the handshake.
    let server_auth_only = key_by_id(&fx.backend("server-auth-only").pool().unwrap(), "1");
    let err = server_auth_only.encrypt(&DEK, b"").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(
        err.message.contains("TLS") && err.message.contains("refused our client certificate"),
        "{err}"
    );

    // A certificate with no extended key usage at all passes TLS; PyKMIP
    // then refuses every request.
    let no_eku = key_by_id(&fx.backend("no-eku").pool().unwrap(), "1");
    let err = no_eku.encrypt(&DEK, b"").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("Authentication Not Successful"), "{err}");
    assert!(err.message.contains("clientAuth"), "{err}");

    // We do not trust the server's CA.
    let mut wrong_ca = fx.backend("client");
    wrong_ca.ca_cert = fx.pki.path("rogue-ca.pem");
    let err = key_by_id(&wrong_ca.pool().unwrap(), "1")
        .encrypt(&DEK, b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(
        err.message.contains("is not valid") && err.message.contains("check ca_cert"),
        "{err}"
    );

    // The certificate is not for the name we expect; `localhost` is.
    let mut wrong_name = fx.backend("client");
    wrong_name.server_name = Some("kms.example".into());
    let err = key_by_id(&wrong_name.pool().unwrap(), "1")
        .encrypt(&DEK, b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("server_name"), "{err}");
    let mut by_dns_name = fx.backend("client");
    by_dns_name.server_name = Some("localhost".into());
    let id = create_key(&by_dns_name, "via-localhost").await.unwrap();
    assert!(!id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_unavailable_and_backs_off() {
    let port = free_port();
    let pki = Pki::new();
    let config = BackendConfig {
        timeout_secs: 2,
        max_connections: 1,
        ..pki.backend(&format!("127.0.0.1:{port}"), "client")
    };
    let key = key_by_id(&config.pool().unwrap(), "1");
    let err = key.encrypt(&DEK, b"").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(
        err.message
            .contains(&format!("cannot connect to KMIP server 127.0.0.1:{port}")),
        "{err}"
    );
    // Straight after, the pool does not hammer the address: it fails fast.
    let err = key.encrypt(&DEK, b"").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("next connection attempt in"), "{err}");
}
