//! The Cloud KMS backend driven through the real `google-cloud-kms-v1` client
//! against a local stand-in that speaks the documented REST surface over TLS:
//! `POST /v1/{cryptoKey}:encrypt` (or on a `cryptoKeyVersions/N`),
//! `POST /v1/{cryptoKey}:decrypt`, `GET /v1/{cryptoKey}`,
//! `POST /v1/{cryptoKey}/cryptoKeyVersions`, `GET` of a version, Google's JSON
//! error body, and an OAuth token endpoint for `authorized_user` credentials.
//! For asymmetric keys (External Keys): `POST /v1/{keyRing}/cryptoKeys`
//! (`cryptoKeys.create`), `GET /v1/{version}/publicKey` (PEM and its CRC32C),
//! `POST /v1/{version}:asymmetricSign` (a `digest` for RSA and ECDSA, `data`
//! for Ed25519) and `POST /v1/{version}:asymmetricDecrypt` (RSA-OAEP), with
//! real key pairs made by aws-lc-rs (ring cannot sign a digest it did not
//! compute) and real signatures and decryptions.
//! There is no Cloud KMS emulator. Where the client relies on the service,
//! the stand-in behaves as Cloud KMS does: enums come back as integers when
//! the request asks `$alt=json;enum-encoding=int` (as the SDK does) and as
//! names otherwise; every CRC32C the client sends is checked and a mismatch
//! is refused `INVALID_ARGUMENT`; throttling says how long to wait in a
//! `google.rpc.RetryInfo` error detail, not in `Retry-After`.
//!
//! Harness-less (see Cargo.toml): `main` trusts the test CA through
//! `SSL_CERT_FILE` before any thread starts, then hands the tests to
//! libtest-mimic, which speaks the libtest command line (`--list --format
//! terse`, `--exact NAME`, filters) so cargo-nextest can list and run them
//! one per process.
//!
//! The OpenBao drop-in end-to-end test (`tests/tests/openbao_dropin.rs`)
//! includes this file for its stand-in (`start_fake`, `pki` and the
//! credentials constants are `pub(crate)` for it).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OAEP_SHA512_MGF1SHA512, OaepPrivateDecryptingKey,
    PrivateDecryptingKey,
};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair as _, RSA_PKCS1_SHA256, RSA_PKCS1_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA512, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sealbroker_backend_gcpckms::{
    BackendConfig, GcpKmsKey, KeyConfig, KmsClient, METADATA_KEY_VERSION, RetryConfig, connect, crc32c,
};
use sealbroker_core::{
    Backend, BackendErrorKind, BackendKind, Hash, KeyAlgorithm, KeygenError, Mechanism, OaepHash, Profile,
    PublicKey, SignInput, SignScheme,
};
use sealbroker_testkit::https_stub::{HttpsStub, StubResponse};
use sealbroker_testkit::pki::{Leaf, TestCa};
use sealbroker_testkit::{assert_no_secret, free_port};
use serde_json::{Value, json};

pub(crate) const KEY: &str = "projects/p/locations/global/keyRings/sealbroker/cryptoKeys/unseal";
const TOKEN: &str = "ya29.sealbroker-test-token";
pub(crate) const CLIENT_ID: &str = "1234567890-sealbroker.apps.googleusercontent.com";
/// Must never show up in any error message.
pub(crate) const REFRESH_TOKEN: &str = "1//sealbroker-refresh-DO-NOT-LEAK";
pub(crate) const CLIENT_SECRET: &str = "sealbroker-client-secret-DO-NOT-LEAK";
const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
/// What no error may show: every secret the tests hand out carries the
/// DO-NOT-LEAK marker.
const SECRETS: &[(&str, &str)] = &[
    ("the refresh token", REFRESH_TOKEN),
    ("the client secret", CLIENT_SECRET),
    ("a secret marked not to leak", "DO-NOT-LEAK"),
];

// ---------------------------------------------------------------- fake service

struct Version {
    state: &'static str,
    key: [u8; 32],
}

/// A canned reply served before normal handling (failure injection).
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

#[derive(Default)]
struct State {
    /// Versions of [`KEY`], 1-based.
    versions: Vec<Version>,
    /// The primary version's number.
    primary: usize,
    canned: VecDeque<Canned>,
    /// Every KMS request (not token requests).
    requests: usize,
    /// 403 for this principal's calls, as when IAM denies the role.
    deny: bool,
    /// Versions created through the API answer PENDING_GENERATION this many
    /// more times before they are ENABLED.
    pending_reads: usize,
    /// The resource every `encrypt` was called on.
    encrypt_targets: Vec<String>,
    /// KMS requests that asked for integer enums (`$alt=json;enum-encoding=int`).
    int_enum_requests: usize,
    /// Data fields sent without their CRC32C (`plaintext` of an encrypt,
    /// `ciphertext` of a decrypt): the service accepts that, sealbroker must not.
    unchecksummed: Vec<&'static str>,
    /// Asymmetric keys by CryptoKey name.
    asym: BTreeMap<String, AsymKey>,
}

/// An asymmetric CryptoKey: its purpose, version template and versions.
struct AsymKey {
    purpose: String,
    algorithm: String,
    protection: String,
    /// 1-based, as Cloud KMS numbers them.
    versions: Vec<AsymVersion>,
}

struct AsymVersion {
    state: &'static str,
    pair: Pair,
}

/// A version's private key, made by the stand-in.
enum Pair {
    RsaSign(RsaKeyPair),
    RsaDecrypt(PrivateDecryptingKey),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Pair {
    /// A fresh key pair for a Cloud KMS version algorithm, `None` for one
    /// the stand-in does not make.
    fn generate(algorithm: &str) -> Option<Pair> {
        let size = || {
            Some(
                match algorithm
                    .split('_')
                    .find(|p| p.len() == 4 && p.bytes().all(|b| b.is_ascii_digit()))?
                {
                    "2048" => KeySize::Rsa2048,
                    "3072" => KeySize::Rsa3072,
                    "4096" => KeySize::Rsa4096,
                    _ => return None,
                },
            )
        };
        Some(match algorithm {
            "EC_SIGN_P256_SHA256" => {
                Pair::Ecdsa(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).ok()?)
            }
            "EC_SIGN_P384_SHA384" => {
                Pair::Ecdsa(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING).ok()?)
            }
            "EC_SIGN_ED25519" => Pair::Ed25519(Ed25519KeyPair::generate().ok()?),
            a if a.starts_with("RSA_SIGN_PSS_") || a.starts_with("RSA_SIGN_PKCS1_") => {
                Pair::RsaSign(RsaKeyPair::generate(size()?).ok()?)
            }
            a if a.starts_with("RSA_DECRYPT_OAEP_") => {
                Pair::RsaDecrypt(PrivateDecryptingKey::generate(size()?).ok()?)
            }
            _ => return None,
        })
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    fn spki(&self) -> Vec<u8> {
        match self {
            Pair::RsaSign(pair) => pair.public_key().as_der().unwrap().as_ref().to_vec(),
            Pair::RsaDecrypt(key) => key.public_key().as_der().unwrap().as_ref().to_vec(),
            Pair::Ecdsa(pair) => pair.public_key().as_der().unwrap().as_ref().to_vec(),
            Pair::Ed25519(pair) => pair.public_key().as_der().unwrap().as_ref().to_vec(),
        }
    }
}

