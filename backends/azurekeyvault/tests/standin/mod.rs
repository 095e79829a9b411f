//! The Key Vault stand-in: a small server written from the REST
//! reference (there is no Key Vault emulator), shared by this crate's tests
//! (`fake_keyvault.rs`) and the OpenBao drop-in end-to-end test
//! (`tests/tests/openbao_dropin.rs`, which includes this file).
//!
//! - `POST /keys/{name}/{version}/wrapkey` and `/unwrapkey` with real
//!   RSA-OAEP-256 (the `rsa` crate, test-only), `GET /keys/{name}[/{version}]`,
//!   `POST /keys/{name}/rotate`, Key Vault's JSON error body;
//! - key pairs (External Keys): `POST /keys/{name}/create` (RSA, RSA-HSM,
//!   EC, EC-HSM), `GET` of their JWK, and `sign`, `verify`, `encrypt`,
//!   `decrypt` on a version, with real keys made by aws-lc-rs (ring cannot
//!   sign a digest it did not compute): RS/PS 256-512 and ES256/ES384 over
//!   the digest sent (ECDSA as `r || s`, as Key Vault answers), RSA-OAEP and
//!   RSA-OAEP-256, `key_ops` enforced;
//! - the bearer challenge: a request without a token gets 401 and
//!   `WWW-Authenticate: Bearer authorization="…/{tenant}", resource="…"`;
//! - an Entra token endpoint (`/{tenant}/oauth2/v2.0/token`) for the client
//!   secret and workload identity (client assertion) grants, reached through
//!   `authority_host`.
//!
//! The vault is named [`VAULT_HOST`] and reached through 127.0.0.1; the
//! server's certificate (from [`pki`]) names it and `localhost`.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{Digest, SHA256, SHA384, SHA512};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{
    self as lc_sig, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    KeyPair as _, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use sealbroker_testkit::https_stub::{HttpsStub, StubListener, StubResponse};
use sealbroker_testkit::pki::{Leaf, TestCa};
use serde_json::{Value, json};

pub const VAULT_HOST: &str = "sealbroker.vault.azure.test";
pub const RESOURCE: &str = "https://vault.azure.test";
pub const KEY: &str = "unseal";
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";
pub const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJzZWFsYnJva2VyIjoidGVzdCJ9.access";
/// Must never show up in any error message.
pub const CLIENT_SECRET: &str = "sealbroker-client-secret-DO-NOT-LEAK";
/// The workload identity's federated token; must never show up either.
pub const FEDERATED_TOKEN: &str = "federated-DO-NOT-LEAK";
// ---------------------------------------------------------------- fake service

pub struct Version {
    pub id: String,
    pub key: RsaPrivateKey,
    pub enabled: bool,
}

/// A canned reply served before normal handling (failure injection).
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

#[derive(Default)]
pub struct State {
    /// Versions of [`KEY`]; the last one is current.
    pub versions: Vec<Version>,
    pub canned: VecDeque<Canned>,
    /// Vault requests (not token requests), including challenged ones.
    pub requests: usize,
    /// Vault requests that came without a token.
    pub challenged: usize,
    /// Unauthenticated requests that carried a body (the DEK must not leave
    /// before the client is authenticated).
    pub bodies_before_auth: usize,
    /// `METHOD /path` of every authenticated vault request.
    pub log: Vec<String>,
    /// 403 for every call, as when RBAC denies the role.
    pub deny: bool,
    /// Key pairs by name (lower case).
    pub pairs: BTreeMap<String, PairKey>,
}

/// A key pair and its versions; the last version is current.
pub struct PairKey {
    pub kty: String,
    pub key_ops: Vec<String>,
    pub exportable: bool,
    pub versions: Vec<PairVersion>,
}

pub struct PairVersion {
    pub id: String,
    pub enabled: bool,
    pub pair: Pair,
}

