//! Decodes arbitrary bytes as Kubernetes KMS v2 requests (first byte: which
//! call) and hands them to the KMS v2 service's trait methods, as tonic
//! would after decoding a kube-apiserver frame.
//!
//! It may not panic, and:
//! - `Status` is healthy and names the key's current version id;
//! - `Encrypt` accepts any plaintext within the limit, refuses larger ones as
//!   `InvalidArgument`, answers at most 1 KiB under the current key id with a
//!   version annotation, and what it answers decrypts back to the plaintext;
//! - `Decrypt` refuses key ids the broker did not issue for the key as
//!   `InvalidArgument`, and refuses anything else only as a client error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sealbroker_proto::kms_v2 as pb;
use sealbroker_proto::kms_v2::key_management_service_server::KeyManagementService;
use sealbroker_server::broker::caller::{Call, Door};
use sealbroker_server::doors::kmsv2::KmsV2;
use sealbroker_server_fuzz::{KMS_KEY, fixture};
use tonic::{Code, Request};

const MAX_CIPHERTEXT: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&method, message)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let kms = KmsV2::new(fixture.broker.clone(), KMS_KEY.to_owned());
    let key = fixture
        .broker
        .get_key(&Call::internal(Door::Admin), KMS_KEY)
        .expect("the KMS key exists");
    let key_id = key.primary_key_id.to_string();
    let max_plaintext = fixture.broker.limits().max_plaintext_bytes;
    fixture.runtime.block_on(async {
        match method % 3 {
            0 => {
                let Ok(request) = pb::StatusRequest::decode(message) else {
                    return;
                };
                let status = kms
                    .status(Request::new(request))
                    .await
                    .expect("status answers")
                    .into_inner();
                assert_eq!(status.version, "v2");
                assert_eq!(status.healthz, "ok");
                assert_eq!(status.key_id, key_id);
            }
            1 => {
                let Ok(request) = pb::EncryptRequest::decode(message) else {
                    return;
                };
                let plaintext = request.plaintext.clone();
                let uid = request.uid.clone();
                let result = kms.encrypt(Request::new(request)).await;
                if plaintext.len() > max_plaintext {
                    let refused = result.expect_err("an oversize plaintext was sealed");
                    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
                    return;
                }
                let sealed = result.expect("a plaintext within the limit seals").into_inner();
                assert!(sealed.ciphertext.len() <= MAX_CIPHERTEXT, "ciphertext over 1 KiB");
                assert_eq!(sealed.key_id, key_id, "Encrypt and Status name different key ids");
                assert_eq!(
                    sealed.annotations.get("version.sealbroker.io").map(Vec::as_slice),
                    Some(key.primary_version.to_string().as_bytes())
                );
                let decrypt = pb::DecryptRequest {
                    ciphertext: sealed.ciphertext,
                    uid,
                    key_id: sealed.key_id,
                    annotations: sealed.annotations,
                };
                let opened = kms
                    .decrypt(Request::new(decrypt))
                    .await
                    .expect("what Encrypt sealed decrypts")
                    .into_inner();
                assert_eq!(opened.plaintext, plaintext, "round trip changed the plaintext");
            }
            _ => {
                let Ok(request) = pb::DecryptRequest::decode(message) else {
                    return;
                };
                let issued = fixture
                    .broker
                    .key_ring()
                    .get(KMS_KEY)
                    .expect("the KMS key exists")
                    .has_version_id(&request.key_id);
                match kms.decrypt(Request::new(request)).await {
                    Ok(opened) => {
                        assert!(issued, "decrypted under a key id the broker never issued");
                        assert!(opened.into_inner().plaintext.len() <= max_plaintext);
                    }
                    Err(refused) if !issued => {
                        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}")
                    }
                    Err(refused) => assert!(
                        matches!(
                            refused.code(),
                            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition
                        ),
                        "a ciphertext was refused as {refused:?}"
                    ),
                }
            }
        }
    });
});
