//! Decodes arbitrary bytes as OpenBao KMS plugin requests (first byte: which
//! `pb.Wrapper` call) and hands them to the plugin service's trait methods,
//! as tonic would after decoding OpenBao's frame. A live instance
//! (`config_file` mode, in-process software keys) is addressed by the
//! placeholder wrapper id `fixture-wrapper`.
//!
//! It may not panic, and:
//! - every refusal is `NotFound` ("instance not found") or `Unknown` prefixed
//!   `sealbroker: `, the shape OpenBao shows its operator;
//! - ids of no live instance are `NotFound` for every call;
//! - `SetConfig` describes an instance by `key_name` and `mode` only (never the AAD),
//!   and the instance answers `Type` until `Finalize` forgets it;
//! - on the live instance, `Encrypt` seals any plaintext within the limit under the
//!   key's current id, and `Decrypt` of that blob with the same options gives it back.
//!
//! Stanza paths are pinned to fixture files: a fuzzer must not read device
//! files or create key files wherever a string says.

#![no_main]

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sealbroker_proto::pb;
use sealbroker_proto::pb::wrapper_server::Wrapper;
use sealbroker_proto::wrapping;
use sealbroker_server::broker::caller::{Call, Door};
use sealbroker_server::doors::plugin::WrapperService;
use sealbroker_server_fuzz::{PLUGIN_KEY, WRAPPER_PLACEHOLDER, fixture, fixture_dir, registry};
use tonic::{Code, Request, Status};

static SERVICE: LazyLock<WrapperService> = LazyLock::new(|| WrapperService::new(registry(), None));
/// The id of the live fixture instance; replaced when an input finalizes it.
static LIVE: Mutex<String> = Mutex::new(String::new());

fn fixture_stanza() -> HashMap<String, String> {
    HashMap::from([
        ("key_name".to_owned(), PLUGIN_KEY.to_owned()),
        (
            "config_file".to_owned(),
            fixture().plugin_config_path.display().to_string(),
        ),
    ])
}

async fn set_config(config: HashMap<String, String>) -> Result<pb::SetConfigResponse, Status> {
    let request = pb::SetConfigRequest {
        options: Some(wrapping::RpcOptions {
            with_config_map: config,
            ..Default::default()
        }),
    };
    SERVICE
        .set_config(Request::new(request))
        .await
        .map(|r| r.into_inner())
}

/// The live instance's id, creating the instance when there is none.
async fn live() -> String {
    let current = LIVE.lock().unwrap().clone();
    if !current.is_empty() {
        return current;
    }
    let id = set_config(fixture_stanza())
        .await
        .expect("the fixture stanza configures")
        .wrapper_id;
    *LIVE.lock().unwrap() = id.clone();
    id
}

fn check_refusal(status: &Status) {
    match status.code() {
        Code::NotFound => assert_eq!(status.message(), "instance not found"),
        Code::Unknown => assert!(status.message().starts_with("sealbroker: "), "{status:?}"),
        _ => panic!("refused as {status:?}"),
    }
}

fn resolve(id: &mut String, live: &str) -> bool {
    if id == WRAPPER_PLACEHOLDER {
        *id = live.to_owned();
    }
    id == live
}