pub enum Pair {
    /// One RSA key, for signing and for OAEP.
    Rsa(RsaKeyPair, PrivateDecryptingKey),
    /// An ECDSA key answering `r || s`, and its curve's JWK name.
    Ec(EcdsaKeyPair, &'static str),
}

impl Pair {
    /// A fresh pair: `kty` RSA/RSA-HSM with `size` bits, or EC/EC-HSM on `crv`.
    pub fn generate(kty: &str, size: Option<u64>, crv: Option<&str>) -> Option<Pair> {
        match (kty, crv) {
            ("RSA" | "RSA-HSM", _) => {
                let size = match size.unwrap_or(2048) {
                    2048 => KeySize::Rsa2048,
                    3072 => KeySize::Rsa3072,
                    4096 => KeySize::Rsa4096,
                    _ => return None,
                };
                let signing = RsaKeyPair::generate(size).ok()?;
                let pkcs8 = signing.as_der().ok()?;
                let decrypting = PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref()).ok()?;
                Some(Pair::Rsa(signing, decrypting))
            }
            ("EC" | "EC-HSM", Some("P-256")) => Some(Pair::Ec(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).ok()?,
                "P-256",
            )),
            ("EC" | "EC-HSM", Some("P-384")) => Some(Pair::Ec(
                EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).ok()?,
                "P-384",
            )),
            _ => None,
        }
    }

    /// The public half as JWK members.
    fn jwk(&self, kty: &str) -> Value {
        match self {
            Pair::Rsa(signing, _) => {
                use rsa::pkcs1::DecodeRsaPublicKey;
                let public = rsa::RsaPublicKey::from_pkcs1_der(signing.public_key().as_ref()).unwrap();
                json!({
                    "kty": kty,
                    "n": B64URL.encode(public.n().to_bytes_be()),
                    "e": B64URL.encode(public.e().to_bytes_be()),
                })
            }
            Pair::Ec(pair, crv) => {
                let point = pair.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                json!({
                    "kty": kty,
                    "crv": crv,
                    "x": B64URL.encode(&point[1..1 + len]),
                    "y": B64URL.encode(&point[1 + len..]),
                })
            }
        }
    }
}

pub struct FakeVault {
    /// `https://sealbroker.vault.azure.test:PORT`
    pub vault_url: String,
    /// `https://localhost:PORT`, the Entra authority.
    pub authority: String,
    pub state: Arc<Mutex<State>>,
    pub tokens: Arc<AtomicUsize>,
    pub _server: HttpsStub,
}

pub fn new_version() -> Version {
    let mut rng = rand_core::OsRng;
    let key = RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).unwrap();
    Version {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        key,
        enabled: true,
    }
}

