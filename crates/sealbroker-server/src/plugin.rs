//! OpenBao's KMS plugin front door: `sealbroker kms-plugin`.
//!
//! OpenBao (≥ 2.6) launches the plugin binary with a magic cookie in the
//! environment, the PEM of its own client certificate in
//! `PLUGIN_CLIENT_CERT`, and expects one handshake line on stdout naming a
//! unix socket where we serve gRPC over TLS ("AutoMTLS"), requiring exactly
//! that client certificate. It then speaks go-kms-wrapping's `pb.Wrapper`.
//!
//! Each `SetConfig` creates a wrapper instance from the seal stanza. An
//! instance reaches keys either through a sealbroker daemon (`endpoint`, the
//! sidecar case: the HSM credentials stay in the daemon) or through backends
//! built in-process from a sealbroker config file (`config_file`, the
//! standalone case). Either way the plugin is an adapter over [`Broker`]'s
//! API and holds no crypto of its own.
//!
//! In the standalone case the broker is built by [`Broker::from_config`],
//! like the daemon's: the file's ACLs, audit trail and `state_dir` apply.
//! OpenBao is the caller, identified by the peer credentials of its
//! connection to the plugin socket (`uid:N`, `gid:N`), and audit lines name
//! the door `kms-plugin`. Listener and metrics tables are refused: nothing
//! but OpenBao can reach this process.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sealbroker_core::SecretBytes;
use sealbroker_proto::sealbroker::v1 as sb;
use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use sealbroker_proto::{metadata, pb, plugin, wrapping};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::caller::{Call, Door};
use crate::client::{self, ClientTls, Target};
use crate::config::{Config, ConfigError};
use crate::grpc::caller_of;
use crate::registry::BackendRegistry;
use crate::service::Broker;

/// go-kms-wrapping's handshake cookie for KMS plugins.
pub const MAGIC_COOKIE_KEY: &str = "OPENBAO_KMS_PLUGIN";
pub const MAGIC_COOKIE_VALUE: &str = "39704a18-7da7-4bda-9a2d-f7c488d70328";
/// go-plugin core protocol version, and the KMS plugin set version we serve.
const CORE_PROTOCOL_VERSION: u32 = 1;
const APP_PROTOCOL_VERSION: &str = "1";

/// What `sealbroker kms-plugin` prints when run by hand.
pub const NOT_LAUNCHED_BY_OPENBAO: &str = "\
This is sealbroker's OpenBao KMS plugin. It is not meant to be run by hand:
OpenBao starts it, as configured in OpenBao's server config:

  plugin_directory = \"/openbao/plugins\"
  plugin \"kms\" \"sealbroker\" {
    command   = \"sealbroker\"
    args      = [\"kms-plugin\"]
    sha256sum = \"<sha256 of the sealbroker binary>\"
  }
  seal \"sealbroker\" {
    endpoint = \"unix:///run/sealbroker/sealbroker.sock\"   # or config_file = \"...\"
    key_name = \"openbao-unseal\"
  }

See docs/openbao.md. To run the broker itself, use `sealbroker serve`.";

/// Seal stanza keys the plugin understands.
const STANZA_KEYS: &[&str] = &[
    "endpoint",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_server_name",
    "config_file",
    "key_name",
    "seal_type",
    "aad",
];

/// Where an instance's wraps go.
#[derive(Clone)]
enum Keys {
    /// A sealbroker daemon over gRPC.
    Remote(SealServiceClient<Channel>),
    /// Backends built in this process.
    Local(Arc<Broker>),
}

/// One configured wrapper: what OpenBao's `SetConfig` created.
struct Instance {
    key_name: String,
    seal_type: String,
    aad: Vec<u8>,
    keys: Keys,
}

fn stanza_error(message: impl std::fmt::Display) -> Status {
    // OpenBao shows `Unknown` statuses as the bare message, e.g.
    // `Error configuring seal "sealbroker": <message>`.
    Status::unknown(format!("sealbroker: {message}"))
}

/// Turns an error from the broker (local) or the daemon (remote) into what
/// OpenBao shows its operator.
fn operation_error(status: &Status) -> Status {
    Status::unknown(format!("sealbroker: {:?}: {}", status.code(), status.message()))
}

