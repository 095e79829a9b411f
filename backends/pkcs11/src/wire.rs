//! The protocol between the broker and its PKCS#11 helper process.
//!
//! Frames on a socketpair: a 4-byte big-endian body length, then the body.
//! A body is a one-byte tag, an 8-byte request id, then the message's fields
//! in order: byte strings as a 4-byte length and the bytes, optional values
//! behind a 0/1 byte, enums as one byte. Nothing is self-describing, and both
//! ends are the same build, so there is no versioning beyond the tags.
//!
//! Plaintext (data keys going in, opened data keys coming out) and the PIN
//! travel in [`Zeroizing`] buffers, and so do the frames that carry them.
//! The decoder is total: any byte string decodes to a message or to a
//! [`WireError`], never a panic (`fuzz/fuzz_targets/wire_decode.rs`).

use std::io::{Read, Write};

use sealbroker_core::{BackendError, BackendErrorKind};
use zeroize::Zeroizing;

/// Largest frame body either side accepts. Requests carry a 32-byte data key,
/// AAD and an RSA-3072 ciphertext at most; 1 MiB leaves room for long AADs.
pub const MAX_FRAME: usize = 1 << 20;

/// Why bytes are not a valid frame or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is longer than the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    #[error("message ends inside {0}")]
    Truncated(&'static str),
    #[error("unknown {what} {value}")]
    UnknownTag { what: &'static str, value: u8 },
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("a hello carries request id 0, not {0}")]
    HelloId(u64),
}

/// Which key on the token an operation uses: the validated `[keys.NAME]`
/// settings, without anything secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec {
    pub label: Option<String>,
    pub id: Option<Vec<u8>>,
    /// 0 = AES_GCM, 1 = RSA_PKCS_OAEP; [`SIGNING_MECHANISM`] + i = a
    /// signing key pair of `KeyAlgorithm::ALL[i]`.
    pub mechanism: u8,
    /// 0..=4 = sha1, sha224, sha256, sha384, sha512.
    pub oaep_hash: u8,
}

/// Where the helper finds the user PIN.
pub enum PinSpec {
    Inline(Zeroizing<Vec<u8>>),
    File(String),
}

/// Which token the helper opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSpec {
    Label(String),
    Slot(u64),
}

/// Broker to helper.
pub enum Request {
    /// First message on every connection: what the helper serves.
    Hello {
        lib: String,
        token: TokenSpec,
        pin: PinSpec,
        max_sessions: u32,
    },
    Encrypt {
        id: u64,
        key: KeySpec,
        iv: Vec<u8>,
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    },
    Decrypt {
        id: u64,
        key: KeySpec,
        iv: Vec<u8>,
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    },
    /// Create the key (`use_existing`: an existing one is fine, for rotation).
    CreateKey {
        id: u64,
        key: KeySpec,
        use_existing: bool,
    },
    /// Sign `data` (a digest, or for Ed25519 the message) with scheme
    /// `crate::signing::SCHEMES[scheme]`.
    Sign {
        id: u64,
        key: KeySpec,
        scheme: u8,
        data: Zeroizing<Vec<u8>>,
    },
    Verify {
        id: u64,
        key: KeySpec,
        scheme: u8,
        data: Vec<u8>,
        signature: Vec<u8>,
    },
    PublicKey {
        id: u64,
        key: KeySpec,
    },
}

/// The first `KeySpec::mechanism` code of a signing key pair.
pub const SIGNING_MECHANISM: u8 = 16;
/// The first `KeySpec::mechanism` code of an RSA-OAEP encryption key pair
/// with a known size (External Keys).
pub const OAEP_PAIR_MECHANISM: u8 = 32;

/// Helper to broker.
pub enum Response {
    /// Ciphertext, an opened data key, or a description of a created key.
    Ok {
        id: u64,
        data: Zeroizing<Vec<u8>>,
    },
    Err {
        id: u64,
        error: BackendError,
    },
}

impl Response {
    pub fn id(&self) -> u64 {
        match self {
            Response::Ok { id, .. } | Response::Err { id, .. } => *id,
        }
    }
}

