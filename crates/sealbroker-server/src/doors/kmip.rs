//! The KMIP front door: KMIP 1.2 to 2.0 over mutual TLS, so KMIP clients
//! (PyKMIP, and in later increments OpenBao's `seal "kmip"`) reach
//! sealbroker keys. See docs/kmip-server.md.
//!
//! A thin adapter like every door: it frames and decodes a request
//! ([`message`]), names the caller from its client certificate (the same
//! principals as the gRPC door's), asks the one [`Broker`] which keys that
//! caller may use, and encodes the answer. It holds no keys and no policy.
//!
//! Sealbroker keys appear as Symmetric Key objects whose Unique Identifier
//! is the key's name: stable across restarts, replicas and rotations.
//! Encrypt and Decrypt are the broker's Wrap and Unwrap, offered as AES-GCM:
//! the ciphertext is a sealbroker blob bound to the IV and additional data
//! (see [`message::sealed_aad`]), so it survives rotation and opens on any
//! replica. Key material never leaves: Get and Export are refused with
//! Permission Denied, and operations that would make, change or destroy
//! keys with Operation Not Supported. A key the caller may not see answers
//! exactly as a key that does not exist.

pub mod message;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sealbroker_core::{BackendErrorKind, Error, KeyAlgorithm, KeyInfo, OaepHash, SecretBytes};
use sealbroker_ttlv::{DecodeError, HEADER_LEN, Item, ProtocolVersion, ResultReason, enums, operation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::Connected;
use zeroize::Zeroizing;

use self::message::{
    BadRequest, KeyAttributes, OnError, Outcome, Refusal, Request, ResponseItem, SUPPORTED, ServerFacts,
};
use crate::broker::Broker;
use crate::broker::caller::{Call, Caller, Door};
use crate::broker::signing::KeyShape;
use crate::net::listen::ServeError;
use crate::net::tls::ServerConn;

/// The operations the door answers with success; Query Operations lists them.
pub const OPERATIONS: [u32; 7] = [
    operation::DISCOVER_VERSIONS,
    operation::QUERY,
    operation::LOCATE,
    operation::GET_ATTRIBUTES,
    operation::GET_ATTRIBUTE_LIST,
    operation::ENCRYPT,
    operation::DECRYPT,
];

/// The KMIP door over one broker.
pub struct KmipDoor {
    broker: Arc<Broker>,
}

impl KmipDoor {
    pub fn new(broker: Arc<Broker>) -> Self {
        KmipDoor { broker }
    }

    /// Serves the connections `listen_tcp` hands over (mutual TLS done)
    /// until `stop`.
    pub async fn serve(
        self: Arc<Self>,
        mut conns: mpsc::Receiver<ServerConn>,
        stop: watch::Receiver<bool>,
    ) -> Result<(), ServeError> {
        let mut stopped = stop.clone();
        loop {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return Ok(()),
                conn = conns.recv() => match conn {
                    Some(conn) => {
                        tokio::spawn(self.clone().serve_connection(conn, stop.clone()));
                    }
                    None => return Ok(()),
                },
            }
        }
    }

    /// One connection: requests answered in turn until the client closes,
    /// the idle timeout (the accept loop's) fires, or the daemon stops.
    async fn serve_connection(self: Arc<Self>, mut conn: ServerConn, mut stop: watch::Receiver<bool>) {
        let info = conn.connect_info();
        // The listener requires a client certificate, so this holds; a
        // connection without one is closed rather than served anonymously.
        let Some(fingerprint) = info.client_fingerprint.clone() else {
            tracing::warn!(peer = %info.remote_addr, "KMIP connection without a client certificate; closed");
            return;
        };
        let call = Call::new(
            Door::Kmip,
            Caller::Tls {
                fingerprint,
                names: info.client_names.clone(),
            },
        );
        loop {
            let mut header = [0u8; HEADER_LEN];
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                read = conn.read_exact(&mut header) => if read.is_err() { return },
            }
            let len = match sealbroker_ttlv::message_len(&header) {
                Ok(len) => len,
                Err(e) => {
                    // The framing is lost: answer once, then close.
                    let answer = self.refuse_unreadable(&e);
                    let _ = conn.write_all(&answer).await;
                    let _ = conn.shutdown().await;
                    return;
                }
            };
            let mut bytes = Zeroizing::new(vec![0u8; len]);
            bytes[..HEADER_LEN].copy_from_slice(&header);
            if conn.read_exact(&mut bytes[HEADER_LEN..]).await.is_err() {
                return;
            }
            let answer = self.answer(&call, &bytes).await;
            if conn.write_all(&answer).await.is_err() || conn.flush().await.is_err() {
                return;
            }
        }
    }

    /// Answers one request message (its bytes, header included) from `call`.
    /// Never fails: whatever arrives gets a KMIP response.
    pub async fn answer(&self, call: &Call, bytes: &[u8]) -> Zeroizing<Vec<u8>> {
        let decoded = Item::decode(bytes).map_err(|e| BadRequest {
            version: None,
            refusal: Refusal::invalid(format!("the request is not valid TTLV: {e}")),
        });
        let (version, limit, items) = match decoded.and_then(|item| message::parse_request(&item)) {
            Ok(request) => (
                request.version,
                request.max_response_size,
                self.run(call, &request).await,
            ),
            Err(bad) => {
                tracing::info!(door = "kmip", caller = %call.caller, reason = %bad.refusal.reason, message = %bad.refusal.message, "KMIP request refused");
                (
                    bad.version.unwrap_or(ProtocolVersion::V1_2),
                    None,
                    vec![ResponseItem {
                        operation: None,
                        id: None,
                        outcome: Outcome::Failed(bad.refusal),
                    }],
                )
            }
        };
        encode(version, limit, &items)
    }

    /// A response to bytes whose framing could not be read.
    fn refuse_unreadable(&self, error: &DecodeError) -> Zeroizing<Vec<u8>> {
        encode(
            ProtocolVersion::V1_2,
            None,
            &[ResponseItem {
                operation: None,
                id: None,
                outcome: Outcome::Failed(Refusal::invalid(format!(
                    "the request is not valid TTLV: {error}"
                ))),
            }],
        )
    }

    /// Runs each batch item, honouring the Batch Error Continuation Option.
    async fn run(&self, call: &Call, request: &Request) -> Vec<ResponseItem> {
        let mut answers: Vec<ResponseItem> = Vec::with_capacity(request.items.len());
        for item in &request.items {
            let outcome = match self
                .operate(call, request.version, item.operation, &item.payload)
                .await
            {
                Ok(payload) => Outcome::Success(payload),
                Err(refusal) => {
                    tracing::info!(
                        door = "kmip",
                        caller = %call.caller,
                        operation = operation::name(item.operation).unwrap_or("unknown"),
                        reason = %refusal.reason,
                        message = %refusal.message,
                        "KMIP operation refused"
                    );
                    Outcome::Failed(refusal)
                }
            };
            let failed = matches!(outcome, Outcome::Failed(_));
            answers.push(ResponseItem {
                operation: Some(item.operation),
                id: item.id.clone(),
                outcome,
            });
            if failed && request.on_error != OnError::Continue {
                if request.on_error == OnError::Undo {
                    // Nothing the door does changes state (an Encrypt's
                    // blob is only returned), so undoing is only saying so.
                    let done = answers.len() - 1;
                    for earlier in &mut answers[..done] {
                        earlier.outcome = Outcome::Undone;
                    }
                }
                break;
            }
        }
        answers
    }

    async fn operate(
        &self,
        call: &Call,
        version: ProtocolVersion,
        op: u32,
        payload: &[sealbroker_ttlv::Item],
    ) -> Result<Vec<sealbroker_ttlv::Item>, Refusal> {
        if op != operation::DISCOVER_VERSIONS && !SUPPORTED.contains(&version) {
            return Err(Refusal::invalid(format!(
                "protocol version {version} is not supported; this server speaks {} (ask with Discover Versions)",
                SUPPORTED.map(|v| v.to_string()).join(", ")
            )));
        }
        match op {
            operation::DISCOVER_VERSIONS => message::discover_versions(payload),
            operation::QUERY => message::query(
                payload,
                &ServerFacts {
                    operations: &OPERATIONS,
                    vendor: "sealbroker",
                    server_information: concat!("sealbroker ", env!("CARGO_PKG_VERSION")),
                },
            ),
            operation::LOCATE => {
                let locate = message::parse_locate(payload)?;
                let found: Vec<String> = self
                    .broker
                    .list_keys(call)
                    .iter()
                    .flat_map(|info| self.objects_of(info))
                    .map(|object| object.attributes())
                    .filter(|key| locate.matches(key))
                    .map(|key| key.unique_identifier)
                    .collect();
                Ok(message::locate_response(version, &locate, &found))
            }
            operation::GET_ATTRIBUTES => {
                let request = message::parse_get_attributes(payload)?;
                let key = self.key(call, &request.unique_identifier)?;
                Ok(message::get_attributes_response(
                    version,
                    &key,
                    &request.selectors,
                ))
            }
            operation::GET_ATTRIBUTE_LIST => {
                let unique_identifier = message::unique_identifier(payload)?;
                let key = self.key(call, &unique_identifier)?;
                Ok(message::get_attribute_list_response(version, &key))
            }
            operation::ENCRYPT => {
                let uid = message::unique_identifier(payload)?;
                match self.crypt_object(call, &uid)? {
                    KmipObject::Sealing(_) => self.seal(call, version, payload).await,
                    KmipObject::PrivateKey { name, hash, .. } | KmipObject::PublicKey { name, hash, .. } => {
                        let data = self.rsa_data(call, &name, hash, &uid, payload)?;
                        let sealed = self
                            .broker
                            .encrypt_asymmetric(call, &name, None, SecretBytes::copy_from(&data))
                            .await
                            .map_err(|e| rsa_refusal(&uid, "encrypt with", e))?;
                        Ok(message::encrypt_response(
                            version,
                            &uid,
                            &sealed.ciphertext,
                            None,
                            None,
                        ))
                    }
                }
            }
            operation::DECRYPT => {
                let uid = message::unique_identifier(payload)?;
                match self.crypt_object(call, &uid)? {
                    KmipObject::Sealing(_) => self.open(call, payload).await,
                    KmipObject::PublicKey { name, .. } if self.broker.get_key(call, &name).is_ok() => {
                        Err(Refusal::new(
                            ResultReason::ILLEGAL_OPERATION,
                            format!(
                                "{uid:?} is a public key, which only encrypts; decrypt with its private key {name:?}"
                            ),
                        ))
                    }
                    KmipObject::PrivateKey { name, hash, .. } | KmipObject::PublicKey { name, hash, .. } => {
                        let data = self.rsa_data(call, &name, hash, &uid, payload)?;
                        let opened = self
                            .broker
                            .decrypt_asymmetric(call, &name, None, &data)
                            .await
                            .map_err(|e| rsa_refusal(&uid, "decrypt with", e))?;
                        Ok(message::decrypt_response(
                            &uid,
                            Zeroizing::new(opened.plaintext.into_unprotected_vec()),
                        ))
                    }
                }
            }
            other => Err(refusal_of(other)),
        }
    }

    /// An AES-GCM Encrypt: the broker's Wrap, bound to the IV and AAD.
    async fn seal(
        &self,
        call: &Call,
        version: ProtocolVersion,
        payload: &[sealbroker_ttlv::Item],
    ) -> Result<Vec<sealbroker_ttlv::Item>, Refusal> {
        let request = message::parse_crypt(payload, false)?;
        let uid = request.unique_identifier.as_str();
        let made_iv = match request.iv {
            Some(_) => None,
            None => Some(random_iv()?),
        };
        let iv = request.iv.as_deref().or(made_iv.as_deref()).unwrap_or_default();
        let plaintext = SecretBytes::copy_from(&request.data);
        let wrapped = self
            .broker
            .wrap(call, uid, plaintext, &message::sealed_aad(iv, &request.aad))
            .await
            .map_err(|e| crypt_refusal(uid, "encrypt with", e))?;
        Ok(message::encrypt_response(
            version,
            uid,
            &wrapped.blob,
            made_iv.as_deref(),
            request.tag_length,
        ))
    }

    /// An AES-GCM Decrypt: the broker's Unwrap.
    async fn open(
        &self,
        call: &Call,
        payload: &[sealbroker_ttlv::Item],
    ) -> Result<Vec<sealbroker_ttlv::Item>, Refusal> {
        let request = message::parse_crypt(payload, true)?;
        let uid = request.unique_identifier.as_str();
        let iv = request.iv.as_deref().unwrap_or_default();
        let blob = message::blob_of(&request);
        let opened = self
            .broker
            .unwrap(call, uid, &blob, &message::sealed_aad(iv, &request.aad))
            .await
            .map_err(|e| crypt_refusal(uid, "decrypt with", e))?;
        Ok(message::decrypt_response(
            uid,
            Zeroizing::new(opened.plaintext.into_unprotected_vec()),
        ))
    }

    /// The KMIP objects a sealbroker key shows as: a sealing key is one
    /// Symmetric Key; an RSA encryption key pair a Private Key and its
    /// Public Key, linked; a signing key pair nothing (the door does not
    /// sign).
    fn objects_of(&self, info: &KeyInfo) -> Vec<KmipObject> {
        match self.broker.key_shape(&info.name) {
            Ok(KeyShape::Sealing) => vec![KmipObject::Sealing(info.name.clone())],
            Ok(KeyShape::Encryption(algorithm, hash)) => {
                let pair = |public| KmipObject::pair(&info.name, algorithm, hash, public);
                vec![pair(false), pair(true)]
            }
            Ok(KeyShape::Signing(_)) | Err(_) => Vec::new(),
        }
    }

    /// The object `unique_identifier` names, without an ACL check: a key's
    /// name, or `NAME/public` for an encryption key pair's public key. A
    /// key with that exact name wins over a pair's public key. `Err` holds
    /// the name of a signing key pair it names, which the door does not
    /// serve, or `None`.
    fn resolve(&self, unique_identifier: &str) -> Result<KmipObject, Option<String>> {
        match self.broker.key_shape(unique_identifier) {
            Ok(KeyShape::Sealing) => Ok(KmipObject::Sealing(unique_identifier.to_owned())),
            Ok(KeyShape::Encryption(algorithm, hash)) => {
                Ok(KmipObject::pair(unique_identifier, algorithm, hash, false))
            }
            Ok(KeyShape::Signing(_)) => Err(Some(unique_identifier.to_owned())),
            Err(_) => match unique_identifier
                .strip_suffix(PUBLIC_SUFFIX)
                .map(|name| (name, self.broker.key_shape(name)))
            {
                Some((name, Ok(KeyShape::Encryption(algorithm, hash)))) => {
                    Ok(KmipObject::pair(name, algorithm, hash, true))
                }
                _ => Err(None),
            },
        }
    }

    /// The refusal for a Unique Identifier that names nothing the door
    /// serves: a signing key pair the caller may see is named as one;
    /// anything else reads as `otherwise`, so names cannot be probed.
    fn unserved(&self, call: &Call, signing: Option<String>, otherwise: Refusal) -> Refusal {
        match signing {
            Some(name) if self.broker.get_key(call, &name).is_ok() => signing_pair_refusal(&name),
            _ => otherwise,
        }
    }

    /// The object `unique_identifier` names, when the caller may see it. An
    /// unknown object and one the caller may not see read the same.
    fn visible(&self, call: &Call, unique_identifier: &str) -> Result<KmipObject, Refusal> {
        let not_found = || {
            Refusal::new(
                ResultReason::ITEM_NOT_FOUND,
                format!("no object with Unique Identifier {unique_identifier:?} that this client may use"),
            )
        };
        let object = self
            .resolve(unique_identifier)
            .map_err(|signing| self.unserved(call, signing, not_found()))?;
        match self.broker.get_key(call, object.key_name()) {
            Ok(_) => Ok(object),
            Err(Error::UnknownKey(_) | Error::PermissionDenied { .. }) => Err(not_found()),
            Err(e) => Err(Refusal::new(ResultReason::GENERAL_FAILURE, e.to_string())),
        }
    }

    /// The object an Encrypt or Decrypt names. Anything that is not a key
    /// pair goes to the broker as a sealing key, so a caller without the
    /// grant, or naming nothing, is refused (and audited) by the broker's
    /// own check; only a caller who may see a signing key pair is told
    /// that it is one.
    fn crypt_object(&self, call: &Call, unique_identifier: &str) -> Result<KmipObject, Refusal> {
        match self.resolve(unique_identifier) {
            Ok(object) => Ok(object),
            Err(Some(name)) if self.broker.get_key(call, &name).is_ok() => Err(signing_pair_refusal(&name)),
            Err(_) => Ok(KmipObject::Sealing(unique_identifier.to_owned())),
        }
    }

    /// The Data of an RSA-OAEP request, its parameters checked against the
    /// key, for a caller who may see the key; for any other caller none,
    /// so the broker's check refuses (and audits) before the request's
    /// shape is judged.
    fn rsa_data(
        &self,
        call: &Call,
        name: &str,
        hash: OaepHash,
        unique_identifier: &str,
        payload: &[sealbroker_ttlv::Item],
    ) -> Result<Zeroizing<Vec<u8>>, Refusal> {
        if self.broker.get_key(call, name).is_ok() {
            message::parse_rsa_crypt(payload, hash, unique_identifier)
        } else {
            Ok(Zeroizing::new(Vec::new()))
        }
    }

    fn key(&self, call: &Call, unique_identifier: &str) -> Result<KeyAttributes, Refusal> {
        self.visible(call, unique_identifier)
            .map(|object| object.attributes())
    }
}