impl Instance {
    async fn from_stanza(config: &HashMap<String, String>, service: &WrapperService) -> Result<Self, Status> {
        let mut unknown: Vec<&str> = config
            .keys()
            .map(String::as_str)
            .filter(|k| !STANZA_KEYS.contains(k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(stanza_error(format!(
                "unknown seal option(s) {}; this plugin accepts {}",
                unknown.join(", "),
                STANZA_KEYS.join(", ")
            )));
        }
        let get = |key: &str| config.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let key_name = get("key_name")
            .ok_or_else(|| {
                stanza_error("seal option `key_name` is missing: name the sealbroker key to wrap under")
            })?
            .to_owned();
        let seal_type = get("seal_type").unwrap_or("sealbroker").to_owned();
        if seal_type == "shamir" || seal_type == "hsm-auto" {
            return Err(stanza_error(format!(
                "seal option `seal_type` cannot be {seal_type:?}"
            )));
        }
        let aad = get("aad").unwrap_or_default().as_bytes().to_vec();
        let keys = match (get("endpoint"), get("config_file")) {
            (Some(endpoint), None) => Keys::Remote(remote(endpoint, &get).await?),
            (None, Some(path)) => Keys::Local(service.local(Path::new(path), &key_name).await?),
            (Some(_), Some(_)) => {
                return Err(stanza_error(
                    "set either seal option `endpoint` or `config_file`, not both",
                ));
            }
            (None, None) => {
                return Err(stanza_error(
                    "set seal option `endpoint` (a sealbroker daemon, e.g. \"unix:///run/sealbroker/sealbroker.sock\") \
                     or `config_file` (a sealbroker config to run backends in-process)",
                ));
            }
        };
        Ok(Instance {
            key_name,
            seal_type,
            aad,
            keys,
        })
    }

    fn describe(&self) -> HashMap<String, String> {
        // Printed in OpenBao's start-up banner: nothing secret.
        let mode = match &self.keys {
            Keys::Remote(_) => "endpoint",
            Keys::Local(_) => "in-process",
        };
        HashMap::from([
            ("key_name".to_owned(), self.key_name.clone()),
            ("mode".to_owned(), mode.to_owned()),
        ])
    }

    fn aad<'a>(&'a self, options: &'a Option<wrapping::RpcOptions>) -> &'a [u8] {
        match options {
            Some(o) if !o.with_aad.is_empty() => &o.with_aad,
            _ => &self.aad,
        }
    }

    async fn key_id(&self, call: &Call) -> Result<String, Status> {
        match &self.keys {
            Keys::Remote(client) => {
                let reply = client
                    .clone()
                    .get_key(sb::GetKeyRequest {
                        key_name: self.key_name.clone(),
                    })
                    .await
                    .map_err(|s| operation_error(&s))?;
                Ok(reply
                    .into_inner()
                    .key
                    .map(|k| k.primary_key_id)
                    .unwrap_or_default())
            }
            Keys::Local(broker) => broker
                .get_key(call, &self.key_name)
                .map(|info| info.primary_key_id.to_string())
                .map_err(|e| operation_error(&crate::status::to_status(&e))),
        }
    }

    async fn encrypt(
        &self,
        call: &Call,
        plaintext: SecretBytes,
        aad: &[u8],
    ) -> Result<(Vec<u8>, String), Status> {
        match &self.keys {
            Keys::Remote(client) => {
                let reply = client
                    .clone()
                    .wrap(sb::WrapRequest {
                        key_name: self.key_name.clone(),
                        plaintext: plaintext.into_unprotected_vec(),
                        aad: aad.to_vec(),
                    })
                    .await
                    .map_err(|s| operation_error(&s))?
                    .into_inner();
                Ok((reply.blob, reply.key_id))
            }
            Keys::Local(broker) => {
                let wrapped = broker
                    .wrap(call, &self.key_name, plaintext, aad)
                    .await
                    .map_err(|e| operation_error(&crate::status::to_status(&e)))?;
                Ok((wrapped.blob, wrapped.key_id.to_string()))
            }
        }
    }

    async fn decrypt(&self, call: &Call, blob: Vec<u8>, aad: &[u8]) -> Result<Vec<u8>, Status> {
        match &self.keys {
            Keys::Remote(client) => {
                let reply = client
                    .clone()
                    .unwrap(sb::UnwrapRequest {
                        blob,
                        aad: aad.to_vec(),
                        key_name: self.key_name.clone(),
                    })
                    .await
                    .map_err(|s| operation_error(&s))?;
                Ok(reply.into_inner().plaintext)
            }
            Keys::Local(broker) => broker
                .unwrap(call, &self.key_name, &blob, aad)
                .await
                .map(|opened| opened.plaintext.into_unprotected_vec())
                .map_err(|e| operation_error(&crate::status::to_status(&e))),
        }
    }
}

/// A lazily connected client: SetConfig must succeed while the daemon is
/// away, so OpenBao starts sealed and retries instead of failing to start.
async fn remote<'a>(
    endpoint: &str,
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<SealServiceClient<Channel>, Status> {
    let target = if let Some(path) = endpoint.strip_prefix("unix://") {
        Target::Unix(PathBuf::from(path))
    } else if endpoint.starts_with('/') {
        Target::Unix(PathBuf::from(endpoint))
    } else if let Some(address) = endpoint.strip_prefix("https://") {
        let file = |key: &str| {
            get(key).map(PathBuf::from).ok_or_else(|| {
                stanza_error(format!(
                    "seal option `{key}` is required with an https:// endpoint (mutual TLS)"
                ))
            })
        };
        Target::Tcp {
            address: address.trim_end_matches('/').to_owned(),
            tls: Some(ClientTls {
                ca_file: file("tls_ca_file")?,
                cert_file: file("tls_cert_file")?,
                key_file: file("tls_key_file")?,
                server_name: get("tls_server_name").map(str::to_owned),
            }),
        }
    } else if let Some(address) = endpoint.strip_prefix("http://") {
        Target::Tcp {
            address: address.trim_end_matches('/').to_owned(),
            tls: None,
        }
    } else {
        return Err(stanza_error(format!(
            "seal option `endpoint` {endpoint:?} is not unix:///path, /path, https://host:port or http://host:port"
        )));
    };
    client::connect_lazy(&target).await.map_err(stanza_error)
}

/// The config fields the plugin cannot honour: listeners and the metrics
/// endpoint, which nothing but OpenBao could reach in this process.
fn unserved_field(config: &Config) -> Option<&'static str> {
    let server = &config.server;
    [
        ("server.unix_socket", server.unix_socket.is_some()),
        ("server.tcp", server.tcp.is_some()),
        ("server.transit", server.transit.is_some()),
        ("server.kms_v2", server.kms_v2.is_some()),
        ("server.metrics", server.metrics.is_some()),
    ]
    .into_iter()
    .find_map(|(field, set)| set.then_some(field))
}

