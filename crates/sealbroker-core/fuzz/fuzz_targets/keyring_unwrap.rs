//! Opens arbitrary blobs with a key ring of real software keys (an HA
//! version, a retired version), naming an expected key and an AAD.
//!
//! It may not panic, and:
//! - a blob the decoder refuses is refused as `InvalidArgument`, before any backend is asked;
//! - every refusal is a client error (`InvalidArgument`, `NotFound`, `FailedPrecondition`);
//! - a blob that opens was sealed under the key the caller named, at a version still
//!   decryptable; it no longer opens with one ciphertext bit flipped or another AAD;
//!   its canonical re-encoding opens to the same plaintext; and wrapping that plaintext
//!   again opens to it too.

#![no_main]

use std::sync::LazyLock;

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use sealbroker_core::{Code, Error, KeyRing, WrappedBlob};
use sealbroker_core_fuzz::{UnwrapInput, key_ring};

static RING: LazyLock<KeyRing> = LazyLock::new(key_ring);

fuzz_target!(|data: &[u8]| {
    let input = UnwrapInput::parse(data);
    let ring = &*RING;
    let decoded = WrappedBlob::from_bytes(input.blob);
    let result = block_on(ring.unwrap(input.expected_key, input.blob, input.aad));
    let opened = match result {
        Err(error) => {
            let code = error.code();
            if decoded.is_err() {
                assert!(
                    matches!(error, Error::MalformedBlob(_)) && code == Code::InvalidArgument,
                    "undecodable blob refused as {error}"
                );
            }
            assert!(
                matches!(
                    code,
                    Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition
                ),
                "a blob was refused as {code:?}: {error}"
            );
            return;
        }
        Ok(opened) => opened,
    };

    let blob = decoded.expect("an opened blob decodes");
    assert_eq!(opened.key_name, blob.key_name);
    if let Some(expected) = input.expected_key {
        assert_eq!(
            opened.key_name, expected,
            "opened under a key the caller did not name"
        );
    }
    let key = ring.get(&opened.key_name).expect("opened under a configured key");
    assert!(
        opened.key_version >= key.min_decryption_version(),
        "a retired version opened"
    );
    let version = key
        .versions()
        .find(|v| v.version == opened.key_version)
        .expect("opened at a configured version");
    assert_eq!(opened.key_id, version.key_id);

    let mut tampered = blob.clone();
    tampered.ciphertext[0] ^= 0x80;
    let refused = block_on(ring.unwrap(input.expected_key, &tampered.to_bytes(), input.aad));
    assert!(
        matches!(refused, Err(Error::NotAuthentic)),
        "a flipped ciphertext bit went unnoticed"
    );
    let mut other_aad = input.aad.to_vec();
    other_aad.push(0);
    let refused = block_on(ring.unwrap(input.expected_key, input.blob, &other_aad));
    assert!(
        matches!(refused, Err(Error::NotAuthentic)),
        "a different AAD went unnoticed"
    );

    let canonical = block_on(ring.unwrap(None, &blob.to_bytes(), input.aad)).expect("canonical form opens");
    assert_eq!(canonical.plaintext.expose(), opened.plaintext.expose());

    let wrapped = block_on(ring.wrap(&opened.key_name, opened.plaintext.expose(), input.aad)).expect("wrap");
    let again =
        block_on(ring.unwrap(Some(&opened.key_name), &wrapped.blob, input.aad)).expect("rewrapped opens");
    assert_eq!(again.plaintext.expose(), opened.plaintext.expose());
});