impl FakeVault {
    /// Rotates the key out of band, as the portal or a rotation policy would.
    pub fn rotate(&self) -> String {
        let version = new_version();
        let id = version.id.clone();
        self.state.lock().unwrap().versions.push(version);
        id
    }
    pub fn version_id(&self, n: usize) -> String {
        self.state.lock().unwrap().versions[n - 1].id.clone()
    }
    pub fn disable(&self, n: usize) {
        self.state.lock().unwrap().versions[n - 1].enabled = false;
    }
    pub fn push(&self, canned: Canned) {
        self.state.lock().unwrap().canned.push_back(canned);
    }
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

pub fn error_body(code: &str, message: &str, inner: Option<&str>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner {
        error["innererror"] = json!({"code": inner});
    }
    json!({ "error": error })
}

pub fn key_json(vault_url: &str, version: &Version) -> Value {
    let public = version.key.to_public_key();
    json!({
        "key": {
            "kid": format!("{vault_url}/keys/{KEY}/{}", version.id),
            "kty": "RSA",
            "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
            "n": B64URL.encode(public.n().to_bytes_be()),
            "e": B64URL.encode(public.e().to_bytes_be()),
        },
        "attributes": {
            "enabled": version.enabled,
            "created": 1_700_000_000,
            "updated": 1_700_000_000,
            "recoveryLevel": "Recoverable+Purgeable",
        },
    })
}

pub fn b64url(v: &Value, field: &str) -> Option<Vec<u8>> {
    let text = v.get(field)?.as_str()?;
    B64URL.decode(text.trim_end_matches('=')).ok()
}

pub type Reply = (u16, Vec<(&'static str, String)>, Value);

fn bad_parameter(message: &str) -> Reply {
    (400, vec![], error_body("BadParameter", message, None))
}

fn new_version_id() -> String {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).unwrap();
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn pair_json(vault_url: &str, name: &str, key: &PairKey, version: &PairVersion) -> Value {
    let mut jwk = version.pair.jwk(&key.kty);
    jwk["kid"] = json!(format!("{vault_url}/keys/{name}/{}", version.id));
    jwk["key_ops"] = json!(key.key_ops);
    json!({
        "key": jwk,
        "attributes": {
            "enabled": version.enabled,
            "exportable": key.exportable,
            "created": 1_700_000_000,
            "updated": 1_700_000_000,
            "recoveryLevel": "Recoverable+Purgeable",
        },
    })
}

impl FakeVault {
    /// The id of version `n` (1-based) of key pair `name`.
    pub fn pair_version(&self, name: &str, n: usize) -> String {
        self.state.lock().unwrap().pairs[&name.to_ascii_lowercase()].versions[n - 1]
            .id
            .clone()
    }

    /// Makes key pair `name` in the vault, as the portal or `az` would.
    pub fn add_key_pair(&self, name: &str, kty: &str, size: Option<u64>, crv: Option<&str>, ops: &[&str]) {
        let pair = Pair::generate(kty, size, crv).expect("a key pair the stand-in makes");
        self.state.lock().unwrap().pairs.insert(
            name.to_ascii_lowercase(),
            PairKey {
                kty: kty.into(),
                key_ops: ops.iter().map(|o| o.to_string()).collect(),
                exportable: false,
                versions: vec![PairVersion {
                    id: new_version_id(),
                    enabled: true,
                    pair,
                }],
            },
        );
    }
}

/// `POST /keys/{name}/create`: a new key (or, as Key Vault does for an
/// existing name, a new version of it).
fn create_pair(state: &mut State, vault_url: &str, name: &str, body: &[u8]) -> Reply {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kty = request.get("kty").and_then(Value::as_str).unwrap_or("");
    let size = request.get("key_size").and_then(Value::as_u64);
    let crv = request.get("crv").and_then(Value::as_str);
    let Some(pair) = Pair::generate(kty, size, crv) else {
        return bad_parameter(&format!(
            "The key type {kty:?} with size {size:?} and curve {crv:?} is not supported."
        ));
    };
    let ops: Vec<String> = request
        .get("key_ops")
        .and_then(Value::as_array)
        .map(|ops| ops.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_else(|| {
            ["sign", "verify", "encrypt", "decrypt", "wrapKey", "unwrapKey"]
                .map(String::from)
                .to_vec()
        });
    let exportable = request
        .pointer("/attributes/exportable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let version = PairVersion {
        id: new_version_id(),
        enabled: true,
        pair,
    };
    let key = state
        .pairs
        .entry(name.to_ascii_lowercase())
        .or_insert_with(|| PairKey {
            kty: kty.into(),
            key_ops: ops.clone(),
            exportable,
            versions: vec![],
        });
    key.kty = kty.into();
    key.key_ops = ops;
    key.exportable = exportable;
    key.versions.push(version);
    let reply = pair_json(vault_url, name, key, key.versions.last().unwrap());
    (200, vec![], reply)
}

fn sign_digest(pair: &Pair, alg: &str, digest: &[u8]) -> Result<Vec<u8>, String> {
    let hash = match &alg[2..] {
        "256" => &SHA256,
        "384" => &SHA384,
        "512" => &SHA512,
        _ => return Err(format!("Invalid algorithm {alg}.")),
    };
    let digest = Digest::import_less_safe(digest, hash).map_err(|_| "Invalid digest length.".to_owned())?;
    match (pair, &alg[..2]) {
        (Pair::Rsa(key, _), "RS" | "PS") => {
            let encoding: &'static dyn lc_sig::RsaEncoding = match alg {
                "RS256" => &lc_sig::RSA_PKCS1_SHA256,
                "RS384" => &lc_sig::RSA_PKCS1_SHA384,
                "RS512" => &lc_sig::RSA_PKCS1_SHA512,
                "PS256" => &lc_sig::RSA_PSS_SHA256,
                "PS384" => &lc_sig::RSA_PSS_SHA384,
                _ => &lc_sig::RSA_PSS_SHA512,
            };
            let mut signature = vec![0u8; key.public_modulus_len()];
            key.sign_digest(encoding, &digest, &mut signature)
                .map_err(|_| "Signing failed.".to_owned())?;
            Ok(signature)
        }
        (Pair::Ec(key, crv), "ES") if (*crv == "P-256") == (alg == "ES256") && alg != "ES512" => key
            .sign_digest(&digest)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| "Signing failed.".to_owned()),
        _ => Err(format!("Invalid algorithm {alg} for this key.")),
    }
}

fn verify_digest(pair: &Pair, alg: &str, digest: &[u8], signature: &[u8]) -> Result<bool, String> {
    let hash = match alg.get(2..) {
        Some("256") => &SHA256,
        Some("384") => &SHA384,
        Some("512") => &SHA512,
        _ => return Err(format!("Invalid algorithm {alg}.")),
    };
    let digest = Digest::import_less_safe(digest, hash).map_err(|_| "Invalid digest length.".to_owned())?;
    let (algorithm, public): (&'static dyn lc_sig::VerificationAlgorithm, Vec<u8>) = match (pair, alg) {
        (Pair::Rsa(key, _), _) => {
            let public = key.public_key().as_ref().to_vec();
            let algorithm: &'static dyn lc_sig::VerificationAlgorithm = match alg {
                "RS256" => &lc_sig::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &lc_sig::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &lc_sig::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &lc_sig::RSA_PSS_2048_8192_SHA256,
                "PS384" => &lc_sig::RSA_PSS_2048_8192_SHA384,
                "PS512" => &lc_sig::RSA_PSS_2048_8192_SHA512,
                _ => return Err(format!("Invalid algorithm {alg} for this key.")),
            };
            (algorithm, public)
        }
        (Pair::Ec(key, "P-256"), "ES256") => (
            &lc_sig::ECDSA_P256_SHA256_FIXED,
            key.public_key().as_ref().to_vec(),
        ),
        (Pair::Ec(key, "P-384"), "ES384") => (
            &lc_sig::ECDSA_P384_SHA384_FIXED,
            key.public_key().as_ref().to_vec(),
        ),
        _ => return Err(format!("Invalid algorithm {alg} for this key.")),
    };
    Ok(lc_sig::UnparsedPublicKey::new(algorithm, public)
        .verify_digest(&digest, signature)
        .is_ok())
}

/// Operations on a key pair's version.
fn handle_pair(
    state: &mut State,
    vault_url: &str,
    name: &str,
    rest: &[&str],
    method: &str,
    body: &[u8],
) -> Reply {
    let key = state.pairs.get_mut(&name.to_ascii_lowercase()).unwrap();
    let (version, operation) = match (method, rest) {
        ("GET", []) => (None, "get"),
        ("GET", [v]) => (Some(*v), "get"),
        ("POST", ["rotate"]) => {
            let current = &key.versions.last().unwrap().pair;
            let (kty, size, crv) = match current {
                Pair::Rsa(k, _) => (key.kty.clone(), Some(k.public_modulus_len() as u64 * 8), None),
                Pair::Ec(_, crv) => (key.kty.clone(), None, Some(*crv)),
            };
            let pair = Pair::generate(&kty, size, crv).unwrap();
            key.versions.push(PairVersion {
                id: new_version_id(),
                enabled: true,
                pair,
            });
            return (
                200,
                vec![],
                pair_json(vault_url, name, key, key.versions.last().unwrap()),
            );
        }
        ("POST", [op]) => (None, *op),
        ("POST", [v, op]) => (Some(*v), *op),
        _ => return (405, vec![], error_body("BadRequest", "no such operation", None)),
    };
    let index = match version {
        None => key.versions.len() - 1,
        Some(id) => match key.versions.iter().position(|v| v.id == id) {
            Some(i) => i,
            None => {
                return (
                    404,
                    vec![],
                    error_body(
                        "KeyNotFound",
                        &format!("A key with (name/id) {name}/{id} was not found in this key vault."),
                        None,
                    ),
                );
            }
        },
    };
    let entry = &key.versions[index];
    if operation == "get" {
        return (200, vec![], pair_json(vault_url, name, key, entry));
    }
    if !entry.enabled {
        return (
            403,
            vec![],
            error_body(
                "Forbidden",
                &format!("Operation {operation} is not allowed on a disabled key."),
                Some("KeyDisabled"),
            ),
        );
    }
    let op_name = match operation {
        "sign" => "sign",
        "verify" => "verify",
        "encrypt" => "encrypt",
        "decrypt" => "decrypt",
        "wrapkey" => "wrapKey",
        "unwrapkey" => "unwrapKey",
        _ => return (405, vec![], error_body("BadRequest", "no such operation", None)),
    };
    if !key.key_ops.iter().any(|op| op == op_name) {
        return (
            403,
            vec![],
            error_body(
                "Forbidden",
                &format!("Operation {op_name} is not permitted on this key."),
                Some("KeyOperationForbidden"),
            ),
        );
    }
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let alg = request.get("alg").and_then(Value::as_str).unwrap_or("");
    let kid = format!("{vault_url}/keys/{name}/{}", entry.id);
    match operation {
        "sign" => {
            let Some(digest) = b64url(&request, "value") else {
                return bad_parameter("Property value is required.");
            };
            match sign_digest(&entry.pair, alg, &digest) {
                Ok(signature) => (
                    200,
                    vec![],
                    json!({"kid": kid, "value": B64URL.encode(signature)}),
                ),
                Err(why) => bad_parameter(&why),
            }
        }
        "verify" => {
            let (Some(digest), Some(signature)) = (b64url(&request, "digest"), b64url(&request, "value"))
            else {
                return bad_parameter("Properties digest and value are required.");
            };
            match verify_digest(&entry.pair, alg, &digest, &signature) {
                Ok(valid) => (200, vec![], json!({"value": valid})),
                Err(why) => bad_parameter(&why),
            }
        }
        "encrypt" | "decrypt" => {
            let Pair::Rsa(_, private) = &entry.pair else {
                return bad_parameter("Invalid algorithm for an EC key.");
            };
            let algorithm: &'static OaepAlgorithm = match alg {
                "RSA-OAEP" => &OAEP_SHA1_MGF1SHA1,
                "RSA-OAEP-256" => &OAEP_SHA256_MGF1SHA256,
                _ => return bad_parameter("Invalid algorithm."),
            };
            let Some(value) = b64url(&request, "value") else {
                return bad_parameter("Property value is required.");
            };
            if operation == "encrypt" {
                let public = OaepPublicEncryptingKey::new(private.public_key()).unwrap();
                let mut out = vec![0u8; public.ciphertext_size()];
                match public.encrypt(algorithm, &value, &mut out, None) {
                    Ok(ciphertext) => (
                        200,
                        vec![],
                        json!({"kid": kid, "value": B64URL.encode(ciphertext)}),
                    ),
                    Err(_) => bad_parameter("The plaintext is too long for this key and algorithm."),
                }
            } else {
                let opener = OaepPrivateDecryptingKey::new(private.clone()).unwrap();
                let mut out = vec![0u8; opener.min_output_size()];
                match opener.decrypt(algorithm, &value, &mut out, None) {
                    Ok(plaintext) => (
                        200,
                        vec![],
                        json!({"kid": kid, "value": B64URL.encode(plaintext)}),
                    ),
                    Err(_) => bad_parameter("Error while decrypting with key."),
                }
            }
        }
        _ => bad_parameter("This stand-in does not wrap with key pairs."),
    }
}

