//! The Wrapper service called as OpenBao calls it (no socket: the transport and
//! AutoMTLS are tried end to end in tests/tests/kms_plugin.rs), over a
//! broker on test-kit memory keys.

use std::io::Write;

use pb::wrapper_server::Wrapper as _;
use prost::Message;
use sealbroker_core::WrappedBlob;
use sealbroker_testkit::memory::MemoryKind;
use tonic::Code;

use super::*;

/// This process's uid (the owner of /proc/self).
fn own_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

/// A plugin config with key `unseal` granted to this process's uid and
/// key `locked` granted to uid 4242 only.
fn plugin_config(dir: &Path) -> PathBuf {
    let path = dir.join("plugin.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    write!(
        file,
        "profile = \"development\"\n[backends.mem]\ntype = \"plugintest\"\n\
         [keys.unseal]\nbackend = \"mem\"\nallow = {{ any = [\"uid:{}\"] }}\n\
         [keys.locked]\nbackend = \"mem\"\nallow = {{ any = [\"uid:4242\"] }}\n",
        own_uid()
    )
    .unwrap();
    path
}

/// A request as it arrives on the plugin socket: carrying the peer
/// credentials of a real unix connection (this process's).
fn from_openbao<T>(message: T) -> Request<T> {
    use tonic::transport::server::Connected;
    let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
    let mut request = Request::new(message);
    request.extensions_mut().insert(ours.connect_info());
    request
}

fn service() -> WrapperService {
    WrapperService::new(
        BackendRegistry::default().with(MemoryKind::leak("plugintest")),
        None,
    )
}

