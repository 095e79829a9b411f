use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use yasna::models::ObjectIdentifier;

use super::*;

#[test]
fn algorithms_and_schemes_read_as_they_are_written() {
    for algorithm in KeyAlgorithm::ALL {
        assert_eq!(KeyAlgorithm::parse(algorithm.as_str()), Some(algorithm));
        let scheme = algorithm.default_scheme();
        assert!(scheme.fits(algorithm), "{algorithm}");
        assert_eq!(SignScheme::parse(&scheme.name()), Some(scheme));
    }
    for text in ["rsa-pss-sha384", "rsa-pkcs1-sha512", "ecdsa-sha256", "ed25519"] {
        assert_eq!(SignScheme::parse(text).unwrap().name(), text);
    }
    for bad in ["rsa-pss", "ecdsa-md5", "rsa-sha256", ""] {
        assert_eq!(SignScheme::parse(bad), None, "{bad}");
    }
    assert!(!SignScheme::Ecdsa(Hash::Sha256).fits(KeyAlgorithm::Rsa2048));
    assert!(!SignScheme::Ed25519.fits(KeyAlgorithm::EcdsaP256));
    assert_eq!(Hash::from_go(5), Some(Hash::Sha256));
    assert_eq!(Hash::from_go(0), None);
}

#[test]
fn digest_info_prefixes_are_the_der_of_rfc_8017() {
    for (hash, oid_last) in [(Hash::Sha256, 1), (Hash::Sha384, 2), (Hash::Sha512, 3)] {
        let digest = hash.digest(b"m");
        let der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&ObjectIdentifier::from_slice(&[
                        2, 16, 840, 1, 101, 3, 4, 2, oid_last,
                    ]));
                    w.next().write_null();
                });
                w.next().write_bytes(&digest);
            })
        });
        assert_eq!(
            &der[..der.len() - digest.len()],
            hash.digest_info_prefix(),
            "{hash:?}"
        );
    }
}

#[test]
fn a_digest_must_fit_the_hash_and_ed25519_takes_no_digest() {
    let d32 = [0u8; 32];
    assert!(
        SignInput::Digest(&d32)
            .check(SignScheme::Ecdsa(Hash::Sha256))
            .is_ok()
    );
    let e = SignInput::Digest(&d32)
        .check(SignScheme::Ecdsa(Hash::Sha384))
        .unwrap_err();
    assert!(e.contains("32 bytes") && e.contains("48"), "{e}");
    let e = SignInput::Digest(&d32).check(SignScheme::Ed25519).unwrap_err();
    assert!(e.contains("message"), "{e}");
    assert!(SignInput::Message(b"anything").check(SignScheme::Ed25519).is_ok());
}

#[test]
fn ecdsa_signatures_convert_between_der_and_raw_and_verify() {
    let rng = SystemRandom::new();
    for (algorithm, signing, field) in [
        (
            KeyAlgorithm::EcdsaP256,
            &ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            32,
        ),
        (
            KeyAlgorithm::EcdsaP384,
            &ring_sig::ECDSA_P384_SHA384_ASN1_SIGNING,
            48,
        ),
    ] {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
        let public = PublicKey::ec(algorithm, pair.public_key().as_ref()).unwrap();
        for _ in 0..20 {
            let der = pair.sign(&rng, b"message").unwrap().as_ref().to_vec();
            let raw = ecdsa_raw_from_der(&der, field).unwrap();
            assert_eq!(raw.len(), 2 * field);
            assert_eq!(ecdsa_der_from_raw(&raw, field).unwrap(), der);
            let scheme = algorithm.default_scheme();
            assert!(
                public
                    .verify(scheme, SignInput::Message(b"message"), &der)
                    .unwrap()
            );
            assert!(!public.verify(scheme, SignInput::Message(b"other"), &der).unwrap());
        }
        // The SPKI names id-ecPublicKey and the curve, and ends with the point.
        assert!(public.spki_der.ends_with(pair.public_key().as_ref()));
        assert_eq!(
            algorithm_of_ec_params(&ec_params_der(algorithm).unwrap()),
            Some(algorithm)
        );
    }
}

#[test]
fn an_ed25519_spki_is_the_rfc_8410_shape() {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = PublicKey::ed25519(pair.public_key().as_ref()).unwrap();
    let mut expected = hex::decode("302a300506032b6570032100").unwrap();
    expected.extend_from_slice(pair.public_key().as_ref());
    assert_eq!(public.spki_der, expected);
    let signature = pair.sign(b"hello");
    assert!(
        public
            .verify(
                SignScheme::Ed25519,
                SignInput::Message(b"hello"),
                signature.as_ref()
            )
            .unwrap()
    );
    assert!(
        public
            .pem()
            .starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA")
    );
    assert!(matches!(
        public.verify(
            SignScheme::Ed25519,
            SignInput::Digest(&[0; 32]),
            signature.as_ref()
        ),
        Err(SigningError::Unsupported(_))
    ));
}

#[test]
fn malformed_ecdsa_der_is_refused_never_padded_into_a_signature() {
    for (what, der) in [
        ("empty", vec![]),
        ("garbage", vec![0xff; 10]),
        (
            "one integer",
            yasna::construct_der(|w| w.write_sequence(|w| w.next().write_u8(1))),
        ),
        (
            "a negative r",
            yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next().write_i64(-5);
                    w.next().write_u8(1);
                })
            }),
        ),
        (
            "an r longer than the curve",
            yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next().write_bigint_bytes(&[0x7f; 33], true);
                    w.next().write_u8(1);
                })
            }),
        ),
    ] {
        assert!(ecdsa_raw_from_der(&der, 32).is_err(), "{what}");
    }
    assert!(ecdsa_der_from_raw(&[1; 63], 32).is_err());
}

