//! go-kms-wrapping's `kms.KMS` service: what OpenBao's External Keys
//! (`sys/external-keys/...`, PKI's `external_key_ref`, transit's
//! `external-key` type) call. A thin adapter like the `Wrapper` service:
//!
//! - `Open` takes the config's values: `endpoint` (a sealbroker daemon, with
//!   `tls_*` for https) or `config_file` (backends in this process), as the
//!   seal stanza does.
//! - `GetKey` takes the key's values: `key` (a sealbroker key name) and an
//!   optional `version` that pins it (a PKI issuer should: a rotation must
//!   not change the key behind a CA certificate).
//! - `Sign`, `Verify` and `ExportPublic` are the broker's Sign, Verify and
//!   public key; `Encrypt` and `Decrypt` are RSA-OAEP on an RSA encryption
//!   key pair, and on a sealing key its Wrap and Unwrap (the ciphertext is a
//!   sealbroker blob).
//!
//! Errors reach OpenBao as `Unknown` with the broker's code and message
//! (`NotFound` would read as "plugin instance lost"), and a bad signature
//! as `InvalidArgument`, which OpenBao reads as `ErrInvalidSignature`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost_types::value::Kind;
use sealbroker_core::{Hash, KeyAlgorithm, SecretBytes, SignInput, SignScheme};
use sealbroker_proto::kms::{self as pb, kms_server::Kms};
use sealbroker_proto::sealbroker::v1 as sb;
use tonic::{Request, Response, Status};

use crate::broker::caller::{Call, Door};
use crate::doors::grpc::caller_of;
use crate::doors::status::to_status;

use super::wrapper::{Keys, WrapperService, operation_error, stanza_error};

const OPEN_KEYS: &[&str] = &[
    "endpoint",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_server_name",
    "config_file",
];
const KEY_KEYS: &[&str] = &["key", "version"];

/// One `GetKey`: a sealbroker key, maybe pinned to a version, and what it is.
struct OpenKey {
    keys: Keys,
    name: String,
    version: Option<u32>,
    /// `None` for a sealing key (Encrypt and Decrypt only).
    algorithm: Option<KeyAlgorithm>,
    public: Option<Vec<u8>>,
}

/// The External Keys service.
pub struct KmsService {
    wrappers: Arc<WrapperService>,
    opened: Mutex<HashMap<String, Keys>>,
    keys: Mutex<HashMap<String, Arc<OpenKey>>>,
}

impl KmsService {
    pub fn new(wrappers: Arc<WrapperService>) -> Self {
        KmsService {
            wrappers,
            opened: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, id: &str) -> Result<Arc<OpenKey>, Status> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found("key not found"))
    }
}

/// A config map's values as strings (numbers and booleans written plainly),
/// refusing keys outside `allowed`.
fn strings(
    map: Option<prost_types::Struct>,
    allowed: &[&str],
    what: &str,
) -> Result<HashMap<String, String>, Status> {
    let mut out = HashMap::new();
    let mut unknown = Vec::new();
    for (key, value) in map.map(|m| m.fields).unwrap_or_default() {
        if !allowed.contains(&key.as_str()) {
            unknown.push(key);
            continue;
        }
        let text = match value.kind {
            Some(Kind::StringValue(s)) => s,
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 => format!("{n:.0}"),
            Some(Kind::BoolValue(b)) => b.to_string(),
            _ => {
                return Err(stanza_error(format!(
                    "{what} value `{key}` must be a string or a number"
                )));
            }
        };
        out.insert(key, text);
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(stanza_error(format!(
            "unknown {what} value(s) {}; sealbroker accepts {}",
            unknown.join(", "),
            allowed.join(", ")
        )));
    }
    Ok(out)
}

fn new_id() -> Result<String, Status> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Status::internal("system RNG failed"))?;
    Ok(hex::encode(bytes))
}

