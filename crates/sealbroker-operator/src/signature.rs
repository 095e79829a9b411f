//! Image signatures: under Hardened, the controller applies nothing for a
//! SealBroker until its image carries a signature by a key the operator
//! trusts (`--image-trust-key`), and refuses it otherwise. There is no
//! warn-only mode.
//!
//! The format is cosign's key-pair format, made by images/sign.py: a
//! "simple signing" JSON payload naming the repository and the manifest
//! digest, signed with ECDSA P-256 / SHA-256, stored in the registry beside
//! the image as the manifest tagged `sha256-<hex>.sig` (the payload is its
//! layer, the signature the layer's `dev.cosignproject.cosign/signature`
//! annotation). [`verify_payload`] is the pure check; [`RegistryVerifier`]
//! fetches what it checks.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use futures::future::BoxFuture;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

/// The payload's media type and the annotation holding the signature.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// A signature manifest or payload larger than this is refused unread.
const MAX_DOCUMENT: usize = 1 << 20;

/// Why an image is refused. Each names the image and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{0:?} is not an image pinned by digest with its registry (host/repository@sha256:<64 hex>)")]
    NotPinned(String),
    #[error("the operator has no trusted key: {0}")]
    NoTrustedKey(String),
    #[error("{image} is not signed: the registry has no signature {tag}")]
    Unsigned { image: String, tag: String },
    #[error("{image} is not signed by the trusted key: {reasons}")]
    NotTrusted { image: String, reasons: String },
    #[error("{image}: registry {registry}: {message}")]
    Registry {
        image: String,
        registry: String,
        message: String,
    },
}

/// `host[:port]/repository[:tag]@sha256:<hex>`, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
}

impl ImageRef {
    /// Only references pinned by digest whose first component names a
    /// registry (has a `.` or a `:`, or is `localhost`).
    pub fn parse(image: &str) -> Result<ImageRef, SignatureError> {
        let refused = || SignatureError::NotPinned(image.to_owned());
        let (name, digest) = image.rsplit_once('@').ok_or_else(refused)?;
        let hex = digest.strip_prefix("sha256:").ok_or_else(refused)?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(refused());
        }
        let (registry, path) = name.split_once('/').ok_or_else(refused)?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(refused());
        }
        // A tag beside the digest is ignored, as every puller does.
        let repository = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => path,
        };
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if repository.is_empty() || !repository.chars().all(valid) {
            return Err(refused());
        }
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            digest: digest.to_owned(),
        })
    }

    /// What the payload's `docker-reference` names: `registry/repository`.
    pub fn docker_reference(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag the signature manifest is stored under.
    pub fn signature_tag(&self) -> String {
        format!("{}.sig", self.digest.replace(':', "-"))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.docker_reference(), self.digest)
    }
}

/// An ECDSA P-256 public key: the one signatures must verify with.
#[derive(Clone)]
pub struct TrustedKey {
    point: Vec<u8>,
}

/// The DER SubjectPublicKeyInfo prefix of every uncompressed P-256 key:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl TrustedKey {
    /// A PEM `PUBLIC KEY` (SPKI) holding an ECDSA P-256 key, as
    /// `images/sign.py keygen` and `cosign generate-key-pair` write it.
    pub fn from_pem(text: &str) -> Result<TrustedKey, SignatureError> {
        let bad = |why: &str| {
            SignatureError::NoTrustedKey(format!(
                "the trusted key is not a PEM ECDSA P-256 public key: {why}"
            ))
        };
        let body = text
            .split("-----BEGIN PUBLIC KEY-----")
            .nth(1)
            .and_then(|rest| rest.split("-----END PUBLIC KEY-----").next())
            .ok_or_else(|| bad("no PUBLIC KEY block"))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.split_whitespace().collect::<String>())
            .map_err(|e| bad(&e.to_string()))?;
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(TrustedKey {
                point: point.to_vec(),
            }),
            _ => Err(bad("not an uncompressed P-256 SubjectPublicKeyInfo")),
        }
    }
}