fn trimmed<'a>(config: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    config.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fuzz_target!(|data: &[u8]| {
    let Some((&method, message)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let key_id = fixture
        .broker
        .get_key(&Call::internal(Door::Admin), PLUGIN_KEY)
        .expect("the plugin key exists")
        .primary_key_id
        .to_string();
    let max_plaintext = fixture.broker.limits().max_plaintext_bytes;
    fixture.runtime.block_on(async {
        let live = live().await;
        match method % 7 {
            0 => {
                let Ok(request) = pb::SetConfigRequest::decode(message) else {
                    return;
                };
                let mut config = request.options.unwrap_or_default().with_config_map;
                for (key, value) in config.iter_mut() {
                    match key.as_str() {
                        "config_file" if !value.trim().is_empty() => {
                            *value = fixture.plugin_config_path.display().to_string()
                        }
                        "tls_ca_file" | "tls_cert_file" | "tls_key_file" if !value.trim().is_empty() => {
                            *value = fixture_dir().join("absent.pem").display().to_string()
                        }
                        _ => {}
                    }
                }
                let created = match set_config(config.clone()).await {
                    Ok(created) => created,
                    Err(refused) => {
                        assert_eq!(refused.code(), Code::Unknown, "{refused:?}");
                        check_refusal(&refused);
                        return;
                    }
                };
                let id = created.wrapper_id;
                assert!(!id.is_empty() && id != live, "SetConfig reused an id");
                let metadata = created.wrapper_config.unwrap_or_default().metadata;
                let mut described: Vec<&str> = metadata.keys().map(String::as_str).collect();
                described.sort_unstable();
                assert_eq!(
                    described,
                    ["key_name", "mode"],
                    "SetConfig describes more than it should"
                );
                assert_eq!(Some(metadata["key_name"].as_str()), trimmed(&config, "key_name"));
                assert!(matches!(metadata["mode"].as_str(), "endpoint" | "in-process"));
                let seal_type = SERVICE
                    .r#type(Request::new(pb::TypeRequest {
                        wrapper_id: id.clone(),
                    }))
                    .await
                    .expect("a new instance answers Type")
                    .into_inner()
                    .r#type;
                assert_eq!(seal_type, trimmed(&config, "seal_type").unwrap_or("sealbroker"));
                SERVICE
                    .finalize(Request::new(pb::FinalizeRequest {
                        wrapper_id: id.clone(),
                        options: None,
                    }))
                    .await
                    .expect("a new instance finalizes");
                let gone = SERVICE
                    .r#type(Request::new(pb::TypeRequest { wrapper_id: id }))
                    .await
                    .expect_err("a finalized instance answered");
                assert_eq!(gone.code(), Code::NotFound);
            }
            1 => {
                let Ok(mut request) = pb::TypeRequest::decode(message) else {
                    return;
                };
                let is_live = resolve(&mut request.wrapper_id, &live);
                match SERVICE.r#type(Request::new(request)).await {
                    Ok(reply) => {
                        assert!(is_live, "Type answered for no live instance");
                        assert_eq!(reply.into_inner().r#type, "sealbroker");
                    }
                    Err(refused) => {
                        assert!(!is_live, "the live instance refused Type: {refused:?}");
                        assert_eq!(refused.code(), Code::NotFound);
                    }
                }
            }
            2 => {
                let Ok(mut request) = pb::KeyIdRequest::decode(message) else {
                    return;
                };
                let is_live = resolve(&mut request.wrapper_id, &live);
                match SERVICE.key_id(Request::new(request)).await {
                    Ok(reply) => {
                        assert!(is_live, "KeyId answered for no live instance");
                        assert_eq!(reply.into_inner().key_id, key_id);
                    }
                    Err(refused) => {
                        assert!(!is_live, "the live instance refused KeyId: {refused:?}");
                        assert_eq!(refused.code(), Code::NotFound);
                    }
                }
            }
            3 => {
                let Ok(mut request) = pb::EncryptRequest::decode(message) else {
                    return;
                };
                let is_live = resolve(&mut request.wrapper_id, &live);
                let (wrapper_id, plaintext, options) = (
                    request.wrapper_id.clone(),
                    request.plaintext.clone(),
                    request.options.clone(),
                );
                let sealed = match SERVICE.encrypt(Request::new(request)).await {
                    Ok(sealed) => sealed.into_inner(),
                    Err(refused) => {
                        check_refusal(&refused);
                        assert!(
                            !is_live || plaintext.len() > max_plaintext,
                            "the live instance refused to seal: {refused:?}"
                        );
                        return;
                    }
                };
                assert!(
                    is_live && plaintext.len() <= max_plaintext,
                    "sealed what it should refuse"
                );
                let blob = sealed.ciphertext.expect("Encrypt answers a BlobInfo");
                assert_eq!(
                    blob.key_info.as_ref().map(|k| k.key_id.as_str()),
                    Some(key_id.as_str())
                );
                let opened = SERVICE
                    .decrypt(Request::new(pb::DecryptRequest {
                        wrapper_id,
                        ciphertext: Some(blob),
                        options,
                    }))
                    .await
                    .expect("what Encrypt sealed decrypts with the same options")
                    .into_inner();
                assert_eq!(opened.plaintext, plaintext, "round trip changed the plaintext");
            }
            4 => {
                let Ok(mut request) = pb::DecryptRequest::decode(message) else {
                    return;
                };
                let is_live = resolve(&mut request.wrapper_id, &live);
                match SERVICE.decrypt(Request::new(request)).await {
                    Ok(opened) => {
                        assert!(is_live, "Decrypt answered for no live instance");
                        assert!(opened.into_inner().plaintext.len() <= max_plaintext);
                    }
                    Err(refused) => {
                        check_refusal(&refused);
                        assert!(is_live || refused.code() == Code::NotFound, "{refused:?}");
                    }
                }
            }
            5 => {
                let Ok(mut request) = pb::InitRequest::decode(message) else {
                    return;
                };
                let is_live = resolve(&mut request.wrapper_id, &live);
                let result = SERVICE.init(Request::new(request)).await;
                assert_eq!(result.is_ok(), is_live, "{result:?}");
            }
            _ => {
                let Ok(mut request) = pb::FinalizeRequest::decode(message) else {
                    return;
                };
                let is_live = resolve(&mut request.wrapper_id, &live);
                let result = SERVICE.finalize(Request::new(request)).await;
                assert_eq!(result.is_ok(), is_live, "{result:?}");
                if is_live {
                    LIVE.lock().unwrap().clear();
                    let gone = SERVICE
                        .key_id(Request::new(pb::KeyIdRequest { wrapper_id: live }))
                        .await
                        .expect_err("a finalized instance answered");
                    assert_eq!(gone.code(), Code::NotFound);
                }
            }
        }
    });
});
