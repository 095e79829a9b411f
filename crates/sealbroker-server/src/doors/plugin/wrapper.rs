//! go-kms-wrapping's `pb.Wrapper` service: each `SetConfig` makes an
//! instance from the seal stanza, reaching keys through a daemon
//! (`endpoint`) or a broker built in-process (`config_file`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sealbroker_core::{BackendKind, SecretBytes, StockStanza};
use sealbroker_proto::sealbroker::v1 as sb;
use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use sealbroker_proto::{pb, wrapping};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::broker::Broker;
use crate::broker::caller::{Call, Door};
use crate::broker::registry::BackendRegistry;
use crate::config::{Config, ConfigError};
use crate::doors::grpc::caller_of;
use crate::net::client::{self, ClientTls, Target};

use super::health::{self, HealthCache};
use super::stock::{self, StockInstance};

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
pub(super) enum Keys {
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

pub(super) fn stanza_error(message: impl std::fmt::Display) -> Status {
    // OpenBao shows `Unknown` statuses as the bare message, e.g.
    // `Error configuring seal "sealbroker": <message>`.
    Status::unknown(format!("sealbroker: {message}"))
}

/// Turns an error from the broker (local) or the daemon (remote) into what
/// OpenBao shows its operator.
pub(super) fn operation_error(status: &Status) -> Status {
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
        let keys = service.keys_of(config, Some(&key_name), "seal option").await?;
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
                .map_err(|e| operation_error(&crate::doors::status::to_status(&e))),
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
                    .map_err(|e| operation_error(&crate::doors::status::to_status(&e)))?;
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
                .map_err(|e| operation_error(&crate::doors::status::to_status(&e))),
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
fn check_plugin_config(config: &Config, key_name: Option<&str>) -> Result<(), ConfigError> {
    if let Some(field) = unserved_field(config) {
        return Err(ConfigError::new(
            field,
            "is a listener the KMS plugin cannot serve: only OpenBao reaches it, over the plugin socket. \
             Remove it from this file, or run `sealbroker serve` with it and set the seal's `endpoint` instead of `config_file`",
        ));
    }
    if config.audit.stdout {
        return Err(ConfigError::new(
            "audit.stdout",
            "the KMS plugin's stdout carries its handshake with OpenBao, not audit lines: use audit.file",
        ));
    }
    let Some((key_name, grants)) = key_name.and_then(|name| {
        config
            .keys
            .get(name)
            .and_then(|spec| spec.allow.as_ref())
            .map(|g| (name, g))
    }) else {
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

/// What one `SetConfig` made, and its health as last seen.
struct Configured {
    wrapper: Wrapper,
    health: HealthCache,
}

/// The value a probe round-trips when a heartbeat finds the cache stale.
const PROBE_VALUE: &[u8] = b"sealbroker seal probe";

/// How a failure is kept for heartbeats: the message OpenBao will show.
fn outcome<T>(result: &Result<T, Status>) -> Result<(), String> {
    result.as_ref().map(|_| ()).map_err(|s| s.message().to_owned())
}

/// What one `SetConfig` made.
enum Wrapper {
    /// sealbroker's own stanza: blobs in sealbroker's format, through a broker.
    Broker(Box<Instance>),
    /// A stock stanza (`kms-plugin awskms`): blobs in the stock format.
    Stock(StockInstance),
}

/// The `pb.Wrapper` service: a map of instances keyed by wrapper id.
pub struct WrapperService {
    registry: BackendRegistry,
    /// The kind standing in for a stock seal, in drop-in mode (or why
    /// there is none for the seal type asked for).
    stock: Option<Result<&'static dyn BackendKind, String>>,
    instances: Mutex<HashMap<String, Arc<Configured>>>,
    /// One broker per config file, shared by the instances that name it, so
    /// one audit trail has one writer and one hash chain.
    brokers: tokio::sync::Mutex<HashMap<PathBuf, Arc<Broker>>>,
}

impl WrapperService {
    pub fn new(registry: BackendRegistry, stock: Option<Result<&'static dyn BackendKind, String>>) -> Self {
        WrapperService {
            registry,
            stock,
            instances: Mutex::new(HashMap::new()),
            brokers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Where `config` (a seal stanza, or an External Keys config) says keys
    /// are: `endpoint` or `config_file`. `key_name`, when given, must be in
    /// the file.
    /// `noun` names the options in errors ("seal option").
    pub(super) async fn keys_of(
        &self,
        config: &HashMap<String, String>,
        key_name: Option<&str>,
        noun: &str,
    ) -> Result<Keys, Status> {
        let get = |key: &str| config.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        match (get("endpoint"), get("config_file")) {
            (Some(endpoint), None) => Ok(Keys::Remote(remote(endpoint, &get).await?)),
            (None, Some(path)) => Ok(Keys::Local(self.local(Path::new(path), key_name).await?)),
            (Some(_), Some(_)) => Err(stanza_error(format!(
                "set either {noun} `endpoint` or `config_file`, not both"
            ))),
            (None, None) => Err(stanza_error(format!(
                "set {noun} `endpoint` (a sealbroker daemon, e.g. \"unix:///run/sealbroker/sealbroker.sock\") \
                 or `config_file` (a sealbroker config to run backends in-process)"
            ))),
        }
    }

    /// The broker with in-process backends that the sealbroker config file
    /// at `path` describes, built on first use.
    async fn local(&self, path: &Path, key_name: Option<&str>) -> Result<Arc<Broker>, Status> {
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
        let Some(key_name) = key_name else {
            return Ok(broker);
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

    fn instance(&self, wrapper_id: &str) -> Result<Arc<Configured>, Status> {
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(wrapper_id)
            .cloned()
            .ok_or_else(|| Status::not_found("instance not found"))
    }
}

impl WrapperService {
    /// Answers a health check from `configured`'s cached outcome, or, when
    /// that is stale, from one real round trip that refreshes it.
    async fn heartbeat(&self, configured: &Configured, call: &Call) -> Result<(), Status> {
        let cached = match configured.health.fresh() {
            Some(cached) => cached,
            None => {
                let probed = probe(&configured.wrapper, call).await;
                configured.health.record(probed.clone());
                probed
            }
        };
        cached.map_err(|reason| {
            Status::unavailable(format!(
                "sealbroker: the seal's last call or probe failed (answering health checks from it): {reason}"
            ))
        })
    }
}

/// One real encrypt and decrypt of [`PROBE_VALUE`].
async fn probe(wrapper: &Wrapper, call: &Call) -> Result<(), String> {
    let sealed = seal_encrypt(wrapper, call, SecretBytes::new(PROBE_VALUE.to_vec()), &None).await;
    let opened = seal_decrypt(
        wrapper,
        call,
        Some(sealed.map_err(|s| s.message().to_owned())?),
        &None,
    )
    .await
    .map_err(|s| s.message().to_owned())?;
    if opened == PROBE_VALUE {
        Ok(())
    } else {
        Err("the seal's probe round trip returned different bytes".into())
    }
}

/// Encrypts through the instance: the stock format, or sealbroker's.
async fn seal_encrypt(
    wrapper: &Wrapper,
    call: &Call,
    plaintext: SecretBytes,
    options: &Option<wrapping::RpcOptions>,
) -> Result<wrapping::BlobInfo, Status> {
    match wrapper {
        Wrapper::Stock(seal) => {
            let aad = options
                .as_ref()
                .map(|o| o.with_aad.as_slice())
                .unwrap_or_default();
            let blob = seal
                .encrypt(plaintext.expose(), aad)
                .await
                .map_err(stock::backend_status)?;
            Ok(stock::to_blob_info(blob))
        }
        Wrapper::Broker(instance) => {
            let (blob, key_id) = instance.encrypt(call, plaintext, instance.aad(options)).await?;
            Ok(wrapping::BlobInfo {
                ciphertext: blob,
                iv: Vec::new(),
                key_info: Some(wrapping::KeyInfo {
                    mechanism: 0,
                    key_id,
                    wrapped_key: Vec::new(),
                }),
            })
        }
    }
}

/// Decrypts through the instance.
async fn seal_decrypt(
    wrapper: &Wrapper,
    call: &Call,
    ciphertext: Option<wrapping::BlobInfo>,
    options: &Option<wrapping::RpcOptions>,
) -> Result<Vec<u8>, Status> {
    let instance = match wrapper {
        Wrapper::Broker(instance) => instance,
        Wrapper::Stock(seal) => {
            let blob = ciphertext.ok_or_else(|| Status::unknown("given input for decryption is nil"))?;
            let aad = options
                .as_ref()
                .map(|o| o.with_aad.as_slice())
                .unwrap_or_default();
            let plaintext = seal
                .decrypt(&stock::from_blob_info(blob), aad)
                .await
                .map_err(stock::backend_status)?;
            return Ok(plaintext.into_unprotected_vec());
        }
    };
    if let Some(info) = &ciphertext
        && stock::is_stock_format(info)
    {
        return Err(Status::unknown(format!(
            "sealbroker: this blob is in a stock seal format (written by OpenBao's own {} seal, or by \
             `kms-plugin {}` without sealbroker_endpoint); only that backend can open it, not a sealbroker \
             daemon: migrate the seal first (docs/openbao.md)",
            instance.seal_type, instance.seal_type
        )));
    }
    let blob = ciphertext.map(|c| c.ciphertext).unwrap_or_default();
    if blob.is_empty() {
        return Err(Status::unknown(
            "sealbroker: the BlobInfo to decrypt has no ciphertext",
        ));
    }
    instance.decrypt(call, blob, instance.aad(options)).await
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
        let id = wrapper_id()?;
        let (wrapper, metadata) = match &self.stock {
            Some(Err(refusal)) => return Err(Status::unknown(refusal.clone())),
            Some(Ok(kind)) if options.with_config_map.contains_key(stock::FORWARD_KEY) => {
                let own = stock::forwarded_stanza(kind.name(), &options.with_config_map)?;
                let instance = Instance::from_stanza(&own, self).await?;
                tracing::info!(wrapper_id = %id, key = %instance.key_name, seal_type = %instance.seal_type, "stock seal forwarded to a sealbroker daemon");
                let metadata = instance.describe();
                (Wrapper::Broker(Box::new(instance)), metadata)
            }
            Some(Ok(kind)) => {
                let stanza = StockStanza::new(options.with_config_map);
                let seal = kind
                    .open_stock_stanza(&stanza)
                    .await
                    .map_err(stock::stanza_status)?;
                tracing::info!(wrapper_id = %id, seal_type = seal.seal_type(), "stock seal configured");
                let metadata = seal.metadata();
                (Wrapper::Stock(seal), metadata)
            }
            None => {
                let instance = Instance::from_stanza(&options.with_config_map, self).await?;
                tracing::info!(wrapper_id = %id, key = %instance.key_name, seal_type = %instance.seal_type, "seal configured");
                let metadata = instance.describe();
                (Wrapper::Broker(Box::new(instance)), metadata)
            }
        };
        self.instances.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            Arc::new(Configured {
                wrapper,
                health: HealthCache::default(),
            }),
        );
        Ok(Response::new(pb::SetConfigResponse {
            wrapper_id: id,
            wrapper_config: Some(wrapping::WrapperConfig { metadata }),
        }))
    }

    async fn r#type(&self, request: Request<pb::TypeRequest>) -> Result<Response<pb::TypeResponse>, Status> {
        let r#type = match &self.instance(&request.get_ref().wrapper_id)?.wrapper {
            Wrapper::Broker(instance) => instance.seal_type.clone(),
            Wrapper::Stock(seal) => seal.seal_type().to_owned(),
        };
        Ok(Response::new(pb::TypeResponse { r#type }))
    }

    async fn key_id(
        &self,
        request: Request<pb::KeyIdRequest>,
    ) -> Result<Response<pb::KeyIdResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let key_id = match &self.instance(&request.get_ref().wrapper_id)?.wrapper {
            Wrapper::Broker(instance) => instance.key_id(&call).await?,
            Wrapper::Stock(seal) => seal.key_id(),
        };
        Ok(Response::new(pb::KeyIdResponse { key_id }))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let mut req = request.into_inner();
        let plaintext = SecretBytes::new(std::mem::take(&mut req.plaintext));
        let configured = self.instance(&req.wrapper_id)?;
        let no_aad = req.options.as_ref().is_none_or(|o| o.with_aad.is_empty());
        if no_aad && health::is_heartbeat(plaintext.expose()) {
            self.heartbeat(&configured, &call).await?;
            return Ok(Response::new(pb::EncryptResponse {
                ciphertext: Some(wrapping::BlobInfo {
                    ciphertext: plaintext.into_unprotected_vec(),
                    iv: Vec::new(),
                    key_info: Some(wrapping::KeyInfo {
                        mechanism: health::HEARTBEAT_MECHANISM,
                        key_id: String::new(),
                        wrapped_key: Vec::new(),
                    }),
                }),
            }));
        }
        let sealed = seal_encrypt(&configured.wrapper, &call, plaintext, &req.options).await;
        configured.health.record(outcome(&sealed));
        Ok(Response::new(pb::EncryptResponse {
            ciphertext: Some(sealed?),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let req = request.into_inner();
        let configured = self.instance(&req.wrapper_id)?;
        if let Some(info) = &req.ciphertext
            && info.key_info.as_ref().map(|k| k.mechanism) == Some(health::HEARTBEAT_MECHANISM)
        {
            if !health::is_heartbeat(&info.ciphertext) {
                return Err(Status::unknown(
                    "sealbroker: a heartbeat blob holds only OpenBao's health check value",
                ));
            }
            self.heartbeat(&configured, &call).await?;
            return Ok(Response::new(pb::DecryptResponse {
                plaintext: info.ciphertext.clone(),
            }));
        }
        let opened = seal_decrypt(&configured.wrapper, &call, req.ciphertext, &req.options).await;
        // A blob that does not open says nothing about the backend; one
        // that opens says it works.
        if opened.is_ok() {
            configured.health.record(Ok(()));
        }
        Ok(Response::new(pb::DecryptResponse { plaintext: opened? }))
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

#[cfg(test)]
mod service_tests;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use pb::wrapper_server::Wrapper as _;
    use sealbroker_core::{
        BackendError, ConfigError, OpenedBackend, Profile, StanzaError, StockBlob, StockSeal,
    };

    use super::*;

    /// A stock seal that counts its backend calls and fails on demand.
    #[derive(Default)]
    struct CountingSeal {
        calls: AtomicUsize,
        failing: AtomicBool,
    }

    impl CountingSeal {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn call(&self) -> Result<(), BackendError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                Err(BackendError::unavailable("HSM unreachable"))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl StockSeal for CountingSeal {
        fn seal_type(&self) -> &'static str {
            "counting"
        }
        fn key_id(&self) -> String {
            "k1".into()
        }
        fn metadata(&self) -> HashMap<String, String> {
            HashMap::new()
        }
        async fn encrypt(&self, plaintext: &[u8], _aad: &[u8]) -> Result<StockBlob, BackendError> {
            self.call()?;
            Ok(StockBlob {
                ciphertext: plaintext.iter().rev().copied().collect(),
                iv: vec![1; 12],
                key_id: "k1".into(),
                has_key_info: true,
                ..Default::default()
            })
        }
        async fn decrypt(&self, blob: &StockBlob, _aad: &[u8]) -> Result<SecretBytes, BackendError> {
            self.call()?;
            Ok(SecretBytes::new(blob.ciphertext.iter().rev().copied().collect()))
        }
    }

    struct CountingKind(Arc<CountingSeal>);

    #[async_trait]
    impl BackendKind for CountingKind {
        fn name(&self) -> &'static str {
            "counting"
        }
        async fn open(
            &self,
            _: &toml::Table,
            path: &str,
            _: Profile,
        ) -> Result<Arc<dyn OpenedBackend>, ConfigError> {
            Err(ConfigError::new(path, "a test kind: stock stanzas only"))
        }
        fn has_stock_seal(&self) -> bool {
            true
        }
        async fn open_stock_stanza(&self, _: &StockStanza) -> Result<Arc<dyn StockSeal>, StanzaError> {
            Ok(self.0.clone())
        }
    }

    async fn configured_service() -> (WrapperService, Arc<CountingSeal>, String) {
        let seal = Arc::new(CountingSeal::default());
        let kind: &'static CountingKind = Box::leak(Box::new(CountingKind(seal.clone())));
        let service = WrapperService::new(BackendRegistry::default(), Some(Ok(kind)));
        let id = service
            .set_config(Request::new(pb::SetConfigRequest { options: None }))
            .await
            .unwrap()
            .into_inner()
            .wrapper_id;
        (service, seal, id)
    }

    async fn encrypt(
        service: &WrapperService,
        id: &str,
        plaintext: &[u8],
    ) -> Result<wrapping::BlobInfo, Status> {
        service
            .encrypt(Request::new(pb::EncryptRequest {
                wrapper_id: id.to_owned(),
                plaintext: plaintext.to_vec(),
                options: None,
            }))
            .await
            .map(|r| r.into_inner().ciphertext.unwrap())
    }

    async fn decrypt(
        service: &WrapperService,
        id: &str,
        blob: wrapping::BlobInfo,
    ) -> Result<Vec<u8>, Status> {
        service
            .decrypt(Request::new(pb::DecryptRequest {
                wrapper_id: id.to_owned(),
                ciphertext: Some(blob),
                options: None,
            }))
            .await
            .map(|r| r.into_inner().plaintext)
    }

    /// OpenBao's check: encrypt "Heartbeat N", decrypt, compare.
    async fn health_check(service: &WrapperService, id: &str, n: u32) -> Result<(), Status> {
        let value = format!("Heartbeat {n}");
        let blob = encrypt(service, id, value.as_bytes()).await?;
        let opened = decrypt(service, id, blob).await?;
        assert_eq!(opened, value.as_bytes());
        Ok(())
    }

    #[tokio::test]
    async fn health_checks_are_answered_from_the_cached_outcome_with_no_backend_calls() {
        let (service, seal, id) = configured_service().await;
        // Unseal: real calls, which the cache remembers.
        let blob = encrypt(&service, &id, b"root key").await.unwrap();
        assert_eq!(decrypt(&service, &id, blob).await.unwrap(), b"root key");
        assert_eq!(seal.calls(), 2);
        for n in 0..200 {
            health_check(&service, &id, n % 1000).await.unwrap();
        }
        assert_eq!(seal.calls(), 2, "a health check reached the backend");

        // A real call fails: the next checks report it, still without calls.
        seal.failing.store(true, Ordering::SeqCst);
        assert!(encrypt(&service, &id, b"root key").await.is_err());
        let calls = seal.calls();
        for n in 0..20 {
            let err = health_check(&service, &id, n).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unavailable);
            assert!(err.message().contains("HSM unreachable"), "{}", err.message());
        }
        assert_eq!(seal.calls(), calls);
    }

    #[tokio::test]
    async fn a_health_check_with_nothing_cached_probes_once_for_real() {
        let (service, seal, id) = configured_service().await;
        health_check(&service, &id, 7).await.unwrap();
        assert_eq!(seal.calls(), 2, "one probe: encrypt and decrypt");
        for n in 0..50 {
            health_check(&service, &id, n).await.unwrap();
        }
        assert_eq!(seal.calls(), 2);

        let (service, seal, id) = configured_service().await;
        seal.failing.store(true, Ordering::SeqCst);
        let err = health_check(&service, &id, 1).await.unwrap_err();
        assert!(err.message().contains("HSM unreachable"), "{}", err.message());
        assert_eq!(seal.calls(), 1, "the probe stopped at the failed encrypt");
    }

    #[tokio::test]
    async fn only_the_heartbeat_value_takes_the_cached_path() {
        let (service, seal, id) = configured_service().await;
        // Not OpenBao's heartbeat: a real call.
        let blob = encrypt(&service, &id, b"Heartbeat 1000").await.unwrap();
        assert_ne!(
            blob.key_info.as_ref().unwrap().mechanism,
            health::HEARTBEAT_MECHANISM
        );
        assert_eq!(seal.calls(), 1);
        // A heartbeat blob carrying anything else opens nothing.
        let forged = wrapping::BlobInfo {
            ciphertext: b"a root key".to_vec(),
            iv: Vec::new(),
            key_info: Some(wrapping::KeyInfo {
                mechanism: health::HEARTBEAT_MECHANISM,
                key_id: String::new(),
                wrapped_key: Vec::new(),
            }),
        };
        let err = decrypt(&service, &id, forged).await.unwrap_err();
        assert!(err.message().contains("heartbeat"), "{}", err.message());
        assert_eq!(seal.calls(), 1);
    }
}