const REQ_HELLO: u8 = 1;
const REQ_ENCRYPT: u8 = 2;
const REQ_DECRYPT: u8 = 3;
const REQ_CREATE: u8 = 4;
const REQ_SIGN: u8 = 5;
const REQ_VERIFY: u8 = 6;
const REQ_PUBLIC: u8 = 7;
const RESP_OK: u8 = 0x81;
const RESP_ERR: u8 = 0x82;

fn kind_code(kind: BackendErrorKind) -> u8 {
    match kind {
        BackendErrorKind::Unavailable => 0,
        BackendErrorKind::NotAuthentic => 1,
        BackendErrorKind::KeyNotFound => 2,
        BackendErrorKind::PermissionDenied => 3,
        BackendErrorKind::InvalidInput => 4,
        BackendErrorKind::Timeout => 5,
        BackendErrorKind::Throttled => 6,
        BackendErrorKind::Internal => 7,
    }
}

fn kind_of(code: u8) -> Result<BackendErrorKind, WireError> {
    Ok(match code {
        0 => BackendErrorKind::Unavailable,
        1 => BackendErrorKind::NotAuthentic,
        2 => BackendErrorKind::KeyNotFound,
        3 => BackendErrorKind::PermissionDenied,
        4 => BackendErrorKind::InvalidInput,
        5 => BackendErrorKind::Timeout,
        6 => BackendErrorKind::Throttled,
        7 => BackendErrorKind::Internal,
        value => {
            return Err(WireError::UnknownTag {
                what: "error kind",
                value,
            });
        }
    })
}

/// Appends fields to a body that is zeroed on drop.
struct Writer(Zeroizing<Vec<u8>>);

impl Writer {
    fn new(tag: u8, id: u64) -> Self {
        let mut body = Zeroizing::new(Vec::with_capacity(128));
        body.push(tag);
        body.extend_from_slice(&id.to_be_bytes());
        Writer(body)
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        // Bodies are bounded by MAX_FRAME when sent, so lengths fit in u32;
        // an over-long field makes an over-long frame, refused by `write_frame`.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
            None => self.u8(0),
        }
    }
    fn key(&mut self, key: &KeySpec) {
        self.opt_bytes(key.label.as_deref().map(str::as_bytes));
        self.opt_bytes(key.id.as_deref());
        self.u8(key.mechanism);
        self.u8(key.oaep_hash);
    }
}

/// Reads fields off a body, refusing anything short or malformed.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(out))
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
    fn string(&mut self, what: &'static str) -> Result<String, WireError> {
        std::str::from_utf8(self.bytes(what)?)
            .map(str::to_owned)
            .map_err(|_| WireError::NotUtf8(what))
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::UnknownTag { what, value }),
        }
    }
    fn opt_string(&mut self, what: &'static str) -> Result<Option<String>, WireError> {
        if self.flag(what)? {
            self.string(what).map(Some)
        } else {
            Ok(None)
        }
    }
    fn opt_bytes(&mut self, what: &'static str) -> Result<Option<Vec<u8>>, WireError> {
        if self.flag(what)? {
            self.bytes(what).map(|b| Some(b.to_vec()))
        } else {
            Ok(None)
        }
    }
    fn key(&mut self) -> Result<KeySpec, WireError> {
        let label = self.opt_string("key label")?;
        let id = self.opt_bytes("key id")?;
        let mechanism = self.u8("mechanism")?;
        let signing = SIGNING_MECHANISM..SIGNING_MECHANISM + sealbroker_core::KeyAlgorithm::ALL.len() as u8;
        let oaep_pairs = OAEP_PAIR_MECHANISM..OAEP_PAIR_MECHANISM + 3; // rsa-2048, rsa-3072, rsa-4096
        if mechanism > 1 && !signing.contains(&mechanism) && !oaep_pairs.contains(&mechanism) {
            return Err(WireError::UnknownTag {
                what: "mechanism",
                value: mechanism,
            });
        }
        let oaep_hash = self.u8("OAEP hash")?;
        if oaep_hash > 4 {
            return Err(WireError::UnknownTag {
                what: "OAEP hash",
                value: oaep_hash,
            });
        }
        Ok(KeySpec {
            label,
            id,
            mechanism,
            oaep_hash,
        })
    }
    fn scheme(&mut self) -> Result<u8, WireError> {
        let scheme = self.u8("signature scheme")?;
        match crate::signing::scheme_of(scheme) {
            Some(_) => Ok(scheme),
            None => Err(WireError::UnknownTag {
                what: "signature scheme",
                value: scheme,
            }),
        }
    }
    fn finish(self) -> Result<(), WireError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