/// The scheme OpenBao asks for: Go's hash and signer options, read
/// against the key's algorithm. Go's hash 0 on a message means "no hash
/// named": OpenBao 2.7's transit sends its input so, with PSS options and
/// no hash, for the key to hash. The key's own hash is used then (SHA-256,
/// or SHA-384 on P-384), the same for Sign and Verify. A digest must name
/// its hash.
fn scheme_of(
    algorithm: KeyAlgorithm,
    hash: i32,
    prehashed: bool,
    opts: Option<&pb::SignerOpts>,
) -> Result<SignScheme, Status> {
    let refuse = |why: String| stanza_error(format!("InvalidArgument: {why}"));
    let needs_hash = || {
        match (hash, prehashed) {
        (0, false) => algorithm
            .default_scheme()
            .hash()
            .ok_or_else(|| refuse(format!("a {algorithm} key has no hash"))),
        (0, true) => Err(refuse(format!(
            "a digest for a {algorithm} key must name its hash (SHA-256, SHA-384 or SHA-512)"
        ))),
        (hash, _) => Hash::from_go(hash).ok_or_else(|| {
            refuse(format!(
                "a {algorithm} signature needs SHA-256, SHA-384 or SHA-512 (Go crypto.Hash {hash} is not offered)"
            ))
        }),
    }
    };
    match (algorithm, opts.and_then(|o| o.r#type.as_ref())) {
        (KeyAlgorithm::Ed25519, None) if hash == 0 => Ok(SignScheme::Ed25519),
        (KeyAlgorithm::Ed25519, Some(pb::signer_opts::Type::Ed25519(o)))
            if hash == 0 && o.context.is_empty() =>
        {
            Ok(SignScheme::Ed25519)
        }
        (KeyAlgorithm::Ed25519, _) => Err(refuse(
            "an Ed25519 key signs pure Ed25519 only (no Ed25519ph, no context)".into(),
        )),
        (KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384, None) => Ok(SignScheme::Ecdsa(needs_hash()?)),
        (KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384, Some(_)) => Err(refuse(format!(
            "a {algorithm} key takes no PSS or Ed25519 options"
        ))),
        (_, None) => Ok(SignScheme::RsaPkcs1v15(needs_hash()?)),
        (_, Some(pb::signer_opts::Type::Pss(pss))) => {
            let hash = needs_hash()?;
            // Go: 0 = auto (any salt verifies; we sign with the hash's
            // length), -1 = the hash's length.
            match pss.salt_length {
                0 | -1 => Ok(SignScheme::RsaPss(hash)),
                n if n as usize == hash.digest_len() => Ok(SignScheme::RsaPss(hash)),
                n => Err(refuse(format!(
                    "PSS with a {n}-byte salt is not offered; sealbroker uses a salt as long as the hash ({})",
                    hash.digest_len()
                ))),
            }
        }
        (_, Some(pb::signer_opts::Type::Ed25519(_))) => {
            Err(refuse(format!("a {algorithm} key takes no Ed25519 options")))
        }
    }
}

fn input(data: &[u8], prehashed: bool, scheme: SignScheme) -> SignInput<'_> {
    // Pure Ed25519 has no digest: OpenBao's prehashed flag is ignored, as
    // the KMS interface says.
    if prehashed && scheme != SignScheme::Ed25519 {
        SignInput::Digest(data)
    } else {
        SignInput::Message(data)
    }
}

/// RSA-OAEP binds no additional data: refuse some rather than drop it.
fn refuse_aad(aad: &[u8]) -> Result<(), Status> {
    if aad.is_empty() {
        Ok(())
    } else {
        Err(stanza_error(
            "InvalidArgument: RSA-OAEP binds no additional data; send none (no associated_data or context)",
        ))
    }
}

fn broker_error(e: &sealbroker_core::Error) -> Status {
    operation_error(&to_status(e))
}