pub fn handle_vault(
    fake: &Shared,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut state = fake.state.lock().unwrap();
    state.requests += 1;
    if auth != Some(&format!("Bearer {TOKEN}")) {
        state.challenged += 1;
        if !body.is_empty() {
            state.bodies_before_auth += 1;
        }
        let challenge = format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{TENANT}\", resource=\"{RESOURCE}\""
        );
        return (
            401,
            vec![("WWW-Authenticate", challenge)],
            error_body(
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                None,
            ),
        );
    }
    state.log.push(format!("{method} {path}"));
    if let Some(canned) = state.canned.pop_front() {
        return (canned.status, canned.headers, canned.body);
    }
    if !query.split('&').any(|p| p.starts_with("api-version=")) {
        return (
            400,
            vec![],
            error_body("BadParameter", "api-version is missing", None),
        );
    }
    if state.deny {
        return (
            403,
            vec![],
            error_body(
                "Forbidden",
                &format!(
                    "Caller is not authorized to perform action on resource. Caller: appid={CLIENT_ID}; \
                     Action: 'Microsoft.KeyVault/vaults/keys/wrap/action'"
                ),
                Some("ForbiddenByRbac"),
            ),
        );
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (name, rest) = match segments.as_slice() {
        ["keys", name, rest @ ..] => (*name, rest),
        _ => return (404, vec![], error_body("NotFound", "no such path", None)),
    };
    if rest == ["create"] && method == "POST" {
        let vault_url = fake.vault_url.clone();
        return create_pair(&mut state, &vault_url, name, body);
    }
    if state.pairs.contains_key(&name.to_ascii_lowercase()) {
        let vault_url = fake.vault_url.clone();
        return handle_pair(&mut state, &vault_url, name, rest, method, body);
    }
    if !name.eq_ignore_ascii_case(KEY) {
        return (
            404,
            vec![],
            error_body(
                "KeyNotFound",
                &format!("A key with (name/id) {name} was not found in this key vault."),
                None,
            ),
        );
    }
    let find = |state: &State, id: Option<&str>| match id {
        None => state.versions.len().checked_sub(1),
        Some(id) => state.versions.iter().position(|v| v.id == id),
    };
    let not_found = |id: &str| {
        (
            404,
            vec![],
            error_body(
                "KeyNotFound",
                &format!("A key with (name/id) {name}/{id} was not found in this key vault."),
                None,
            ),
        )
    };
    let (version, operation) = match (method, rest) {
        ("GET", []) => (None, "get"),
        ("GET", [v]) => (Some(*v), "get"),
        ("POST", ["rotate"]) => {
            let version = new_version();
            let reply = key_json(&fake.vault_url, &version);
            state.versions.push(version);
            return (200, vec![], reply);
        }
        ("POST", [op]) => (None, *op),
        ("POST", [v, op]) => (Some(*v), *op),
        _ => return (405, vec![], error_body("BadRequest", "no such operation", None)),
    };
    let Some(index) = find(&state, version) else {
        return not_found(version.unwrap_or(""));
    };
    let entry = &state.versions[index];
    if operation == "get" {
        return (200, vec![], key_json(&fake.vault_url, entry));
    }
    if !entry.enabled {
        return (
            403,
            vec![],
            error_body(
                "Forbidden",
                &format!("Operation {operation} is not allowed on a disabled key."),
                Some("KeyDisabled"),
            ),
        );
    }
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if request.get("alg").and_then(Value::as_str) != Some("RSA-OAEP-256") {
        return (
            400,
            vec![],
            error_body("BadParameter", "Invalid algorithm.", None),
        );
    }
    let Some(value) = b64url(&request, "value") else {
        return (
            400,
            vec![],
            error_body("BadParameter", "Property value is required.", None),
        );
    };
    let kid = format!("{}/keys/{KEY}/{}", fake.vault_url, entry.id);
    let mut rng = rand_core::OsRng;
    match operation {
        "wrapkey" => {
            let wrapped = entry
                .key
                .to_public_key()
                .encrypt(&mut rng, Oaep::new::<sha2::Sha256>(), &value)
                .unwrap();
            (200, vec![], json!({"kid": kid, "value": B64URL.encode(wrapped)}))
        }
        "unwrapkey" => match entry.key.decrypt(Oaep::new::<sha2::Sha256>(), &value) {
            Ok(key) => (200, vec![], json!({"kid": kid, "value": B64URL.encode(key)})),
            Err(_) => (
                400,
                vec![],
                error_body("BadParameter", "Error while decrypting with key.", None),
            ),
        },
        _ => (405, vec![], error_body("BadRequest", "no such operation", None)),
    }
}