/// Why a signing key pair is not a KMIP object.
fn signing_pair_refusal(name: &str) -> Refusal {
    Refusal::new(
        ResultReason::ITEM_NOT_FOUND,
        format!(
            "{name:?} is a signing key pair; sealbroker's KMIP door serves sealing keys and RSA encryption key pairs (sign through the gRPC door)"
        ),
    )
}

/// The suffix of an encryption key pair's public key's Unique Identifier.
pub const PUBLIC_SUFFIX: &str = "/public";

/// A KMIP object: what a sealbroker key shows as.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KmipObject {
    /// A sealing key, as an AES-256 Symmetric Key.
    Sealing(String),
    /// An RSA encryption key pair's private key: decrypts (and encrypts).
    PrivateKey { name: String, bits: u32, hash: OaepHash },
    /// Its public key, `NAME/public`: encrypts.
    PublicKey { name: String, bits: u32, hash: OaepHash },
}

impl KmipObject {
    fn pair(name: &str, algorithm: KeyAlgorithm, hash: OaepHash, public: bool) -> KmipObject {
        let name = name.to_owned();
        let bits = algorithm.rsa_bits().unwrap_or_default();
        if public {
            KmipObject::PublicKey { name, bits, hash }
        } else {
            KmipObject::PrivateKey { name, bits, hash }
        }
    }

