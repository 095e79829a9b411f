//! Asymmetric AWS KMS keys (External Keys) against a real moto server, and
//! what moto cannot show against a scripted stand-in of the KMS protocol.
//!
//! What moto 5.2.5 gets wrong, and so what these tests do not claim of it:
//! - it ignores `MessageType = DIGEST` and hashes the digest again, so a
//!   digest signed by moto does not verify; digest mode is checked on the
//!   wire instead (what is sent, and that it is sent unhashed);
//! - its RSA-PSS salt is as long as the key allows, where AWS (and ring)
//!   use a salt as long as the hash; so its PSS signatures are checked with
//!   the `rsa` crate at moto's salt length, and ring refuses them;
//! - it answers a bad signature with `SignatureValid = false`, where AWS
//!   answers `KMSInvalidSignatureException` (both are checked);
//! - `Encrypt` on an RSA key is moto's own symmetric format, not RSA-OAEP,
//!   so the OAEP round trip proves the plumbing, not OAEP; what is sent is
//!   checked on the wire;
//! - it cannot make Ed25519 keys (`ECC_NIST_EDWARDS25519`).

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use sealbroker_backend_awskms::{AwsKmsKey, KIND, KeyConfig, KmsClient, MechanismName};
use sealbroker_core::{
    Backend, BackendErrorKind, BackendKind, Hash, KeyAlgorithm, Profile, PublicKey, SignInput, SignScheme,
};

const MESSAGE: &[u8] = b"release manifest v1.2.3";

/// A KMS key of `spec` and `usage` made directly on moto; its ARN.
async fn create_pair(client: &KmsClient, spec: &str, usage: &str) -> String {
    let out = client
        .sdk()
        .create_key()
        .key_spec(spec.into())
        .key_usage(usage.into())
        .send()
        .await
        .expect("CreateKey on moto");
    out.key_metadata.unwrap().arn.unwrap()
}

