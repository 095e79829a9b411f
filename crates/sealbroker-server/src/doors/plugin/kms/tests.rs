//! The External Keys service called as OpenBao calls it, over a broker
//! built in this process from a config file with software keys: message
//! signing (the software backend signs messages only), the config maps,
//! refusals, and how errors and bad signatures reach OpenBao.

use std::sync::Arc;

use prost_types::{Struct, Value};
use sealbroker_core::signing::PublicKey;
use sealbroker_core::{SignInput, SignScheme};
use sealbroker_testkit::memory::MemoryKind;
use tonic::Code;

use super::*;
use crate::broker::registry::BackendRegistry;

fn from_openbao<T>(message: T) -> Request<T> {
    use tonic::transport::server::Connected;
    let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
    let mut request = Request::new(message);
    request.extensions_mut().insert(ours.connect_info());
    request
}

fn map(pairs: &[(&str, &str)]) -> Option<Struct> {
    Some(Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    Value {
                        kind: Some(Kind::StringValue((*v).to_owned())),
                    },
                )
            })
            .collect(),
    })
}

struct Fixture {
    service: KmsService,
    kms_id: String,
    dir: tempfile::TempDir,
}

/// Keys `ec` (ECDSA P-256) and `ed` (Ed25519) granted to this process's
/// uid, `denied` granted to another, `seal` a sealing key.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // This process's uid: the owner of what it just made.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).unwrap());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let config = dir.path().join("plugin.toml");
    std::fs::write(
        &config,
        format!(
            "profile = \"development\"\n[audit]\nfile = {audit:?}\n\
             [backends.soft]\ntype = \"software\"\n[backends.mem]\ntype = \"kmstest\"\n\
             [keys.ec]\nbackend = \"soft\"\nkey_file = {ec:?}\ngenerate = true\nalgorithm = \"ecdsa-p256\"\n\
             allow = {{ sign = [\"uid:{uid}\"], verify = [\"uid:{uid}\"] }}\n\
             [keys.ed]\nbackend = \"soft\"\nkey_file = {ed:?}\ngenerate = true\nalgorithm = \"ed25519\"\n\
             allow = {{ any = [\"uid:{uid}\"] }}\n\
             [keys.denied]\nbackend = \"soft\"\nkey_file = {denied:?}\ngenerate = true\nalgorithm = \"ed25519\"\n\
             allow = {{ any = [\"uid:4242\"] }}\n\
             [keys.seal]\nbackend = \"mem\"\nallow = {{ any = [\"uid:{uid}\"] }}\n",
            audit = file("audit.jsonl"),
            ec = file("ec.key"),
            ed = file("ed.key"),
            denied = file("denied.key"),
        ),
    )
    .unwrap();
    let registry = BackendRegistry::default()
        .with(&sealbroker_backend_software::KIND)
        .with(MemoryKind::leak("kmstest"));
    let service = KmsService::new(Arc::new(WrapperService::new(registry, None)));
    let kms_id = service
        .open(from_openbao(pb::OpenRequest {
            allow_environment: false,
            config_map: map(&[("config_file", config.to_str().unwrap())]),
        }))
        .await
        .unwrap()
        .into_inner()
        .kms_id;
    Fixture { service, kms_id, dir }
}

async fn get_key(f: &Fixture, values: &[(&str, &str)]) -> Result<String, Status> {
    f.service
        .get_key(from_openbao(pb::GetKeyRequest {
            kms_id: f.kms_id.clone(),
            config_map: map(values),
        }))
        .await
        .map(|r| r.into_inner().key_id)
}

async fn sign(f: &Fixture, key_id: &str, data: &[u8], prehashed: bool, hash: i32) -> Result<Vec<u8>, Status> {
    f.service
        .sign(from_openbao(pb::SignRequest {
            key_id: key_id.to_owned(),
            data: data.to_vec(),
            prehashed,
            hash,
            opts: None,
        }))
        .await
        .map(|r| r.into_inner().signature)
}

async fn verify(f: &Fixture, key_id: &str, data: &[u8], hash: i32, signature: Vec<u8>) -> Result<(), Status> {
    f.service
        .verify(from_openbao(pb::VerifyRequest {
            key_id: key_id.to_owned(),
            data: data.to_vec(),
            prehashed: false,
            hash,
            opts: None,
            signature,
        }))
        .await
        .map(|_| ())
}

const SHA256: i32 = 5;