/// Refuses what the plugin cannot honour, naming the field: a listener, or
/// an `allow` list for `key_name` whose wrap or unwrap grants name no
/// principal OpenBao can present over the plugin socket.
fn check_plugin_config(config: &Config, key_name: &str) -> Result<(), ConfigError> {
    if let Some(field) = unserved_field(config) {
        return Err(ConfigError::new(
            field,
            "is a listener the KMS plugin cannot serve: only OpenBao reaches it, over the plugin socket. \
             Remove it from this file, or run `sealbroker serve` with it and set the seal's `endpoint` instead of `config_file`",
        ));
    }
    let Some(grants) = config.keys.get(key_name).and_then(|spec| spec.allow.as_ref()) else {
        return Ok(());
    };
    for (operation, principals) in [("wrap", &grants.wrap), ("unwrap", &grants.unwrap)] {
        let reachable = principals
            .iter()
            .any(|p| p == "*" || p.starts_with("uid:") || p.starts_with("gid:"));
        if !reachable {
            return Err(ConfigError::new(
                format!("keys.{key_name}.allow.{operation}"),
                format!(
                    "grants {operation} to no principal OpenBao can present: it reaches the KMS plugin over a unix \
                     socket, so only uid:N, gid:N or \"*\" can match (grant the uid OpenBao runs as)"
                ),
            ));
        }
    }
    Ok(())
}