fn pair(client: &KmsClient, key_id: &str, algorithm: &str) -> AwsKmsKey {
    AwsKmsKey::new(
        client,
        &KeyConfig {
            key_id: key_id.into(),
            algorithm: Some(algorithm.into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn oaep_pair(client: &KmsClient, key_id: &str) -> AwsKmsKey {
    AwsKmsKey::new(
        client,
        &KeyConfig {
            key_id: key_id.into(),
            algorithm: Some("rsa-2048".into()),
            mechanism: Some(MechanismName::RsaPkcsOaep),
            ..Default::default()
        },
    )
    .unwrap()
}

fn tampered(signature: &[u8]) -> Vec<u8> {
    let mut bad = signature.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    bad
}

/// Sign, verify, refuse a changed signature and a changed message, and
/// check the signature independently with the public key.
async fn signs_and_verifies(key: &AwsKmsKey, scheme: SignScheme) -> (PublicKey, Vec<u8>) {
    let public = key.public_key().await.unwrap();
    assert_eq!(Some(public.algorithm), key.algorithm());
    let signature = key.sign(scheme, SignInput::Message(MESSAGE)).await.unwrap();
    assert!(
        key.verify(scheme, SignInput::Message(MESSAGE), &signature)
            .await
            .unwrap(),
        "{scheme:?}: KMS does not verify its own signature"
    );
    assert!(
        !key.verify(scheme, SignInput::Message(MESSAGE), &tampered(&signature))
            .await
            .unwrap(),
        "{scheme:?}: a changed signature verified"
    );
    assert!(
        !key.verify(scheme, SignInput::Message(b"release manifest v6.6.6"), &signature)
            .await
            .unwrap(),
        "{scheme:?}: the signature verified over another message"
    );
    (public, signature)
}

#[tokio::test]
async fn rsa_pkcs1_and_ecdsa_signatures_are_real_and_checked_by_kms() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    for (spec, algorithm, schemes) in [
        (
            "RSA_2048",
            "rsa-2048",
            vec![
                SignScheme::RsaPkcs1v15(Hash::Sha256),
                SignScheme::RsaPkcs1v15(Hash::Sha384),
                SignScheme::RsaPkcs1v15(Hash::Sha512),
            ],
        ),
        (
            "ECC_NIST_P256",
            "ecdsa-p256",
            vec![SignScheme::Ecdsa(Hash::Sha256)],
        ),
        (
            "ECC_NIST_P384",
            "ecdsa-p384",
            vec![SignScheme::Ecdsa(Hash::Sha384)],
        ),
    ] {
        let arn = create_pair(&client, spec, "SIGN_VERIFY").await;
        let key = pair(&client, &arn, algorithm);
        key.health().await.unwrap();
        for scheme in schemes {
            let (public, signature) = signs_and_verifies(&key, scheme).await;
            // ring, with nothing but the public key, agrees.
            assert_eq!(
                public.verify(scheme, SignInput::Message(MESSAGE), &signature),
                Ok(true),
                "{algorithm} {scheme:?}"
            );
            assert_eq!(
                public.verify(scheme, SignInput::Message(b"other"), &signature),
                Ok(false)
            );
        }
    }
}

#[tokio::test]
async fn rsa_pss_signatures_are_real_at_motos_salt_length() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let arn = create_pair(&client, "RSA_2048", "SIGN_VERIFY").await;
    let key = pair(&client, &arn, "rsa-2048");
    let scheme = SignScheme::RsaPss(Hash::Sha256);
    let (public, signature) = signs_and_verifies(&key, scheme).await;

    // moto salts with as many bytes as a 2048-bit key allows (256 - 32 - 2);
    // the signature is a real RSASSA-PSS signature under the public key.
    let rsa_key = rsa::RsaPublicKey::from_public_key_der(&public.spki_der).unwrap();
    let signature = rsa::pss::Signature::try_from(signature.as_slice()).unwrap();
    let at_motos_salt = rsa::pss::VerifyingKey::<sha2::Sha256>::new_with_salt_len(rsa_key.clone(), 222);
    at_motos_salt.verify(MESSAGE, &signature).unwrap();
    assert!(at_motos_salt.verify(b"other", &signature).is_err());
    // AWS salts with 32 bytes (the hash's length), as ring expects; moto does
    // not, so ring refuses moto's signature. Against AWS this is `Ok(true)`.
    let at_hash_length = rsa::pss::VerifyingKey::<sha2::Sha256>::new(rsa_key);
    assert!(at_hash_length.verify(MESSAGE, &signature).is_err());
    let bytes: Box<[u8]> = signature.into();
    assert_eq!(
        public.verify(scheme, SignInput::Message(MESSAGE), &bytes),
        Ok(false)
    );
}

#[tokio::test]
async fn a_scheme_that_does_not_fit_the_key_is_refused_before_kms() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let ec = pair(
        &client,
        &create_pair(&client, "ECC_NIST_P256", "SIGN_VERIFY").await,
        "ecdsa-p256",
    );
    let rsa = pair(
        &client,
        &create_pair(&client, "RSA_2048", "SIGN_VERIFY").await,
        "rsa-2048",
    );
    for (key, scheme, says) in [
        (
            &ec,
            SignScheme::RsaPss(Hash::Sha256),
            "cannot sign with rsa-pss-sha256",
        ),
        (&ec, SignScheme::Ecdsa(Hash::Sha384), "only as ecdsa-sha256"),
        (&ec, SignScheme::Ed25519, "cannot sign with ed25519"),
        (
            &rsa,
            SignScheme::Ecdsa(Hash::Sha256),
            "cannot sign with ecdsa-sha256",
        ),
    ] {
        let err = key.sign(scheme, SignInput::Message(MESSAGE)).await.unwrap_err();
        assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
        assert!(err.message.contains(says), "{err}");
        let err = key
            .verify(scheme, SignInput::Message(MESSAGE), &[1; 64])
            .await
            .unwrap_err();
        assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    }
    // A digest of the wrong length is refused too.
    let err = ec
        .sign(SignScheme::Ecdsa(Hash::Sha256), SignInput::Digest(&[0; 48]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    // A signing key neither seals nor does OAEP.
    let err = ec.encrypt(b"dek", b"aad").await.unwrap_err();
    assert!(err.message.contains("does not seal"), "{err}");
    let err = ec.encrypt_asymmetric(b"x").await.unwrap_err();
    assert!(err.message.contains("not an RSA encryption key pair"), "{err}");
}

#[tokio::test]
async fn a_config_that_does_not_fit_the_kms_key_is_named_by_health_and_calls() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let rsa_arn = create_pair(&client, "RSA_2048", "SIGN_VERIFY").await;

    // The config says ECDSA; the KMS key is RSA.
    let wrong = pair(&client, &rsa_arn, "ecdsa-p256");
    let err = wrong.health().await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("RSA_2048/SIGN_VERIFY"), "{err}");
    assert!(err.message.contains("ECC_NIST_P256/SIGN_VERIFY"), "{err}");
    let err = wrong.public_key().await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    // KMS refuses the wrong signing algorithm (moto: ValidationException).
    let err = wrong
        .sign(SignScheme::Ecdsa(Hash::Sha256), SignInput::Message(MESSAGE))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("Sign"), "{err}");

    // A signing key configured as a sealing key, and the other way round.
    let sealing = AwsKmsKey::new(
        &client,
        &KeyConfig {
            key_id: rsa_arn.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let err = sealing.health().await.unwrap_err();
    assert!(err.message.contains("symmetric sealing key"), "{err}");
    let oaep = oaep_pair(&client, &rsa_arn);
    let err = oaep.health().await.unwrap_err();
    assert!(err.message.contains("RSA_2048/ENCRYPT_DECRYPT"), "{err}");
    // Signing with an ENCRYPT_DECRYPT key: KMS refuses (moto says so as a
    // ValidationException naming SIGN_VERIFY; AWS as InvalidKeyUsageException).
    let enc_arn = create_pair(&client, "RSA_2048", "ENCRYPT_DECRYPT").await;
    let err = pair(&client, &enc_arn, "rsa-2048")
        .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Message(MESSAGE))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("SIGN_VERIFY"), "{err}");
}

