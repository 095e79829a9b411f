//! Generated gRPC types: sealbroker's own API (`sealbroker.v1`) and the peer
//! protocols it speaks: OpenBao's KMS plugin protocol (packages `pb`,
//! `wrapping`, `metadata`), go-plugin's controller (`plugin`) and the
//! Kubernetes KMS v2 API (`v2`). Module names follow the proto packages,
//! because generated code refers to sibling packages by them.
//!
//! Messages that carry plaintext have a hand-written `Debug` that prints the
//! length only, so a stray `{:?}` cannot leak a secret.

use std::fmt;

pub mod sealbroker {
    pub mod v1 {
        tonic::include_proto!("sealbroker.v1");
    }
}

/// OpenBao KMS plugin: the `Wrapper` service (go-kms-wrapping `plugin/pb`).
pub mod pb {
    tonic::include_proto!("pb");
}

/// OpenBao KMS plugin: shared message types (go-kms-wrapping `types.proto`).
pub mod wrapping {
    tonic::include_proto!("wrapping");
}

/// OpenBao KMS plugin: the `Metadata` service.
pub mod metadata {
    tonic::include_proto!("metadata");
}

/// OpenBao KMS plugin: the `KMS` service behind External Keys
/// (go-kms-wrapping `plugin/pb/kms`).
pub mod kms {
    tonic::include_proto!("kms");
}

/// hashicorp/go-plugin's `GRPCController` (graceful shutdown).
pub mod plugin {
    tonic::include_proto!("plugin");
}

/// Kubernetes KMS v2 (`k8s.io/kms/apis/v2`).
pub mod kms_v2 {
    tonic::include_proto!("v2");
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

impl fmt::Debug for sealbroker::v1::EncryptAsymmetricRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptAsymmetricRequest")
            .field("key_name", &self.key_name)
            .field("key_version", &self.key_version)
            .field("plaintext", &Redacted(self.plaintext.len()))
            .finish()
    }
}

impl fmt::Debug for sealbroker::v1::DecryptAsymmetricResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptAsymmetricResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("key_name", &self.key_name)
            .field("key_version", &self.key_version)
            .finish()
    }
}

impl fmt::Debug for pb::EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("wrapper_id", &self.wrapper_id)
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("options", &self.options)
            .finish()
    }
}

impl fmt::Debug for pb::DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .finish()
    }
}

impl fmt::Debug for wrapping::RpcOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Config map values may be PINs or tokens: print the keys only.
        let mut keys: Vec<&String> = self.with_config_map.keys().collect();
        keys.sort();
        f.debug_struct("RpcOptions")
            .field("with_key_id", &self.with_key_id)
            .field("with_aad", &Redacted(self.with_aad.len()))
            .field("with_config_map_keys", &keys)
            .field("with_disallow_env_vars", &self.with_disallow_env_vars)
            .finish()
    }
}

/// Config map values may be PINs or tokens: the keys only.
fn struct_keys(map: &Option<prost_types::Struct>) -> Vec<&String> {
    let mut keys: Vec<&String> = map.iter().flat_map(|s| s.fields.keys()).collect();
    keys.sort();
    keys
}

impl fmt::Debug for kms::OpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRequest")
            .field("allow_environment", &self.allow_environment)
            .field("config_map_keys", &struct_keys(&self.config_map))
            .finish()
    }
}

impl fmt::Debug for kms::GetKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetKeyRequest")
            .field("kms_id", &self.kms_id)
            .field("config_map_keys", &struct_keys(&self.config_map))
            .finish()
    }
}

impl fmt::Debug for kms::EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("key_id", &self.key_id)
            .field("data", &Redacted(self.data.len()))
            .field("aad", &Redacted(self.aad.len()))
            .finish()
    }
}

impl fmt::Debug for kms::DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .finish()
    }
}

impl fmt::Debug for kms_v2::EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("uid", &self.uid)
            .finish()
    }
}

impl fmt::Debug for kms_v2::DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
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
        let options = crate::wrapping::RpcOptions {
            with_config_map: [("pin".to_owned(), "hunter2".to_owned())].into(),
            ..Default::default()
        };
        let plugin_req = crate::pb::EncryptRequest {
            wrapper_id: "w".into(),
            plaintext: b"hunter2".to_vec(),
            options: Some(options.clone()),
        };
        let plugin_resp = crate::pb::DecryptResponse {
            plaintext: b"hunter2".to_vec(),
        };
        let kms_req = crate::kms_v2::EncryptRequest {
            plaintext: b"hunter2".to_vec(),
            uid: "u".into(),
        };
        let kms_resp = crate::kms_v2::DecryptResponse {
            plaintext: b"hunter2".to_vec(),
        };
        for text in [
            format!("{req:?}"),
            format!("{resp:?}"),
            format!("{plugin_req:?}"),
            format!("{plugin_resp:?}"),
            format!("{kms_req:?}"),
            format!("{kms_resp:?}"),
        ] {
            assert!(!text.contains("hunter2") && !text.contains("104"), "{text}");
            assert!(text.contains("redacted 7 bytes"), "{text}");
        }
    }
}