#[test]
fn an_rsa_key_of_an_odd_size_is_refused() {
    let e = PublicKey::rsa(&[0xc5; 128], &[1, 0, 1]).unwrap_err();
    assert!(e.to_string().contains("1024 bits"), "{e}");
    let key = PublicKey::rsa(&[0xc5; 256], &[1, 0, 1]).unwrap();
    assert_eq!(key.algorithm, KeyAlgorithm::Rsa2048);
    // The raw form reads back to the same key, and to no other algorithm.
    assert_eq!(
        PublicKey::from_raw(KeyAlgorithm::Rsa2048, key.raw().to_vec()).unwrap(),
        key
    );
    assert!(PublicKey::from_raw(KeyAlgorithm::Rsa3072, key.raw().to_vec()).is_err());
    assert!(PublicKey::from_raw(KeyAlgorithm::Rsa2048, vec![0x30, 0x03, 0x02, 0x01]).is_err());
    assert!(PublicKey::from_raw(KeyAlgorithm::EcdsaP256, vec![4; 65]).is_ok());
    assert!(PublicKey::from_raw(KeyAlgorithm::EcdsaP256, vec![4; 64]).is_err());
    assert!(
        key.spki_der
            .starts_with(&hex::decode("30820122300d06092a864886f70d0101010500").unwrap())
    );
}

#[test]
fn an_spki_reads_back_to_the_key_that_wrote_it() {
    let rng = SystemRandom::new();
    let mut keys = vec![
        PublicKey::rsa(&[0xc5; 256], &[1, 0, 1]).unwrap(),
        PublicKey::rsa(&[0xc5; 512], &[1, 0, 1]).unwrap(),
        PublicKey::ed25519(&[7; 32]).unwrap(),
    ];
    for (algorithm, signing) in [
        (KeyAlgorithm::EcdsaP256, &ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING),
        (KeyAlgorithm::EcdsaP384, &ring_sig::ECDSA_P384_SHA384_ASN1_SIGNING),
    ] {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
        keys.push(PublicKey::ec(algorithm, pair.public_key().as_ref()).unwrap());
    }
    for key in keys {
        let read = PublicKey::from_spki_der(&key.spki_der).unwrap();
        assert!(read == key, "{key:?}");
    }
}

#[test]
fn a_pem_public_key_reads_back_to_the_key_that_wrote_it() {
    for key in [
        PublicKey::rsa(&[0xc5; 384], &[1, 0, 1]).unwrap(),
        PublicKey::ed25519(&[7; 32]).unwrap(),
    ] {
        assert!(PublicKey::from_spki_pem(&key.pem()).unwrap() == key, "{key:?}");
        // Cloud KMS ends its PEM with one newline; none, or CRLF lines, read the same.
        let crlf = key.pem().replace('\n', "\r\n");
        assert!(PublicKey::from_spki_pem(&crlf).unwrap() == key);
        assert!(PublicKey::from_spki_pem(key.pem().trim_end()).unwrap() == key);
    }
}

#[test]
fn a_pem_that_is_not_one_public_key_block_is_refused() {
    let pem = PublicKey::ed25519(&[7; 32]).unwrap().pem();
    for (what, text) in [
        ("empty", String::new()),
        ("a private key", pem.replace("PUBLIC", "PRIVATE")),
        ("text before", format!("junk\n{pem}")),
        ("text after", format!("{pem}junk\n")),
        ("two blocks", format!("{pem}{pem}")),
        ("not base64", pem.replacen("MC", "M*", 1)),
        ("no end", pem.replace("-----END PUBLIC KEY-----\n", "")),
    ] {
        assert!(PublicKey::from_spki_pem(&text).is_err(), "{what}");
    }
}

#[test]
fn an_spki_of_another_shape_is_refused() {
    let p256 = PublicKey::ec(KeyAlgorithm::EcdsaP256, &[4; 65]).unwrap();
    let spki = |algorithm: &[u64], params: Option<&[u64]>, key: &[u8]| {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&ObjectIdentifier::from_slice(algorithm));
                    if let Some(params) = params {
                        w.next().write_oid(&ObjectIdentifier::from_slice(params));
                    }
                });
                w.next().write_bitvec_bytes(key, key.len() * 8);
            })
        })
    };
    let rsa_key = PublicKey::rsa(&[0xc5; 256], &[1, 0, 1]).unwrap();
    let mut trailing = p256.spki_der.clone();
    trailing.push(0);
    for (what, der) in [
        ("empty", vec![]),
        ("trailing bytes", trailing),
        ("P-521", spki(OID_EC, Some(&[1, 3, 132, 0, 35]), &[4; 133])),
        ("EC without a named curve", spki(OID_EC, None, &[4; 65])),
        ("a compressed point", spki(OID_EC, Some(OID_P256), &[2; 33])),
        ("RSA without NULL parameters", spki(OID_RSA, None, rsa_key.raw())),
        ("DSA", spki(&[1, 2, 840, 10040, 4, 1], None, &[1; 8])),
        ("Ed25519 of 31 bytes", spki(OID_ED25519, None, &[7; 31])),
    ] {
        assert!(PublicKey::from_spki_der(&der).is_err(), "{what}");
    }
    let e = PublicKey::from_spki_der(&spki(OID_EC, Some(&[1, 3, 132, 0, 35]), &[4; 133])).unwrap_err();
    assert!(e.to_string().contains("P-256 or P-384"), "{e}");
}