#[tokio::test]
async fn rsa_oaep_pairs_round_trip_and_refuse_a_changed_ciphertext() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let arn = create_pair(&client, "RSA_2048", "ENCRYPT_DECRYPT").await;
    let key = oaep_pair(&client, &arn);
    key.health().await.unwrap();
    assert_eq!(key.algorithm(), Some(KeyAlgorithm::Rsa2048));
    // What a door (KMIP's Cryptographic Parameters) checks requests against.
    assert_eq!(key.oaep_hash(), Some(sealbroker_core::OaepHash::Sha256));
    assert_eq!(key.public_key().await.unwrap().algorithm, KeyAlgorithm::Rsa2048);

    let secret = b"card 4111 1111 1111 1111";
    let first = key.encrypt_asymmetric(secret).await.unwrap();
    let second = key.encrypt_asymmetric(secret).await.unwrap();
    assert_ne!(first, second, "encryption is randomised");
    assert!(!first.windows(secret.len()).any(|w| w == secret));
    assert_eq!(key.decrypt_asymmetric(&first).await.unwrap().expose(), secret);
    assert_eq!(key.decrypt_asymmetric(&second).await.unwrap().expose(), secret);

    let err = key.decrypt_asymmetric(&tampered(&first)).await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    // An OAEP pair does not sign, and does not seal data keys.
    let err = key
        .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Message(MESSAGE))
        .await
        .unwrap_err();
    assert!(err.message.contains("does not sign"), "{err}");
    let err = key.encrypt(b"dek", b"aad").await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
}

/// `[backends.aws]` on moto, opened as the broker opens it.
async fn account(moto: &Moto, creds: &Creds) -> std::sync::Arc<dyn sealbroker_core::OpenedBackend> {
    let table: toml::Table = toml::from_str(&format!(
        "region = \"{REGION}\"\nendpoint = \"{}\"\ncredentials_file = \"{}\"\n",
        moto.endpoint(),
        creds.file.display()
    ))
    .unwrap();
    KIND.open(&table, "backends.aws", Profile::Development)
        .await
        .unwrap()
}

#[tokio::test]
async fn keygen_makes_the_key_the_config_describes_under_its_alias_once() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let aws = account(&moto, &creds).await;
    for (alias, settings, shape) in [
        (
            "alias/ca",
            "algorithm = \"ecdsa-p384\"",
            "ECC_NIST_P384/SIGN_VERIFY",
        ),
        ("alias/signer", "algorithm = \"rsa-3072\"", "RSA_3072/SIGN_VERIFY"),
        (
            "alias/oaep",
            "algorithm = \"rsa-4096\"\nmechanism = \"RSA_PKCS_OAEP\"",
            "RSA_4096/ENCRYPT_DECRYPT",
        ),
        ("alias/unseal", "", "SYMMETRIC_DEFAULT/ENCRYPT_DECRYPT"),
    ] {
        let table: toml::Table = toml::from_str(&format!("key_id = \"{alias}\"\n{settings}")).unwrap();
        let created = aws.create_key(&table, "keys.k").await.unwrap();
        assert!(created.contains(shape) && created.contains(alias), "{created}");
        assert!(created.contains("never extractable"), "{created}");
        let meta = client
            .sdk()
            .describe_key()
            .key_id(alias)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap();
        assert_eq!(
            format!(
                "{}/{}",
                meta.key_spec.unwrap().as_str(),
                meta.key_usage.unwrap().as_str()
            ),
            shape
        );
        let key = aws.key(&table, "keys.k").unwrap();
        key.health().await.unwrap();
        // A second keygen does not make another key under the same alias.
        let err = aws.create_key(&table, "keys.k").await.unwrap_err();
        assert!(err.to_string().contains("already names"), "{err}");
    }
    // keygen needs an alias to name the key by.
    let table: toml::Table =
        toml::from_str("key_id = \"1234abcd-12ab-34cd-56ef-1234567890ab\"\nalgorithm = \"ecdsa-p256\"")
            .unwrap();
    let err = aws.create_key(&table, "keys.k").await.unwrap_err();
    assert!(err.to_string().contains("alias/NAME"), "{err}");
    // Bad settings are config errors under the key's path.
    for (settings, field) in [
        ("algorithm = \"ed25519\"", "keys.k.algorithm"),
        ("algorithm = \"dsa-1024\"", "keys.k.algorithm"),
        (
            "algorithm = \"ecdsa-p256\"\nmechanism = \"RSA_PKCS_OAEP\"",
            "keys.k.mechanism",
        ),
        ("rsa_oaep_hash = \"sha1\"", "keys.k.rsa_oaep_hash"),
    ] {
        let table: toml::Table = toml::from_str(&format!("key_id = \"alias/x\"\n{settings}")).unwrap();
        let err = aws.key(&table, "keys.k").err().unwrap();
        assert_eq!(err.path, field, "{settings}: {err}");
    }
}