/// Checks one signature: `signature_b64` verifies over `payload` with `key`,
/// and the payload names `image`'s repository and digest. Returns why not.
pub fn verify_payload(
    key: &TrustedKey,
    image: &ImageRef,
    payload: &[u8],
    signature_b64: &str,
) -> Result<(), String> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|e| format!("the signature is not base64 ({e})"))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.point)
        .verify(payload, &signature)
        .map_err(|_| "the signature does not verify with the trusted key".to_owned())?;
    // Only a verified payload is parsed.
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("the signed payload is not JSON ({e})"))?;
    let critical = &value["critical"];
    if critical["type"] != PAYLOAD_TYPE {
        return Err(format!(
            "the signed payload's type is {}, not {PAYLOAD_TYPE:?}",
            critical["type"]
        ));
    }
    let digest = critical["image"]["docker-manifest-digest"]
        .as_str()
        .unwrap_or_default();
    if digest != image.digest {
        return Err(format!("the signature is for {digest:?}, not {}", image.digest));
    }
    let identity = critical["identity"]["docker-reference"]
        .as_str()
        .unwrap_or_default();
    if identity != image.docker_reference() {
        return Err(format!(
            "the signature names {identity:?}, not {}",
            image.docker_reference()
        ));
    }
    Ok(())
}

/// Checks a detached signature over a file's bytes, in `cosign sign-blob
/// --key`'s format (base64 of the DER ECDSA P-256/SHA-256 signature), as
/// `images/sign.py sign-blob` makes it for the released plugin binary.
/// Returns why not.
pub fn verify_blob(key: &TrustedKey, data: &[u8], signature_b64: &str) -> Result<(), String> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|e| format!("the signature is not base64 ({e})"))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.point)
        .verify(data, &signature)
        .map_err(|_| "the signature does not verify with the trusted key over these bytes".to_owned())
}

/// Decides whether an image may run. The controller asks it for every
/// Hardened SealBroker before applying anything.
pub trait ImageVerifier: Send + Sync {
    fn verify<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), SignatureError>>;
}

/// Refuses every image, saying why: the operator was started without a
/// usable trusted key.
pub struct RefuseAll(pub String);

impl ImageVerifier for RefuseAll {
    fn verify<'a>(&'a self, _image: &'a str) -> BoxFuture<'a, Result<(), SignatureError>> {
        Box::pin(async move { Err(SignatureError::NoTrustedKey(self.0.clone())) })
    }
}

/// Fetches an image's signatures from its registry (anonymously, or with
/// the registry's anonymous bearer token) and verifies them with the key.
pub struct RegistryVerifier {
    key: TrustedKey,
    http: reqwest::Client,
    /// Registries (`host:port`) spoken to over plain HTTP: loopback test
    /// registries only.
    plain_http: Vec<String>,
}

impl RegistryVerifier {
    pub fn new(key: TrustedKey, plain_http: Vec<String>) -> Result<RegistryVerifier, SignatureError> {
        let no_client =
            |e: String| SignatureError::NoTrustedKey(format!("cannot build the registry client: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
            .map_err(|e| no_client(e.to_string()))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| no_client(e.to_string()))?
            .dangerous()
            // Not dangerous: the platform verifier does full WebPKI validation.
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| no_client(e.to_string()))?;
        Ok(RegistryVerifier {
            key,
            http,
            plain_http,
        })
    }

    fn base(&self, image: &ImageRef) -> String {
        let scheme = if self.plain_http.iter().any(|r| r == &image.registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}", image.registry, image.repository)
    }