impl Request {
    /// The frame body.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        match self {
            Request::Hello {
                lib,
                token,
                pin,
                max_sessions,
            } => {
                let mut w = Writer::new(REQ_HELLO, 0);
                w.bytes(lib.as_bytes());
                match token {
                    TokenSpec::Label(label) => {
                        w.u8(0);
                        w.bytes(label.as_bytes());
                    }
                    TokenSpec::Slot(slot) => {
                        w.u8(1);
                        w.u64(*slot);
                    }
                }
                match pin {
                    PinSpec::Inline(pin) => {
                        w.u8(0);
                        w.bytes(pin);
                    }
                    PinSpec::File(path) => {
                        w.u8(1);
                        w.bytes(path.as_bytes());
                    }
                }
                w.u32(*max_sessions);
                w.0
            }
            Request::Encrypt {
                id,
                key,
                iv,
                aad,
                plaintext,
            } => {
                let mut w = Writer::new(REQ_ENCRYPT, *id);
                w.key(key);
                w.bytes(iv);
                w.bytes(aad);
                w.bytes(plaintext);
                w.0
            }
            Request::Decrypt {
                id,
                key,
                iv,
                aad,
                ciphertext,
            } => {
                let mut w = Writer::new(REQ_DECRYPT, *id);
                w.key(key);
                w.bytes(iv);
                w.bytes(aad);
                w.bytes(ciphertext);
                w.0
            }
            Request::CreateKey {
                id,
                key,
                use_existing,
            } => {
                let mut w = Writer::new(REQ_CREATE, *id);
                w.key(key);
                w.u8(u8::from(*use_existing));
                w.0
            }
            Request::Sign {
                id,
                key,
                scheme,
                data,
            } => {
                let mut w = Writer::new(REQ_SIGN, *id);
                w.key(key);
                w.u8(*scheme);
                w.bytes(data);
                w.0
            }
            Request::Verify {
                id,
                key,
                scheme,
                data,
                signature,
            } => {
                let mut w = Writer::new(REQ_VERIFY, *id);
                w.key(key);
                w.u8(*scheme);
                w.bytes(data);
                w.bytes(signature);
                w.0
            }
            Request::PublicKey { id, key } => {
                let mut w = Writer::new(REQ_PUBLIC, *id);
                w.key(key);
                w.0
            }
        }
    }

    /// Parses a frame body.
    pub fn decode(body: &[u8]) -> Result<Request, WireError> {
        let mut r = Reader(body);
        let tag = r.u8("tag")?;
        let id = r.u64("request id")?;
        let request = match tag {
            REQ_HELLO => {
                // The hello is not a numbered call: only id 0 is canonical.
                if id != 0 {
                    return Err(WireError::HelloId(id));
                }
                let lib = r.string("module path")?;
                let token = match r.u8("token selector")? {
                    0 => TokenSpec::Label(r.string("token label")?),
                    1 => TokenSpec::Slot(r.u64("slot")?),
                    value => {
                        return Err(WireError::UnknownTag {
                            what: "token selector",
                            value,
                        });
                    }
                };
                let pin = match r.u8("PIN source")? {
                    0 => PinSpec::Inline(Zeroizing::new(r.bytes("PIN")?.to_vec())),
                    1 => PinSpec::File(r.string("PIN file")?),
                    value => {
                        return Err(WireError::UnknownTag {
                            what: "PIN source",
                            value,
                        });
                    }
                };
                let max_sessions = r.u32("max_sessions")?;
                Request::Hello {
                    lib,
                    token,
                    pin,
                    max_sessions,
                }
            }
            REQ_ENCRYPT => Request::Encrypt {
                id,
                key: r.key()?,
                iv: r.bytes("IV")?.to_vec(),
                aad: r.bytes("AAD")?.to_vec(),
                plaintext: Zeroizing::new(r.bytes("plaintext")?.to_vec()),
            },
            REQ_DECRYPT => Request::Decrypt {
                id,
                key: r.key()?,
                iv: r.bytes("IV")?.to_vec(),
                aad: r.bytes("AAD")?.to_vec(),
                ciphertext: r.bytes("ciphertext")?.to_vec(),
            },
            REQ_CREATE => Request::CreateKey {
                id,
                key: r.key()?,
                use_existing: r.flag("use_existing")?,
            },
            REQ_SIGN => Request::Sign {
                id,
                key: r.key()?,
                scheme: r.scheme()?,
                data: Zeroizing::new(r.bytes("data to sign")?.to_vec()),
            },
            REQ_VERIFY => Request::Verify {
                id,
                key: r.key()?,
                scheme: r.scheme()?,
                data: r.bytes("signed data")?.to_vec(),
                signature: r.bytes("signature")?.to_vec(),
            },
            REQ_PUBLIC => Request::PublicKey { id, key: r.key()? },
            value => {
                return Err(WireError::UnknownTag {
                    what: "request",
                    value,
                });
            }
        };
        r.finish()?;
        Ok(request)
    }
}

