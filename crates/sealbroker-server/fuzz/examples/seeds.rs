//! Writes the seed corpora of the server fuzz targets from real encodings:
//!
//!   cargo run --manifest-path crates/sealbroker-server/fuzz/Cargo.toml --example seeds
//!       KMS v2 and KMS plugin requests, encoded with the generated types of the
//!       real protos, carrying blobs that the real services sealed; and every TOML
//!       block of README.md and docs/ (plus the fixture config) for config_parse.
//!
//!   cargo run --manifest-path crates/sealbroker-server/fuzz/Cargo.toml --example seeds -- capture PORT
//!       Serves the fixture's transit router on 127.0.0.1:PORT (plaintext) and saves
//!       every request it receives under seeds/transit_http/, as HTTP/1.1 text.
//!       capture_transit.sh points hvac and OpenBao's `seal "transit"` at it.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use sealbroker_proto::kms_v2::key_management_service_server::KeyManagementService;
use sealbroker_proto::pb::wrapper_server::Wrapper;
use sealbroker_proto::{kms_v2, pb, wrapping};
use sealbroker_server::doors::kmsv2::KmsV2;
use sealbroker_server::doors::plugin::WrapperService;
use sealbroker_server_fuzz::{
    HttpInput, KMS_KEY, PLUGIN_KEY, WRAPPER_PLACEHOLDER, config_text, fixture, grpc_input, registry,
};

fn seeds_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(seeds_dir(target).join(name), bytes).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => {
            fixture().runtime.block_on(async {
                kms_v2_seeds().await;
                kms_plugin_seeds().await;
            });
            config_seeds();
            println!("seeds written under {}/seeds", env!("CARGO_MANIFEST_DIR"));
        }
        ["capture", port] => capture(port.parse().expect("a port number")),
        _ => panic!("usage: seeds [capture PORT]"),
    }
}

/// What kube-apiserver sends: `Status` polls, `Encrypt` of a 32-byte DEK
/// seed, `Decrypt` of what `Encrypt` answered, with its key id and annotations.
async fn kms_v2_seeds() {
    const STATUS: u8 = 0;
    const ENCRYPT: u8 = 1;
    const DECRYPT: u8 = 2;
    let kms = KmsV2::new(fixture().broker.clone(), KMS_KEY.to_owned());
    write("kms_v2", "status", &grpc_input(STATUS, &kms_v2::StatusRequest {}));
    let seed: Vec<u8> = (0..32).collect();
    let encrypt = kms_v2::EncryptRequest {
        plaintext: seed,
        uid: "6f0b6a3e-4c55-4a36-9d8e-0a6f0c1b2d3e".into(),
    };
    write("kms_v2", "encrypt_dek_seed", &grpc_input(ENCRYPT, &encrypt));
    let sealed = kms
        .encrypt(tonic::Request::new(encrypt))
        .await
        .unwrap()
        .into_inner();
    let decrypt = kms_v2::DecryptRequest {
        ciphertext: sealed.ciphertext,
        uid: "0d7c2f1e-95b4-4f4e-8a61-3c2b1a0f9e8d".into(),
        key_id: sealed.key_id,
        annotations: sealed.annotations,
    };
    write("kms_v2", "decrypt_dek_seed", &grpc_input(DECRYPT, &decrypt));
    let stale = kms_v2::DecryptRequest {
        key_id: "a key id from before a key replacement".into(),
        ..decrypt
    };
    write("kms_v2", "decrypt_unknown_key_id", &grpc_input(DECRYPT, &stale));
}