/// PEM of a DER SubjectPublicKeyInfo, 64 columns, as Cloud KMS writes it.
fn pem(der: &[u8]) -> String {
    let body = B64.encode(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out + "-----END PUBLIC KEY-----\n"
}

pub(crate) struct FakeKms {
    pub(crate) endpoint: String,
    state: Arc<Mutex<State>>,
    tokens: Arc<AtomicUsize>,
    _server: HttpsStub,
}

impl FakeKms {
    fn rotate(&self) {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).unwrap();
        let mut state = self.state.lock().unwrap();
        state.versions.push(Version {
            state: "ENABLED",
            key,
        });
        state.primary = state.versions.len();
    }
    fn set_state(&self, version: usize, state: &'static str) {
        self.state.lock().unwrap().versions[version - 1].state = state;
    }
    fn push(&self, canned: Canned) {
        self.state.lock().unwrap().canned.push_back(canned);
    }
    pub(crate) fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
    /// Makes an asymmetric CryptoKey `id` in the key ring of [`KEY`], as
    /// gcloud would, with version 1 ENABLED; returns its name.
    pub(crate) fn add_asymmetric(&self, id: &str, algorithm: &str) -> String {
        let purpose = if algorithm.starts_with("RSA_DECRYPT_") {
            "ASYMMETRIC_DECRYPT"
        } else {
            "ASYMMETRIC_SIGN"
        };
        let name = format!("{}/{id}", KEY.rsplit_once('/').unwrap().0);
        let pair =
            Pair::generate(algorithm).unwrap_or_else(|| panic!("the stand-in cannot make {algorithm}"));
        self.state.lock().unwrap().asym.insert(
            name.clone(),
            AsymKey {
                purpose: purpose.into(),
                algorithm: algorithm.into(),
                protection: "HSM".into(),
                versions: vec![AsymVersion {
                    state: "ENABLED",
                    pair,
                }],
            },
        );
        name
    }
    /// Sets the state of version `version` of asymmetric key `name`.
    pub(crate) fn set_asymmetric_state(&self, name: &str, version: usize, state: &'static str) {
        self.state.lock().unwrap().asym.get_mut(name).unwrap().versions[version - 1].state = state;
    }
    /// The purpose, algorithm and protection level of asymmetric key `name`.
    pub(crate) fn asymmetric_template(&self, name: &str) -> Option<(String, String, String)> {
        let state = self.state.lock().unwrap();
        let key = state.asym.get(name)?;
        Some((key.purpose.clone(), key.algorithm.clone(), key.protection.clone()))
    }
}

