//! Throws arbitrary bytes at the External Keys decoders in
//! `sealbroker_core::signing`: DER ECDSA signatures (from OpenBao's Verify),
//! raw public keys (from a token or the PKCS#11 helper), DER
//! SubjectPublicKeyInfo (from AWS KMS `GetPublicKey`), PEM public keys (from
//! Cloud KMS `GetPublicKey`) and EC parameters.
//! None may panic. What the ECDSA decoder accepts re-encodes and decodes to
//! the same `r || s`; a public key it accepts reads back to itself, and an
//! SPKI it accepts is the very DER the key writes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealbroker_core::KeyAlgorithm;
use sealbroker_core::signing::{
    PublicKey, algorithm_of_ec_params, ec_params_der, ecdsa_der_from_raw, ecdsa_raw_from_der,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let algorithm = KeyAlgorithm::ALL[usize::from(selector) % KeyAlgorithm::ALL.len()];

    for field_len in [32, 48] {
        if let Ok(raw) = ecdsa_raw_from_der(rest, field_len) {
            assert_eq!(raw.len(), 2 * field_len);
            let der = ecdsa_der_from_raw(&raw, field_len).expect("a decoded signature re-encodes");
            assert_eq!(
                ecdsa_raw_from_der(&der, field_len).expect("a re-encoded signature decodes"),
                raw
            );
        }
        // Any r || s of the right length encodes; the result decodes back.
        if rest.len() == 2 * field_len {
            let der = ecdsa_der_from_raw(rest, field_len).expect("r || s of the right length encodes");
            assert_eq!(ecdsa_raw_from_der(&der, field_len).unwrap(), rest);
        }
    }

    if let Some(found) = algorithm_of_ec_params(rest) {
        assert_eq!(ec_params_der(found).as_deref(), Some(rest), "EC params are one DER OID");
    }

    if let Ok(key) = PublicKey::from_raw(algorithm, rest.to_vec()) {
        assert_eq!(key.algorithm, algorithm);
        let again = PublicKey::from_raw(algorithm, key.raw().to_vec()).expect("raw() reads back");
        assert!(again == key, "raw() of {algorithm} does not read back to the same key");
        assert!(key.pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let read = PublicKey::from_spki_der(&key.spki_der).expect("a key's own SPKI reads back");
        assert!(read == key, "the SPKI of {algorithm} does not read back to the same key");
        let read = PublicKey::from_spki_pem(&key.pem()).expect("a key's own PEM reads back");
        assert!(read == key, "the PEM of {algorithm} does not read back to the same key");
    }

    for bytes in [data, rest] {
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Ok(key) = PublicKey::from_spki_pem(text) {
                let again = PublicKey::from_spki_pem(&key.pem()).expect("an accepted PEM's key writes PEM that reads back");
                assert!(again == key);
            }
        }
    }

    for der in [data, rest] {
        if let Ok(key) = PublicKey::from_spki_der(der) {
            assert_eq!(key.spki_der, der, "an accepted SPKI is the DER the key writes");
            let again = PublicKey::from_raw(key.algorithm, key.raw().to_vec()).expect("raw() reads back");
            assert!(again == key);
        }
    }
});