pub fn handle_token(fake: &Shared, path: &str, body: &[u8]) -> Reply {
    fake.tokens.fetch_add(1, Ordering::SeqCst);
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let refused = |code: u32, description: &str| {
        (
            401,
            vec![],
            json!({"error": "invalid_client", "error_description": description, "error_codes": [code]}),
        )
    };
    if path != format!("/{TENANT}/oauth2/v2.0/token") {
        return refused(90002, "AADSTS90002: Tenant not found.");
    }
    if field("client_id") != CLIENT_ID || field("grant_type") != "client_credentials" {
        return refused(700016, "AADSTS700016: Application not found in the directory.");
    }
    if field("scope") != format!("{RESOURCE}/.default") {
        return refused(500011, "AADSTS500011: The resource principal was not found.");
    }
    let secret_ok = field("client_secret") == CLIENT_SECRET;
    let assertion_ok = field("client_assertion") == FEDERATED_TOKEN
        && field("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    if !(secret_ok || assertion_ok) {
        return refused(7000215, "AADSTS7000215: Invalid client secret provided.");
    }
    (
        200,
        vec![],
        json!({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": TOKEN}),
    )
}

pub struct Shared {
    pub vault_url: String,
    pub state: Arc<Mutex<State>>,
    pub tokens: Arc<AtomicUsize>,
}

pub async fn start_fake(tls: Arc<rustls::ServerConfig>) -> FakeVault {
    let listener = StubListener::bind().await;
    let port = listener.port();
    let vault_url = format!("https://{VAULT_HOST}:{port}");
    let shared = Arc::new(Shared {
        vault_url: vault_url.clone(),
        state: Arc::new(Mutex::new(State {
            versions: vec![new_version()],
            ..Default::default()
        })),
        tokens: Arc::new(AtomicUsize::new(0)),
    });
    let server = shared.clone();
    let stub = listener.serve(tls, move |request| {
        // Which name the client asked for decides who answers.
        let (status, headers, reply) = if request.server_name.as_deref() == Some(VAULT_HOST) {
            handle_vault(
                &server,
                &request.method,
                &request.path,
                &request.query,
                request.header("authorization"),
                &request.body,
            )
        } else {
            handle_token(&server, &request.path, &request.body)
        };
        StubResponse::json(status, &reply).with_headers(headers)
    });
    FakeVault {
        vault_url,
        authority: format!("https://localhost:{port}"),
        state: shared.state.clone(),
        tokens: shared.tokens.clone(),
        _server: stub,
    }
}

/// Makes a CA (its PEM in `dir/ca.pem`) and a server certificate for the
/// vault's name and `localhost`.
pub fn pki(dir: &Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let ca = TestCa::new("sealbroker azure test CA");
    let tls = ca
        .issue(&Leaf::server(&[VAULT_HOST, "localhost"]))
        .server_config();
    (ca.write(&dir.join("ca.pem")), tls)
}