#[tokio::test]
async fn a_message_signed_through_the_plugin_verifies_against_the_exported_public_key() {
    let f = fixture().await;
    for (key, hash, scheme) in [
        ("ec", SHA256, SignScheme::Ecdsa(sealbroker_core::Hash::Sha256)),
        ("ed", 0, SignScheme::Ed25519),
    ] {
        let id = get_key(&f, &[("key", key)]).await.unwrap();
        let signature = sign(&f, &id, b"to be signed", false, hash).await.unwrap();
        let der = f
            .service
            .export_public(from_openbao(pb::ExportPublicRequest { key_id: id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .pkix_asn1_der;
        // The SPKI OpenBao parses with x509.ParsePKIXPublicKey is the broker's.
        let public = f
            .service
            .wrappers
            .keys_of(
                &[(
                    "config_file".to_owned(),
                    f.dir.path().join("plugin.toml").display().to_string(),
                )]
                .into(),
                None,
                "config value",
            )
            .await
            .map(|keys| match keys {
                Keys::Local(broker) => broker,
                Keys::Remote(_) => unreachable!(),
            })
            .unwrap();
        let call = Call::new(Door::KmsPlugin, crate::broker::caller::Caller::Internal("test"));
        let expected: PublicKey = public.public_key(&call, key, None).await.unwrap().public;
        assert_eq!(der, expected.spki_der, "{key}");
        assert!(
            expected
                .verify(scheme, SignInput::Message(b"to be signed"), &signature)
                .unwrap(),
            "{key}"
        );
        verify(&f, &id, b"to be signed", hash, signature.clone())
            .await
            .unwrap();
        let bad = verify(&f, &id, b"other", hash, signature).await.unwrap_err();
        assert_eq!(
            bad.code(),
            Code::InvalidArgument,
            "OpenBao reads InvalidArgument as ErrInvalidSignature"
        );
    }
}

#[tokio::test]
async fn refusals_reach_openbao_as_unknown_with_the_brokers_code() {
    let f = fixture().await;
    // A digest: the software backend signs messages only, and says so.
    let ec = get_key(&f, &[("key", "ec")]).await.unwrap();
    let e = sign(&f, &ec, &[0; 32], true, SHA256).await.unwrap_err();
    assert_eq!(e.code(), Code::Unknown, "{e:?}");
    assert!(e.message().contains("cannot sign a digest"), "{}", e.message());
    // A digest that does not name its hash.
    let e = sign(&f, &ec, &[0; 32], true, 0).await.unwrap_err();
    assert!(e.message().contains("must name its hash"), "{}", e.message());
    // The ACL holds: another uid's key opens (the name is not secret to a
    // configured OpenBao) but its first use is refused, and audited.
    let denied = get_key(&f, &[("key", "denied")]).await.err().unwrap();
    assert!(
        denied.message().contains("PermissionDenied"),
        "{}",
        denied.message()
    );
    // Unknown values and a bad version are named.
    let e = get_key(&f, &[("key", "ec"), ("label", "x")]).await.unwrap_err();
    assert!(
        e.message().contains("unknown key value(s) label"),
        "{}",
        e.message()
    );
    let e = get_key(&f, &[("key", "ec"), ("version", "zero")])
        .await
        .unwrap_err();
    assert!(e.message().contains("`version`"), "{}", e.message());
    let e = get_key(&f, &[]).await.unwrap_err();
    assert!(e.message().contains("`key` is missing"), "{}", e.message());
    // A sealing key does not sign, but encrypts and decrypts as Wrap/Unwrap.
    let seal = get_key(&f, &[("key", "seal")]).await.unwrap();
    let e = sign(&f, &seal, b"m", false, SHA256).await.unwrap_err();
    assert!(e.message().contains("sealing key"), "{}", e.message());
    let ciphertext = f
        .service
        .encrypt(from_openbao(pb::EncryptRequest {
            key_id: seal.clone(),
            data: b"transit plaintext".to_vec(),
            aad: b"ctx".to_vec(),
        }))
        .await
        .unwrap()
        .into_inner()
        .ciphertext;
    let plaintext = f
        .service
        .decrypt(from_openbao(pb::DecryptRequest {
            key_id: seal,
            data: ciphertext,
            aad: b"ctx".to_vec(),
        }))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"transit plaintext");
    // A signing pair does not encrypt; additional data is refused by name
    // (RSA-OAEP binds none) rather than dropped.
    let encrypt = |key_id: &str, aad: &[u8]| {
        f.service.encrypt(from_openbao(pb::EncryptRequest {
            key_id: key_id.to_owned(),
            data: b"transit plaintext".to_vec(),
            aad: aad.to_vec(),
        }))
    };
    let ed = get_key(&f, &[("key", "ed")]).await.unwrap();
    let e = encrypt(&ed, b"").await.unwrap_err();
    assert!(
        e.message().contains("InvalidArgument") && e.message().contains("not an RSA encryption key pair"),
        "{}",
        e.message()
    );
    // `ec` grants sign and verify only: encrypt is refused before the key.
    let e = encrypt(&ec, b"").await.unwrap_err();
    assert!(
        e.message().contains("PermissionDenied: encrypt"),
        "{}",
        e.message()
    );
    let e = encrypt(&ed, b"ctx").await.unwrap_err();
    assert!(
        e.message().contains("binds no additional data"),
        "{}",
        e.message()
    );
    // A key id this plugin never gave is NotFound (OpenBao's "instance lost").
    let e = sign(&f, "nope", b"m", false, SHA256).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"door\":\"kms-plugin\"")
            && l.contains("\"key\":\"denied\"")
            && l.contains("PermissionDenied")),
        "{audit}"
    );
}