/// The `pb.Wrapper` service: a map of instances keyed by wrapper id.
pub struct WrapperService {
    registry: BackendRegistry,
    instances: Mutex<HashMap<String, Arc<Instance>>>,
    /// One broker per config file, shared by the instances that name it, so
    /// one audit trail has one writer and one hash chain.
    brokers: tokio::sync::Mutex<HashMap<PathBuf, Arc<Broker>>>,
}

impl WrapperService {
    pub fn new(registry: BackendRegistry) -> Self {
        WrapperService {
            registry,
            instances: Mutex::new(HashMap::new()),
            brokers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The broker with in-process backends that the sealbroker config file
    /// at `path` describes, built on first use.
    async fn local(&self, path: &Path, key_name: &str) -> Result<Arc<Broker>, Status> {
        let in_file = |e: &dyn std::fmt::Display| stanza_error(format!("{}: {e}", path.display()));
        let config = Config::load(path).map_err(|e| in_file(&e))?;
        check_plugin_config(&config, key_name).map_err(|e| in_file(&e))?;
        let canonical = std::fs::canonicalize(path).map_err(|e| in_file(&e))?;
        let mut brokers = self.brokers.lock().await;
        let broker = match brokers.get(&canonical) {
            Some(broker) => broker.clone(),
            None => {
                let broker = Arc::new(
                    Broker::from_config(&config, &self.registry)
                        .await
                        .map_err(|e| in_file(&e))?,
                );
                brokers.insert(canonical, broker.clone());
                broker
            }
        };
        if broker.key_ring().get(key_name).is_err() {
            return Err(stanza_error(format!(
                "seal option `key_name` {key_name:?} is not a key in {} (it has: {})",
                path.display(),
                broker.key_ring().names().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(broker)
    }

    fn instance(&self, wrapper_id: &str) -> Result<Arc<Instance>, Status> {
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(wrapper_id)
            .cloned()
            .ok_or_else(|| Status::not_found("instance not found"))
    }
}

/// A fresh random instance id; the system RNG failing is an error, never an
/// all-zero id that two instances could share.
fn wrapper_id() -> Result<String, Status> {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| Status::internal("the system random number generator failed"))?;
    let h = hex::encode(id);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

#[tonic::async_trait]
impl pb::wrapper_server::Wrapper for WrapperService {
    async fn set_config(
        &self,
        request: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        let options = request.into_inner().options.unwrap_or_default();
        let instance = Instance::from_stanza(&options.with_config_map, self).await?;
        let metadata = instance.describe();
        let id = wrapper_id()?;
        tracing::info!(wrapper_id = %id, key = %instance.key_name, seal_type = %instance.seal_type, "seal configured");
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::new(instance));
        Ok(Response::new(pb::SetConfigResponse {
            wrapper_id: id,
            wrapper_config: Some(wrapping::WrapperConfig { metadata }),
        }))
    }

    async fn r#type(&self, request: Request<pb::TypeRequest>) -> Result<Response<pb::TypeResponse>, Status> {
        let instance = self.instance(&request.get_ref().wrapper_id)?;
        Ok(Response::new(pb::TypeResponse {
            r#type: instance.seal_type.clone(),
        }))
    }

    async fn key_id(
        &self,
        request: Request<pb::KeyIdRequest>,
    ) -> Result<Response<pb::KeyIdResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let instance = self.instance(&request.get_ref().wrapper_id)?;
        Ok(Response::new(pb::KeyIdResponse {
            key_id: instance.key_id(&call).await?,
        }))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let mut req = request.into_inner();
        let instance = self.instance(&req.wrapper_id)?;
        let plaintext = SecretBytes::new(std::mem::take(&mut req.plaintext));
        let (blob, key_id) = instance
            .encrypt(&call, plaintext, instance.aad(&req.options))
            .await?;
        Ok(Response::new(pb::EncryptResponse {
            ciphertext: Some(wrapping::BlobInfo {
                ciphertext: blob,
                iv: Vec::new(),
                key_info: Some(wrapping::KeyInfo {
                    mechanism: 0,
                    key_id,
                    wrapped_key: Vec::new(),
                }),
            }),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let req = request.into_inner();
        let instance = self.instance(&req.wrapper_id)?;
        let blob = req.ciphertext.map(|c| c.ciphertext).unwrap_or_default();
        if blob.is_empty() {
            return Err(Status::unknown(
                "sealbroker: the BlobInfo to decrypt has no ciphertext",
            ));
        }
        let plaintext = instance.decrypt(&call, blob, instance.aad(&req.options)).await?;
        Ok(Response::new(pb::DecryptResponse { plaintext }))
    }

    async fn init(&self, request: Request<pb::InitRequest>) -> Result<Response<pb::InitResponse>, Status> {
        // Everything happens in SetConfig: OpenBao does not call Init on restart.
        self.instance(&request.get_ref().wrapper_id)?;
        Ok(Response::new(pb::InitResponse {}))
    }

    async fn finalize(
        &self,
        request: Request<pb::FinalizeRequest>,
    ) -> Result<Response<pb::FinalizeResponse>, Status> {
        let id = &request.get_ref().wrapper_id;
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .ok_or_else(|| Status::not_found("instance not found"))?;
        tracing::info!(wrapper_id = %id, "seal finalized");
        Ok(Response::new(pb::FinalizeResponse {}))
    }
}

/// `metadata.Metadata`: which stanza fields are secret, so OpenBao censors
/// them when it displays configuration.
struct MetadataService;

#[tonic::async_trait]
impl metadata::metadata_server::Metadata for MetadataService {
    async fn get(&self, _: Request<metadata::Empty>) -> Result<Response<metadata::MetadataResponse>, Status> {
        Ok(Response::new(metadata::MetadataResponse {
            sensitive_kms_fields: vec!["tls_key_file".into()],
            sensitive_key_fields: vec!["aad".into()],
        }))
    }
}

/// go-plugin's `GRPCController`: `Shutdown` asks us to exit.
struct ControllerService {
    stop: watch::Sender<bool>,
}

#[tonic::async_trait]
impl plugin::grpc_controller_server::GrpcController for ControllerService {
    async fn shutdown(&self, _: Request<plugin::Empty>) -> Result<Response<plugin::Empty>, Status> {
        tracing::info!("OpenBao asked the plugin to shut down");
        let _ = self.stop.send(true);
        Ok(Response::new(plugin::Empty {}))
    }
}

/// Requires the client to present exactly OpenBao's AutoMTLS certificate and
/// to prove it holds the key. OpenBao's certificate is a self-signed CA:TRUE
/// P-521 certificate, which webpki would reject as a leaf, so it is pinned
/// by its bytes instead of chain-validated. The handshake signature is
/// verified with aws-lc-rs, which (unlike ring) supports P-521.
#[derive(Debug)]
pub struct PinnedClientCert {
    expected: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl PinnedClientCert {
    pub fn new(expected: CertificateDer<'static>) -> Self {
        let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        PinnedClientCert { expected, algorithms }
    }
}

impl ClientCertVerifier for PinnedClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // Must include ECDSA_NISTP521_SHA512, or Go silently sends no certificate.
        self.algorithms.supported_schemes()
    }
}

/// Our server certificate: fresh and self-signed for each run, SAN
/// `localhost` (Go refuses a CN-only certificate), serverAuth.
fn server_identity() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key))
}

fn tls_config(
    client_cert: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(PinnedClientCert::new(client_cert)))
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()]; // Go's gRPC client insists on ALPN h2
    Ok(config)
}