#[tokio::test]
async fn a_new_version_is_a_new_key_pair_under_the_versioned_alias() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let aws = account(&moto, &creds).await;
    let table: toml::Table = toml::from_str("key_id = \"alias/ca\"\nalgorithm = \"ecdsa-p256\"").unwrap();
    aws.create_key(&table, "keys.ca").await.unwrap();
    let v1 = aws.key(&table, "keys.ca").unwrap();

    // What a replica derives without asking KMS, and what rotation makes.
    let derived = v1.derive_version(2).unwrap();
    assert_eq!(derived.settings["key_id"], "alias/ca-v2");
    let v2 = v1.create_version(2).await.unwrap();
    assert_eq!(v2.settings["key_id"], "alias/ca-v2");
    assert_eq!(v2.backend.key_identity(), derived.backend.key_identity());
    assert_eq!(
        v2.backend.key_identity(),
        format!("awskms:{REGION}:alias/ca-v2:ecdsa-p256")
    );
    // Made again (another replica, a retried job): the same key.
    let again = v1.create_version(2).await.unwrap();
    assert_eq!(again.backend.key_identity(), v2.backend.key_identity());
    let aliases = client.sdk().list_aliases().send().await.unwrap();
    let v2_targets: Vec<_> = aliases
        .aliases()
        .iter()
        .filter(|a| a.alias_name() == Some("alias/ca-v2"))
        .collect();
    assert_eq!(v2_targets.len(), 1);

    // A new key pair: another public key, and each version signs as itself.
    let (p1, p2) = (
        v1.public_key().await.unwrap(),
        v2.backend.public_key().await.unwrap(),
    );
    assert_ne!(p1, p2);
    let scheme = SignScheme::Ecdsa(Hash::Sha256);
    let signature = v2
        .backend
        .sign(scheme, SignInput::Message(MESSAGE))
        .await
        .unwrap();
    assert_eq!(
        p2.verify(scheme, SignInput::Message(MESSAGE), &signature),
        Ok(true)
    );
    assert_eq!(
        p1.verify(scheme, SignInput::Message(MESSAGE), &signature),
        Ok(false)
    );
    // Version 3 from version 2 is named after the base alias.
    assert_eq!(
        v2.backend.derive_version(3).unwrap().settings["key_id"],
        "alias/ca-v3"
    );

    // Without an alias there is no name for the new key.
    let by_arn = pair(
        &client,
        &create_pair(&client, "ECC_NIST_P256", "SIGN_VERIFY").await,
        "ecdsa-p256",
    );
    assert!(by_arn.derive_version(2).is_none());
    let err = by_arn.create_version(2).await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("alias/NAME"), "{err}");
}

// What moto cannot show: the exact requests, and AWS's own answers.

const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn ok(body: String) -> Reply {
    Reply {
        status: 200,
        headers: vec![],
        body,
    }
}