    /// The sealbroker key behind it.
    fn key_name(&self) -> &str {
        match self {
            KmipObject::Sealing(name)
            | KmipObject::PrivateKey { name, .. }
            | KmipObject::PublicKey { name, .. } => name,
        }
    }

    fn attributes(&self) -> KeyAttributes {
        match self {
            KmipObject::Sealing(name) => attributes_of_sealing(name),
            KmipObject::PrivateKey { name, bits, .. } => KeyAttributes {
                unique_identifier: name.clone(),
                name: name.clone(),
                object_type: enums::OBJECT_TYPE_PRIVATE_KEY,
                algorithm: enums::ALGORITHM_RSA,
                length: i32::try_from(*bits).unwrap_or(i32::MAX),
                usage: enums::USAGE_DECRYPT,
                state: enums::STATE_ACTIVE,
                link: Some((enums::LINK_PUBLIC_KEY, format!("{name}{PUBLIC_SUFFIX}"))),
            },
            KmipObject::PublicKey { name, bits, .. } => KeyAttributes {
                unique_identifier: format!("{name}{PUBLIC_SUFFIX}"),
                name: format!("{name}{PUBLIC_SUFFIX}"),
                object_type: enums::OBJECT_TYPE_PUBLIC_KEY,
                algorithm: enums::ALGORITHM_RSA,
                length: i32::try_from(*bits).unwrap_or(i32::MAX),
                usage: enums::USAGE_ENCRYPT,
                state: enums::STATE_ACTIVE,
                link: Some((enums::LINK_PRIVATE_KEY, name.clone())),
            },
        }
    }
}