fn error_body(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// Cloud KMS's quota refusal: HTTP 429 with the delay in a `RetryInfo` detail.
fn resource_exhausted(retry_delay: &str) -> Canned {
    let mut body = error_body(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Cryptographic requests'.",
    );
    body["error"]["details"] = json!([{
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": retry_delay,
    }]);
    Canned {
        status: 429,
        headers: vec![],
        body,
    }
}

/// The refusal Cloud KMS sends when a CRC32C does not match its field.
fn checksum_mismatch(field: &str) -> (u16, Vec<(&'static str, String)>, Value) {
    (
        400,
        vec![],
        error_body(
            400,
            "INVALID_ARGUMENT",
            &format!("The checksum in field {field}_crc32c did not match the data in field {field}."),
        ),
    )
}

/// Whether the request's query asks for integer enums, as the SDK's
/// `$alt=json;enum-encoding=int` does (percent-encoded or not).
fn asks_int_enums(query: &str) -> bool {
    query.split('&').any(|pair| {
        let decoded = pair
            .replace("%24", "$")
            .replace("%3B", ";")
            .replace("%3b", ";")
            .replace("%3D", "=")
            .replace("%3d", "=");
        decoded
            .strip_prefix("$alt=")
            .is_some_and(|alt| alt.split(';').any(|p| p == "enum-encoding=int"))
    })
}

const NUMBERS: &[(&str, &str, i64)] = &[
    ("state", "ENABLED", 1),
    ("state", "DISABLED", 2),
    ("state", "DESTROYED", 3),
    ("state", "DESTROY_SCHEDULED", 4),
    ("state", "PENDING_GENERATION", 5),
    ("protectionLevel", "SOFTWARE", 1),
    ("protectionLevel", "HSM", 2),
    ("algorithm", "GOOGLE_SYMMETRIC_ENCRYPTION", 1),
    ("purpose", "ENCRYPT_DECRYPT", 1),
    ("purpose", "ASYMMETRIC_SIGN", 5),
    ("purpose", "ASYMMETRIC_DECRYPT", 6),
    ("publicKeyFormat", "PEM", 1),
    ("algorithm", "RSA_SIGN_PSS_2048_SHA256", 2),
    ("algorithm", "RSA_SIGN_PSS_3072_SHA256", 3),
    ("algorithm", "RSA_SIGN_PSS_4096_SHA256", 4),
    ("algorithm", "RSA_SIGN_PSS_4096_SHA512", 15),
    ("algorithm", "RSA_SIGN_PKCS1_2048_SHA256", 5),
    ("algorithm", "RSA_SIGN_PKCS1_3072_SHA256", 6),
    ("algorithm", "RSA_SIGN_PKCS1_4096_SHA256", 7),
    ("algorithm", "RSA_SIGN_PKCS1_4096_SHA512", 16),
    ("algorithm", "RSA_DECRYPT_OAEP_2048_SHA256", 8),
    ("algorithm", "RSA_DECRYPT_OAEP_3072_SHA256", 9),
    ("algorithm", "RSA_DECRYPT_OAEP_4096_SHA256", 10),
    ("algorithm", "RSA_DECRYPT_OAEP_4096_SHA512", 17),
    ("algorithm", "RSA_DECRYPT_OAEP_2048_SHA1", 37),
    ("algorithm", "RSA_DECRYPT_OAEP_3072_SHA1", 38),
    ("algorithm", "RSA_DECRYPT_OAEP_4096_SHA1", 39),
    ("algorithm", "EC_SIGN_P256_SHA256", 12),
    ("algorithm", "EC_SIGN_P384_SHA384", 13),
    ("algorithm", "EC_SIGN_ED25519", 40),
    ("algorithm", "EC_SIGN_SECP256K1_SHA256", 31),
];

/// An enum field of a request, by name: the SDK sends numbers
/// (`enum-encoding=int`), other clients names.
fn enum_name(value: Option<&Value>, field: &str) -> String {
    match value {
        Some(Value::String(name)) => name.clone(),
        Some(Value::Number(n)) => NUMBERS
            .iter()
            .find(|(f, _, number)| *f == field && Some(*number) == n.as_i64())
            .map(|(_, name, _)| (*name).to_owned())
            .unwrap_or_else(|| format!("unknown {field} {n}")),
        _ => String::new(),
    }
}

/// Rewrites the enum fields the stand-in sends (`state`, `protectionLevel`,
/// `algorithm`, `purpose`, `publicKeyFormat`, at any depth) from names to
/// Cloud KMS's numbers.
fn int_enums(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (field, v) in map.iter_mut() {
                match v {
                    Value::String(name) if NUMBERS.iter().any(|(f, _, _)| f == field) => {
                        let number = NUMBERS
                            .iter()
                            .find(|(f, known, _)| f == field && known == name)
                            .map(|&(_, _, number)| number)
                            .unwrap_or_else(|| panic!("the stand-in has no number for {field} {name:?}"));
                        *v = json!(number);
                    }
                    _ => int_enums(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(int_enums),
        _ => {}
    }
}

/// Whether `field_crc32c` in `body`, when present, is the CRC32C of `data`;
/// Google's JSON sends int64 as a decimal string.
fn crc_matches(body: &Value, field: &str, data: &[u8]) -> Option<bool> {
    let sent = body.get(field)?;
    let sent = sent
        .as_str()
        .and_then(|s| s.parse::<u32>().ok())
        .or_else(|| sent.as_u64().and_then(|n| u32::try_from(n).ok()));
    Some(sent == Some(crc32c(data)))
}

fn version_name(n: usize) -> String {
    format!("{KEY}/cryptoKeyVersions/{n}")
}

fn version_json(n: usize, state: &str) -> Value {
    json!({
        "name": version_name(n),
        "state": state,
        "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION",
        "protectionLevel": "SOFTWARE",
    })
}

fn key_config(name: &str) -> KeyConfig {
    KeyConfig {
        key_name: name.into(),
        ..Default::default()
    }
}

/// The settings of version 1 of an asymmetric key.
fn pair_config(name: &str, algorithm: &str, oaep_hash: Option<&str>) -> KeyConfig {
    KeyConfig {
        key_name: name.into(),
        key_version: Some("1".into()),
        algorithm: Some(algorithm.into()),
        mechanism: oaep_hash.map(|_| sealbroker_backend_gcpckms::MechanismName::RsaPkcsOaep),
        rsa_oaep_hash: oaep_hash.map(str::to_owned),
    }
}

fn b64(v: &Value, field: &str) -> Vec<u8> {
    B64.decode(v.get(field).and_then(Value::as_str).unwrap_or(""))
        .unwrap()
}

type Reply = (u16, Vec<(&'static str, String)>, Value);

fn handle(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: &Value,
) -> Reply {
    let mut state = state.lock().unwrap();
    state.requests += 1;
    if let Some(canned) = state.canned.pop_front() {
        return (canned.status, canned.headers, canned.body);
    }
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return (
            401,
            vec![],
            error_body(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            ),
        );
    }
    if state.deny {
        return (
            403,
            vec![],
            error_body(
                403,
                "PERMISSION_DENIED",
                &format!(
                    "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource '{KEY}' (or it may not exist)."
                ),
            ),
        );
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return (404, vec![], error_body(404, "NOT_FOUND", "no such path"));
    };
    let (name, verb) = rest.split_once(':').unwrap_or((rest, ""));
    let (name, sub) = match name.split_once("/cryptoKeyVersions") {
        Some((key, tail)) => (key, Some(tail.trim_start_matches('/'))),
        None => (name, None),
    };
    if method == "POST" && sub.is_none() && verb.is_empty() && name.ends_with("/cryptoKeys") {
        return create_crypto_key(&mut state, name.trim_end_matches("/cryptoKeys"), query, body);
    }
    if state.asym.contains_key(name) {
        return handle_asymmetric(&mut state, method, name, sub, verb, body);
    }
    if name != KEY {
        return (
            404,
            vec![],
            error_body(404, "NOT_FOUND", &format!("CryptoKey {name} not found.")),
        );
    }
    let primary = state.primary;
    // The version `encrypt` uses: the primary, or the one named.
    let mut target = primary;
    match (method, sub, verb) {
        ("POST", Some(""), "") => {
            let mut key = [0u8; 32];
            SystemRandom::new().fill(&mut key).unwrap();
            state.versions.push(Version {
                state: "PENDING_GENERATION",
                key,
            });
            state.pending_reads = 1;
            let n = state.versions.len();
            return (200, vec![], version_json(n, "PENDING_GENERATION"));
        }
        ("GET", Some(id), "") => {
            let Some(n) = id
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=state.versions.len()).contains(n))
            else {
                return (404, vec![], error_body(404, "NOT_FOUND", "no such version"));
            };
            if state.versions[n - 1].state == "PENDING_GENERATION" {
                if state.pending_reads > 0 {
                    state.pending_reads -= 1;
                } else {
                    state.versions[n - 1].state = "ENABLED";
                }
            }
            return (200, vec![], version_json(n, state.versions[n - 1].state));
        }
        ("POST", Some(id), "encrypt") => {
            let Some(n) = id
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=state.versions.len()).contains(n))
            else {
                return (404, vec![], error_body(404, "NOT_FOUND", "no such version"));
            };
            target = n;
        }
        (_, None, _) => {}
        _ => return (404, vec![], error_body(404, "NOT_FOUND", "no such method")),
    }
    match (method, verb) {
        ("GET", "") => {
            let p = &state.versions[primary - 1];
            (
                200,
                vec![],
                json!({
                    "name": KEY,
                    "purpose": "ENCRYPT_DECRYPT",
                    "primary": {"name": version_name(primary), "state": p.state, "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION", "protectionLevel": "SOFTWARE"},
                }),
            )
        }
        ("POST", "encrypt") => {
            let plaintext = b64(body, "plaintext");
            let aad = b64(body, "additionalAuthenticatedData");
            match crc_matches(body, "plaintextCrc32c", &plaintext) {
                Some(false) => return checksum_mismatch("plaintext"),
                Some(true) => {}
                None => state.unchecksummed.push("plaintext"),
            }
            let aad_verified = crc_matches(body, "additionalAuthenticatedDataCrc32c", &aad);
            if aad_verified == Some(false) {
                return checksum_mismatch("additional_authenticated_data");
            }
            state
                .encrypt_targets
                .push(name.to_owned() + &sub.map(|s| format!("/cryptoKeyVersions/{s}")).unwrap_or_default());
            let version = &state.versions[target - 1];
            if version.state != "ENABLED" {
                return (
                    400,
                    vec![],
                    error_body(
                        400,
                        "FAILED_PRECONDITION",
                        &format!(
                            "{} is not enabled, current state is: {}.",
                            version_name(target),
                            version.state
                        ),
                    ),
                );
            }
            let mut iv = [0u8; 12];
            SystemRandom::new().fill(&mut iv).unwrap();
            let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &version.key).unwrap());
            let mut sealed = plaintext.clone();
            sealing
                .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(&aad), &mut sealed)
                .unwrap();
            let mut ciphertext = (target as u32).to_be_bytes().to_vec();
            ciphertext.extend_from_slice(&iv);
            ciphertext.extend_from_slice(&sealed);
            (
                200,
                vec![],
                json!({
                    "name": version_name(target),
                    "ciphertext": B64.encode(&ciphertext),
                    "ciphertextCrc32c": crc32c(&ciphertext).to_string(),
                    "verifiedPlaintextCrc32c": true,
                    "verifiedAdditionalAuthenticatedDataCrc32c": aad_verified == Some(true),
                    "protectionLevel": "SOFTWARE",
                }),
            )
        }
        ("POST", "decrypt") => {
            let ciphertext = b64(body, "ciphertext");
            let aad = b64(body, "additionalAuthenticatedData");
            match crc_matches(body, "ciphertextCrc32c", &ciphertext) {
                Some(false) => return checksum_mismatch("ciphertext"),
                Some(true) => {}
                None => state.unchecksummed.push("ciphertext"),
            }
            if crc_matches(body, "additionalAuthenticatedDataCrc32c", &aad) == Some(false) {
                return checksum_mismatch("additional_authenticated_data");
            }
            let invalid = || {
                (
                    400,
                    vec![],
                    error_body(
                        400,
                        "INVALID_ARGUMENT",
                        "Decryption failed: the ciphertext is invalid.",
                    ),
                )
            };
            if ciphertext.len() < 4 + 12 + 16 {
                return invalid();
            }
            let n = u32::from_be_bytes(ciphertext[..4].try_into().unwrap()) as usize;
            let Some(version) = n.checked_sub(1).and_then(|i| state.versions.get(i)) else {
                return invalid();
            };
            if version.state != "ENABLED" {
                return (
                    400,
                    vec![],
                    error_body(
                        400,
                        "FAILED_PRECONDITION",
                        &format!(
                            "{} is not enabled, current state is: {}.",
                            version_name(n),
                            version.state
                        ),
                    ),
                );
            }
            let opening = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &version.key).unwrap());
            let mut data = ciphertext[16..].to_vec();
            let iv: [u8; 12] = ciphertext[4..16].try_into().unwrap();
            let Ok(plaintext) =
                opening.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(&aad), &mut data)
            else {
                return invalid();
            };
            (
                200,
                vec![],
                json!({
                    "plaintext": B64.encode(&*plaintext),
                    "plaintextCrc32c": crc32c(plaintext).to_string(),
                    "usedPrimary": n == primary,
                    "protectionLevel": "SOFTWARE",
                }),
            )
        }
        _ => (404, vec![], error_body(404, "NOT_FOUND", "no such method")),
    }
}

fn not_found(what: &str) -> Reply {
    (404, vec![], error_body(404, "NOT_FOUND", what))
}

fn bad_request(status: &str, message: &str) -> Reply {
    (400, vec![], error_body(400, status, message))
}

