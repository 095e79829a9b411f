//! Signing key pairs on a real SoftHSM2 token, in process and through the
//! helper: made non-extractable, every scheme signed over a digest and a
//! message, checked by the token and by the public key alone.

use sealbroker_backend_pkcs11::supervisor::{HelperCommand, set_helper_command};
use sealbroker_backend_pkcs11::{
    BackendConfig, Dispatch, Isolation, KeyConfig, MechanismName, OaepHash, Pkcs11Key, generate_key,
};
use sealbroker_core::{Backend, BackendErrorKind, Hash, KeyAlgorithm, SignInput, SignScheme};

mod common;

use common::{MODULE, Token};

const TOKEN: &str = "sb-sign";
const HELPER: &str = env!("CARGO_BIN_EXE_sealbroker-pkcs11-helper");

fn backend(token: &Token, isolation: Isolation) -> BackendConfig {
    set_helper_command(HelperCommand {
        program: HELPER.into(),
        args: vec![],
    });
    BackendConfig {
        lib: MODULE.into(),
        token_label: Some(TOKEN.into()),
        slot: None,
        pin: None,
        pin_file: Some(token.path.join("pin")),
        max_sessions: 2,
        dispatch: Dispatch::Pool,
        isolation: Some(isolation),
        helper_env: vec!["SOFTHSM2_CONF".into()],
        helper_uid: None,
        helper_gid: None,
        timeout_secs: 30,
    }
}

fn pair(label: &str, algorithm: KeyAlgorithm) -> KeyConfig {
    KeyConfig {
        key_label: Some(label.into()),
        key_id: None,
        mechanism: MechanismName::AesGcm,
        rsa_oaep_hash: OaepHash::Sha256,
        algorithm: Some(algorithm.as_str().into()),
    }
}

fn schemes(algorithm: KeyAlgorithm) -> Vec<SignScheme> {
    match algorithm {
        KeyAlgorithm::Ed25519 => vec![SignScheme::Ed25519],
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            vec![SignScheme::Ecdsa(Hash::Sha256), SignScheme::Ecdsa(Hash::Sha384)]
        }
        _ => vec![
            SignScheme::RsaPkcs1v15(Hash::Sha256),
            SignScheme::RsaPkcs1v15(Hash::Sha512),
            SignScheme::RsaPss(Hash::Sha256),
            SignScheme::RsaPss(Hash::Sha384),
        ],
    }
}

