//! Transit key pairs (External Keys) against the real OpenBao 2.7.2 in dev
//! mode: every signature the upstream makes is also checked by ring with
//! the public key alone (so PSS's salt length, ECDSA's DER and Ed25519 are
//! what the broker promises), tampered signatures are refused, RSA-OAEP
//! round-trips and refuses a changed ciphertext, keygen makes each type
//! once, and a rotation pins the new upstream version.

mod common;

use common::*;
use sealbroker_backend_transit::{KeyConfig, TransitKey};
use sealbroker_core::{
    Backend, BackendErrorKind, BackendKind, Hash, KeyAlgorithm, OaepHash, Profile, SignInput, SignScheme,
};

const MESSAGE: &[u8] = b"tbsCertificate of a leaf, say";

fn pair(bao: &Bao, key: &str, algorithm: &str, extra: &[(&str, &str)]) -> TransitKey {
    let token = bao.token_file(&bao.root);
    let client = bao.backend_config(&token, "").client().unwrap();
    let mut config = KeyConfig {
        key_name: key.into(),
        algorithm: Some(algorithm.into()),
        ..Default::default()
    };
    for (field, value) in extra {
        match *field {
            "mechanism" => config.mechanism = Some((*value).into()),
            "key_version" => config.key_version = Some(value.parse().unwrap()),
            other => panic!("{other}"),
        }
    }
    TransitKey::new(client, &config).unwrap()
}

fn flipped(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let middle = out.len() / 2;
    out[middle] ^= 0x01;
    out
}

/// Signs `MESSAGE` (and, with a hash, its digest), and checks: the upstream
/// verifies it, ring verifies it with the public key alone, and neither
/// accepts a flipped signature or another message.
async fn signs_for_real(key: &TransitKey, scheme: SignScheme) {
    let public = key.public_key().await.unwrap();
    let mut inputs = vec![SignInput::Message(MESSAGE)];
    let digest;
    if let Some(hash) = scheme.hash() {
        digest = hash.digest(MESSAGE);
        inputs.push(SignInput::Digest(&digest));
    }
    for input in inputs {
        let signature = key.sign(scheme, input).await.unwrap();
        assert!(key.verify(scheme, input, &signature).await.unwrap(), "{scheme:?}");
        // ring checks messages: a digest's signature is over MESSAGE too.
        assert_eq!(
            public.verify(scheme, SignInput::Message(MESSAGE), &signature),
            Ok(true),
            "ring refuses the upstream's {scheme:?} signature"
        );
        assert!(
            !public
                .verify(scheme, SignInput::Message(MESSAGE), &flipped(&signature))
                .unwrap_or(false),
            "ring accepts a flipped {scheme:?} signature"
        );
        assert!(
            !key.verify(scheme, input, &flipped(&signature)).await.unwrap(),
            "{scheme:?}: a flipped signature verified"
        );
        let other_digest;
        let other = match input {
            SignInput::Message(_) => SignInput::Message(b"another message"),
            SignInput::Digest(d) => {
                other_digest = flipped(d);
                SignInput::Digest(&other_digest)
            }
        };
        assert!(
            !key.verify(scheme, other, &signature).await.unwrap(),
            "{scheme:?}"
        );
    }
}

#[tokio::test]
async fn key_pairs_sign_for_real_in_every_scheme_the_upstream_has() {
    let bao = Bao::dev();
    for (name, algorithm, schemes) in [
        (
            "rsa",
            "rsa-2048",
            vec![
                SignScheme::RsaPss(Hash::Sha256),
                SignScheme::RsaPss(Hash::Sha512),
                SignScheme::RsaPkcs1v15(Hash::Sha256),
                SignScheme::RsaPkcs1v15(Hash::Sha384),
            ],
        ),
        ("p256", "ecdsa-p256", vec![SignScheme::Ecdsa(Hash::Sha256)]),
        ("p384", "ecdsa-p384", vec![SignScheme::Ecdsa(Hash::Sha384)]),
        ("ed", "ed25519", vec![SignScheme::Ed25519]),
    ] {
        bao.transit_key(name, &[&format!("type={algorithm}")]);
        let key = pair(&bao, name, algorithm, &[]);
        key.health().await.unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::parse(algorithm));
        assert_eq!(key.oaep_hash(), None);
        for scheme in schemes {
            signs_for_real(&key, scheme).await;
        }
        // A signing pair does not seal data keys or do RSA-OAEP.
        let err = key.encrypt(b"dek", b"aad").await.unwrap_err();
        assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
        assert!(err.message.contains("signing key pair"), "{err}");
        let err = key.encrypt_asymmetric(b"x").await.unwrap_err();
        assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    }
}