/// `cryptoKeys.create` (`POST /v1/{keyRing}/cryptoKeys?cryptoKeyId=ID`) of
/// an asymmetric key: version 1 is made PENDING_GENERATION, as Cloud KMS
/// makes it, and is ENABLED at the next read.
fn create_crypto_key(state: &mut State, ring: &str, query: &str, body: &Value) -> Reply {
    let Some(id) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("cryptoKeyId="))
        .filter(|id| !id.is_empty())
    else {
        return bad_request("INVALID_ARGUMENT", "crypto_key_id is required");
    };
    let name = format!("{ring}/cryptoKeys/{id}");
    if name == KEY || state.asym.contains_key(&name) {
        return (
            409,
            vec![],
            error_body(
                409,
                "ALREADY_EXISTS",
                &format!("CryptoKey {name} already exists."),
            ),
        );
    }
    let purpose = enum_name(body.get("purpose"), "purpose");
    let template = body.get("versionTemplate").cloned().unwrap_or(Value::Null);
    let algorithm = enum_name(template.get("algorithm"), "algorithm");
    let protection = match enum_name(template.get("protectionLevel"), "protectionLevel") {
        level if level.is_empty() => "SOFTWARE".to_owned(),
        level => level,
    };
    let fits = match purpose.as_str() {
        "ASYMMETRIC_SIGN" => algorithm.starts_with("RSA_SIGN_") || algorithm.starts_with("EC_SIGN_"),
        "ASYMMETRIC_DECRYPT" => algorithm.starts_with("RSA_DECRYPT_"),
        _ => false,
    };
    if !fits {
        return bad_request(
            "INVALID_ARGUMENT",
            &format!("Algorithm {algorithm} is not compatible with purpose {purpose}."),
        );
    }
    let Some(pair) = Pair::generate(&algorithm) else {
        return bad_request(
            "INVALID_ARGUMENT",
            &format!("the stand-in cannot make {algorithm}"),
        );
    };
    state.asym.insert(
        name.clone(),
        AsymKey {
            purpose: purpose.clone(),
            algorithm: algorithm.clone(),
            protection: protection.clone(),
            versions: vec![AsymVersion {
                state: "PENDING_GENERATION",
                pair,
            }],
        },
    );
    (
        200,
        vec![],
        json!({
            "name": name,
            "purpose": purpose,
            "versionTemplate": {"algorithm": algorithm, "protectionLevel": protection},
        }),
    )
}

fn asym_version_json(name: &str, key: &AsymKey, n: usize) -> Value {
    json!({
        "name": format!("{name}/cryptoKeyVersions/{n}"),
        "state": key.versions[n - 1].state,
        "algorithm": key.algorithm,
        "protectionLevel": key.protection,
    })
}

/// The digest field and length an RSA or ECDSA algorithm signs.
fn digest_of(algorithm: &str) -> Option<(&'static str, &'static aws_lc_rs::digest::Algorithm)> {
    if algorithm == "EC_SIGN_ED25519" {
        None
    } else if algorithm.ends_with("SHA512") {
        Some(("sha512", &aws_lc_rs::digest::SHA512))
    } else if algorithm.ends_with("SHA384") {
        Some(("sha384", &aws_lc_rs::digest::SHA384))
    } else {
        Some(("sha256", &aws_lc_rs::digest::SHA256))
    }
}

fn handle_asymmetric(
    state: &mut State,
    method: &str,
    name: &str,
    sub: Option<&str>,
    verb: &str,
    body: &Value,
) -> Reply {
    let key = state.asym.get_mut(name).unwrap();
    let Some(sub) = sub else {
        return match (method, verb) {
            ("GET", "") => (
                200,
                vec![],
                json!({
                    "name": name,
                    "purpose": key.purpose,
                    "versionTemplate": {"algorithm": key.algorithm, "protectionLevel": key.protection},
                }),
            ),
            _ => not_found("no such method"),
        };
    };
    if method == "POST" && sub.is_empty() && verb.is_empty() {
        let Some(pair) = Pair::generate(&key.algorithm) else {
            return bad_request("INVALID_ARGUMENT", "the stand-in cannot make this algorithm");
        };
        key.versions.push(AsymVersion {
            state: "PENDING_GENERATION",
            pair,
        });
        let n = key.versions.len();
        return (200, vec![], asym_version_json(name, key, n));
    }
    let (id, tail) = sub.split_once('/').unwrap_or((sub, ""));
    let Some(n) = id
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=key.versions.len()).contains(n))
    else {
        return not_found(&format!(
            "CryptoKeyVersion {name}/cryptoKeyVersions/{id} not found."
        ));
    };
    let version_name = format!("{name}/cryptoKeyVersions/{n}");
    if method == "GET" && tail.is_empty() && verb.is_empty() {
        // Generation finishes by the next read.
        let reply = asym_version_json(name, key, n);
        if key.versions[n - 1].state == "PENDING_GENERATION" {
            key.versions[n - 1].state = "ENABLED";
        }
        return (200, vec![], reply);
    }
    let version = &key.versions[n - 1];
    if version.state != "ENABLED" {
        return bad_request(
            "FAILED_PRECONDITION",
            &format!(
                "{version_name} is not enabled, current state is: {}.",
                version.state
            ),
        );
    }
    match (method, tail, verb) {
        ("GET", "publicKey", "") => {
            let pem = pem(&version.pair.spki());
            (
                200,
                vec![],
                json!({
                    "pem": pem,
                    "algorithm": key.algorithm,
                    "pemCrc32c": crc32c(pem.as_bytes()).to_string(),
                    "name": version_name,
                    "protectionLevel": key.protection,
                    "publicKeyFormat": "PEM",
                }),
            )
        }
        ("POST", "", "asymmetricSign") => {
            if key.purpose != "ASYMMETRIC_SIGN" {
                return bad_request(
                    "FAILED_PRECONDITION",
                    &format!("{version_name} has purpose {}, not ASYMMETRIC_SIGN.", key.purpose),
                );
            }
            let digest_sent = body.get("digest").and_then(Value::as_object);
            let data_sent = body.get("data").is_some();
            let signature = match (digest_of(&key.algorithm), digest_sent, &version.pair) {
                (None, None, Pair::Ed25519(pair)) if data_sent => {
                    let data = b64(body, "data");
                    if crc_matches(body, "dataCrc32c", &data) == Some(false) {
                        return checksum_mismatch("data");
                    }
                    pair.sign(&data).as_ref().to_vec()
                }
                (Some((field, algorithm)), Some(digest), pair) if !data_sent => {
                    let Some(bytes) = digest
                        .get(field)
                        .and_then(Value::as_str)
                        .and_then(|t| B64.decode(t).ok())
                    else {
                        return bad_request(
                            "INVALID_ARGUMENT",
                            &format!("Algorithm {} requires digest.{field}.", key.algorithm),
                        );
                    };
                    if crc_matches(body, "digestCrc32c", &bytes) == Some(false) {
                        return checksum_mismatch("digest");
                    }
                    let Ok(imported) = aws_lc_rs::digest::Digest::import_less_safe(&bytes, algorithm) else {
                        return bad_request(
                            "INVALID_ARGUMENT",
                            &format!("The {field} digest must be {} bytes.", algorithm.output_len()),
                        );
                    };
                    match pair {
                        Pair::Ecdsa(pair) => pair.sign_digest(&imported).unwrap().as_ref().to_vec(),
                        Pair::RsaSign(pair) => {
                            let encoding = match key.algorithm.as_str() {
                                a if a.starts_with("RSA_SIGN_PSS_") && a.ends_with("SHA512") => {
                                    &RSA_PSS_SHA512
                                }
                                a if a.starts_with("RSA_SIGN_PSS_") => &RSA_PSS_SHA256,
                                a if a.ends_with("SHA512") => &RSA_PKCS1_SHA512,
                                _ => &RSA_PKCS1_SHA256,
                            };
                            let mut signature = vec![0u8; pair.public_modulus_len()];
                            pair.sign_digest(encoding, &imported, &mut signature).unwrap();
                            signature
                        }
                        _ => unreachable!("a signing algorithm with a digest is RSA or ECDSA"),
                    }
                }
                (None, ..) => {
                    return bad_request(
                        "INVALID_ARGUMENT",
                        &format!(
                            "Algorithm {} signs data, not a digest; set data only.",
                            key.algorithm
                        ),
                    );
                }
                (Some(_), ..) => {
                    return bad_request(
                        "INVALID_ARGUMENT",
                        &format!("Algorithm {} signs a digest; set digest only.", key.algorithm),
                    );
                }
            };
            (
                200,
                vec![],
                json!({
                    "signature": B64.encode(&signature),
                    "signatureCrc32c": crc32c(&signature).to_string(),
                    "verifiedDigestCrc32c": body.get("digestCrc32c").is_some(),
                    "verifiedDataCrc32c": body.get("dataCrc32c").is_some(),
                    "name": version_name,
                    "protectionLevel": key.protection,
                }),
            )
        }
        ("POST", "", "asymmetricDecrypt") => {
            let Pair::RsaDecrypt(private) = &version.pair else {
                return bad_request(
                    "FAILED_PRECONDITION",
                    &format!(
                        "{version_name} has purpose {}, not ASYMMETRIC_DECRYPT.",
                        key.purpose
                    ),
                );
            };
            let ciphertext = b64(body, "ciphertext");
            if crc_matches(body, "ciphertextCrc32c", &ciphertext) == Some(false) {
                return checksum_mismatch("ciphertext");
            }
            let algorithm = match key.algorithm.as_str() {
                a if a.ends_with("SHA1") => &OAEP_SHA1_MGF1SHA1,
                a if a.ends_with("SHA512") => &OAEP_SHA512_MGF1SHA512,
                _ => &OAEP_SHA256_MGF1SHA256,
            };
            let opener = OaepPrivateDecryptingKey::new(private.clone()).unwrap();
            let mut out = vec![0u8; opener.min_output_size()];
            let Ok(plaintext) = opener.decrypt(algorithm, &ciphertext, &mut out, None) else {
                return bad_request(
                    "INVALID_ARGUMENT",
                    "Decryption failed: verify that 'name' refers to the correct CryptoKeyVersion.",
                );
            };
            let plaintext = plaintext.to_vec();
            (
                200,
                vec![],
                json!({
                    "plaintext": B64.encode(&plaintext),
                    "plaintextCrc32c": crc32c(&plaintext).to_string(),
                    "verifiedCiphertextCrc32c": body.get("ciphertextCrc32c").is_some(),
                    "protectionLevel": key.protection,
                }),
            )
        }
        _ => not_found("no such method"),
    }
}