fn kms_error(kind: &str) -> Reply {
    Reply {
        status: 400,
        headers: vec![],
        body: format!(r#"{{"__type":"{kind}","message":"as AWS says it"}}"#),
    }
}

fn signed() -> Reply {
    ok(format!(
        r#"{{"KeyId":"{ARN}","Signature":"MEUCIQ==","SigningAlgorithm":"ECDSA_SHA_256"}}"#
    ))
}

#[tokio::test]
async fn a_digest_is_sent_as_digest_unhashed_and_a_long_message_is_hashed_once() {
    let (endpoint, _, requests) = recording_kms(vec![signed()]).await;
    let creds = credentials();
    let client = client(&endpoint, &creds).await;
    let key = pair(&client, ARN, "ecdsa-p256");
    let scheme = SignScheme::Ecdsa(Hash::Sha256);

    let digest = Hash::Sha256.digest(MESSAGE);
    let long = vec![b'x'; 5000];
    key.sign(scheme, SignInput::Digest(&digest)).await.unwrap();
    key.sign(scheme, SignInput::Message(MESSAGE)).await.unwrap();
    key.sign(scheme, SignInput::Message(&long)).await.unwrap();

    let sent = requests.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    let expect = [
        ("DIGEST", digest.clone()),
        ("RAW", MESSAGE.to_vec()),
        ("DIGEST", Hash::Sha256.digest(&long)),
    ];
    for (request, (message_type, message)) in sent.iter().zip(expect) {
        assert_eq!(request.operation, "Sign");
        assert_eq!(request.body["KeyId"], ARN);
        assert_eq!(request.body["SigningAlgorithm"], "ECDSA_SHA_256");
        assert_eq!(request.body["MessageType"], message_type);
        assert_eq!(request.body["Message"], BASE64.encode(&message));
    }
}

#[tokio::test]
async fn kms_invalid_signature_is_a_verdict_and_wrong_usage_is_invalid_input() {
    let (endpoint, _, requests) = recording_kms(vec![kms_error("KMSInvalidSignatureException")]).await;
    let creds = credentials();
    let client = client(&endpoint, &creds).await;
    let key = pair(&client, ARN, "rsa-2048");
    let digest = Hash::Sha384.digest(MESSAGE);
    let verdict = key
        .verify(
            SignScheme::RsaPss(Hash::Sha384),
            SignInput::Digest(&digest),
            &[7; 256],
        )
        .await
        .unwrap();
    assert!(!verdict);
    let sent = requests.lock().unwrap().clone();
    assert_eq!(sent[0].operation, "Verify");
    assert_eq!(sent[0].body["SigningAlgorithm"], "RSASSA_PSS_SHA_384");
    assert_eq!(sent[0].body["MessageType"], "DIGEST");
    assert_eq!(sent[0].body["Signature"], BASE64.encode([7; 256]));
    // An empty signature, or one longer than KMS takes, is not valid, and
    // KMS is not asked.
    for signature in [vec![], vec![7; 6145]] {
        assert!(
            !key.verify(
                SignScheme::RsaPss(Hash::Sha384),
                SignInput::Digest(&digest),
                &signature
            )
            .await
            .unwrap()
        );
    }
    assert_eq!(requests.lock().unwrap().len(), 1);

    let (endpoint, count) = scripted_kms(vec![kms_error("InvalidKeyUsageException")]).await;
    let client = common::client(&endpoint, &creds).await;
    let key = pair(&client, ARN, "rsa-2048");
    let err = key
        .sign(SignScheme::RsaPkcs1v15(Hash::Sha256), SignInput::Message(MESSAGE))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("`algorithm`"), "{err}");
    assert!(err.message.contains("KeyUsage"), "{err}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn oaep_sends_the_configured_hash_both_ways() {
    let ciphertext = BASE64.encode([9u8; 256]);
    let (endpoint, _, requests) = recording_kms(vec![
        ok(format!(
            r#"{{"KeyId":"{ARN}","CiphertextBlob":"{ciphertext}","EncryptionAlgorithm":"RSAES_OAEP_SHA_256"}}"#
        )),
        ok(format!(
            r#"{{"KeyId":"{ARN}","Plaintext":"{}","EncryptionAlgorithm":"RSAES_OAEP_SHA_256"}}"#,
            BASE64.encode(b"opened")
        )),
    ])
    .await;
    let creds = credentials();
    let client = client(&endpoint, &creds).await;
    let key = oaep_pair(&client, ARN);
    let sealed = key.encrypt_asymmetric(b"secret").await.unwrap();
    assert_eq!(sealed, [9u8; 256]);
    let opened = key.decrypt_asymmetric(&sealed).await.unwrap();
    assert_eq!(opened.expose(), b"opened");
    let sent = requests.lock().unwrap().clone();
    assert_eq!(sent[0].operation, "Encrypt");
    assert_eq!(sent[0].body["EncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
    assert_eq!(sent[0].body.get("EncryptionContext"), None);
    assert_eq!(sent[1].operation, "Decrypt");
    assert_eq!(sent[1].body["EncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
    assert_eq!(sent[1].body["CiphertextBlob"], ciphertext);
    assert_eq!(sent[1].body["KeyId"], ARN);
}
