//! The KMIP backend against a real PyKMIP server over mutual TLS.
//!
//! Each test makes its own PKI with rcgen (a CA, a server certificate for
//! 127.0.0.1 and localhost, client certificates with and without the
//! clientAuth usage, and a client certificate from another CA), starts
//! `pykmip-server` (`sealbroker_testkit::pykmip`) on a free port of
//! 127.0.0.1 with its database in a temp dir, and stops it with SIGINT
//! when done. PyKMIP comes from the peers venv
//! (`$SEALBROKER_PEERS_VENV`, else `~/.cache/sealbroker-peers/venv`); see
//! `tests/install-pykmip.sh`. A missing PyKMIP fails the tests; it never
//! skips them.
//!
//! AES-GCM is exercised in the unit tests (requests checked byte for byte
//! against PyKMIP's own encoder); against the server only AES-CBC-PAD runs.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

mod common;

use common::Pki;
use sealbroker_backend_kmip::{
    BackendConfig, EncryptAlg, KeyConfig, KmipKey, KmipPool, METADATA_UNIQUE_ID, ProtocolVersion, create_key,
    key_on, keygen_on,
};
use sealbroker_core::{
    Backend, BackendErrorKind, Error, Hash, KeyAlgorithm, KeyRing, KeyVersion, LogicalKey, Mechanism,
    SignInput, SignScheme, WrappedBlob,
};
use sealbroker_testkit::free_port;
use sealbroker_testkit::pykmip::{PyKmip, peers_venv_bin};

// ---------------------------------------------------------------------------
// The PyKMIP server

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
        let server = PyKmip::start(&pki.files(), state.path(), free_port());
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
            ..Default::default()
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
            ..Default::default()
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
                ..Default::default()
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
            ..Default::default()
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

    fx.server = PyKmip::start(&fx.pki.files(), fx.state.path(), fx.server.port);
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

