//! Generated gRPC types: sealbroker's own API (`sealbroker.v1`) and, as the
//! front doors arrive, the peer protocols it speaks.
//!
//! Messages that carry plaintext have a hand-written `Debug` that prints the
//! length only, so a stray `{:?}` cannot leak a secret.

use std::fmt;

pub mod sealbroker {
    pub mod v1 {
        tonic::include_proto!("sealbroker.v1");
    }
}

/// Encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sealbroker_descriptor");

/// Formats a secret field as its length.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

impl fmt::Debug for sealbroker::v1::WrapRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrapRequest")
            .field("key_name", &self.key_name)
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("aad", &Redacted(self.aad.len()))
            .finish()
    }
}

impl fmt::Debug for sealbroker::v1::UnwrapResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnwrapResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("key_name", &self.key_name)
            .field("key_id", &self.key_id)
            .field("key_version", &self.key_version)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::sealbroker::v1::*;

    #[test]
    fn debug_never_prints_plaintext() {
        let req = WrapRequest {
            key_name: "k".into(),
            plaintext: b"hunter2".to_vec(),
            aad: b"ctx".to_vec(),
        };
        let resp = UnwrapResponse {
            plaintext: b"hunter2".to_vec(),
            ..Default::default()
        };
        for text in [format!("{req:?}"), format!("{resp:?}")] {
            assert!(!text.contains("hunter2") && !text.contains("104"), "{text}");
            assert!(text.contains("redacted 7 bytes"), "{text}");
        }
    }
}