pub(crate) async fn start_fake(tls: Arc<rustls::ServerConfig>) -> FakeKms {
    let state = Arc::new(Mutex::new(State::default()));
    let tokens = Arc::new(AtomicUsize::new(0));
    let (shared, token_count) = (state.clone(), tokens.clone());
    let server = HttpsStub::start(tls, move |request| {
        let (status, headers, reply) = if request.path == "/token" {
            token_count.fetch_add(1, Ordering::SeqCst);
            // The refresh grant (JSON or form encoded) must carry our refresh token.
            let grant = String::from_utf8_lossy(&request.body).to_string();
            if grant.contains(REFRESH_TOKEN) {
                (
                    200,
                    vec![],
                    json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}),
                )
            } else {
                (400, vec![], json!({"error": "invalid_grant"}))
            }
        } else {
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            let ints = asks_int_enums(&request.query);
            if ints {
                shared.lock().unwrap().int_enum_requests += 1;
            }
            let (status, headers, mut reply) = handle(
                &shared,
                &request.method,
                &request.path,
                &request.query,
                request.header("authorization"),
                &body,
            );
            if ints {
                int_enums(&mut reply);
            }
            (status, headers, reply)
        };
        StubResponse::json(status, &reply).with_headers(headers)
    })
    .await;
    let fake = FakeKms {
        endpoint: format!("https://localhost:{}", server.port()),
        state,
        tokens,
        _server: server,
    };
    fake.rotate();
    fake
}

// ---------------------------------------------------------------- fixtures

struct Env {
    tls: Arc<rustls::ServerConfig>,
    dir: tempfile::TempDir,
}

/// Makes a CA (its PEM in `dir/ca.pem`) and a `localhost` server certificate.
pub(crate) fn pki(dir: &std::path::Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let ca = TestCa::new("sealbroker gcp test CA");
    let tls = ca.issue(&Leaf::server(&["localhost"])).server_config();
    (ca.write(&dir.join("ca.pem")), tls)
}

impl Env {
    /// `authorized_user` credentials whose token endpoint is the fake server.
    fn credentials(&self, fake: &FakeKms) -> PathBuf {
        let path = self.dir.path().join(format!(
            "creds-{}.json",
            fake.endpoint.rsplit(':').next().unwrap()
        ));
        let json = json!({
            "type": "authorized_user",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
            "token_uri": format!("{}/token", fake.endpoint),
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    fn config(&self, fake: &FakeKms) -> BackendConfig {
        BackendConfig {
            endpoint: Some(fake.endpoint.clone()),
            credentials_file: Some(self.credentials(fake)),
            timeout_ms: 5_000,
            retry: RetryConfig {
                max_retries: 2,
                initial_backoff_ms: 10,
                max_backoff_ms: 200,
            },
        }
    }

    async fn key(&self, fake: &FakeKms) -> (KmsClient, GcpKmsKey) {
        let client = connect(&self.config(fake)).await.unwrap();
        let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
        (client, key)
    }
}

// ---------------------------------------------------------------- tests

async fn round_trip_over_tls_records_the_version_and_binds_aad(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    key.health().await.unwrap();
    let sealed = key.encrypt(DEK, b"vault/unseal").await.unwrap();
    assert_eq!(sealed.mechanism, Mechanism::ServiceDefined);
    assert_eq!(sealed.metadata[METADATA_KEY_VERSION], version_name(1));
    assert_eq!(key.decrypt(&sealed, b"vault/unseal").await.unwrap().expose(), DEK);
    let empty_aad = key.encrypt(DEK, b"").await.unwrap();
    assert_eq!(key.decrypt(&empty_aad, b"").await.unwrap().expose(), DEK);
    assert_eq!(
        fake.tokens.load(Ordering::SeqCst),
        1,
        "the token is fetched once and cached"
    );
    {
        let state = fake.state.lock().unwrap();
        assert_eq!(
            state.int_enum_requests, state.requests,
            "every call asked for integer enums, and got them"
        );
        assert!(
            state.unchecksummed.is_empty(),
            "sent without a CRC32C: {:?}",
            state.unchecksummed
        );
    }

    let err = key.decrypt(&sealed, b"other").await.err().unwrap();

    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    assert!(
        err.message.contains("INVALID_ARGUMENT") || err.message.contains("InvalidArgument"),
        "{err}"
    );
    assert_eq!(key.key_identity(), format!("gcpckms:{KEY}"));
}

async fn old_blobs_open_after_rotation_until_their_version_is_disabled(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    let old = key.encrypt(DEK, b"aad").await.unwrap();
    fake.rotate();
    let new = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(old.metadata[METADATA_KEY_VERSION], version_name(1));
    assert_eq!(new.metadata[METADATA_KEY_VERSION], version_name(2));
    assert_eq!(key.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);

    fake.set_state(1, "DISABLED");
    let err = key.decrypt(&old, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("cryptoKeyVersions/1"), "{err}");
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);

    fake.set_state(2, "DISABLED");
    let err = key.health().await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(
        err.message.contains("Disabled") || err.message.contains("DISABLED"),
        "{err}"
    );
}

async fn a_blob_from_another_key_is_refused(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    let mut sealed = key.encrypt(DEK, b"aad").await.unwrap();
    sealed.metadata.insert(
        METADATA_KEY_VERSION.into(),
        "projects/p/locations/global/keyRings/r/cryptoKeys/other/cryptoKeyVersions/1".into(),
    );
    let before = fake.requests();
    let err = key.decrypt(&sealed, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    assert_eq!(fake.requests(), before, "refused without a call");
}

async fn resource_exhausted_is_retried_honouring_retry_info(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    key.encrypt(DEK, b"warm-up").await.unwrap();
    // The service asks for 1 s; the backoff cap (max_backoff_ms = 200) bounds it.
    fake.push(resource_exhausted("1s"));
    let before = fake.requests();
    let started = Instant::now();
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "RetryInfo ignored: {:?}",
        started.elapsed()
    );
    assert_eq!(fake.requests() - before, 2);
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);

    for _ in 0..3 {
        fake.push(resource_exhausted("1s"));
    }
    let before = fake.requests();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Throttled, "{err}");
    assert!(err.message.contains("gave up after 2 retries"), "{err}");
    assert_eq!(fake.requests() - before, 3, "one attempt and two retries");
    assert_eq!(key.throttling_retries(), 3, "one retry, then two more");
}

