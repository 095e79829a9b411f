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

/// The extra stanza key that forwards a stock seal to a sealbroker daemon.
pub const FORWARD_KEY: &str = "sealbroker_endpoint";

/// With [`FORWARD_KEY`], the stanza may only carry these keys, all of them
/// about reaching the daemon: the daemon holds the backend credentials,
/// so a PIN or a secret key in OpenBao's config would defeat the point.
pub const FORWARD_KEYS: &[&str] = &[
    FORWARD_KEY,
    "sealbroker_key_name",
    "sealbroker_tls_ca_file",
    "sealbroker_tls_cert_file",
    "sealbroker_tls_key_file",
    "sealbroker_tls_server_name",
];

/// Forwarding mode's stanza as sealbroker's own (`endpoint`, `key_name`,
/// `tls_*`, `seal_type`), or why it is refused.
pub fn forwarded_stanza(
    seal_type: &str,
    config: &std::collections::HashMap<String, String>,
) -> Result<std::collections::HashMap<String, String>, Status> {
    let mut stray: Vec<&str> = config
        .keys()
        .map(String::as_str)
        .filter(|k| !FORWARD_KEYS.contains(k))
        .collect();
    if !stray.is_empty() {
        stray.sort();
        return Err(Status::unknown(format!(
            "sealbroker: with `{FORWARD_KEY}` the sealbroker daemon holds the {seal_type} credentials and settings; \
             remove {} from seal \"{seal_type}\" (it may carry only {})",
            stray.join(", "),
            FORWARD_KEYS.join(", ")
        )));
    }
    let mut own: std::collections::HashMap<String, String> = config
        .iter()
        .map(|(k, v)| (k.trim_start_matches("sealbroker_").to_owned(), v.clone()))
        .collect();
    if !own.contains_key("key_name") {
        return Err(Status::unknown(format!(
            "sealbroker: with `{FORWARD_KEY}` set `sealbroker_key_name`: the daemon's key to wrap under"
        )));
    }
    own.insert("seal_type".to_owned(), seal_type.to_owned());
    Ok(own)
}

/// Whether a blob is in a stock format (an IV or a KMS-wrapped key), which
/// a forwarding instance cannot open: only the backend can.
pub fn is_stock_format(blob: &wrapping::BlobInfo) -> bool {
    !blob.iv.is_empty()
        || blob
            .key_info
            .as_ref()
            .is_some_and(|k| !k.wrapped_key.is_empty() || k.mechanism != 0)
}

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
    fn forwarding_keeps_secrets_out_of_the_stanza() {
        let config = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let own = forwarded_stanza(
            "pkcs11",
            &config(&[
                (FORWARD_KEY, "unix:///run/sb.sock"),
                ("sealbroker_key_name", "unseal"),
            ]),
        )
        .unwrap();
        assert_eq!(own["endpoint"], "unix:///run/sb.sock");
        assert_eq!(own["key_name"], "unseal");
        assert_eq!(own["seal_type"], "pkcs11");
        let err = forwarded_stanza(
            "pkcs11",
            &config(&[
                (FORWARD_KEY, "/s.sock"),
                ("sealbroker_key_name", "u"),
                ("pin", "DO-NOT-LEAK"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.message().contains("remove pin from seal \"pkcs11\""),
            "{}",
            err.message()
        );
        assert!(!err.message().contains("DO-NOT-LEAK"));
        let err = forwarded_stanza("awskms", &config(&[(FORWARD_KEY, "/s.sock")])).unwrap_err();
        assert!(err.message().contains("sealbroker_key_name"), "{}", err.message());
    }

    #[test]
    fn stock_blobs_are_told_from_sealbroker_blobs() {
        let sealbroker = wrapping::BlobInfo {
            ciphertext: vec![1],
            iv: vec![],
            key_info: Some(wrapping::KeyInfo {
                mechanism: 0,
                key_id: "k".into(),
                wrapped_key: vec![],
            }),
        };
        assert!(!is_stock_format(&sealbroker));
        assert!(is_stock_format(&wrapping::BlobInfo {
            iv: vec![0; 12],
            ..sealbroker.clone()
        }));
        assert!(is_stock_format(&wrapping::BlobInfo {
            key_info: Some(wrapping::KeyInfo {
                mechanism: 1,
                key_id: "arn".into(),
                wrapped_key: vec![9],
            }),
            ..sealbroker
        }));
    }

    #[test]
    fn unknown_stock_seal_type_names_what_this_build_supports() {
        let err = stock_kind(&BackendRegistry::default(), "awskms").err().unwrap();
        assert!(err.contains("\"awskms\""), "{err}");
    }
}