#[test]
fn openbaos_hashes_and_signer_options_map_to_schemes_or_are_refused() {
    use sealbroker_core::{Hash, KeyAlgorithm};
    let pss = |salt| pb::SignerOpts {
        r#type: Some(pb::signer_opts::Type::Pss(pb::SignerOptsPss {
            salt_length: salt,
        })),
    };
    let ed = |context: &str| pb::SignerOpts {
        r#type: Some(pb::signer_opts::Type::Ed25519(pb::SignerOptsEd25519 {
            context: context.into(),
        })),
    };
    let ok = |alg, hash, opts: Option<&pb::SignerOpts>| scheme_of(alg, hash, true, opts).unwrap();
    assert_eq!(
        ok(KeyAlgorithm::Rsa2048, 5, None),
        SignScheme::RsaPkcs1v15(Hash::Sha256)
    );
    assert_eq!(
        ok(KeyAlgorithm::Rsa3072, 6, Some(&pss(-1))),
        SignScheme::RsaPss(Hash::Sha384)
    );
    assert_eq!(
        ok(KeyAlgorithm::Rsa3072, 5, Some(&pss(0))),
        SignScheme::RsaPss(Hash::Sha256)
    );
    assert_eq!(
        ok(KeyAlgorithm::Rsa3072, 5, Some(&pss(32))),
        SignScheme::RsaPss(Hash::Sha256)
    );
    assert_eq!(
        ok(KeyAlgorithm::EcdsaP384, 6, None),
        SignScheme::Ecdsa(Hash::Sha384)
    );
    assert_eq!(ok(KeyAlgorithm::Ed25519, 0, None), SignScheme::Ed25519);
    assert_eq!(ok(KeyAlgorithm::Ed25519, 0, Some(&ed(""))), SignScheme::Ed25519);
    // A message with no hash named (OpenBao 2.7 transit): the key's own hash.
    let pss_auto = pss(0);
    assert_eq!(
        scheme_of(KeyAlgorithm::Rsa2048, 0, false, Some(&pss_auto)).unwrap(),
        SignScheme::RsaPss(Hash::Sha256)
    );
    assert_eq!(
        scheme_of(KeyAlgorithm::EcdsaP384, 0, false, None).unwrap(),
        SignScheme::Ecdsa(Hash::Sha384)
    );
    for (alg, hash, opts, says) in [
        (KeyAlgorithm::Rsa2048, 5, Some(pss(20)), "20-byte salt"),
        (KeyAlgorithm::Rsa2048, 3, None, "crypto.Hash 3"),
        (KeyAlgorithm::EcdsaP256, 0, None, "must name its hash"),
        (KeyAlgorithm::Ed25519, 7, Some(ed("")), "pure Ed25519"),
        (KeyAlgorithm::Ed25519, 0, Some(ed("ctx")), "no context"),
        (KeyAlgorithm::EcdsaP256, 5, Some(pss(-1)), "no PSS"),
    ] {
        let e = scheme_of(alg, hash, true, opts.as_ref()).unwrap_err();
        assert!(e.message().contains(says), "{alg} {hash}: {}", e.message());
    }
}