/// The stand-in's own faithfulness: integer enums exactly when asked as the
/// SDK asks, and RetryInfo (not Retry-After) on throttling.
async fn the_stand_in_answers_as_cloud_kms_does(_env: Arc<Env>) {
    assert!(asks_int_enums("%24alt=json%3Benum-encoding%3Dint"));
    assert!(asks_int_enums("$alt=json;enum-encoding=int"));
    assert!(!asks_int_enums(""));
    assert!(!asks_int_enums("%24alt=json"));
    let mut version = version_json(2, "PENDING_GENERATION");
    int_enums(&mut version);
    assert_eq!(
        (
            &version["state"],
            &version["protectionLevel"],
            &version["algorithm"]
        ),
        (&json!(5), &json!(1), &json!(1)),
        "{version}"
    );
    assert_eq!(version["name"], version_name(2), "names stay strings");
    let quota = resource_exhausted("1s");
    assert!(quota.headers.is_empty(), "Cloud KMS sends no Retry-After");
    assert_eq!(
        quota.body["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
}

/// Cloud KMS checks the CRC32C of each field it is sent and refuses a
/// mismatch; so does the stand-in (driven here through the SDK directly,
/// since sealbroker always sends the right CRC).
async fn a_crc32c_mismatch_is_refused_invalid_argument(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (client, key) = env.key(&fake).await;
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    let ciphertext = sealed.ciphertext.clone();
    let wrong = i64::from(crc32c(&ciphertext) ^ 1);
    let err = client
        .sdk()
        .decrypt()
        .set_name(KEY)
        .set_ciphertext(ciphertext.clone())
        .set_ciphertext_crc32c(wrong)
        .send()
        .await
        .expect_err("a ciphertext whose CRC32C does not match is refused");
    let status = err.status().expect("a service error");
    // By name: this file is also included by tests/tests/openbao_dropin.rs,
    // which does not link google-cloud-gax.
    assert_eq!(format!("{:?}", status.code), "InvalidArgument", "{err}");
    assert!(status.message.contains("ciphertext_crc32c"), "{err}");
    let err = client
        .sdk()
        .encrypt()
        .set_name(KEY)
        .set_plaintext(DEK.to_vec())
        .set_plaintext_crc32c(i64::from(crc32c(DEK) ^ 1))
        .send()
        .await
        .expect_err("a plaintext whose CRC32C does not match is refused");
    assert!(
        err.status()
            .is_some_and(|s| s.message.contains("plaintext_crc32c")),
        "{err}"
    );
    // The same blob with its true CRC32C opens.
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
}

/// A CRC32C mismatch reported by the service means the request was damaged
/// on the way: a Decrypt is tried again, not reported as a forged blob.
async fn a_checksum_refusal_on_decrypt_is_retried_not_called_tampering(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    let (status, headers, body) = checksum_mismatch("ciphertext");
    fake.push(Canned {
        status,
        headers,
        body,
    });
    let before = fake.requests();
    assert_eq!(key.decrypt(&sealed, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(fake.requests() - before, 2, "refused once, then tried again");
}

/// A service that accepts the connection and never answers: each attempt
/// ends at `timeout_ms`, and the call ends as `Timeout`, naming the setting,
/// after its bounded retries instead of hanging.
async fn a_service_that_never_answers_times_out_at_timeout_ms(env: Arc<Env>) {
    let token_server = start_fake(env.tls.clone()).await;
    let hung = sealbroker_testkit::silent::SilentListener::bind().await;
    let mut config = env.config(&token_server);
    config.endpoint = Some(format!("https://localhost:{}", hung.port()));
    config.timeout_ms = 400;
    let client = connect(&config).await.unwrap();
    let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
    let sealed = sealbroker_core::Sealed {
        mechanism: Mechanism::ServiceDefined,
        iv: Vec::new(),
        ciphertext: vec![0; 48],
        oaep_hash: String::new(),
        metadata: Default::default(),
    };
    for operation in ["Encrypt", "Decrypt"] {
        let started = Instant::now();
        let err = match operation {
            "Encrypt" => key.encrypt(DEK, b"aad").await.err().unwrap(),
            _ => key.decrypt(&sealed, b"aad").await.err().unwrap(),
        };
        let took = started.elapsed();
        eprintln!("{err} after {took:?}");
        assert_eq!(err.kind, BackendErrorKind::Timeout, "{err}");
        assert!(
            err.message.contains(operation) && err.message.contains("timeout_ms = 400"),
            "{err}"
        );
        assert!(err.message.contains("gave up after 2 retries"), "{err}");
        // Three attempts of 400 ms and two backoffs of at most 200 ms, with slack.
        assert!(
            took >= Duration::from_millis(1_200) && took < Duration::from_millis(3 * 400 + 2 * 200 + 1_500),
            "{operation} ended after {took:?}, not after three attempts of timeout_ms"
        );
    }
    assert!(hung.accepted() >= 1, "the calls reached the hung service");
    assert_eq!(token_server.requests(), 0, "nothing reached a working KMS");
}

async fn unauthenticated_and_denied_are_permission_denied_naming_the_principal(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    fake.push(Canned {
        status: 401,
        headers: vec![],
        body: error_body(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ),
    });
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains(CLIENT_ID), "{err}");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");

    fake.state.lock().unwrap().deny = true;
    let before = fake.requests();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("useToEncrypt"), "{err}");
    assert!(err.message.contains(CLIENT_ID), "{err}");
    assert_eq!(fake.requests() - before, 1, "not retried");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

async fn a_refused_token_request_is_permission_denied(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let path = env.dir.path().join("revoked-creds.json");
    // A well-formed refresh token that the token endpoint refuses
    // (`invalid_grant`), as Google refuses a revoked one.
    std::fs::write(
        &path,
        json!({
            "type": "authorized_user",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": "1//revoked-refresh-DO-NOT-LEAK",
            "token_uri": format!("{}/token", fake.endpoint),
        })
        .to_string(),
    )
    .unwrap();
    let mut config = env.config(&fake);
    config.credentials_file = Some(path);
    let client = connect(&config).await.unwrap();
    let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains(CLIENT_ID), "names the principal: {err}");
    assert!(
        fake.tokens.load(Ordering::SeqCst) >= 1,
        "the token endpoint was asked"
    );
    assert_eq!(fake.requests(), 0, "no KMS call without a token");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

async fn unknown_key_is_key_not_found(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let client = connect(&env.config(&fake)).await.unwrap();
    let name = "projects/p/locations/global/keyRings/sealbroker/cryptoKeys/missing";
    let key = GcpKmsKey::new(&client, &key_config(name)).unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains(name), "{err}");
}

async fn server_down_is_unavailable(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let mut config = env.config(&fake);
    let port = free_port(); // nothing listens there
    config.endpoint = Some(format!("https://localhost:{port}"));
    let client = connect(&config).await.unwrap();
    let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("gave up after 2 retries"), "{err}");
}

async fn an_untrusted_server_certificate_is_refused(env: Arc<Env>) {
    // A certificate from a CA the client does not trust, on the KMS endpoint
    // only: tokens still come from a trusted server.
    let other = tempfile::tempdir().unwrap();
    let (_, untrusted) = pki(other.path());
    let fake = start_fake(untrusted).await;
    let token_server = start_fake(env.tls.clone()).await;
    let mut config = env.config(&token_server);
    config.endpoint = Some(fake.endpoint.clone());
    let client = connect(&config).await.unwrap();
    let key = GcpKmsKey::new(&client, &key_config(KEY)).unwrap();
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("certificate"), "{err}");
    assert_eq!(fake.requests(), 0);
    assert_eq!(token_server.tokens.load(Ordering::SeqCst), 1);
}

