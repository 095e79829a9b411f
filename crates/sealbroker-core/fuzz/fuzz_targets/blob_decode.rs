//! Throws arbitrary bytes at the blob decoder (`WrappedBlob::from_bytes`).
//! It may not panic. Whatever it accepts satisfies every structural rule of
//! format 1 and re-encodes to bytes that decode to the same blob (and
//! re-encode identically); whatever it refuses is refused with a reason that
//! names a real field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealbroker_core::blob::{FORMAT_V1, GCM_IV_LEN, GCM_TAG_LEN, MAX_DEKS};
use sealbroker_core::{BlobError, Mechanism, WrappedBlob};

/// Fields `BlobError::Field` may name: those of blob.proto.
const FIELDS: &[&str] = &[
    "key_name",
    "payload_mechanism",
    "payload_iv",
    "ciphertext",
    "deks",
    "deks.key_id",
    "deks.wrapped_dek",
    "deks.mechanism",
];

fuzz_target!(|data: &[u8]| {
    match WrappedBlob::from_bytes(data) {
        Ok(blob) => {
            assert_eq!(blob.format, FORMAT_V1);
            assert!(!blob.key_name.is_empty());
            assert_eq!(blob.payload_mechanism, Mechanism::Aes256Gcm as i32);
            assert_eq!(blob.payload_iv.len(), GCM_IV_LEN);
            assert!(blob.ciphertext.len() >= GCM_TAG_LEN);
            assert!((1..=MAX_DEKS).contains(&blob.deks.len()));
            for dek in &blob.deks {
                assert!(!dek.key_id.is_empty() && !dek.wrapped_dek.is_empty());
                assert!(matches!(Mechanism::try_from(dek.mechanism), Ok(m) if m != Mechanism::Unspecified));
            }
            let encoded = blob.to_bytes();
            assert!(encoded.len() <= data.len(), "re-encoding grew the blob");
            let again = WrappedBlob::from_bytes(&encoded).expect("a re-encoded blob decodes");
            assert_eq!(again, blob, "re-encoding changed the blob");
            assert_eq!(again.to_bytes(), encoded, "encoding is not canonical");
        }
        Err(BlobError::Decode(reason)) => assert!(!reason.is_empty()),
        Err(BlobError::UnsupportedFormat(format)) => assert_ne!(format, FORMAT_V1),
        Err(BlobError::Field { field, reason }) => {
            assert!(FIELDS.contains(&field), "refusal names unknown field {field:?}");
            assert!(!reason.is_empty());
        }
    }
});