impl Response {
    /// The frame body.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        match self {
            Response::Ok { id, data } => {
                let mut w = Writer::new(RESP_OK, *id);
                w.bytes(data);
                w.0
            }
            Response::Err { id, error } => {
                let mut w = Writer::new(RESP_ERR, *id);
                w.u8(kind_code(error.kind));
                w.bytes(error.message.as_bytes());
                w.0
            }
        }
    }

    /// Parses a frame body.
    pub fn decode(body: &[u8]) -> Result<Response, WireError> {
        let mut r = Reader(body);
        let tag = r.u8("tag")?;
        let id = r.u64("request id")?;
        let response = match tag {
            RESP_OK => Response::Ok {
                id,
                data: Zeroizing::new(r.bytes("data")?.to_vec()),
            },
            RESP_ERR => {
                let kind = kind_of(r.u8("error kind")?)?;
                let message = r.string("error message")?;
                Response::Err {
                    id,
                    error: BackendError::new(kind, message),
                }
            }
            value => {
                return Err(WireError::UnknownTag {
                    what: "response",
                    value,
                });
            }
        };
        r.finish()?;
        Ok(response)
    }
}

/// Writes one frame (length prefix and body) in a single write.
pub fn write_frame(out: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    out.write_all(&frame(body)?)
}

/// The bytes of one frame, zeroed on drop.
pub fn frame(body: &[u8]) -> std::io::Result<Zeroizing<Vec<u8>>> {
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            WireError::TooLong(body.len()),
        ));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(4 + body.len()));
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(body);
    Ok(bytes)
}

/// The body length a frame header announces, refused over [`MAX_FRAME`].
pub fn body_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        Err(WireError::TooLong(len))
    } else {
        Ok(len)
    }
}

/// Reads one frame body; `Ok(None)` at a clean end of stream.
pub fn read_frame(input: &mut impl Read) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = body_len(header).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut body = Zeroizing::new(vec![0u8; len]);
    input.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Splits `bytes` into frames and decodes each as a request or, failing
