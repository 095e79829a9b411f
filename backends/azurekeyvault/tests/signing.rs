//! Key Vault key pairs (External Keys) driven through the real
//! `azure_security_keyvault_keys` client against the in-repo stand-in
//! (`standin/`): there is no Key Vault emulator, and this is not Azure. The
//! stand-in makes real key pairs and signs, verifies, encrypts and decrypts
//! for real; ring checks every signature here with the public key alone.

use std::path::PathBuf;
use std::sync::Arc;

use sealbroker_backend_azurekeyvault::{
    BackendConfig, CredentialKind, KeyConfig, KeyVaultKey, RetryConfig, connect,
};
use sealbroker_core::{
    Backend, BackendErrorKind, BackendKind, Hash, KeyAlgorithm, KeygenError, OaepHash, Profile, PublicKey,
    SignInput, SignScheme,
};
use sealbroker_testkit::assert_no_secret;

mod standin;
use standin::*;

struct Env {
    dir: tempfile::TempDir,
    ca: PathBuf,
    tls: Arc<rustls::ServerConfig>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = pki(dir.path());
    Env { dir, ca, tls }
}

impl Env {
    fn secret_file(&self) -> PathBuf {
        let secret = self.dir.path().join("client-secret");
        std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
        secret
    }

    fn config(&self, fake: &FakeVault) -> BackendConfig {
        BackendConfig {
            vault_url: fake.vault_url.clone(),
            vault_address: Some("127.0.0.1".parse().unwrap()),
            ca_file: Some(self.ca.clone()),
            credential: CredentialKind::ClientSecret,
            tenant_id: Some(TENANT.into()),
            client_id: Some(CLIENT_ID.into()),
            object_id: None,
            resource_id: None,
            client_secret_file: Some(self.secret_file()),
            token_file: None,
            authority_host: Some(fake.authority.clone()),
            timeout_ms: 5_000,
            retry: RetryConfig {
                max_retries: 1,
                initial_backoff_ms: 10,
                max_backoff_ms: 100,
            },
        }
    }

    fn pair(&self, fake: &FakeVault, name: &str, algorithm: &str, oaep_hash: Option<&str>) -> KeyVaultKey {
        let client = connect(&self.config(fake)).unwrap();
        KeyVaultKey::new(
            &client,
            &KeyConfig {
                key_name: name.into(),
                key_version: Some(fake.pair_version(name, 1)),
                algorithm: Some(algorithm.into()),
                mechanism: oaep_hash.map(|_| sealbroker_backend_azurekeyvault::MechanismName::RsaPkcsOaep),
                rsa_oaep_hash: oaep_hash.map(str::to_owned),
            },
        )
        .unwrap()
    }
}

/// Checks `signature` over `message` with ring and the public key alone.
fn ring_verifies(public: &PublicKey, scheme: SignScheme, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature as sig;
    let algorithm: &dyn sig::VerificationAlgorithm = match (scheme, public.algorithm) {
        (SignScheme::RsaPkcs1v15(Hash::Sha256), _) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (SignScheme::RsaPkcs1v15(Hash::Sha512), _) => &sig::RSA_PKCS1_2048_8192_SHA512,
        (SignScheme::RsaPss(Hash::Sha256), _) => &sig::RSA_PSS_2048_8192_SHA256,
        (SignScheme::RsaPss(Hash::Sha384), _) => &sig::RSA_PSS_2048_8192_SHA384,
        (SignScheme::Ecdsa(Hash::Sha256), KeyAlgorithm::EcdsaP256) => &sig::ECDSA_P256_SHA256_ASN1,
        (SignScheme::Ecdsa(Hash::Sha384), KeyAlgorithm::EcdsaP384) => &sig::ECDSA_P384_SHA384_ASN1,
        other => panic!("no ring algorithm for {other:?}"),
    };
    sig::UnparsedPublicKey::new(algorithm, public.raw())
        .verify(message, signature)
        .is_ok()
}