/// Checks the environment OpenBao sets; returns the client certificate.
fn handshake_environment() -> Result<CertificateDer<'static>, String> {
    if std::env::var(MAGIC_COOKIE_KEY).ok().as_deref() != Some(MAGIC_COOKIE_VALUE) {
        return Err(NOT_LAUNCHED_BY_OPENBAO.to_owned());
    }
    let versions = std::env::var("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default();
    if !versions.split(',').any(|v| v.trim() == APP_PROTOCOL_VERSION) {
        return Err(format!(
            "OpenBao offered KMS plugin protocol version(s) {versions:?}; this sealbroker speaks version {APP_PROTOCOL_VERSION}"
        ));
    }
    let pem = std::env::var("PLUGIN_CLIENT_CERT").map_err(|_| {
        "PLUGIN_CLIENT_CERT is not set: OpenBao must launch the plugin with AutoMTLS".to_owned()
    })?;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("PLUGIN_CLIENT_CERT is not a PEM certificate: {e}"))
}

/// The go-plugin handshake line.
fn handshake_line(socket: &Path, server_cert: &[u8]) -> String {
    let cert = base64::engine::general_purpose::STANDARD_NO_PAD.encode(server_cert);
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc|{cert}",
        socket.display()
    )
}

/// Resolves when OpenBao (our parent) has gone away: the plugin must not
/// outlive it as an orphan.
async fn parent_gone() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(parent, "OpenBao exited; stopping the plugin");
            return;
        }
    }
}