/// that, a response: the fuzz target's entry point. Returns how many
/// messages decoded.
pub fn decode_stream(mut bytes: &[u8]) -> usize {
    let mut decoded = 0;
    while bytes.len() >= 4 {
        let Ok(len) = body_len([bytes[0], bytes[1], bytes[2], bytes[3]]) else {
            break;
        };
        let Some(body) = bytes.get(4..4 + len) else {
            break;
        };
        if Request::decode(body).is_ok() || Response::decode(body).is_ok() {
            decoded += 1;
        }
        bytes = &bytes[4 + len..];
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeySpec {
        KeySpec {
            label: Some("unseal".into()),
            id: Some(vec![1, 2]),
            mechanism: 0,
            oaep_hash: 2,
        }
    }

    /// Found by the wire_decode fuzz target: a hello with a non-zero
    /// request id decoded, and re-encoded with id 0 (not canonical).
    #[test]
    fn a_hello_with_a_request_id_is_refused() {
        let mut body = Request::Hello {
            lib: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token: TokenSpec::Label("sealbroker".into()),
            pin: PinSpec::File("/etc/pin".into()),
            max_sessions: 8,
        }
        .encode()
        .to_vec();
        body[1..9].copy_from_slice(&0xffff_0000_0000u64.to_be_bytes());
        assert!(matches!(
            Request::decode(&body),
            Err(WireError::HelloId(0xffff_0000_0000))
        ));
    }

    #[test]
    fn every_request_round_trips() {
        let hello = Request::Hello {
            lib: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token: TokenSpec::Slot(7),
            pin: PinSpec::Inline(Zeroizing::new(b"1234".to_vec())),
            max_sessions: 8,
        };
        match Request::decode(&hello.encode()).unwrap() {
            Request::Hello {
                lib,
                token,
                pin: PinSpec::Inline(pin),
                max_sessions,
            } => {
                assert_eq!(lib, "/usr/lib/softhsm/libsofthsm2.so");
                assert_eq!(token, TokenSpec::Slot(7));
                assert_eq!(&pin[..], b"1234");
                assert_eq!(max_sessions, 8);
            }
            _ => panic!("Hello did not round-trip"),
        }
        let hello = Request::Hello {
            lib: "m.so".into(),
            token: TokenSpec::Label("sealbroker".into()),
            pin: PinSpec::File("/etc/pin".into()),
            max_sessions: 1,
        };
        match Request::decode(&hello.encode()).unwrap() {
            Request::Hello {
                token,
                pin: PinSpec::File(path),
                ..
            } => {
                assert_eq!(token, TokenSpec::Label("sealbroker".into()));
                assert_eq!(path, "/etc/pin");
            }
            _ => panic!("Hello with a PIN file did not round-trip"),
        }
        let encrypt = Request::Encrypt {
            id: 42,
            key: key(),
            iv: vec![9; 12],
            aad: b"aad".to_vec(),
            plaintext: Zeroizing::new(vec![7; 32]),
        };
        match Request::decode(&encrypt.encode()).unwrap() {
            Request::Encrypt {
                id,
                key: k,
                iv,
                aad,
                plaintext,
            } => {
                assert_eq!((id, k, iv, aad), (42, key(), vec![9; 12], b"aad".to_vec()));
                assert_eq!(&plaintext[..], &[7; 32]);
            }
            _ => panic!("Encrypt did not round-trip"),
        }
        let decrypt = Request::Decrypt {
            id: u64::MAX,
            key: KeySpec {
                label: None,
                id: None,
                mechanism: 1,
                oaep_hash: 0,
            },
            iv: vec![],
            aad: vec![],
            ciphertext: vec![3; 384],
        };
        match Request::decode(&decrypt.encode()).unwrap() {
            Request::Decrypt {
                id, key, ciphertext, ..
            } => {
                assert_eq!(id, u64::MAX);
                assert_eq!(key.mechanism, 1);
                assert_eq!(key.label, None);
                assert_eq!(ciphertext.len(), 384);
            }
            _ => panic!("Decrypt did not round-trip"),
        }
        // An RSA-OAEP key pair (rsa-2048 .. rsa-4096) travels as 32..=34.
        for mechanism in OAEP_PAIR_MECHANISM..OAEP_PAIR_MECHANISM + 3 {
            let pair = KeySpec { mechanism, ..key() };
            let encrypt = Request::Encrypt {
                id: 3,
                key: pair.clone(),
                iv: vec![],
                aad: vec![],
                plaintext: Zeroizing::new(vec![9; 32]),
            };
            match Request::decode(&encrypt.encode()).unwrap() {
                Request::Encrypt { key, plaintext, .. } => {
                    assert_eq!(key, pair);
                    assert_eq!(&plaintext[..], &[9; 32]);
                }
                _ => panic!("Encrypt on mechanism {mechanism} did not round-trip"),
            }
        }
        let signing_key = KeySpec {
            mechanism: SIGNING_MECHANISM + 3, // ecdsa-p256
            ..key()
        };
        let sign = Request::Sign {
            id: 7,
            key: signing_key.clone(),
            scheme: 6,
            data: Zeroizing::new(vec![5; 32]),
        };
        match Request::decode(&sign.encode()).unwrap() {
            Request::Sign {
                id,
                key,
                scheme,
                data,
            } => {
                assert_eq!((id, key, scheme), (7, signing_key.clone(), 6));
                assert_eq!(&data[..], &[5; 32]);
            }
            _ => panic!("Sign did not round-trip"),
        }
        let verify = Request::Verify {
            id: 8,
            key: signing_key.clone(),
            scheme: 9,
            data: b"message".to_vec(),
            signature: vec![1; 64],
        };
        match Request::decode(&verify.encode()).unwrap() {
            Request::Verify {
                id,
                scheme,
                data,
                signature,
                ..
            } => {
                assert_eq!(
                    (id, scheme, data, signature),
                    (8, 9, b"message".to_vec(), vec![1; 64])
                );
            }
            _ => panic!("Verify did not round-trip"),
        }
        assert!(matches!(
            Request::decode(
                &Request::PublicKey {
                    id: 9,
                    key: signing_key
                }
                .encode()
            )
            .unwrap(),
            Request::PublicKey { id: 9, .. }
        ));
        let create = Request::CreateKey {
            id: 3,
            key: key(),
            use_existing: true,
        };
        assert!(matches!(
            Request::decode(&create.encode()).unwrap(),
            Request::CreateKey {
                id: 3,
                use_existing: true,
                ..
            }
        ));
    }

    #[test]
    fn every_response_round_trips() {
        let ok = Response::Ok {
            id: 5,
            data: Zeroizing::new(b"ct".to_vec()),
        };
        match Response::decode(&ok.encode()).unwrap() {
            Response::Ok { id, data } => assert_eq!((id, &data[..]), (5, &b"ct"[..])),
            Response::Err { .. } => panic!("Ok decoded as Err"),
        }
        for kind in [
            BackendErrorKind::Unavailable,
            BackendErrorKind::NotAuthentic,
            BackendErrorKind::KeyNotFound,
            BackendErrorKind::PermissionDenied,
            BackendErrorKind::InvalidInput,
            BackendErrorKind::Timeout,
            BackendErrorKind::Throttled,
            BackendErrorKind::Internal,
        ] {
            let err = Response::Err {
                id: 6,
                error: BackendError::new(kind, "C_Encrypt failed"),
            };
            match Response::decode(&err.encode()).unwrap() {
                Response::Err { id, error } => {
                    assert_eq!(id, 6);
                    assert_eq!(error.kind, kind);
                    assert_eq!(error.message, "C_Encrypt failed");
                }
                Response::Ok { .. } => panic!("Err decoded as Ok"),
            }
        }
    }

    #[test]
    fn decode_refuses_every_truncation_and_trailing_bytes() {
        let body = Request::Encrypt {
            id: 1,
            key: key(),
            iv: vec![0; 12],
            aad: vec![1; 5],
            plaintext: Zeroizing::new(vec![2; 32]),
        }
        .encode();
        for cut in 0..body.len() {
            assert!(
                matches!(Request::decode(&body[..cut]), Err(WireError::Truncated(_))),
                "a body cut at {cut} of {} bytes must be refused as truncated",
                body.len()
            );
        }
        let mut long = body.to_vec();
        long.push(0);
        assert_eq!(Request::decode(&long).err(), Some(WireError::Trailing(1)));
    }

    #[test]
    fn decode_names_unknown_tags_and_bad_utf8() {
        assert_eq!(
            Request::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).err(),
            Some(WireError::UnknownTag {
                what: "request",
                value: 9
            })
        );
        let mut body = Response::Err {
            id: 1,
            error: BackendError::internal("x"),
        }
        .encode()
        .to_vec();
        body[9] = 8; // error kind
        assert_eq!(
            Response::decode(&body).err(),
            Some(WireError::UnknownTag {
                what: "error kind",
                value: 8
            })
        );
        let mut bad_mech = Request::CreateKey {
            id: 1,
            key: key(),
            use_existing: false,
        }
        .encode()
        .to_vec();
        let at = bad_mech.len() - 3; // mechanism, oaep hash, use_existing
        bad_mech[at] = 2;
        assert_eq!(
            Request::decode(&bad_mech).err(),
            Some(WireError::UnknownTag {
                what: "mechanism",
                value: 2
            })
        );
        for unknown in [
            SIGNING_MECHANISM - 1,
            SIGNING_MECHANISM + 6,
            OAEP_PAIR_MECHANISM - 1,
            OAEP_PAIR_MECHANISM + 3,
        ] {
            bad_mech[at] = unknown;
            assert_eq!(
                Request::decode(&bad_mech).err(),
                Some(WireError::UnknownTag {
                    what: "mechanism",
                    value: unknown
                })
            );
        }
        let mut bad_scheme = Request::Sign {
            id: 1,
            key: key(),
            scheme: 0,
            data: Zeroizing::new(vec![]),
        }
        .encode()
        .to_vec();
        let at = bad_scheme.len() - 5; // scheme, then the empty data's length
        bad_scheme[at] = 10;
        assert_eq!(
            Request::decode(&bad_scheme).err(),
            Some(WireError::UnknownTag {
                what: "signature scheme",
                value: 10
            })
        );
        let mut w = Writer::new(REQ_HELLO, 0);
        w.bytes(&[0xff, 0xfe]);
        assert_eq!(
            Request::decode(&w.0).err(),
            Some(WireError::NotUtf8("module path"))
        );
    }

    #[test]
    fn frames_round_trip_and_refuse_oversized_lengths() {
        let mut stream = Vec::new();
        write_frame(&mut stream, b"one").unwrap();
        write_frame(&mut stream, b"").unwrap();
        let mut input = stream.as_slice();
        assert_eq!(&read_frame(&mut input).unwrap().unwrap()[..], b"one");
        assert_eq!(&read_frame(&mut input).unwrap().unwrap()[..], b"");
        assert!(read_frame(&mut input).unwrap().is_none(), "clean end of stream");

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let err = read_frame(&mut huge.as_slice()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(write_frame(&mut Vec::new(), &vec![0; MAX_FRAME + 1]).is_err());

        let mut cut = Vec::new();
        write_frame(&mut cut, b"abcdef").unwrap();
        cut.truncate(7);
        let err = read_frame(&mut cut.as_slice()).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "a body cut short is an error, not an end"
        );
    }

    #[test]
    fn every_fuzz_seed_decodes_and_re_encodes_to_its_bytes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/wire_decode");
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let body = std::fs::read(entry.unwrap().path()).unwrap();
            let again = match (Request::decode(&body), Response::decode(&body)) {
                (Ok(request), _) => request.encode(),
                (_, Ok(response)) => response.encode(),
                (Err(e), Err(_)) => panic!("a seed does not decode: {e}"),
            };
            assert_eq!(&again[..], &body[..]);
            seeds += 1;
        }
        assert_eq!(seeds, 10, "one seed per message shape in {}", dir.display());
    }

    #[test]
    fn decode_stream_counts_valid_messages_and_survives_garbage() {
        let mut stream = Vec::new();
        write_frame(
            &mut stream,
            &Response::Ok {
                id: 1,
                data: Zeroizing::new(vec![]),
            }
            .encode(),
        )
        .unwrap();
        write_frame(&mut stream, b"\xff garbage").unwrap();
        write_frame(
            &mut stream,
            &Request::CreateKey {
                id: 2,
                key: key(),
                use_existing: false,
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(decode_stream(&stream), 2);
        assert_eq!(decode_stream(&[0xff, 0xff, 0xff, 0xff, 1]), 0);
        assert_eq!(decode_stream(&[0, 0, 0, 9, 1]), 0);
    }
}