/// RSA key pairs (External Keys) on PyKMIP, in KMIP 1.2, 1.4 and 2.0:
/// keygen makes and activates both halves; Sign (PKCS#1 v1.5) verifies
/// under ring with the public key that Get returned, and a changed
/// signature does not; what KMIP cannot do faithfully (PSS, digests) is
/// refused, as are RSA-OAEP (PyKMIP has no asymmetric Encrypt) and sealing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_key_pairs_sign_and_decrypt_on_the_server_in_every_version() {
    let fx = Fixture::start();
    let pool = fx.backend("client").pool().unwrap();
    let message = b"tbsCertificate of a leaf".as_slice();
    let secret = b"kmip-pair-secret-7715".as_slice();
    let pair = |name: &str| KeyConfig {
        key_name: Some(name.into()),
        algorithm: Some("rsa-2048".into()),
        ..Default::default()
    };
    for version in [
        ProtocolVersion::V1_2,
        ProtocolVersion::V1_4,
        ProtocolVersion::V2_0,
    ] {
        pool.set_max_protocol_version(version);
        let signer_config = pair(&format!("signer-{version}"));
        let said = keygen_on(&pool, &signer_config).await.unwrap();
        assert!(said.contains("rsa-2048 KMIP key pair"), "{said}");
        assert!(said.contains(&format!("\"signer-{version}/public\"")), "{said}");
        let signer = key_on(pool.clone(), &signer_config).unwrap();
        assert_eq!(signer.algorithm(), Some(KeyAlgorithm::Rsa2048));
        assert_eq!(signer.oaep_hash(), None);
        let public = signer.public_key().await.unwrap();
        assert_eq!(public.algorithm, KeyAlgorithm::Rsa2048, "{version}");
        for hash in [Hash::Sha256, Hash::Sha384] {
            let scheme = SignScheme::RsaPkcs1v15(hash);
            let input = SignInput::Message(message);
            let signature = signer.sign(scheme, input).await.unwrap();
            assert_eq!(signature.len(), 256, "{version}");
            assert_eq!(
                public.verify(scheme, input, &signature),
                Ok(true),
                "{version} {hash:?}"
            );
            assert!(
                signer.verify(scheme, input, &signature).await.unwrap(),
                "{version}"
            );
            let other = SignInput::Message(b"another tbsCertificate");
            assert_eq!(public.verify(scheme, other, &signature), Ok(false), "{version}");
            let mut changed = signature.clone();
            changed[100] ^= 1;
            assert_eq!(public.verify(scheme, input, &changed), Ok(false), "{version}");
        }
        signer.health().await.unwrap();

        let refused = |e: sealbroker_core::BackendError, says: &str| {
            assert_eq!(e.kind, BackendErrorKind::InvalidInput, "{e}");
            assert!(e.message.contains(says), "{e}");
        };
        let digest = Hash::Sha256.digest(message);
        refused(
            signer
                .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Message(message))
                .await
                .unwrap_err(),
            "picks the PSS salt length",
        );
        refused(
            signer
                .sign(SignScheme::RsaPkcs1v15(Hash::Sha256), SignInput::Digest(&digest))
                .await
                .unwrap_err(),
            "send the message, not a digest",
        );
        refused(
            signer.encrypt_asymmetric(secret).await.unwrap_err(),
            "does no RSA-OAEP",
        );
        refused(
            signer.encrypt(secret, b"").await.unwrap_err(),
            "does not seal data keys",
        );

        assert_eq!(pool.protocol_version(), Some(version));
    }

    // keygen refuses a name already taken, whole or half.
    let again = keygen_on(&pool, &pair("signer-2.0")).await.unwrap_err();
    assert!(again.to_string().contains("already has objects named"), "{again}");
    let oaep = KeyConfig {
        mechanism: Some("RSA_PKCS_OAEP".into()),
        ..pair("oaep")
    };
    let Err(e) = key_on(pool.clone(), &oaep) else {
        panic!("an RSA-OAEP KMIP key pair was accepted");
    };
    assert_eq!(e.path, "mechanism", "{e}");
    assert!(e.message.contains("no asymmetric Encrypt or Decrypt"), "{e}");
}

/// Rotation of a KMIP key pair: version 2 is a new pair (`NAME-v2` and
/// `NAME-v2/public`) made by create_version, found again by derive_version
/// alone (another replica), and it signs what version 1's public key does
/// not verify. create_version again reuses the pair instead of making a
/// third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pair_rotates_to_a_new_pair_every_replica_finds() {
    let fx = Fixture::start();
    let pool = fx.backend("client").pool().unwrap();
    let config = KeyConfig {
        key_name: Some("ca".into()),
        algorithm: Some("rsa-2048".into()),
        ..Default::default()
    };
    keygen_on(&pool, &config).await.unwrap();
    let v1 = key_on(pool.clone(), &config).unwrap();
    let v2 = v1.create_version(2).await.unwrap();
    assert_eq!(v2.settings["key_name"], "ca-v2");
    let again = v1.create_version(2).await.unwrap();
    assert_eq!(again.settings, v2.settings);
    assert_eq!(pool.locate("ca-v2").await.unwrap().len(), 1, "one pair, not two");
    assert_eq!(pool.locate("ca-v2/public").await.unwrap().len(), 1);

    let elsewhere = v1.derive_version(2).unwrap();
    let scheme = SignScheme::RsaPkcs1v15(Hash::Sha256);
    let input = SignInput::Message(b"a CRL");
    let signature = elsewhere.backend.sign(scheme, input).await.unwrap();
    let (public1, public2) = (
        v1.public_key().await.unwrap(),
        v2.backend.public_key().await.unwrap(),
    );
    assert_ne!(public1, public2);
    assert_eq!(public2.verify(scheme, input, &signature), Ok(true));
    assert_eq!(public1.verify(scheme, input, &signature), Ok(false));
}
