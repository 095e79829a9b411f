//! The drop-in mode: `sealbroker kms-plugin awskms` answers OpenBao as its
//! official `awskms` plugin would. OpenBao sends the plugin only the seal
//! stanza (never the seal's name), so the seal type comes from the plugin's
//! `args`. The backend kind of that name reads the stock stanza and does the
//! sealing in the stock blob format; this file only translates `BlobInfo`.

use std::sync::Arc;

use sealbroker_core::{BackendError, BackendKind, StanzaError, StockBlob, StockSeal};
use sealbroker_proto::wrapping;
use tonic::Status;

use crate::broker::registry::BackendRegistry;

/// The stock seal types OpenBao 2.7 moved out into plugins.
pub const STOCK_SEAL_TYPES: &[&str] = &[
    "awskms",
    "pkcs11",
    "gcpckms",
    "azurekeyvault",
    "ocikms",
    "alicloudkms",
];

/// The backend kind that stands in for stock seal `seal_type`, refused
/// before the handshake (OpenBao shows the message) when there is none.
pub fn stock_kind(registry: &BackendRegistry, seal_type: &str) -> Result<&'static dyn BackendKind, String> {
    let supported: Vec<&str> = STOCK_SEAL_TYPES
        .iter()
        .copied()
        .filter(|t| registry.kind(t).is_some_and(|k| k.has_stock_seal()))
        .collect();
    match registry.kind(seal_type) {
        Some(kind) if kind.has_stock_seal() => Ok(kind),
        _ => Err(format!(
            "sealbroker kms-plugin: cannot stand in for OpenBao's {seal_type:?} seal; this build stands in for {} \
             (the argument after kms-plugin in the plugin stanza's args)",
            supported.join(", ")
        )),
    }
}

/// How stock errors reach OpenBao: go-kms-wrapping's plugin server returns
/// the wrapper's Go error, which gRPC carries as `Unknown` with its text.
pub fn stanza_status(error: StanzaError) -> Status {
    Status::unknown(error.message)
}

pub fn backend_status(error: BackendError) -> Status {
    Status::unknown(error.message)
}

pub fn from_blob_info(blob: wrapping::BlobInfo) -> StockBlob {
    let has_key_info = blob.key_info.is_some();
    let key_info = blob.key_info.unwrap_or_default();
    StockBlob {
        ciphertext: blob.ciphertext,
        iv: blob.iv,
        mechanism: key_info.mechanism,
        key_id: key_info.key_id,
        wrapped_key: key_info.wrapped_key,
        has_key_info,
    }
}

pub fn to_blob_info(blob: StockBlob) -> wrapping::BlobInfo {
    wrapping::BlobInfo {
        ciphertext: blob.ciphertext,
        iv: blob.iv,
        key_info: Some(wrapping::KeyInfo {
            mechanism: blob.mechanism,
            key_id: blob.key_id,
            wrapped_key: blob.wrapped_key,
        }),
    }
}

/// One stock wrapper instance.
pub type StockInstance = Arc<dyn StockSeal>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_info_round_trips_field_for_field() {
        let info = wrapping::BlobInfo {
            ciphertext: vec![1, 2],
            iv: vec![3],
            key_info: Some(wrapping::KeyInfo {
                mechanism: 1,
                key_id: "arn:aws:kms:eu-west-1:123456789012:key/k".into(),
                wrapped_key: vec![4],
            }),
        };
        let blob = from_blob_info(info.clone());
        assert!(blob.has_key_info);
        assert_eq!(blob.mechanism, 1);
        assert_eq!(to_blob_info(blob), info);
        let bare = from_blob_info(wrapping::BlobInfo {
            ciphertext: vec![9],
            ..Default::default()
        });
        assert!(!bare.has_key_info);
    }

    #[test]
    fn unknown_stock_seal_type_names_what_this_build_supports() {
        let err = stock_kind(&BackendRegistry::default(), "awskms").err().unwrap();
        assert!(err.contains("\"awskms\""), "{err}");
    }
}