fn options(config: &[(&str, &str)]) -> wrapping::RpcOptions {
    wrapping::RpcOptions {
        with_config_map: config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

fn with_aad(aad: &[u8]) -> Option<wrapping::RpcOptions> {
    Some(wrapping::RpcOptions {
        with_aad: aad.to_vec(),
        ..Default::default()
    })
}

async fn set_config(service: &WrapperService, config: &[(&str, &str)]) -> Result<String, Status> {
    service
        .set_config(from_openbao(pb::SetConfigRequest {
            options: Some(options(config)),
        }))
        .await
        .map(|r| r.into_inner().wrapper_id)
}

async fn encrypt(
    service: &WrapperService,
    id: &str,
    plaintext: &[u8],
    options: Option<wrapping::RpcOptions>,
) -> Result<wrapping::BlobInfo, Status> {
    service
        .encrypt(from_openbao(pb::EncryptRequest {
            wrapper_id: id.to_owned(),
            plaintext: plaintext.to_vec(),
            options,
        }))
        .await
        .map(|r| r.into_inner().ciphertext.unwrap())
}

async fn decrypt(
    service: &WrapperService,
    id: &str,
    blob: wrapping::BlobInfo,
    options: Option<wrapping::RpcOptions>,
) -> Result<Vec<u8>, Status> {
    service
        .decrypt(from_openbao(pb::DecryptRequest {
            wrapper_id: id.to_owned(),
            ciphertext: Some(blob),
            options,
        }))
        .await
        .map(|r| r.into_inner().plaintext)
}

/// OpenBao shows an `Unknown` status as its bare message: the broker's
/// code must survive in the words.
fn assert_openbao_sees(status: &Status, code: &str, needle: &str) {
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with(&format!("sealbroker: {code}: ")) && message.contains(needle),
        "{message:?} should read `sealbroker: {code}: …{needle}…`"
    );
}

#[tokio::test]
async fn set_config_refuses_a_bad_stanza_naming_the_option() {
    let service = service();
    let refusals: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("key_name", "k"),
                ("endpoint", "unix:///x"),
                ("keyname", "k"),
                ("pin", "1"),
            ],
            "unknown seal option(s) keyname, pin",
        ),
        (&[("endpoint", "unix:///x")], "seal option `key_name` is missing"),
        (
            &[
                ("key_name", "k"),
                ("endpoint", "unix:///x"),
                ("seal_type", "shamir"),
            ],
            "seal option `seal_type` cannot be \"shamir\"",
        ),
        (
            &[
                ("key_name", "k"),
                ("endpoint", "unix:///x"),
                ("config_file", "/x"),
            ],
            "either seal option `endpoint` or `config_file`, not both",
        ),
        (&[("key_name", "k")], "set seal option `endpoint`"),
        (
            &[("key_name", "k"), ("endpoint", "ftp://host")],
            "seal option `endpoint` \"ftp://host\" is not",
        ),
        (
            &[("key_name", "k"), ("endpoint", "https://host:1")],
            "seal option `tls_ca_file` is required with an https:// endpoint",
        ),
        (
            &[("key_name", "k"), ("config_file", "/nonexistent/plugin.toml")],
            "/nonexistent/plugin.toml",
        ),
    ];
    for (stanza, needle) in refusals {
        let status = set_config(&service, stanza).await.expect_err(needle);
        assert_eq!(status.code(), Code::Unknown, "{status:?}");
        assert!(
            status.message().starts_with("sealbroker: ") && status.message().contains(needle),
            "{:?} should say {needle:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn set_config_refuses_a_key_the_config_file_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let config = plugin_config(dir.path());
    let status = set_config(
        &service(),
        &[("key_name", "missing"), ("config_file", config.to_str().unwrap())],
    )
    .await
    .unwrap_err();
    assert!(
        status
            .message()
            .contains("`key_name` \"missing\" is not a key in")
            && status.message().contains("locked, unseal"),
        "{status:?}"
    );
}

#[tokio::test]
async fn blobs_round_trip_and_every_refusal_reaches_openbao_in_words_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    let config = plugin_config(dir.path());
    let service = service();
    let id = set_config(
        &service,
        &[("key_name", "unseal"), ("config_file", config.to_str().unwrap())],
    )
    .await
    .unwrap();
    let r#type = service
        .r#type(from_openbao(pb::TypeRequest {
            wrapper_id: id.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(r#type.into_inner().r#type, "sealbroker");
    let key_id = service
        .key_id(from_openbao(pb::KeyIdRequest {
            wrapper_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .key_id;

    // A sealbroker blob travels whole in BlobInfo.ciphertext, with the
    // key id OpenBao compares to KeyId and nothing in the stock fields.
    let blob = encrypt(&service, &id, b"root key", with_aad(b"aad-1"))
        .await
        .unwrap();
    assert!(blob.iv.is_empty());
    let info = blob.key_info.clone().unwrap();
    assert_eq!((info.key_id.as_str(), info.mechanism), (key_id.as_str(), 0));
    assert!(info.wrapped_key.is_empty());
    assert_eq!(
        decrypt(&service, &id, blob.clone(), with_aad(b"aad-1"))
            .await
            .unwrap(),
        b"root key"
    );

    // Wrong AAD, a flipped payload bit, a flipped DEK bit: refused.
    let refused = decrypt(&service, &id, blob.clone(), with_aad(b"aad-2"))
        .await
        .unwrap_err();
    assert_openbao_sees(&refused, "FailedPrecondition", "does not authenticate");
    let mut payload = WrappedBlob::decode(blob.ciphertext.as_slice()).unwrap();
    payload.ciphertext[0] ^= 1;
    let tampered = wrapping::BlobInfo {
        ciphertext: payload.encode_to_vec(),
        ..blob.clone()
    };
    let refused = decrypt(&service, &id, tampered, with_aad(b"aad-1"))
        .await
        .unwrap_err();
    assert_openbao_sees(&refused, "FailedPrecondition", "does not authenticate");
    let mut dek = WrappedBlob::decode(blob.ciphertext.as_slice()).unwrap();
    let last = dek.deks[0].wrapped_dek.len() - 1;
    dek.deks[0].wrapped_dek[last] ^= 1;
    let tampered = wrapping::BlobInfo {
        ciphertext: dek.encode_to_vec(),
        ..blob.clone()
    };
    let refused = decrypt(&service, &id, tampered, with_aad(b"aad-1"))
        .await
        .unwrap_err();
    assert_openbao_sees(&refused, "FailedPrecondition", "does not authenticate");

    // Garbage, an empty BlobInfo, a blob in a stock seal's format.
    let garbage = wrapping::BlobInfo {
        ciphertext: b"not a blob".to_vec(),
        ..Default::default()
    };
    let refused = decrypt(&service, &id, garbage, None).await.unwrap_err();
    assert_openbao_sees(&refused, "InvalidArgument", "");
    let refused = decrypt(&service, &id, wrapping::BlobInfo::default(), None)
        .await
        .unwrap_err();
    assert_eq!(
        refused.message(),
        "sealbroker: the BlobInfo to decrypt has no ciphertext"
    );
    let stock = wrapping::BlobInfo {
        iv: vec![0; 12],
        ..blob.clone()
    };
    let refused = decrypt(&service, &id, stock, with_aad(b"aad-1"))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("stock seal format") && refused.message().contains("migrate"),
        "{refused:?}"
    );

    // The key's ACL holds: `locked` is granted to uid 4242 only.
    let locked = set_config(
        &service,
        &[("key_name", "locked"), ("config_file", config.to_str().unwrap())],
    )
    .await
    .unwrap();
    let refused = encrypt(&service, &locked, b"root key", None).await.unwrap_err();
    assert_openbao_sees(&refused, "PermissionDenied", "locked");
    let refused = service
        .key_id(from_openbao(pb::KeyIdRequest { wrapper_id: locked }))
        .await
        .unwrap_err();
    assert_openbao_sees(&refused, "PermissionDenied", "locked");

    // An instance OpenBao finalized, or never made, is not found.
    service
        .finalize(from_openbao(pb::FinalizeRequest {
            wrapper_id: id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    for missing in [id.as_str(), "no-such-instance"] {
        let refused = encrypt(&service, missing, b"x", None).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        let refused = service
            .init(from_openbao(pb::InitRequest {
                wrapper_id: missing.to_owned(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    }
}

#[tokio::test]
async fn the_stanza_aad_binds_blobs_unless_the_call_brings_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = plugin_config(dir.path());
    let service = service();
    let file = config.to_str().unwrap();
    let bound = set_config(
        &service,
        &[
            ("key_name", "unseal"),
            ("config_file", file),
            ("aad", "stanza-aad"),
        ],
    )
    .await
    .unwrap();
    let plain = set_config(&service, &[("key_name", "unseal"), ("config_file", file)])
        .await
        .unwrap();

    let blob = encrypt(&service, &bound, b"k", None).await.unwrap();
    assert_eq!(decrypt(&service, &bound, blob.clone(), None).await.unwrap(), b"k");
    // Sealed under the stanza's AAD: without it the blob does not open...
    let refused = decrypt(&service, &plain, blob.clone(), None).await.unwrap_err();
    assert_openbao_sees(&refused, "FailedPrecondition", "does not authenticate");
    // ...and with it, given per call, it does.
    assert_eq!(
        decrypt(&service, &plain, blob, with_aad(b"stanza-aad"))
            .await
            .unwrap(),
        b"k"
    );
    // A call's own AAD wins over the stanza's.
    let blob = encrypt(&service, &bound, b"k", with_aad(b"call-aad"))
        .await
        .unwrap();
    assert_eq!(
        decrypt(&service, &plain, blob.clone(), with_aad(b"call-aad"))
            .await
            .unwrap(),
        b"k"
    );
    let refused = decrypt(&service, &bound, blob, None).await.unwrap_err();
    assert_openbao_sees(&refused, "FailedPrecondition", "does not authenticate");
}

#[test]
fn operation_errors_keep_the_broker_code_in_the_message() {
    let shown = operation_error(&Status::unavailable("backend \"hsm\" is down"));
    assert_eq!(shown.code(), Code::Unknown);
    assert_eq!(
        shown.message(),
        "sealbroker: Unavailable: backend \"hsm\" is down"
    );
}

#[test]
fn a_config_the_plugin_cannot_honour_is_refused_naming_the_field() {
    let base = "profile = \"development\"\n[backends.mem]\ntype = \"plugintest\"\n";
    let cases = [
        (
            format!("{base}[server.metrics]\nlisten = \"127.0.0.1:9\"\n[keys.k]\nbackend = \"mem\"\n"),
            "server.metrics",
        ),
        (
            format!("{base}[audit]\nstdout = true\n[keys.k]\nbackend = \"mem\"\n"),
            "audit.stdout",
        ),
        (
            format!(
                "{base}[keys.k]\nbackend = \"mem\"\nallow = {{ wrap = [\"uid:1\"], unwrap = [\"dns:openbao.test\"] }}\n"
            ),
            "keys.k.allow.unwrap",
        ),
    ];
    for (text, field) in cases {
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let error = check_plugin_config(&config, Some("k")).expect_err(field);
        assert!(error.to_string().contains(field), "{error} should name {field}");
    }
    let fine = Config::parse(&format!(
        "{base}[keys.k]\nbackend = \"mem\"\nallow = {{ wrap = [\"uid:1\"], unwrap = [\"gid:2\", \"dns:x\"] }}\n"
    ))
    .unwrap();
    check_plugin_config(&fine, Some("k")).unwrap();
}
