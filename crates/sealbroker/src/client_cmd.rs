//! Client commands: talk to a running broker.

use std::io::{Read, Write};
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealbroker_proto::sealbroker::v1 as pb;
use sealbroker_server::net::client::{self, ClientTls, Target};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::cli::{ConnectArgs, KeysAction, KeysArgs, StatusArgs, UnwrapArgs, WrapArgs};

fn target(args: &ConnectArgs) -> Target {
    match &args.address {
        Some(address) => Target::Tcp {
            address: address.clone(),
            tls: args.ca_file.as_ref().map(|ca| ClientTls {
                ca_file: ca.clone(),
                cert_file: args.cert_file.clone().unwrap_or_default(),
                key_file: args.key_file.clone().unwrap_or_default(),
                server_name: args.server_name.clone(),
            }),
        },
        None => Target::Unix(
            args.socket
                .clone()
                .unwrap_or_else(|| crate::serve::default_data_dir().join("sealbroker.sock")),
        ),
    }
}

async fn connect(args: &ConnectArgs) -> Result<pb::seal_service_client::SealServiceClient<Channel>, String> {
    client::connect(&target(args)).await.map_err(|e| e.to_string())
}

fn status_message(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn read_stdin() -> Result<Zeroizing<Vec<u8>>, String> {
    let mut input = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    Ok(input)
}

fn read_blob() -> Result<Vec<u8>, String> {
    let input = read_stdin()?;
    let text = String::from_utf8_lossy(&input);
    STANDARD
        .decode(text.trim())
        .map_err(|e| format!("stdin is not a base64 blob: {e}"))
}

pub async fn wrap(args: WrapArgs) -> Result<ExitCode, String> {
    let input = read_stdin()?;
    let plaintext = if args.base64 {
        let text = Zeroizing::new(String::from_utf8_lossy(&input).trim().to_owned());
        Zeroizing::new(
            STANDARD
                .decode(text.as_bytes())
                .map_err(|e| format!("stdin is not base64: {e}"))?,
        )
    } else {
        input
    };
    let mut client = connect(&args.connect).await?;
    let response = client
        .wrap(pb::WrapRequest {
            key_name: args.key,
            plaintext: plaintext.to_vec(),
            aad: args.aad.into_bytes(),
        })
        .await
        .map_err(status_message)?
        .into_inner();
    println!("{}", STANDARD.encode(&response.blob));
    eprintln!(
        "sealed under key {:?} version {} (key id {})",
        response.key_name, response.key_version, response.key_id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn unwrap(args: UnwrapArgs) -> Result<ExitCode, String> {
    let blob = read_blob()?;
    let mut client = connect(&args.connect).await?;
    let response = client
        .unwrap(pb::UnwrapRequest {
            blob,
            aad: args.aad.into_bytes(),
            key_name: args.key,
        })
        .await
        .map_err(status_message)?
        .into_inner();
    let plaintext = Zeroizing::new(response.plaintext);
    let mut out = std::io::stdout().lock();
    let written = if args.base64 {
        writeln!(
            out,
            "{}",
            Zeroizing::new(STANDARD.encode(plaintext.as_slice())).as_str()
        )
    } else {
        out.write_all(&plaintext)
    };
    written
        .and_then(|_| out.flush())
        .map_err(|e| format!("writing stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn rewrap(args: UnwrapArgs) -> Result<ExitCode, String> {
    let blob = read_blob()?;
    let mut client = connect(&args.connect).await?;
    let response = client
        .rewrap(pb::RewrapRequest {
            blob,
            aad: args.aad.into_bytes(),
            key_name: args.key,
        })
        .await
        .map_err(status_message)?
        .into_inner();
    println!("{}", STANDARD.encode(&response.blob));
    eprintln!(
        "sealed under key {:?} version {} (key id {})",
        response.key_name, response.key_version, response.key_id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn status(args: StatusArgs) -> Result<ExitCode, String> {
    let mut client = connect(&args.connect).await?;
    let status = client
        .status(pb::StatusRequest { deep: args.deep })
        .await
        .map_err(status_message)?
        .into_inner();
    println!(
        "sealbroker {} profile={}{}",
        status.version,
        status.profile,
        if status.security_risk {
            " SECURITY-RISK"
        } else {
            ""
        }
    );
    let mut healthy = true;
    if !status.config_error.is_empty() {
        println!(
            "  CONFIG RELOAD REFUSED (the config before it serves): {}",
            status.config_error
        );
    }
    for key in &status.keys {
        if key.healthy {
            println!("  key {:<20} backend {:<12} ok", key.key_name, key.backend_name);
        } else {
            healthy = false;
            println!(
                "  key {:<20} backend {:<12} UNHEALTHY: {}",
                key.key_name, key.backend_name, key.error
            );
        }
    }
    for v in &status.versions {
        let usable = match (v.role.as_str(), v.usable) {
            ("primary" | "staged", true) => " usable",
            ("primary" | "staged", false) => " UNUSABLE",
            _ => "",
        };
        println!(
            "  key {:<20} v{:<4} {:<8} {}{usable}",
            v.key_name, v.version, v.role, v.key_id
        );
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn keys(args: KeysArgs) -> Result<ExitCode, String> {
    let mut client = connect(&args.connect).await?;
    let keys = match args.action.unwrap_or(KeysAction::List) {
        KeysAction::List => {
            client
                .list_keys(pb::ListKeysRequest {})
                .await
                .map_err(status_message)?
                .into_inner()
                .keys
        }
        KeysAction::Show { name } => {
            let reply = client
                .get_key(pb::GetKeyRequest { key_name: name })
                .await
                .map_err(status_message)?;
            reply.into_inner().key.into_iter().collect()
        }
        KeysAction::Rotate { name, stage } => {
            let reply = client
                .rotate_key(pb::RotateKeyRequest {
                    key_name: name,
                    stage,
                })
                .await
                .map_err(status_message)?;
            reply.into_inner().key.into_iter().collect()
        }
        KeysAction::MinVersion { name, version } => {
            let request = pb::SetMinDecryptionVersionRequest {
                key_name: name,
                min_decryption_version: version,
            };
            let reply = client
                .set_min_decryption_version(request)
                .await
                .map_err(status_message)?;
            reply.into_inner().key.into_iter().collect()
        }
    };
    for key in keys {
        println!(
            "{}\tversion={}\tkey_id={}\tmin_decryption_version={}\tbackend={} ({})",
            key.name,
            key.primary_version,
            key.primary_key_id,
            key.min_decryption_version,
            key.backend_name,
            key.backend_kind
        );
        for version in &key.versions {
            println!("\t  v{}\t{}", version.version, version.key_id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