/// The "Access:" line OpenSC's `pkcs11-tool` prints for the private key
/// labelled `label`: read out of process, from the token itself.
fn private_key_access(token: &Token, label: &str) -> String {
    let pin = std::fs::read_to_string(token.path.join("pin")).unwrap();
    let out = std::process::Command::new("pkcs11-tool")
        .args([
            "--module",
            MODULE,
            "--token-label",
            TOKEN,
            "--login",
            "--pin",
            pin.trim(),
        ])
        .args(["--list-objects", "--type", "privkey", "--label", label])
        .env("SOFTHSM2_CONF", token.path.join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool (Debian opensc) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // It lists every private key; keep the block whose label is ours.
    let blocks: Vec<&str> = text
        .split("Private Key Object")
        .filter(|block| block.lines().any(|l| l.trim() == format!("label:      {label}")))
        .collect();
    assert_eq!(blocks.len(), 1, "not one private key labelled {label}:\n{text}");
    let usage = blocks[0]
        .lines()
        .find(|l| l.trim_start().starts_with("Usage:"))
        .unwrap_or_default();
    let access = blocks[0]
        .lines()
        .find(|l| l.trim_start().starts_with("Access:"))
        .unwrap_or_default();
    format!("{} / {}", usage.trim(), access.trim())
}

async fn exercise(key: &Pkcs11Key, algorithm: KeyAlgorithm) {
    assert_eq!(key.algorithm(), Some(algorithm));
    let public = key.public_key().await.unwrap();
    assert_eq!(public.algorithm, algorithm);
    let message = b"tbsCertificate bytes";
    for scheme in schemes(algorithm) {
        let mut inputs = vec![SignInput::Message(message)];
        let digest = scheme.hash().map(|h| h.digest(message));
        if let Some(digest) = &digest {
            inputs.push(SignInput::Digest(digest));
        }
        for input in inputs {
            let what = format!("{algorithm} {} digest={}", scheme.name(), input.is_digest());
            let signature = key
                .sign(scheme, input)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(key.verify(scheme, input, &signature).await.unwrap(), "{what}");
            // The public key alone checks it (ring verifies whole messages).
            assert!(
                public
                    .verify(scheme, SignInput::Message(message), &signature)
                    .unwrap(),
                "{what}: the public key does not verify the token's signature"
            );
            let mut bad = signature.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(
                !key.verify(scheme, input, &bad).await.unwrap(),
                "{what}: a flipped byte verified"
            );
            assert!(
                !key.verify(scheme, SignInput::Message(b"other"), &signature)
                    .await
                    .unwrap(),
                "{what}: another message verified"
            );
        }
    }
    key.health().await.unwrap();
    let e = key.encrypt(b"dek", b"").await.err().unwrap();
    assert_eq!(e.kind, BackendErrorKind::InvalidInput, "{e}");
}

async fn every_algorithm(isolation: Isolation) {
    let token = common::token(TOKEN);
    let config = backend(&token, isolation);
    for algorithm in [
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
    ] {
        let label = format!("sign-{algorithm}");
        let settings = pair(&label, algorithm);
        let created = generate_key(&config, &settings).await.unwrap();
        assert!(created.contains("not extractable"), "{created}");
        let access = private_key_access(&token, &label);
        assert!(
            access == "Usage:      sign / Access:     sensitive, always sensitive, never extractable, local",
            "{algorithm}: {access}"
        );
        let key = Pkcs11Key::with_engine(config.engine("backends.hsm").unwrap(), &settings).unwrap();
        exercise(&key, algorithm).await;
    }
    // The config names the algorithm; a key pair of another is refused.
    let wrong = Pkcs11Key::with_engine(
        config.engine("backends.hsm").unwrap(),
        &pair("sign-ecdsa-p256", KeyAlgorithm::EcdsaP384),
    )
    .unwrap();
    let e = wrong.public_key().await.err().unwrap();
    assert!(
        e.message.contains("ecdsa-p256") && e.message.contains("ecdsa-p384"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pairs_sign_and_verify_in_process() {
    every_algorithm(Isolation::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pairs_sign_and_verify_through_the_helper() {
    every_algorithm(Isolation::Process).await;
}

#[test]
fn oaep_on_a_non_rsa_algorithm_is_a_config_error() {
    let mut settings = pair("x", KeyAlgorithm::EcdsaP256);
    settings.mechanism = MechanismName::RsaPkcsOaep;
    let token_dir = tempfile::tempdir().unwrap();
    let config = BackendConfig {
        pin_file: Some(token_dir.path().join("pin")),
        isolation: Some(Isolation::InProcess),
        ..backend_without_token()
    };
    let e = Pkcs11Key::new(config.pool().unwrap(), &settings).err().unwrap();
    assert!(
        e.to_string().contains("mechanism") && e.to_string().contains("needs an RSA key"),
        "{e}"
    );
    settings.mechanism = MechanismName::AesGcm;
    settings.algorithm = Some("dsa-1024".into());
    let e = Pkcs11Key::new(config.pool().unwrap(), &settings).err().unwrap();
    assert!(
        e.to_string().contains("algorithm") && e.to_string().contains("ecdsa-p256"),
        "{e}"
    );
}

fn backend_without_token() -> BackendConfig {
    BackendConfig {
        lib: MODULE.into(),
        token_label: Some(TOKEN.into()),
        slot: None,
        pin: None,
        pin_file: None,
        max_sessions: 1,
        dispatch: Dispatch::Pool,
        isolation: None,
        helper_env: vec![],
        helper_uid: None,
        helper_gid: None,
        timeout_secs: 30,
    }
}

/// An RSA key pair for encryption (`algorithm = "rsa-2048"` with
/// `mechanism = "RSA_PKCS_OAEP"`): OAEP on the token, the public key
/// readable, and it neither signs nor seals.
async fn oaep_pair(isolation: Isolation) {
    let token = common::token(TOKEN);
    let config = backend(&token, isolation);
    let label = "oaep-rsa-2048";
    let settings = KeyConfig {
        mechanism: MechanismName::RsaPkcsOaep,
        // SoftHSM2 does OAEP with SHA-1 only.
        rsa_oaep_hash: OaepHash::Sha1,
        ..pair(label, KeyAlgorithm::Rsa2048)
    };
    let created = generate_key(&config, &settings).await.unwrap();
    assert!(created.starts_with("RSA-2048 key pair"), "{created}");
    assert_eq!(
        private_key_access(&token, label),
        "Usage:      decrypt / Access:     sensitive, always sensitive, never extractable, local"
    );
    let key = Pkcs11Key::with_engine(config.engine("backends.hsm").unwrap(), &settings).unwrap();
    let public = key.public_key().await.unwrap();
    assert_eq!(public.algorithm, KeyAlgorithm::Rsa2048);

    let secret = b"a transit data key";
    let first = key.encrypt_asymmetric(secret).await.unwrap();
    let second = key.encrypt_asymmetric(secret).await.unwrap();
    assert_eq!(first.len(), 256, "one RSA-2048 block");
    assert_ne!(first, second, "OAEP is randomised");
    for ciphertext in [&first, &second] {
        let opened = key.decrypt_asymmetric(ciphertext).await.unwrap();
        assert_eq!(opened.expose(), secret);
    }
    let mut bad = first.clone();
    bad[100] ^= 1;
    let e = key.decrypt_asymmetric(&bad).await.err().unwrap();
    assert_eq!(e.kind, BackendErrorKind::NotAuthentic, "{e}");
    key.health().await.unwrap();

    // Not a signing key, not a sealing key.
    let e = key
        .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Message(b"m"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, BackendErrorKind::InvalidInput, "{e}");
    // A signing pair is not an encryption key.
    let signer = pair("sign-for-oaep", KeyAlgorithm::EcdsaP256);
    generate_key(&config, &signer).await.unwrap();
    let signer = Pkcs11Key::with_engine(config.engine("backends.hsm").unwrap(), &signer).unwrap();
    let e = signer.encrypt_asymmetric(secret).await.err().unwrap();
    assert_eq!(e.kind, BackendErrorKind::InvalidInput, "{e}");
    assert!(e.message.contains("RSA_PKCS_OAEP"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oaep_key_pair_in_process() {
    oaep_pair(Isolation::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oaep_key_pair_through_the_helper() {
    oaep_pair(Isolation::Process).await;
}