async fn create_version_makes_a_cloud_version_and_pins_the_new_key_to_it(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (client, key) = env.key(&fake).await;
    let old = key.encrypt(DEK, b"aad").await.unwrap();

    let created = key.create_version(2).await.unwrap();
    assert_eq!(created.settings["key_version"], "2");
    assert_eq!(created.settings.len(), 1);
    assert_eq!(fake.state.lock().unwrap().versions.len(), 2);
    assert_eq!(fake.state.lock().unwrap().versions[1].state, "ENABLED");
    let pinned = created.backend;
    assert_eq!(
        pinned.key_identity(),
        format!("gcpckms:{KEY}/cryptoKeyVersions/2")
    );
    assert_ne!(pinned.key_identity(), key.key_identity());

    let new = pinned.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(new.metadata[METADATA_KEY_VERSION], version_name(2));
    assert_eq!(
        fake.state.lock().unwrap().encrypt_targets.last().unwrap(),
        &version_name(2),
        "encrypts with the pinned version"
    );
    assert_eq!(pinned.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
    let err = pinned.decrypt(&old, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");

    // The primary in Cloud KMS is left alone: the unpinned key stays on it.
    let again = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(again.metadata[METADATA_KEY_VERSION], version_name(1));

    // The recorded settings rebuild the same key after a restart.
    let rebuilt = GcpKmsKey::new(
        &client,
        &KeyConfig {
            key_name: KEY.into(),
            key_version: Some(created.settings["key_version"].clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rebuilt.key_identity(), pinned.key_identity());
    rebuilt.health().await.unwrap();
    fake.set_state(2, "DISABLED");
    let err = rebuilt.health().await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("pinned version"), "{err}");
    key.health().await.unwrap();
}

async fn create_version_is_permission_denied_without_the_create_permission(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let (_, key) = env.key(&fake).await;
    fake.state.lock().unwrap().deny = true;
    let before = fake.requests();
    let err = key.create_version(2).await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("CreateCryptoKeyVersion"), "{err}");
    assert_eq!(fake.requests() - before, 1, "not retried");
    assert_eq!(fake.state.lock().unwrap().versions.len(), 1);
}

async fn a_key_version_must_be_a_number(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let client = connect(&env.config(&fake)).await.unwrap();
    for bad in ["v2", "2/../3", "projects/p"] {
        let err = GcpKmsKey::new(
            &client,
            &KeyConfig {
                key_name: KEY.into(),
                key_version: Some(bad.into()),
                ..Default::default()
            },
        )
        .err()
        .unwrap();
        assert_eq!(err.path, "key_version", "{bad}");
    }
    let empty = GcpKmsKey::new(
        &client,
        &KeyConfig {
            key_name: KEY.into(),
            key_version: Some(String::new()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(empty.key_identity(), format!("gcpckms:{KEY}"));
}

// ---------------------------------------------------- asymmetric keys

/// Checks `signature` over `message` with ring and the public key alone.
fn ring_verifies(public: &PublicKey, scheme: SignScheme, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature as sig;
    let algorithm: &dyn sig::VerificationAlgorithm = match (scheme, public.algorithm) {
        (SignScheme::RsaPkcs1v15(Hash::Sha256), _) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (SignScheme::RsaPss(Hash::Sha256), _) => &sig::RSA_PSS_2048_8192_SHA256,
        (SignScheme::Ecdsa(Hash::Sha256), KeyAlgorithm::EcdsaP256) => &sig::ECDSA_P256_SHA256_ASN1,
        (SignScheme::Ecdsa(Hash::Sha384), KeyAlgorithm::EcdsaP384) => &sig::ECDSA_P384_SHA384_ASN1,
        (SignScheme::Ed25519, _) => &sig::ED25519,
        other => panic!("no ring algorithm for {other:?}"),
    };
    sig::UnparsedPublicKey::new(algorithm, public.raw())
        .verify(message, signature)
        .is_ok()
}

async fn key_pairs_sign_what_ring_verifies_with_the_public_key_alone(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let client = connect(&env.config(&fake)).await.unwrap();
    let message = b"tbsCertificate of a PKI root";
    for (id, gcp, algorithm, scheme) in [
        (
            "p256",
            "EC_SIGN_P256_SHA256",
            "ecdsa-p256",
            SignScheme::Ecdsa(Hash::Sha256),
        ),
        (
            "p384",
            "EC_SIGN_P384_SHA384",
            "ecdsa-p384",
            SignScheme::Ecdsa(Hash::Sha384),
        ),
        (
            "pkcs1",
            "RSA_SIGN_PKCS1_2048_SHA256",
            "rsa-2048",
            SignScheme::RsaPkcs1v15(Hash::Sha256),
        ),
        (
            "pss",
            "RSA_SIGN_PSS_2048_SHA256",
            "rsa-2048",
            SignScheme::RsaPss(Hash::Sha256),
        ),
        ("ed", "EC_SIGN_ED25519", "ed25519", SignScheme::Ed25519),
    ] {
        let name = fake.add_asymmetric(id, gcp);
        let key = GcpKmsKey::new(&client, &pair_config(&name, algorithm, None)).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::parse(algorithm));
        assert_eq!(key.oaep_hash(), None);
        key.health().await.unwrap();
        let public = key.public_key().await.unwrap();
        assert_eq!(public.algorithm.as_str(), algorithm);
        assert_eq!(PublicKey::from_spki_der(&public.spki_der).unwrap(), public);

        let signature = key.sign(scheme, SignInput::Message(message)).await.unwrap();
        assert!(ring_verifies(&public, scheme, message, &signature), "{gcp}");
        assert!(
            key.verify(scheme, SignInput::Message(message), &signature)
                .await
                .unwrap()
        );
        let mut tampered = signature.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(!ring_verifies(&public, scheme, message, &tampered), "{gcp}");
        assert!(
            !key.verify(scheme, SignInput::Message(message), &tampered)
                .await
                .unwrap(),
            "{gcp}"
        );
        assert!(
            !key.verify(scheme, SignInput::Message(b"another message"), &signature)
                .await
                .unwrap()
        );

        // A caller's digest is signed as is, never hashed again: the
        // signature verifies over the message the digest is of.
        if let Some(hash) = scheme.hash() {
            let digest = hash.digest(message);
            let signature = key.sign(scheme, SignInput::Digest(&digest)).await.unwrap();
            assert!(
                ring_verifies(&public, scheme, message, &signature),
                "{gcp} digest"
            );
        }
    }
    let state = fake.state.lock().unwrap();
    assert_eq!(
        state.int_enum_requests, state.requests,
        "every call asked for integer enums"
    );
}

async fn a_scheme_or_input_the_version_cannot_take_is_refused_before_a_call(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let client = connect(&env.config(&fake)).await.unwrap();
    let pss = fake.add_asymmetric("pss", "RSA_SIGN_PSS_2048_SHA256");
    let key = GcpKmsKey::new(&client, &pair_config(&pss, "rsa-2048", None)).unwrap();
    key.public_key().await.unwrap();
    let before = fake.requests();
    let err = key
        .sign(SignScheme::RsaPkcs1v15(Hash::Sha256), SignInput::Message(b"m"))
        .await
        .unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("RSA_SIGN_PSS_2048_SHA256"), "{err}");
    assert!(err.message.contains("only as rsa-pss-sha256"), "{err}");
    let err = key
        .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Digest(&[0; 20]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    let err = key
        .verify(
            SignScheme::RsaPss(Hash::Sha256),
            SignInput::Digest(&Hash::Sha256.digest(b"m")),
            &[1; 256],
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("whole message"), "{err}");
    assert_eq!(fake.requests(), before, "refused without a call");

    let ed = fake.add_asymmetric("ed", "EC_SIGN_ED25519");
    let key = GcpKmsKey::new(&client, &pair_config(&ed, "ed25519", None)).unwrap();
    let err = key
        .sign(SignScheme::Ed25519, SignInput::Digest(&[0; 32]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("Ed25519 signs the message itself"), "{err}");
    // A signing pair neither seals nor does OAEP.
    assert_eq!(
        key.encrypt(DEK, b"").await.unwrap_err().kind,
        BackendErrorKind::InvalidInput
    );
    assert_eq!(
        key.encrypt_asymmetric(DEK).await.unwrap_err().kind,
        BackendErrorKind::InvalidInput
    );

    // The config says P-384 but the version is P-256: named, never used.
    let p256 = fake.add_asymmetric("p256", "EC_SIGN_P256_SHA256");
    let key = GcpKmsKey::new(&client, &pair_config(&p256, "ecdsa-p384", None)).unwrap();
    let err = key.public_key().await.unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("EC_SIGN_P256_SHA256"), "{err}");
    assert!(err.message.contains("ecdsa-p384"), "{err}");
    let err = key.health().await.unwrap_err();
    assert!(err.message.contains("EC_SIGN_P256_SHA256"), "{err}");

    // A disabled version is named by health.
    let key = GcpKmsKey::new(&client, &pair_config(&p256, "ecdsa-p256", None)).unwrap();
    key.health().await.unwrap();
    fake.set_asymmetric_state(&p256, 1, "DISABLED");
    let err = key.health().await.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
}

async fn an_oaep_pair_decrypts_what_is_encrypted_to_its_public_key(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let client = connect(&env.config(&fake)).await.unwrap();
    for (id, gcp, hash) in [
        ("oaep256", "RSA_DECRYPT_OAEP_2048_SHA256", OaepHash::Sha256),
        ("oaep1", "RSA_DECRYPT_OAEP_3072_SHA1", OaepHash::Sha1),
    ] {
        let name = fake.add_asymmetric(id, gcp);
        let algorithm = if gcp.contains("3072") {
            "rsa-3072"
        } else {
            "rsa-2048"
        };
        let key = GcpKmsKey::new(&client, &pair_config(&name, algorithm, Some(hash.as_str()))).unwrap();
        assert_eq!(key.oaep_hash(), Some(hash));
        key.health().await.unwrap();
        let ciphertext = key.encrypt_asymmetric(DEK).await.unwrap();
        let bits = key.algorithm().unwrap().rsa_bits().unwrap() as usize;
        assert_eq!(ciphertext.len(), bits / 8, "the raw OAEP block");
        assert_ne!(
            key.encrypt_asymmetric(DEK).await.unwrap(),
            ciphertext,
            "OAEP is randomised"
        );
        assert_eq!(key.decrypt_asymmetric(&ciphertext).await.unwrap().expose(), DEK);

        let mut tampered = ciphertext.clone();
        tampered[10] ^= 1;
        let err = key.decrypt_asymmetric(&tampered).await.err().unwrap();
        eprintln!("{err}");
        assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
        assert_no_secret(
            &err.to_string(),
            &[("the plaintext", std::str::from_utf8(DEK).unwrap())],
            "a decrypt error",
        );

        let err = key.encrypt_asymmetric(&[7; 400]).await.unwrap_err();
        assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
        assert!(err.message.contains("at most"), "{err}");
        let err = key
            .sign(SignScheme::RsaPss(Hash::Sha256), SignInput::Message(b"m"))
            .await
            .unwrap_err();
        assert!(err.message.contains("does not sign"), "{err}");
    }
    // The config's hash must be the version's.
    let name = fake.add_asymmetric("oaep-other", "RSA_DECRYPT_OAEP_2048_SHA256");
    let key = GcpKmsKey::new(&client, &pair_config(&name, "rsa-2048", Some("sha1"))).unwrap();
    let err = key.encrypt_asymmetric(DEK).await.unwrap_err();
    assert!(err.message.contains("RSA_DECRYPT_OAEP_2048_SHA256"), "{err}");
    assert!(err.message.contains("rsa_oaep_hash = \"sha1\""), "{err}");
}

/// `keygen` through the backend kind, as `sealbroker keygen` drives it.
async fn keygen_makes_an_hsm_key_pair_and_rotation_a_new_version_of_it(env: Arc<Env>) {
    let fake = start_fake(env.tls.clone()).await;
    let backend: toml::Table = toml::from_str(&format!(
        "endpoint = {:?}\ncredentials_file = {:?}",
        fake.endpoint,
        env.credentials(&fake).display().to_string()
    ))
    .unwrap();
    let opened = sealbroker_backend_gcpckms::KIND
        .open(&backend, "backends.gcp", Profile::Hardened)
        .await
        .unwrap();
    let name = format!("{}/pki-root", KEY.rsplit_once('/').unwrap().0);
    let settings =
        |extra: &str| -> toml::Table { toml::from_str(&format!("key_name = {name:?}\n{extra}")).unwrap() };
    let made = opened
        .create_key(
            &settings("key_version = \"1\"\nalgorithm = \"ecdsa-p256\""),
            "keys.pki-root",
        )
        .await
        .unwrap();
    assert!(
        made.contains("EC_SIGN_P256_SHA256") && made.contains("HSM"),
        "{made}"
    );
    assert_eq!(
        fake.asymmetric_template(&name),
        Some((
            "ASYMMETRIC_SIGN".into(),
            "EC_SIGN_P256_SHA256".into(),
            "HSM".into()
        ))
    );
    let key = opened
        .key(
            &settings("key_version = \"1\"\nalgorithm = \"ecdsa-p256\""),
            "keys.pki-root",
        )
        .unwrap();
    key.health().await.unwrap();

    let again = opened
        .create_key(
            &settings("key_version = \"1\"\nalgorithm = \"ecdsa-p256\""),
            "keys.pki-root",
        )
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    let err = opened
        .create_key(
            &settings("key_version = \"2\"\nalgorithm = \"ecdsa-p256\""),
            "keys.other",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("key_version = \"1\""), "{err}");
    assert!(matches!(
        opened.create_key(&settings(""), "keys.sym").await,
        Err(KeygenError::Unsupported)
    ));
    let oaep = format!("{}/wrap", KEY.rsplit_once('/').unwrap().0);
    opened
        .create_key(
            &toml::from_str(&format!(
                "key_name = {oaep:?}\nkey_version = \"1\"\nalgorithm = \"rsa-3072\"\nmechanism = \"RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha1\""
            ))
            .unwrap(),
            "keys.wrap",
        )
        .await
        .unwrap();
    assert_eq!(
        fake.asymmetric_template(&oaep).unwrap().1,
        "RSA_DECRYPT_OAEP_3072_SHA1"
    );

    // A new broker version is a new Cloud KMS version of the same algorithm.
    let first = key.public_key().await.unwrap();
    let created = key.create_version(2).await.unwrap();
    assert_eq!(created.settings["key_version"], "2");
    let second = created.backend.public_key().await.unwrap();
    assert_eq!(second.algorithm, KeyAlgorithm::EcdsaP256);
    assert_ne!(second, first, "a new key pair");
    let scheme = SignScheme::Ecdsa(Hash::Sha256);
    let signature = created
        .backend
        .sign(scheme, SignInput::Message(b"m"))
        .await
        .unwrap();
    assert!(ring_verifies(&second, scheme, b"m", &signature));
    assert!(!ring_verifies(&first, scheme, b"m", &signature));
    assert_eq!(
        created.backend.key_identity(),
        format!("gcpckms:{name}/cryptoKeyVersions/2")
    );

    // Settings that do not fit are refused with their full path.
    let err = opened
        .key(&settings("algorithm = \"ecdsa-p256\""), "keys.pki-root")
        .err()
        .unwrap();
    assert_eq!(err.path, "keys.pki-root.key_version", "{err}");
    let err = opened
        .key(
            &settings("key_version = \"1\"\nalgorithm = \"ed25519\"\nmechanism = \"RSA_PKCS_OAEP\""),
            "keys.pki-root",
        )
        .err()
        .unwrap();
    assert_eq!(err.path, "keys.pki-root.mechanism", "{err}");
}

// ---------------------------------------------------------------- runner

type Test = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|env| Box::pin($name(env))) as Test)),*]
    };
}

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = pki(dir.path());
    // SAFETY: no other thread exists yet; the client's verifier reads this.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca) };
    unsafe { std::env::remove_var("SSL_CERT_DIR") };
    let env = Arc::new(Env { tls, dir });
    let all = tests![
        round_trip_over_tls_records_the_version_and_binds_aad,
        old_blobs_open_after_rotation_until_their_version_is_disabled,
        a_blob_from_another_key_is_refused,
        resource_exhausted_is_retried_honouring_retry_info,
        the_stand_in_answers_as_cloud_kms_does,
        a_crc32c_mismatch_is_refused_invalid_argument,
        a_checksum_refusal_on_decrypt_is_retried_not_called_tampering,
        a_service_that_never_answers_times_out_at_timeout_ms,
        unauthenticated_and_denied_are_permission_denied_naming_the_principal,
        a_refused_token_request_is_permission_denied,
        unknown_key_is_key_not_found,
        server_down_is_unavailable,
        an_untrusted_server_certificate_is_refused,
        create_version_makes_a_cloud_version_and_pins_the_new_key_to_it,
        create_version_is_permission_denied_without_the_create_permission,
        a_key_version_must_be_a_number,
        key_pairs_sign_what_ring_verifies_with_the_public_key_alone,
        a_scheme_or_input_the_version_cannot_take_is_refused_before_a_call,
        an_oaep_pair_decrypts_what_is_encrypted_to_its_public_key,
        keygen_makes_an_hsm_key_pair_and_rotation_a_new_version_of_it,
    ];
    let trials = all
        .into_iter()
        .map(|(name, test)| {
            let env = env.clone();
            libtest_mimic::Trial::test(name, move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let outcome = runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(60), tokio::spawn(test(env))).await
                });
                match outcome {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(panic)) => Err(format!("the test panicked: {panic}").into()),
                    Err(_) => Err("the test timed out after 60 s".into()),
                }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