/// How a sealbroker key looks over KMIP. The algorithm and length describe
/// the envelope cipher the broker applies for the key (AES-256-GCM data
/// keys), not the backend key behind it, which KMIP clients never touch.
fn attributes_of_sealing(name: &str) -> KeyAttributes {
    KeyAttributes {
        unique_identifier: name.to_owned(),
        name: name.to_owned(),
        object_type: enums::OBJECT_TYPE_SYMMETRIC_KEY,
        algorithm: enums::ALGORITHM_AES,
        length: 256,
        usage: enums::USAGE_ENCRYPT | enums::USAGE_DECRYPT,
        state: enums::STATE_ACTIVE,
        link: None,
    }
}

/// The refusal for an operation the door does not answer.
fn refusal_of(op: u32) -> Refusal {
    let name = operation::name(op).unwrap_or("this operation");
    match op {
        operation::GET | operation::EXPORT => Refusal::new(
            ResultReason::PERMISSION_DENIED,
            format!("{name}: key material never leaves sealbroker"),
        ),
        operation::CREATE
        | operation::CREATE_KEY_PAIR
        | operation::REGISTER
        | operation::REKEY
        | operation::REKEY_KEY_PAIR
        | operation::DERIVE_KEY
        | operation::IMPORT => Refusal::new(
            ResultReason::OPERATION_NOT_SUPPORTED,
            format!("{name}: sealbroker keys are configured in the broker ([keys.NAME]), not made over KMIP"),
        ),
        operation::DESTROY
        | operation::REVOKE
        | operation::ACTIVATE
        | operation::ARCHIVE
        | operation::RECOVER
        | operation::ADD_ATTRIBUTE
        | operation::MODIFY_ATTRIBUTE
        | operation::DELETE_ATTRIBUTE
        | operation::SET_ATTRIBUTE => Refusal::new(
            ResultReason::OPERATION_NOT_SUPPORTED,
            format!(
                "{name}: a sealbroker key's lifecycle is managed in the broker (config, `sealbroker keys`), not over KMIP"
            ),
        ),
        _ => match operation::name(op) {
            Some(name) => Refusal::new(
                ResultReason::OPERATION_NOT_SUPPORTED,
                format!("{name} is not supported by sealbroker's KMIP door"),
            ),
            None => Refusal::new(
                ResultReason::OPERATION_NOT_SUPPORTED,
                format!("operation 0x{op:X} is not a KMIP operation sealbroker knows"),
            ),
        },
    }
}