#[tokio::test]
async fn an_rsa_oaep_pair_round_trips_and_refuses_a_changed_ciphertext() {
    let bao = Bao::dev();
    bao.transit_key("enc", &["type=rsa-3072"]);
    let key = pair(&bao, "enc", "rsa-3072", &[("mechanism", "RSA_PKCS_OAEP")]);
    key.health().await.unwrap();
    assert_eq!(key.oaep_hash(), Some(OaepHash::Sha256));
    assert_eq!(key.public_key().await.unwrap().algorithm, KeyAlgorithm::Rsa3072);

    let secret = b"a card number, say";
    let first = key.encrypt_asymmetric(secret).await.unwrap();
    let second = key.encrypt_asymmetric(secret).await.unwrap();
    assert_eq!(first.len(), 384, "one raw RSA-3072 OAEP block");
    assert_ne!(first, second, "OAEP is randomised");
    assert_eq!(key.decrypt_asymmetric(&first).await.unwrap().expose(), secret);
    assert_eq!(key.decrypt_asymmetric(&second).await.unwrap().expose(), secret);
    let err = key.decrypt_asymmetric(&flipped(&first)).await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");

    let err = key
        .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Message(MESSAGE))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("RSA-OAEP encryption key pair"), "{err}");
}

#[tokio::test]
async fn a_key_of_another_type_upstream_is_named_at_health() {
    let bao = Bao::dev();
    bao.transit_key("p256", &["type=ecdsa-p256"]);
    let key = pair(&bao, "p256", "ecdsa-p384", &[]);
    let err = key.health().await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(
        err.message.contains("has type ecdsa-p256") && err.message.contains("ecdsa-p384"),
        "{err}"
    );
    // A symmetric upstream key is no signing pair either.
    bao.transit_key("aes", &["type=aes256-gcm96"]);
    let err = pair(&bao, "aes", "rsa-2048", &[]).health().await.unwrap_err();
    assert!(err.message.contains("has type aes256-gcm96"), "{err}");
}

#[tokio::test]
async fn keygen_makes_each_type_once_and_never_exportable() {
    let bao = Bao::dev();
    bao.must(&["secrets", "enable", "transit"]);
    let token = bao.token_file(&bao.root);
    let table: toml::Table = toml::from_str(&format!(
        "address = \"{}\"\ntoken_file = \"{}\"\n",
        bao.addr,
        token.display()
    ))
    .unwrap();
    let opened = sealbroker_backend_transit::KIND
        .open(&table, "backends.t", Profile::Development)
        .await
        .unwrap();
    for (name, settings) in [
        ("made-p256", "algorithm = \"ecdsa-p256\""),
        (
            "made-rsa",
            "algorithm = \"rsa-2048\"\nmechanism = \"RSA_PKCS_OAEP\"",
        ),
        ("made-aes", ""),
    ] {
        let settings: toml::Table = toml::from_str(&format!("key_name = \"{name}\"\n{settings}")).unwrap();
        let made = opened.create_key(&settings, "keys.k").await.unwrap();
        assert!(made.contains(name), "{made}");
        let info: serde_json::Value =
            serde_json::from_str(&bao.must(&["read", "-format=json", &format!("transit/keys/{name}")]))
                .unwrap();
        assert_eq!(info["data"]["exportable"], false, "{info}");
        assert_eq!(info["data"]["allow_plaintext_backup"], false, "{info}");
        let expected = if name == "made-aes" {
            "aes256-gcm96"
        } else if name == "made-rsa" {
            "rsa-2048"
        } else {
            "ecdsa-p256"
        };
        assert_eq!(info["data"]["type"], expected, "{info}");
        let again = opened.create_key(&settings, "keys.k").await.unwrap_err();
        assert!(again.to_string().contains("already has transit key"), "{again}");
        // What keygen made serves.
        let key = opened.key(&settings, "keys.k").unwrap();
        key.health().await.unwrap();
    }
}

#[tokio::test]
async fn a_rotation_pins_the_new_upstream_version_and_the_old_one_still_signs_as_before() {
    let bao = Bao::dev();
    bao.transit_key("rot", &["type=ecdsa-p256"]);
    let v1 = pair(&bao, "rot", "ecdsa-p256", &[]);
    let old_public = v1.public_key().await.unwrap();
    let made = v1.create_version(2).await.unwrap();
    assert_eq!(made.settings.get("key_version").map(String::as_str), Some("2"));
    let v2 = made.backend;
    let new_public = v2.public_key().await.unwrap();
    assert_ne!(
        old_public.spki_der, new_public.spki_der,
        "version 2 is a new key pair"
    );
    let scheme = SignScheme::Ecdsa(Hash::Sha256);
    // After the upstream rotated, version 1 still signs with its own key.
    let signature = v1.sign(scheme, SignInput::Message(MESSAGE)).await.unwrap();
    let checks = |public: &sealbroker_core::PublicKey, signature: &[u8]| {
        public
            .verify(scheme, SignInput::Message(MESSAGE), signature)
            .unwrap_or(false)
    };
    assert!(
        checks(&old_public, &signature),
        "version 1 signed with another key"
    );
    assert!(
        !checks(&new_public, &signature),
        "version 1 signed with version 2's key"
    );
    let signature = v2.sign(scheme, SignInput::Message(MESSAGE)).await.unwrap();
    assert!(checks(&new_public, &signature));
    assert!(!checks(&old_public, &signature));
    // The derived version 2 is the same.
    let derived = v1.derive_version(2).unwrap();
    assert_eq!(
        derived.backend.public_key().await.unwrap().spki_der,
        new_public.spki_der
    );
    // A version the upstream does not have is named.
    let missing = pair(&bao, "rot", "ecdsa-p256", &[("key_version", "7")]);
    let err = missing.public_key().await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("no version 7"), "{err}");
}