/// A private directory for the plugin socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> Result<Self, String> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        for attempt in 0..16u32 {
            let dir = base.join(format!("sealbroker-plugin-{}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(SocketDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Stale from a dead plugin with a recycled pid.
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        Err(format!(
            "cannot create a socket directory under {}",
            base.display()
        ))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS connection on the plugin socket that remembers the peer
/// credentials of the unix socket beneath it, so requests know which
/// process (OpenBao) is calling.
struct PluginConn {
    tls: Box<tokio_rustls::server::TlsStream<UnixStream>>,
    peer: UdsConnectInfo,
}

impl Connected for PluginConn {
    type ConnectInfo = UdsConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PluginConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PluginConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.tls).poll_shutdown(cx)
    }
}

/// Accepts connections on the plugin socket and completes TLS handshakes
/// off the accept loop.
async fn accept_tls(
    listener: tokio::net::UnixListener,
    acceptor: tokio_rustls::TlsAcceptor,
    conns: mpsc::Sender<PluginConn>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "plugin socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        let peer = stream.connect_info();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = conns
                        .send(PluginConn {
                            tls: Box::new(tls),
                            peer,
                        })
                        .await;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "plugin TLS handshake refused"),
                Err(_) => tracing::warn!("plugin TLS handshake timed out"),
            }
        });
    }
}

/// Runs the plugin until OpenBao shuts it down (GRPCController.Shutdown),
/// SIGTERM arrives, or OpenBao exits. SIGINT is ignored: Ctrl-C reaches the
/// whole process group, and OpenBao still needs us to finish its shutdown.
pub async fn run(registry: BackendRegistry) -> Result<(), String> {
    let client_cert = handshake_environment()?;
    let (server_cert, server_key) = server_identity()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(
        client_cert,
        server_cert.clone(),
        server_key,
    )?));
    let dir = SocketDir::create()?;
    let socket = dir.0.join("plugin.sock");
    let listener = crate::listen::bind_unix(&socket, 0o600).map_err(|e| e.to_string())?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut interrupts = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let stopper = stop_tx.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupts.recv() => tracing::debug!("SIGINT ignored; waiting for OpenBao to stop the plugin"),
                _ = terminate.recv() => { tracing::info!("SIGTERM received"); break; }
                _ = parent_gone() => break,
            }
        }
        let _ = stopper.send(true);
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let (conn_tx, conn_rx) = mpsc::channel(16);
    let accepting = tokio::spawn(accept_tls(listener, acceptor, conn_tx));
    let incoming = ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>);
    let mut stopped = stop_rx.clone();
    let server = Server::builder()
        .add_service(health_service)
        .add_service(pb::wrapper_server::WrapperServer::new(WrapperService::new(
            registry,
        )))
        .add_service(metadata::metadata_server::MetadataServer::new(MetadataService))
        .add_service(plugin::grpc_controller_server::GrpcControllerServer::new(
            ControllerService { stop: stop_tx },
        ))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.changed().await;
        });

    // The handshake must be the first line on stdout.
    let line = handshake_line(&socket, server_cert.as_ref());
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| format!("writing the handshake: {e}"))?;
    }
    tracing::info!(socket = %socket.display(), "KMS plugin serving");

    // OpenBao keeps its connection open and SIGKILLs us 2 s after Shutdown,
    // so do not wait for it to hang up: answer, then leave.
    let mut stopped = stop_rx;
    tokio::select! {
        result = server => result.map_err(|e| format!("plugin gRPC server failed: {e}"))?,
        _ = async {
            let _ = stopped.changed().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        } => {}
    }
    accepting.abort();
    tracing::info!("KMS plugin stopped");
    Ok(())
}