/// A fresh GCM IV for an Encrypt that brought none.
fn random_iv() -> Result<Vec<u8>, Refusal> {
    use ring::rand::SecureRandom;
    let mut iv = vec![0u8; message::GCM_IV_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut iv)
        .map_err(|_| Refusal::new(ResultReason::GENERAL_FAILURE, "no randomness for an IV"))?;
    Ok(iv)
}

/// The refusal for a failed Encrypt or Decrypt. Every way a ciphertext can
/// fail to open (tampered, cut, another key's, another IV or additional
/// data) reads the same, so a client learns nothing from which it was.
fn crypt_refusal(unique_identifier: &str, doing: &str, error: Error) -> Refusal {
    match error {
        Error::UnknownKey(_) => Refusal::new(
            ResultReason::ITEM_NOT_FOUND,
            format!("no object with Unique Identifier {unique_identifier:?}"),
        ),
        Error::PermissionDenied { .. } => Refusal::new(
            ResultReason::PERMISSION_DENIED,
            format!("this client may not {doing} {unique_identifier:?}"),
        ),
        Error::NotAuthentic
        | Error::MalformedBlob(_)
        | Error::WrongKey { .. }
        | Error::UnknownKeyVersion { .. } => Refusal::new(
            ResultReason::CRYPTOGRAPHIC_FAILURE,
            format!("the data, IV, tag or additional data is not authentic under {unique_identifier:?}"),
        ),
        Error::VersionRetired { .. } => {
            Refusal::new(ResultReason::WRONG_KEY_LIFECYCLE_STATE, error.to_string())
        }
        Error::PayloadTooLarge { .. } | Error::InvalidArgument { .. } => {
            Refusal::new(ResultReason::INVALID_FIELD, error.to_string())
        }
        other => Refusal::new(ResultReason::GENERAL_FAILURE, other.to_string()),
    }
}

