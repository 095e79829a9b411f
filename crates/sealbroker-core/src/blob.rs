//! Encoding and validation of [`WrappedBlob`], defined in
//! `proto/sealbroker/v1/blob.proto`.

use prost::Message;

use crate::error::BlobError;

mod pb {
    include!(concat!(env!("OUT_DIR"), "/sealbroker.v1.rs"));
}

pub use pb::{Mechanism, WrappedBlob, WrappedDek};

/// The only blob format this build writes and reads.
pub const FORMAT_V1: u32 = 1;
/// AES-GCM nonce length.
pub const GCM_IV_LEN: usize = 12;
/// AES-GCM tag length.
pub const GCM_TAG_LEN: usize = 16;
/// Upper bound on DEK entries, so a hostile blob cannot make us loop long.
pub const MAX_DEKS: usize = 16;

impl WrappedBlob {
    /// Serializes the blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes and structurally validates a blob. Authenticity is checked
    /// later, by the key ring, when the blob is opened.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobError> {
        if bytes.is_empty() {
            return Err(BlobError::Decode("the blob is empty".into()));
        }
        let blob = WrappedBlob::decode(bytes).map_err(|e| BlobError::Decode(e.to_string()))?;
        blob.validate()?;
        Ok(blob)
    }

    fn validate(&self) -> Result<(), BlobError> {
        if self.format != FORMAT_V1 {
            return Err(BlobError::UnsupportedFormat(self.format));
        }
        let field = |field: &'static str, reason: String| Err(BlobError::Field { field, reason });
        if self.key_name.is_empty() {
            return field("key_name", "is empty".into());
        }
        if self.payload_mechanism != Mechanism::Aes256Gcm as i32 {
            return field(
                "payload_mechanism",
                format!("{} is not AES-256-GCM", self.payload_mechanism),
            );
        }
        if self.payload_iv.len() != GCM_IV_LEN {
            return field(
                "payload_iv",
                format!("is {} bytes, expected {GCM_IV_LEN}", self.payload_iv.len()),
            );
        }
        if self.ciphertext.len() < GCM_TAG_LEN {
            return field(
                "ciphertext",
                format!("is {} bytes, shorter than a GCM tag", self.ciphertext.len()),
            );
        }
        if self.deks.is_empty() {
            return field("deks", "is empty: no backend sealed the data key".into());
        }
        if self.deks.len() > MAX_DEKS {
            return field(
                "deks",
                format!("has {} entries, at most {MAX_DEKS} allowed", self.deks.len()),
            );
        }
        for dek in &self.deks {
            if dek.key_id.is_empty() {
                return field("deks.key_id", "is empty".into());
            }
            if dek.wrapped_dek.is_empty() {
                return field("deks.wrapped_dek", "is empty".into());
            }
            if Mechanism::try_from(dek.mechanism).is_err() || dek.mechanism == 0 {
                return field(
                    "deks.mechanism",
                    format!("{} is not a known mechanism", dek.mechanism),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WrappedBlob {
        WrappedBlob {
            format: FORMAT_V1,
            key_name: "unseal".into(),
            payload_mechanism: Mechanism::Aes256Gcm as i32,
            payload_iv: vec![7; 12],
            ciphertext: vec![1; 40],
            deks: vec![WrappedDek {
                key_id: "abc".into(),
                key_version: 1,
                backend: "software".into(),
                mechanism: Mechanism::Aes256Gcm as i32,
                iv: vec![2; 12],
                wrapped_dek: vec![3; 48],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn round_trips() {
        let blob = sample();
        assert_eq!(WrappedBlob::from_bytes(&blob.to_bytes()).unwrap(), blob);
    }

    #[test]
    fn rejects_empty_and_garbage() {
        assert!(matches!(WrappedBlob::from_bytes(b""), Err(BlobError::Decode(_))));
        assert!(matches!(
            WrappedBlob::from_bytes(&[0xff; 33]),
            Err(BlobError::Decode(_))
        ));
    }

    #[test]
    fn rejects_unknown_format() {
        let mut blob = sample();
        blob.format = 2;
        assert_eq!(
            WrappedBlob::from_bytes(&blob.to_bytes()),
            Err(BlobError::UnsupportedFormat(2))
        );
    }

    #[test]
    fn rejects_every_truncation() {
        let bytes = sample().to_bytes();
        for len in 1..bytes.len() {
            assert!(
                WrappedBlob::from_bytes(&bytes[..len]).is_err(),
                "truncated to {len} accepted"
            );
        }
    }

    #[test]
    fn rejects_bad_iv_length_naming_the_field() {
        let mut blob = sample();
        blob.payload_iv = vec![0; 11];
        let err = WrappedBlob::from_bytes(&blob.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("payload_iv"), "{err}");
    }

    #[test]
    fn rejects_too_many_deks() {
        let mut blob = sample();
        blob.deks = vec![blob.deks[0].clone(); MAX_DEKS + 1];
        assert!(
            WrappedBlob::from_bytes(&blob.to_bytes())
                .unwrap_err()
                .to_string()
                .contains("deks")
        );
    }
}