    /// GETs `url`, following the registry's anonymous token challenge once.
    /// Returns the status and at most [`MAX_DOCUMENT`] bytes of body.
    async fn get(&self, image: &ImageRef, url: &str, accept: &str) -> Result<(u16, Vec<u8>), SignatureError> {
        let failed = |message: String| SignatureError::Registry {
            image: image.to_string(),
            registry: image.registry.clone(),
            message,
        };
        let mut token: Option<String> = None;
        for _ in 0..2 {
            let mut request = self.http.get(url).header("Accept", accept);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                .map_err(|e| failed(format!("GET {url}: {e}")))?;
            let status = response.status().as_u16();
            if status == 401 && token.is_none() {
                let challenge = response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                token = Some(self.anonymous_token(&challenge).await.map_err(failed)?);
                continue;
            }
            if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
                return Err(failed(format!(
                    "GET {url}: the answer is larger than {MAX_DOCUMENT} bytes"
                )));
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| failed(format!("GET {url}: {e}")))?;
            if body.len() > MAX_DOCUMENT {
                return Err(failed(format!(
                    "GET {url}: the answer is larger than {MAX_DOCUMENT} bytes"
                )));
            }
            return Ok((status, body.to_vec()));
        }
        Err(failed(format!("GET {url}: refused the anonymous token (401)")))
    }

    /// The token a `Bearer realm=...,service=...,scope=...` challenge hands
    /// anonymous pullers.
    async fn anonymous_token(&self, challenge: &str) -> Result<String, String> {
        let params = challenge.strip_prefix("Bearer ").ok_or_else(|| {
            format!("asks for credentials ({challenge:?}); only anonymous pulls are supported")
        })?;
        let field = |name: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let realm =
            field("realm").ok_or_else(|| format!("a token challenge without realm: {challenge:?}"))?;
        let mut query = Vec::new();
        for name in ["service", "scope"] {
            if let Some(value) = field(name) {
                query.push((name, value));
            }
        }
        let url = reqwest::Url::parse_with_params(&realm, &query)
            .map_err(|e| format!("token realm {realm:?}: {e}"))?;
        let body = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("token from {realm}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("token from {realm}: {e}"))?;
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("token from {realm}: not JSON ({e})"))?;
        answer["token"]
            .as_str()
            .or(answer["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("token from {realm}: the answer holds no token"))
    }

    async fn verify_ref(&self, image: &ImageRef) -> Result<(), SignatureError> {
        let tag = image.signature_tag();
        let manifest_url = format!("{}/manifests/{tag}", self.base(image));
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        let (status, body) = self.get(image, &manifest_url, accept).await?;
        let registry_error = |message: String| SignatureError::Registry {
            image: image.to_string(),
            registry: image.registry.clone(),
            message,
        };
        match status {
            200 => {}
            404 => {
                return Err(SignatureError::Unsigned {
                    image: image.to_string(),
                    tag,
                });
            }
            other => return Err(registry_error(format!("GET {manifest_url}: status {other}"))),
        }
        let manifest: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| registry_error(format!("the signature manifest {tag} is not JSON ({e})")))?;
        let mut reasons = Vec::new();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let Some(signature) = layer["annotations"][SIGNATURE_ANNOTATION].as_str() else {
                continue;
            };
            if layer["mediaType"] != PAYLOAD_MEDIA_TYPE {
                reasons.push(format!(
                    "a layer of media type {} is not a signed payload",
                    layer["mediaType"]
                ));
                continue;
            }
            let digest = layer["digest"].as_str().unwrap_or_default();
            let (status, payload) = self
                .get(image, &format!("{}/blobs/{digest}", self.base(image)), "*/*")
                .await?;
            if status != 200 {
                reasons.push(format!(
                    "the payload {digest} could not be fetched (status {status})"
                ));
                continue;
            }
            let actual = format!(
                "sha256:{}",
                hex(ring::digest::digest(&ring::digest::SHA256, &payload).as_ref())
            );
            if actual != digest {
                reasons.push(format!("the payload {digest} has digest {actual}"));
                continue;
            }
            match verify_payload(&self.key, image, &payload, signature) {
                Ok(()) => return Ok(()),
                Err(reason) => reasons.push(reason),
            }
        }
        if reasons.is_empty() {
            reasons.push(format!("{tag} holds no signature"));
        }
        Err(SignatureError::NotTrusted {
            image: image.to_string(),
            reasons: reasons.join("; "),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ImageVerifier for RegistryVerifier {
    fn verify<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), SignatureError>> {
        Box::pin(async move { self.verify_ref(&ImageRef::parse(image)?).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    const DIGEST: &str = "sha256:fe3a4ccfef220971f1119d2a912286a68a0524d0bd860bbc1c1667091d35c494";

    fn key_pair() -> (EcdsaKeyPair, TrustedKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(spki)
        );
        (pair, TrustedKey::from_pem(&pem).unwrap())
    }

    fn payload(reference: &str, digest: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE}, "optional": null}))
        .unwrap()
    }

    fn sign(pair: &EcdsaKeyPair, payload: &[u8]) -> String {
        let signature = pair.sign(&SystemRandom::new(), payload).unwrap();
        base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
    }

    fn image() -> ImageRef {
        ImageRef::parse(&format!("registry.example:5000/team/sealbroker:1.0@{DIGEST}")).unwrap()
    }

    #[test]
    fn a_signature_by_the_trusted_key_for_this_digest_verifies() {
        let (pair, key) = key_pair();
        let payload = payload("registry.example:5000/team/sealbroker", DIGEST);
        verify_payload(&key, &image(), &payload, &sign(&pair, &payload)).unwrap();
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let (pair, _) = key_pair();
        let (_, trusted) = key_pair();
        let payload = payload("registry.example:5000/team/sealbroker", DIGEST);
        let why = verify_payload(&trusted, &image(), &payload, &sign(&pair, &payload)).unwrap_err();
        assert!(why.contains("does not verify"), "{why}");
    }

    #[test]
    fn a_signature_for_another_digest_or_repository_is_refused() {
        let (pair, key) = key_pair();
        let other = format!("sha256:{}", "0".repeat(64));
        let payload_a = payload("registry.example:5000/team/sealbroker", &other);
        let why = verify_payload(&key, &image(), &payload_a, &sign(&pair, &payload_a)).unwrap_err();
        assert!(why.contains("is for"), "{why}");
        let payload_b = payload("registry.example:5000/team/other", DIGEST);
        let why = verify_payload(&key, &image(), &payload_b, &sign(&pair, &payload_b)).unwrap_err();
        assert!(why.contains("names"), "{why}");
    }

    #[test]
    fn a_payload_changed_after_signing_is_refused() {
        let (pair, key) = key_pair();
        let payload = payload("registry.example:5000/team/sealbroker", DIGEST);
        let signature = sign(&pair, &payload);
        let mut changed = payload.clone();
        changed.push(b' ');
        assert!(verify_payload(&key, &image(), &changed, &signature).is_err());
    }

    #[test]
    fn only_digest_pinned_references_with_a_registry_are_verifiable() {
        let parsed = image();
        assert_eq!(parsed.registry, "registry.example:5000");
        assert_eq!(parsed.repository, "team/sealbroker");
        assert_eq!(parsed.signature_tag(), format!("sha256-{}.sig", &DIGEST[7..]));
        for refused in [
            "registry.example/sealbroker:1.0".to_owned(),
            format!("sealbroker@{DIGEST}"),
            format!("library/sealbroker@{DIGEST}"),
            "registry.example/sealbroker@sha256:abc".to_owned(),
        ] {
            assert!(
                matches!(ImageRef::parse(&refused), Err(SignatureError::NotPinned(_))),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_detached_signature_verifies_only_over_the_signed_bytes_with_the_trusted_key() {
        let (pair, key) = key_pair();
        let binary = b"\x7fELF the plugin binary".to_vec();
        let signature = sign(&pair, &binary);
        verify_blob(&key, &binary, &signature).unwrap();
        verify_blob(&key, &binary, &format!("{signature}\n")).unwrap();

        let mut tampered = binary.clone();
        tampered[5] ^= 1;
        let err = verify_blob(&key, &tampered, &signature).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");

        let (_, other) = key_pair();
        let err = verify_blob(&other, &binary, &signature).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");

        let err = verify_blob(&key, &binary, "not base64!").unwrap_err();
        assert!(err.contains("not base64"), "{err}");
    }

    #[test]
    fn a_key_that_is_not_p256_is_refused() {
        assert!(TrustedKey::from_pem("not a key").is_err());
        let ed25519 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(TrustedKey::from_pem(ed25519).is_err());
    }
}