/// What OpenBao's `seal "sealbroker"` sends through the plugin: SetConfig with
/// the seal stanza, Type, KeyId, Init, Encrypt of its root key, Decrypt of the
/// blob, Finalize. Calls on the live instance name the placeholder id.
async fn kms_plugin_seeds() {
    const SET_CONFIG: u8 = 0;
    const TYPE: u8 = 1;
    const KEY_ID: u8 = 2;
    const ENCRYPT: u8 = 3;
    const DECRYPT: u8 = 4;
    const INIT: u8 = 5;
    const FINALIZE: u8 = 6;
    let stanza = |pairs: &[(&str, &str)]| pb::SetConfigRequest {
        options: Some(wrapping::RpcOptions {
            with_config_map: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    };
    let config_file = fixture().plugin_config_path.display().to_string();
    let local = stanza(&[("key_name", PLUGIN_KEY), ("config_file", &config_file)]);
    write(
        "kms_plugin",
        "set_config_standalone",
        &grpc_input(SET_CONFIG, &local),
    );
    let sidecar = stanza(&[
        ("endpoint", "unix:///run/sealbroker/sealbroker.sock"),
        ("key_name", "openbao-unseal"),
    ]);
    write(
        "kms_plugin",
        "set_config_sidecar",
        &grpc_input(SET_CONFIG, &sidecar),
    );
    let mtls = stanza(&[
        ("endpoint", "https://sealbroker.example:7443"),
        ("tls_ca_file", "/openbao/tls/sealbroker-ca.pem"),
        ("tls_cert_file", "/openbao/tls/openbao-client.pem"),
        ("tls_key_file", "/openbao/tls/openbao-client.key"),
        ("tls_server_name", "sealbroker.example"),
        ("key_name", "openbao-unseal"),
    ]);
    write("kms_plugin", "set_config_mtls", &grpc_input(SET_CONFIG, &mtls));
    let id = || WRAPPER_PLACEHOLDER.to_owned();
    write(
        "kms_plugin",
        "type",
        &grpc_input(TYPE, &pb::TypeRequest { wrapper_id: id() }),
    );
    write(
        "kms_plugin",
        "key_id",
        &grpc_input(KEY_ID, &pb::KeyIdRequest { wrapper_id: id() }),
    );
    let options = Some(wrapping::RpcOptions::default());
    let init = pb::InitRequest {
        wrapper_id: id(),
        options: options.clone(),
    };
    write("kms_plugin", "init", &grpc_input(INIT, &init));

    // A real Encrypt of a 32-byte root key, and the Decrypt of its answer.
    let service = WrapperService::new(registry(), None);
    let live = service
        .set_config(tonic::Request::new(local))
        .await
        .unwrap()
        .into_inner()
        .wrapper_id;
    for (name, aad) in [("", Vec::new()), ("_with_aad", b"openbao-cluster".to_vec())] {
        let options = Some(wrapping::RpcOptions {
            with_aad: aad,
            ..Default::default()
        });
        let encrypt = pb::EncryptRequest {
            wrapper_id: id(),
            plaintext: vec![0x3c; 32],
            options: options.clone(),
        };
        write(
            "kms_plugin",
            &format!("encrypt_root_key{name}"),
            &grpc_input(ENCRYPT, &encrypt),
        );
        let sealed = service
            .encrypt(tonic::Request::new(pb::EncryptRequest {
                wrapper_id: live.clone(),
                ..encrypt
            }))
            .await
            .unwrap()
            .into_inner();
        let decrypt = pb::DecryptRequest {
            wrapper_id: id(),
            ciphertext: sealed.ciphertext,
            options,
        };
        write(
            "kms_plugin",
            &format!("decrypt_root_key{name}"),
            &grpc_input(DECRYPT, &decrypt),
        );
    }
    let finalize = pb::FinalizeRequest {
        wrapper_id: id(),
        options,
    };
    write("kms_plugin", "finalize", &grpc_input(FINALIZE, &finalize));
}

/// Every TOML block of README.md and docs/, and the fixture config with its
/// token files moved to where the config_parse target keeps them.
fn config_seeds() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let mut documents = vec![repo.join("README.md")];
    let mut dirs = vec![repo.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                documents.push(path);
            }
        }
    }
    documents.sort();
    for document in documents {
        let text = std::fs::read_to_string(&document).unwrap();
        let stem = document
            .strip_prefix(&repo)
            .unwrap()
            .display()
            .to_string()
            .replace(['/', '.'], "_");
        let mut block = None::<String>;
        let mut index = 0;
        for line in text.lines() {
            match (&mut block, line.trim_start()) {
                (None, fence) if fence.starts_with("```toml") => block = Some(String::new()),
                (Some(body), fence) if fence.starts_with("```") => {
                    write("config_parse", &format!("{stem}_{index}"), body.as_bytes());
                    index += 1;
                    block = None;
                }
                (Some(body), _) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, _) => {}
            }
        }
    }
    let dev = include_str!("../../../sealbroker/src/dev.toml")
        .replace("{socket}", "\"/tmp/sealbroker-dev/sealbroker.sock\"")
        .replace("{key_file}", "\"/tmp/sealbroker-dev/dev.key\"")
        .replace("{port}", "7070");
    write("config_parse", "crates_sealbroker_src_dev_toml", dev.as_bytes());
    let fixture_config = config_text(&std::env::temp_dir().join("sealbroker-config-fuzz"));
    write("config_parse", "fuzz_fixture_config", fixture_config.as_bytes());
}

/// Serves the fixture transit router and saves each request as a seed.
fn capture(port: u16) {
    let app = fixture().transit.clone().layer(middleware::from_fn(record));
    fixture().runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        eprintln!("capturing transit requests on 127.0.0.1:{port}");
        axum::serve(listener, app).await.unwrap();
    });
}

async fn record(request: Request, next: Next) -> Response {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let seed = HttpInput::encode(parts.method.as_str(), target, &headers, &body);
    let agent = parts
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(|a| {
            if a.contains("hvac") || a.contains("python") {
                "hvac"
            } else {
                "openbao"
            }
        })
        .unwrap_or("client");
    let route: String = parts.uri.path().trim_start_matches("/v1/").replace('/', "_");
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let name = format!("{agent}_{n:03}_{route}_{}", response.status().as_u16());
    write("transit_http", &name, &seed);
    response
}