/// The refusal for a failed RSA-OAEP Encrypt or Decrypt. A ciphertext
/// that does not decrypt is a Cryptographic Failure however it failed; a
/// plaintext too long for the key is an Invalid Field.
fn rsa_refusal(unique_identifier: &str, doing: &str, error: Error) -> Refusal {
    match error {
        Error::Backend { ref source, .. }
            if matches!(
                source.kind,
                BackendErrorKind::NotAuthentic | BackendErrorKind::InvalidInput
            ) =>
        {
            if doing.starts_with("decrypt") {
                Refusal::new(
                    ResultReason::CRYPTOGRAPHIC_FAILURE,
                    format!("the data does not decrypt under {unique_identifier:?} (RSA-OAEP)"),
                )
            } else {
                Refusal::new(
                    ResultReason::INVALID_FIELD,
                    format!(
                        "{unique_identifier:?} cannot encrypt this Data with RSA-OAEP: {}",
                        source.message
                    ),
                )
            }
        }
        other => crypt_refusal(unique_identifier, doing, other),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Encodes a response; one too large or deep for the codec, or larger than
/// the request's Maximum Response Size, becomes a Response Too Large
/// failure instead.
fn encode(version: ProtocolVersion, limit: Option<usize>, items: &[ResponseItem]) -> Zeroizing<Vec<u8>> {
    let encoded = message::response(version, now(), items)
        .encode()
        .map_err(|e| format!("the response cannot be encoded: {e}"))
        .and_then(|bytes| match limit {
            Some(limit) if bytes.len() > limit => Err(format!(
                "the response is {} bytes, more than the Maximum Response Size of {limit}",
                bytes.len()
            )),
            _ => Ok(bytes),
        });
    match encoded {
        Ok(bytes) => bytes,
        Err(why) => {
            let refused: Vec<ResponseItem> = items
                .iter()
                .map(|item| ResponseItem {
                    operation: item.operation,
                    id: item.id.clone(),
                    outcome: Outcome::Failed(Refusal::new(ResultReason::RESPONSE_TOO_LARGE, why.clone())),
                })
                .collect();
            message::response(version, now(), &refused)
                .encode()
                .unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests;