#[tonic::async_trait]
impl Kms for KmsService {
    async fn open(&self, request: Request<pb::OpenRequest>) -> Result<Response<pb::OpenResponse>, Status> {
        let config = strings(request.into_inner().config_map, OPEN_KEYS, "config")?;
        let keys = self.wrappers.keys_of(&config, None, "config value").await?;
        let id = new_id()?;
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), keys);
        tracing::info!(kms_id = %id, "external keys config opened");
        Ok(Response::new(pb::OpenResponse { kms_id: id }))
    }

    async fn close(&self, request: Request<pb::CloseRequest>) -> Result<Response<pb::CloseResponse>, Status> {
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request.get_ref().kms_id)
            .ok_or_else(|| Status::not_found("instance not found"))?;
        Ok(Response::new(pb::CloseResponse {}))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let req = request.into_inner();
        let keys = self
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.kms_id)
            .cloned()
            .ok_or_else(|| Status::not_found("instance not found"))?;
        let values = strings(req.config_map, KEY_KEYS, "key")?;
        let name = values
            .get("key")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| stanza_error("key value `key` is missing: name the sealbroker key"))?
            .clone();
        let version = match values.get("version") {
            None => None,
            Some(v) => Some(v.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
                stanza_error(format!(
                    "key value `version` {v:?} is not a key version (1, 2, …)"
                ))
            })?),
        };
        // Learn what the key is now, so a wrong name or a sealing key named
        // for PKI shows when OpenBao configures it.
        let (algorithm, public) = match &keys {
            Keys::Local(broker) => match broker.public_key(&call, &name, version).await {
                Ok(public) => (Some(public.public.algorithm), Some(public.public.spki_der)),
                Err(sealbroker_core::Error::Precondition(_)) => {
                    broker.get_key(&call, &name).map_err(|e| broker_error(&e))?;
                    (None, None)
                }
                Err(e) => return Err(broker_error(&e)),
            },
            Keys::Remote(client) => {
                match client
                    .clone()
                    .get_public_key(sb::GetPublicKeyRequest {
                        key_name: name.clone(),
                        key_version: version.unwrap_or(0),
                    })
                    .await
                {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let algorithm = KeyAlgorithm::parse(&reply.algorithm).ok_or_else(|| {
                            Status::internal(format!("unknown algorithm {:?}", reply.algorithm))
                        })?;
                        (Some(algorithm), Some(reply.spki_der))
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => (None, None),
                    Err(s) => return Err(operation_error(&s)),
                }
            }
        };
        let id = new_id()?;
        tracing::info!(key_id = %id, key = %name, ?version, algorithm = algorithm.map(|a| a.as_str()).unwrap_or("sealing"), "external key opened");
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            Arc::new(OpenKey {
                keys,
                name,
                version,
                algorithm,
                public,
            }),
        );
        Ok(Response::new(pb::GetKeyResponse { key_id: id }))
    }

    async fn close_key(
        &self,
        request: Request<pb::CloseKeyRequest>,
    ) -> Result<Response<pb::CloseKeyResponse>, Status> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request.get_ref().key_id);
        Ok(Response::new(pb::CloseKeyResponse {}))
    }

    async fn sign(&self, request: Request<pb::SignRequest>) -> Result<Response<pb::SignResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let req = request.into_inner();
        let key = self.key(&req.key_id)?;
        let algorithm = key.algorithm.ok_or_else(|| {
            stanza_error(format!(
                "FailedPrecondition: key {:?} is a sealing key; it does not sign",
                key.name
            ))
        })?;
        let scheme = scheme_of(algorithm, req.hash, req.prehashed, req.opts.as_ref())?;
        let signature = match &key.keys {
            Keys::Local(broker) => {
                broker
                    .sign(
                        &call,
                        &key.name,
                        key.version,
                        Some(scheme),
                        input(&req.data, req.prehashed, scheme),
                    )
                    .await
                    .map_err(|e| broker_error(&e))?
                    .signature
            }
            Keys::Remote(client) => {
                client
                    .clone()
                    .sign(sb::SignRequest {
                        key_name: key.name.clone(),
                        key_version: key.version.unwrap_or(0),
                        prehashed: req.prehashed && scheme != SignScheme::Ed25519,
                        data: req.data,
                        scheme: scheme.name(),
                    })
                    .await
                    .map_err(|s| operation_error(&s))?
                    .into_inner()
                    .signature
            }
        };
        Ok(Response::new(pb::SignResponse { signature }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let req = request.into_inner();
        let key = self.key(&req.key_id)?;
        let algorithm = key.algorithm.ok_or_else(|| {
            stanza_error(format!(
                "FailedPrecondition: key {:?} is a sealing key; it does not verify",
                key.name
            ))
        })?;
        let scheme = scheme_of(algorithm, req.hash, req.prehashed, req.opts.as_ref())?;
        let valid = match &key.keys {
            Keys::Local(broker) => {
                broker
                    .verify(
                        &call,
                        &key.name,
                        key.version,
                        Some(scheme),
                        input(&req.data, req.prehashed, scheme),
                        &req.signature,
                    )
                    .await
                    .map_err(|e| broker_error(&e))?
                    .valid
            }
            Keys::Remote(client) => {
                client
                    .clone()
                    .verify(sb::VerifyRequest {
                        key_name: key.name.clone(),
                        key_version: key.version.unwrap_or(0),
                        prehashed: req.prehashed && scheme != SignScheme::Ed25519,
                        data: req.data,
                        scheme: scheme.name(),
                        signature: req.signature,
                    })
                    .await
                    .map_err(|s| operation_error(&s))?
                    .into_inner()
                    .valid
            }
        };
        if valid {
            Ok(Response::new(pb::VerifyResponse {}))
        } else {
            Err(Status::invalid_argument("invalid signature"))
        }
    }

    async fn export_public(
        &self,
        request: Request<pb::ExportPublicRequest>,
    ) -> Result<Response<pb::ExportPublicResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let key = self.key(&request.get_ref().key_id)?;
        if key.algorithm.is_none() {
            return Err(stanza_error(format!(
                "FailedPrecondition: key {:?} is a sealing key; it has no public key",
                key.name
            )));
        }
        // Read afresh when the key follows its primary (it may have rotated).
        let der = match (&key.keys, key.version, &key.public) {
            (_, Some(_), Some(der)) => der.clone(),
            (Keys::Local(broker), _, _) => {
                broker
                    .public_key(&call, &key.name, key.version)
                    .await
                    .map_err(|e| broker_error(&e))?
                    .public
                    .spki_der
            }
            (Keys::Remote(client), _, _) => {
                client
                    .clone()
                    .get_public_key(sb::GetPublicKeyRequest {
                        key_name: key.name.clone(),
                        key_version: key.version.unwrap_or(0),
                    })
                    .await
                    .map_err(|s| operation_error(&s))?
                    .into_inner()
                    .spki_der
            }
        };
        Ok(Response::new(pb::ExportPublicResponse { pkix_asn1_der: der }))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let mut req = request.into_inner();
        let key = self.key(&req.key_id)?;
        let plaintext = SecretBytes::new(std::mem::take(&mut req.data));
        if key.algorithm.is_some() {
            refuse_aad(&req.aad)?;
            let ciphertext = match &key.keys {
                Keys::Local(broker) => {
                    broker
                        .encrypt_asymmetric(&call, &key.name, key.version, plaintext)
                        .await
                        .map_err(|e| broker_error(&e))?
                        .ciphertext
                }
                Keys::Remote(client) => {
                    client
                        .clone()
                        .encrypt_asymmetric(sb::EncryptAsymmetricRequest {
                            key_name: key.name.clone(),
                            key_version: key.version.unwrap_or(0),
                            plaintext: plaintext.into_unprotected_vec(),
                        })
                        .await
                        .map_err(|s| operation_error(&s))?
                        .into_inner()
                        .ciphertext
                }
            };
            return Ok(Response::new(pb::EncryptResponse { ciphertext }));
        }
        let ciphertext = match &key.keys {
            Keys::Local(broker) => {
                broker
                    .wrap(&call, &key.name, plaintext, &req.aad)
                    .await
                    .map_err(|e| broker_error(&e))?
                    .blob
            }
            Keys::Remote(client) => {
                client
                    .clone()
                    .wrap(sb::WrapRequest {
                        key_name: key.name.clone(),
                        plaintext: plaintext.into_unprotected_vec(),
                        aad: req.aad,
                    })
                    .await
                    .map_err(|s| operation_error(&s))?
                    .into_inner()
                    .blob
            }
        };
        Ok(Response::new(pb::EncryptResponse { ciphertext }))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let call = Call::new(Door::KmsPlugin, caller_of(&request));
        let req = request.into_inner();
        let key = self.key(&req.key_id)?;
        if key.algorithm.is_some() {
            refuse_aad(&req.aad)?;
            let plaintext = match &key.keys {
                Keys::Local(broker) => broker
                    .decrypt_asymmetric(&call, &key.name, key.version, &req.data)
                    .await
                    .map_err(|e| broker_error(&e))?
                    .plaintext
                    .into_unprotected_vec(),
                Keys::Remote(client) => {
                    client
                        .clone()
                        .decrypt_asymmetric(sb::DecryptAsymmetricRequest {
                            key_name: key.name.clone(),
                            key_version: key.version.unwrap_or(0),
                            ciphertext: req.data,
                        })
                        .await
                        .map_err(|s| operation_error(&s))?
                        .into_inner()
                        .plaintext
                }
            };
            return Ok(Response::new(pb::DecryptResponse { plaintext }));
        }
        let plaintext = match &key.keys {
            Keys::Local(broker) => broker
                .unwrap(&call, &key.name, &req.data, &req.aad)
                .await
                .map_err(|e| broker_error(&e))?
                .plaintext
                .into_unprotected_vec(),
            Keys::Remote(client) => {
                client
                    .clone()
                    .unwrap(sb::UnwrapRequest {
                        blob: req.data,
                        aad: req.aad,
                        key_name: key.name.clone(),
                    })
                    .await
                    .map_err(|s| operation_error(&s))?
                    .into_inner()
                    .plaintext
            }
        };
        Ok(Response::new(pb::DecryptResponse { plaintext }))
    }
}

#[cfg(test)]
mod tests;