const SIGN_OPS: &[&str] = &["sign", "verify"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pairs_sign_digests_that_ring_verifies_with_the_public_key_alone() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let message = b"tbsCertificate of a PKI root";
    for (name, kty, size, crv, algorithm, schemes) in [
        (
            "p256",
            "EC-HSM",
            None,
            Some("P-256"),
            "ecdsa-p256",
            vec![SignScheme::Ecdsa(Hash::Sha256)],
        ),
        (
            "p384",
            "EC",
            None,
            Some("P-384"),
            "ecdsa-p384",
            vec![SignScheme::Ecdsa(Hash::Sha384)],
        ),
        (
            "rsa",
            "RSA-HSM",
            Some(2048),
            None,
            "rsa-2048",
            vec![
                SignScheme::RsaPkcs1v15(Hash::Sha256),
                SignScheme::RsaPkcs1v15(Hash::Sha512),
                SignScheme::RsaPss(Hash::Sha256),
                SignScheme::RsaPss(Hash::Sha384),
            ],
        ),
    ] {
        fake.add_key_pair(name, kty, size, crv, SIGN_OPS);
        let key = env.pair(&fake, name, algorithm, None);
        assert_eq!(key.algorithm(), KeyAlgorithm::parse(algorithm));
        key.health().await.unwrap();
        let public = key.public_key().await.unwrap();
        assert_eq!(public.algorithm.as_str(), algorithm);
        for scheme in schemes {
            let signature = key.sign(scheme, SignInput::Message(message)).await.unwrap();
            assert!(
                ring_verifies(&public, scheme, message, &signature),
                "{name} {scheme:?}"
            );
            assert!(
                key.verify(scheme, SignInput::Message(message), &signature)
                    .await
                    .unwrap()
            );
            let digest = scheme.hash().unwrap().digest(message);
            // A caller's digest is signed as is, never hashed again.
            let from_digest = key.sign(scheme, SignInput::Digest(&digest)).await.unwrap();
            assert!(
                ring_verifies(&public, scheme, message, &from_digest),
                "{name} {scheme:?} digest"
            );
            assert!(
                key.verify(scheme, SignInput::Digest(&digest), &from_digest)
                    .await
                    .unwrap()
            );
            let mut tampered = signature.clone();
            let last = tampered.len() - 1;
            tampered[last] ^= 1;
            assert!(
                !key.verify(scheme, SignInput::Message(message), &tampered)
                    .await
                    .unwrap()
            );
            assert!(
                !key.verify(scheme, SignInput::Message(b"other"), &signature)
                    .await
                    .unwrap()
            );
        }
    }
    // What Key Vault was sent was a digest and, for ECDSA, r || s.
    assert!(
        fake.log()
            .iter()
            .any(|l| l.starts_with("POST /keys/p256") && l.ends_with("/sign"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemes_and_inputs_key_vault_cannot_take_are_refused_before_a_call() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    fake.add_key_pair("p256", "EC-HSM", None, Some("P-256"), SIGN_OPS);
    let key = env.pair(&fake, "p256", "ecdsa-p256", None);
    key.public_key().await.unwrap();
    let before = fake.requests();
    let err = key
        .sign(SignScheme::Ecdsa(Hash::Sha384), SignInput::Message(b"m"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("only as ecdsa-sha256"), "{err}");
    let err = key
        .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Message(b"m"))
        .await
        .unwrap_err();
    assert!(err.message.contains("cannot sign with rsa-pss-sha256"), "{err}");
    let err = key
        .sign(SignScheme::Ecdsa(Hash::Sha256), SignInput::Digest(&[0; 20]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    // A signature that is not DER ECDSA is invalid, without a call.
    assert!(
        !key.verify(
            SignScheme::Ecdsa(Hash::Sha256),
            SignInput::Message(b"m"),
            &[0x30, 1, 2]
        )
        .await
        .unwrap()
    );
    assert_eq!(fake.requests(), before, "refused without a call");
    assert_eq!(
        key.encrypt(b"dek", b"").await.unwrap_err().kind,
        BackendErrorKind::InvalidInput
    );
    assert_eq!(
        key.encrypt_asymmetric(b"x").await.unwrap_err().kind,
        BackendErrorKind::InvalidInput
    );

    // The config says P-384, the vault holds P-256: named, never used.
    let wrong = env.pair(&fake, "p256", "ecdsa-p384", None);
    let err = wrong.public_key().await.unwrap_err();
    assert!(
        err.message.contains("ecdsa-p256") && err.message.contains("ecdsa-p384"),
        "{err}"
    );
    let err = wrong.health().await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    // A key that may not sign fails its health check naming the operation.
    fake.add_key_pair("verify-only", "EC", None, Some("P-256"), &["verify"]);
    let err = env
        .pair(&fake, "verify-only", "ecdsa-p256", None)
        .health()
        .await
        .unwrap_err();
    assert!(err.message.contains("does not permit sign"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oaep_pair_decrypts_what_it_encrypts_and_refuses_a_changed_ciphertext() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let secret = b"card 4111 1111 1111 1111";
    for (name, size, hash) in [
        ("oaep256", 2048, OaepHash::Sha256),
        ("oaep1", 3072, OaepHash::Sha1),
    ] {
        fake.add_key_pair(name, "RSA-HSM", Some(size), None, &["encrypt", "decrypt"]);
        let algorithm = format!("rsa-{size}");
        let key = env.pair(&fake, name, &algorithm, Some(hash.as_str()));
        assert_eq!(key.oaep_hash(), Some(hash));
        key.health().await.unwrap();
        let ciphertext = key.encrypt_asymmetric(secret).await.unwrap();
        assert_eq!(ciphertext.len(), size as usize / 8, "the raw OAEP block");
        assert_ne!(key.encrypt_asymmetric(secret).await.unwrap(), ciphertext);
        assert_eq!(
            key.decrypt_asymmetric(&ciphertext).await.unwrap().expose(),
            secret
        );
        let mut changed = ciphertext.clone();
        changed[7] ^= 1;
        let err = key.decrypt_asymmetric(&changed).await.err().unwrap();
        assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
        assert_no_secret(
            &err.to_string(),
            &[("the plaintext", "4111 1111")],
            "a decrypt error",
        );
        let err = key
            .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Message(b"m"))
            .await
            .unwrap_err();
        assert!(err.message.contains("does not sign"), "{err}");
    }
    let alg = |line: &&String| line.starts_with("POST /keys/oaep1");
    assert!(fake.log().iter().any(|l| alg(&l) && l.ends_with("/encrypt")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_makes_a_non_exportable_hsm_key_pair_and_rotation_a_new_pair() {
    let env = env();
    let fake = start_fake(env.tls.clone()).await;
    let backend: toml::Table = toml::from_str(&format!(
        "vault_url = {:?}\nvault_address = \"127.0.0.1\"\nca_file = {:?}\ncredential = \"client_secret\"\n\
         tenant_id = {TENANT:?}\nclient_id = {CLIENT_ID:?}\nclient_secret_file = {:?}\nauthority_host = {:?}\n",
        fake.vault_url,
        env.ca.display().to_string(),
        env.secret_file().display().to_string(),
        fake.authority,
    ))
    .unwrap();
    let opened = sealbroker_backend_azurekeyvault::KIND
        .open(&backend, "backends.azure", Profile::Hardened)
        .await
        .unwrap();
    let settings =
        |text: &str| -> toml::Table { toml::from_str(&format!("key_name = \"pki-root\"\n{text}")).unwrap() };
    let made = opened
        .create_key(&settings("algorithm = \"ecdsa-p384\""), "keys.pki-root")
        .await
        .unwrap();
    assert!(
        made.contains("EC-HSM") && made.contains("never exportable"),
        "{made}"
    );
    let version = fake.pair_version("pki-root", 1);
    assert!(
        made.contains(&format!("set key_version = \"{version}\"")),
        "{made}"
    );
    let pinned = format!("key_version = \"{version}\"\nalgorithm = \"ecdsa-p384\"");
    {
        let state = fake.state.lock().unwrap();
        let key = &state.pairs["pki-root"];
        assert_eq!(key.kty, "EC-HSM");
        assert_eq!(key.key_ops, ["sign", "verify"]);
        assert!(!key.exportable);
    }
    let err = opened
        .create_key(&settings("algorithm = \"ecdsa-p384\""), "keys.pki-root")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(fake.state.lock().unwrap().pairs["pki-root"].versions.len(), 1);
    assert!(matches!(
        opened.create_key(&settings(""), "keys.sym").await,
        Err(KeygenError::Unsupported)
    ));
    opened
        .create_key(
            &toml::from_str(
                "key_name = \"wrap\"\nalgorithm = \"rsa-3072\"\nmechanism = \"RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha1\"",
            )
            .unwrap(),
            "keys.wrap",
        )
        .await
        .unwrap();
    assert_eq!(
        fake.state.lock().unwrap().pairs["wrap"].key_ops,
        ["encrypt", "decrypt"]
    );

    // Unpinned, a key pair would follow Key Vault's current version.
    let err = opened
        .key(&settings("algorithm = \"ecdsa-p384\""), "keys.pki-root")
        .err()
        .unwrap();
    assert_eq!(err.path, "keys.pki-root.key_version", "{err}");
    let err = opened
        .create_key(&settings(&pinned), "keys.pki-root")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("remove key_version"), "{err}");
    let key = opened.key(&settings(&pinned), "keys.pki-root").unwrap();
    key.health().await.unwrap();
    let first = key.public_key().await.unwrap();
    let created = key.create_version(2).await.unwrap();
    assert_eq!(created.settings["key_version"], fake.pair_version("pki-root", 2));
    let second = created.backend.public_key().await.unwrap();
    assert_eq!(second.algorithm, KeyAlgorithm::EcdsaP384);
    assert_ne!(first, second, "a new key pair");
    let scheme = SignScheme::Ecdsa(Hash::Sha384);
    let signature = created
        .backend
        .sign(scheme, SignInput::Message(b"m"))
        .await
        .unwrap();
    assert!(ring_verifies(&second, scheme, b"m", &signature));
    assert!(!ring_verifies(&first, scheme, b"m", &signature));
    // Version 1 keeps its own key after the rotation.
    assert_eq!(key.public_key().await.unwrap(), first);

    let err = opened
        .key(&settings("algorithm = \"ed25519\""), "keys.pki-root")
        .err()
        .unwrap();
    assert_eq!(err.path, "keys.pki-root.algorithm", "{err}");
    let err = opened
        .key(
            &settings("algorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha512\""),
            "keys.pki-root",
        )
        .err()
        .unwrap();
    assert_eq!(err.path, "keys.pki-root.rsa_oaep_hash", "{err}");
}
