//! Asymmetric keys: what they are, how a caller asks for a signature, and
//! their public halves. They back OpenBao's External Keys (PKI and transit
//! signing with a key that never leaves the HSM) and the native Sign,
//! Verify and GetPublicKey calls.
//!
//! Nothing here holds a private key: backends sign. What lives here is the
//! vocabulary every door and backend shares, the DER shapes of public keys
//! and signatures (written and read with `yasna`), and verification against
//! a public key with `ring`.

use std::fmt;

use ring::signature::{self as ring_sig, UnparsedPublicKey};
use yasna::models::ObjectIdentifier;

/// The algorithm and size of an asymmetric key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
    ];

    /// The config spelling: `rsa-3072`, `ecdsa-p256`, `ed25519`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The list of spellings, for error messages.
    pub fn names() -> String {
        Self::ALL.map(|a| a.as_str()).join(", ")
    }

    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// The byte length of one ECDSA signature half (r or s).
    pub fn ec_field_len(self) -> Option<usize> {
        match self {
            KeyAlgorithm::EcdsaP256 => Some(32),
            KeyAlgorithm::EcdsaP384 => Some(48),
            _ => None,
        }
    }

    /// The scheme a key signs with when the caller names none: PKCS#1 v1.5
    /// with SHA-256 for RSA (what x509 and OpenBao PKI use by default),
    /// ECDSA with the curve's own hash, pure Ed25519.
    pub fn default_scheme(self) -> SignScheme {
        match self {
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                SignScheme::RsaPkcs1v15(Hash::Sha256)
            }
            KeyAlgorithm::EcdsaP256 => SignScheme::Ecdsa(Hash::Sha256),
            KeyAlgorithm::EcdsaP384 => SignScheme::Ecdsa(Hash::Sha384),
            KeyAlgorithm::Ed25519 => SignScheme::Ed25519,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hash of an RSA-OAEP encryption key pair (and of its MGF1), fixed
/// per key: what a caller that names one (KMIP's Cryptographic Parameters)
/// is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OaepHash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl OaepHash {
    pub fn as_str(self) -> &'static str {
        match self {
            OaepHash::Sha1 => "sha1",
            OaepHash::Sha224 => "sha224",
            OaepHash::Sha256 => "sha256",
            OaepHash::Sha384 => "sha384",
            OaepHash::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for OaepHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hash a signature scheme uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// From Go's `crypto.Hash` value, as OpenBao sends it (SHA256 = 5,
    /// SHA384 = 6, SHA512 = 7).
    pub fn from_go(value: i32) -> Option<Self> {
        match value {
            5 => Some(Hash::Sha256),
            6 => Some(Hash::Sha384),
            7 => Some(Hash::Sha512),
            _ => None,
        }
    }

    pub fn go(self) -> i32 {
        match self {
            Hash::Sha256 => 5,
            Hash::Sha384 => 6,
            Hash::Sha512 => 7,
        }
    }

    /// The digest's length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hash::Sha256 => "sha256",
            Hash::Sha384 => "sha384",
            Hash::Sha512 => "sha512",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Hash::Sha256, Hash::Sha384, Hash::Sha512]
            .into_iter()
            .find(|h| h.as_str() == text)
    }

    /// The digest of `message` under this hash.
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        let algorithm = match self {
            Hash::Sha256 => &ring::digest::SHA256,
            Hash::Sha384 => &ring::digest::SHA384,
            Hash::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(algorithm, message).as_ref().to_vec()
    }

    /// The DER `DigestInfo` that precedes the digest in a PKCS#1 v1.5
    /// signature (RFC 8017 section 9.2, note 1): what a token's raw
    /// `CKM_RSA_PKCS` signs when the caller hands over a digest.
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
                0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
                0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
                0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// How a signature is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignScheme {
    RsaPkcs1v15(Hash),
    /// RSASSA-PSS with MGF1 over the same hash and a salt as long as the
    /// hash (what Go's `PSSSaltLengthEqualsHash` and ring use).
    RsaPss(Hash),
    /// ECDSA; the signature is the DER `ECDSA-Sig-Value`, as Go and x509
    /// expect.
    Ecdsa(Hash),
    /// Pure Ed25519 over the message (RFC 8032); the signature is 64 bytes.
    Ed25519,
}

impl SignScheme {
    pub fn hash(self) -> Option<Hash> {
        match self {
            SignScheme::RsaPkcs1v15(h) | SignScheme::RsaPss(h) | SignScheme::Ecdsa(h) => Some(h),
            SignScheme::Ed25519 => None,
        }
    }

    /// Whether a key of `algorithm` can sign with this scheme.
    pub fn fits(self, algorithm: KeyAlgorithm) -> bool {
        match self {
            SignScheme::RsaPkcs1v15(_) | SignScheme::RsaPss(_) => algorithm.rsa_bits().is_some(),
            SignScheme::Ecdsa(_) => algorithm.ec_field_len().is_some(),
            SignScheme::Ed25519 => algorithm == KeyAlgorithm::Ed25519,
        }
    }

    /// `rsa-pkcs1-sha256`, `rsa-pss-sha384`, `ecdsa-sha256`, `ed25519`.
    pub fn name(self) -> String {
        match self {
            SignScheme::RsaPkcs1v15(h) => format!("rsa-pkcs1-{}", h.as_str()),
            SignScheme::RsaPss(h) => format!("rsa-pss-{}", h.as_str()),
            SignScheme::Ecdsa(h) => format!("ecdsa-{}", h.as_str()),
            SignScheme::Ed25519 => "ed25519".into(),
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        if text == "ed25519" {
            return Some(SignScheme::Ed25519);
        }
        let (family, hash) = text.rsplit_once('-')?;
        let hash = Hash::parse(hash)?;
        match family {
            "rsa-pkcs1" => Some(SignScheme::RsaPkcs1v15(hash)),
            "rsa-pss" => Some(SignScheme::RsaPss(hash)),
            "ecdsa" => Some(SignScheme::Ecdsa(hash)),
            _ => None,
        }
    }
}

/// What a caller hands over to be signed or verified.
#[derive(Clone, Copy)]
pub enum SignInput<'a> {
    /// The message: the signer hashes it (or, for Ed25519, signs it whole).
    Message(&'a [u8]),
    /// The digest of the message under the scheme's hash. Ed25519 has none.
    Digest(&'a [u8]),
}

impl SignInput<'_> {
    /// Checks that this input suits `scheme`: a digest of the hash's length,
    /// and never a digest for pure Ed25519. Nothing is ever hashed twice.
    pub fn check(&self, scheme: SignScheme) -> Result<(), String> {
        match (self, scheme.hash()) {
            (SignInput::Digest(_), None) => Err(
                "Ed25519 signs the message itself; send the message, not a digest (prehashed = false)".into(),
            ),
            (SignInput::Digest(d), Some(hash)) if d.len() != hash.digest_len() => Err(format!(
                "the digest is {} bytes; {} needs {} bytes",
                d.len(),
                hash.as_str(),
                hash.digest_len()
            )),
            _ => Ok(()),
        }
    }

    /// The digest to sign under `hash`: the caller's, or the message's.
    pub fn digest(&self, hash: Hash) -> Vec<u8> {
        match self {
            SignInput::Message(m) => hash.digest(m),
            SignInput::Digest(d) => d.to_vec(),
        }
    }

    pub fn is_digest(&self) -> bool {
        matches!(self, SignInput::Digest(_))
    }
}

/// Why a public key or signature could not be read or checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("{0}")]
    Encoding(String),
    #[error("{0}")]
    Unsupported(String),
}

const OID_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const OID_EC: &[u64] = &[1, 2, 840, 10045, 2, 1];
const OID_P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const OID_P384: &[u64] = &[1, 3, 132, 0, 34];
const OID_ED25519: &[u64] = &[1, 3, 101, 112];

/// The DER `ECParameters` (a named-curve OID) of an EC or EdDSA key, as
/// PKCS#11's `CKA_EC_PARAMS` holds it.
pub fn ec_params_der(algorithm: KeyAlgorithm) -> Option<Vec<u8>> {
    let oid = match algorithm {
        KeyAlgorithm::EcdsaP256 => OID_P256,
        KeyAlgorithm::EcdsaP384 => OID_P384,
        KeyAlgorithm::Ed25519 => OID_ED25519,
        _ => return None,
    };
    Some(yasna::construct_der(|w| {
        w.write_oid(&ObjectIdentifier::from_slice(oid))
    }))
}

/// The algorithm a DER `CKA_EC_PARAMS` names.
pub fn algorithm_of_ec_params(der: &[u8]) -> Option<KeyAlgorithm> {
    let oid = yasna::parse_der(der, |r| r.read_oid()).ok()?;
    let components = oid.components().as_slice();
    [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
    ]
    .into_iter()
    .find(|a| match a {
        KeyAlgorithm::EcdsaP256 => components == OID_P256,
        KeyAlgorithm::EcdsaP384 => components == OID_P384,
        _ => components == OID_ED25519,
    })
}

/// The public half of an asymmetric key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub algorithm: KeyAlgorithm,
    /// `SubjectPublicKeyInfo` DER, as x509, Go and OpenBao expect.
    pub spki_der: Vec<u8>,
    /// The key as ring reads it: PKCS#1 `RSAPublicKey` DER, the
    /// uncompressed EC point, or the 32 Ed25519 bytes.
    raw: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {} bytes)", self.algorithm, self.spki_der.len())
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[start..]
}

impl PublicKey {
    /// An RSA key from its big-endian modulus and public exponent.
    pub fn rsa(modulus: &[u8], exponent: &[u8]) -> Result<Self, SigningError> {
        let modulus = strip_leading_zeros(modulus);
        let exponent = strip_leading_zeros(exponent);
        let algorithm = match modulus.len() * 8 {
            2048 => KeyAlgorithm::Rsa2048,
            3072 => KeyAlgorithm::Rsa3072,
            4096 => KeyAlgorithm::Rsa4096,
            bits => {
                return Err(SigningError::Unsupported(format!(
                    "an RSA modulus of {bits} bits; sealbroker signs with 2048, 3072 or 4096"
                )));
            }
        };
        let raw = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_bigint_bytes(modulus, true);
                w.next().write_bigint_bytes(exponent, true);
            })
        });
        Ok(Self::spki(algorithm, OID_RSA, true, raw))
    }

    /// An ECDSA key from its uncompressed point (`04 || X || Y`).
    pub fn ec(algorithm: KeyAlgorithm, point: &[u8]) -> Result<Self, SigningError> {
        let Some(len) = algorithm.ec_field_len() else {
            return Err(SigningError::Unsupported(format!(
                "{algorithm} is not an ECDSA curve"
            )));
        };
        if point.len() != 1 + 2 * len || point[0] != 0x04 {
            return Err(SigningError::Encoding(format!(
                "an {algorithm} public point must be {} bytes, uncompressed (04 || X || Y)",
                1 + 2 * len
            )));
        }
        Ok(Self::spki(algorithm, OID_EC, false, point.to_vec()))
    }

    /// An Ed25519 key from its 32 bytes.
    pub fn ed25519(raw: &[u8]) -> Result<Self, SigningError> {
        if raw.len() != 32 {
            return Err(SigningError::Encoding(format!(
                "an Ed25519 public key is 32 bytes, not {}",
                raw.len()
            )));
        }
        Ok(Self::spki(
            KeyAlgorithm::Ed25519,
            OID_ED25519,
            false,
            raw.to_vec(),
        ))
    }

    /// A key from the form [`PublicKey::raw`] gives, checked.
    pub fn from_raw(algorithm: KeyAlgorithm, raw: Vec<u8>) -> Result<Self, SigningError> {
        let key = match algorithm {
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let (n, e) = yasna::parse_der(&raw, |r| {
                    r.read_sequence(|r| {
                        let n = r.next().read_bigint_bytes()?;
                        let e = r.next().read_bigint_bytes()?;
                        Ok((n, e))
                    })
                })
                .map_err(|e| SigningError::Encoding(format!("not a DER RSAPublicKey: {e}")))?;
                if !n.1 || !e.1 {
                    return Err(SigningError::Encoding(
                        "a negative RSA modulus or exponent".into(),
                    ));
                }
                Self::rsa(&n.0, &e.0)?
            }
            KeyAlgorithm::Ed25519 => Self::ed25519(&raw)?,
            ec => Self::ec(ec, &raw)?,
        };
        if key.algorithm != algorithm {
            return Err(SigningError::Encoding(format!(
                "the key is {}, not {algorithm}",
                key.algorithm
            )));
        }
        Ok(key)
    }

    /// A key from its DER `SubjectPublicKeyInfo`, as a cloud KMS hands it
    /// out (AWS `GetPublicKey`). Only the exact shape [`PublicKey`] itself
    /// writes is accepted: RSA with NULL parameters, id-ecPublicKey with a
    /// named P-256 or P-384 curve and an uncompressed point, or Ed25519 with
    /// no parameters. So the DER served to callers is the DER read.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, SigningError> {
        let bad = |why: String| SigningError::Encoding(format!("not a DER SubjectPublicKeyInfo: {why}"));
        let (oid, curve, key) = yasna::parse_der(der, |r| {
            r.read_sequence(|r| {
                let (oid, curve) = r.next().read_sequence(|r| {
                    let oid = r.next().read_oid()?;
                    // NULL (RSA), a curve OID (EC), or nothing (Ed25519).
                    let curve = r.read_optional(|r| {
                        r.read_der()
                            .map(|param| yasna::parse_der(&param, |r| r.read_oid()).ok())
                    })?;
                    Ok((oid, curve))
                })?;
                let (bytes, bits) = r.next().read_bitvec_bytes()?;
                Ok((oid, curve, (bytes, bits)))
            })
        })
        .map_err(|e| bad(e.to_string()))?;
        let (bytes, bits) = key;
        if bits != bytes.len() * 8 {
            return Err(bad("the key's BIT STRING has unused bits".into()));
        }
        let components = oid.components().as_slice();
        let key = if components == OID_RSA {
            let (n, e) = yasna::parse_der(&bytes, |r| {
                r.read_sequence(|r| {
                    let n = r.next().read_bigint_bytes()?;
                    let e = r.next().read_bigint_bytes()?;
                    Ok((n, e))
                })
            })
            .map_err(|e| bad(format!("the RSA key is not a DER RSAPublicKey: {e}")))?;
            if !n.1 || !e.1 {
                return Err(bad("a negative RSA modulus or exponent".into()));
            }
            Self::rsa(&n.0, &e.0)?
        } else if components == OID_EC {
            let algorithm = curve
                .flatten()
                .and_then(|curve| {
                    [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384]
                        .into_iter()
                        .find(|a| ec_curve_oid(*a) == Some(curve.components().as_slice()))
                })
                .ok_or_else(|| {
                    SigningError::Unsupported(
                        "an EC key on a curve other than P-256 or P-384 (or without a named curve)".into(),
                    )
                })?;
            Self::ec(algorithm, &bytes)?
        } else if components == OID_ED25519 {
            Self::ed25519(&bytes)?
        } else {
            return Err(SigningError::Unsupported(format!(
                "a public key of algorithm {oid}; sealbroker signs with RSA, ECDSA P-256/P-384 and Ed25519"
            )));
        };
        if key.spki_der != der {
            return Err(bad(format!(
                "its parameters are not the canonical ones for {}",
                key.algorithm
            )));
        }
        Ok(key)
    }

    /// A key from PEM (`-----BEGIN PUBLIC KEY-----`, a base64 DER
    /// `SubjectPublicKeyInfo`), as Cloud KMS `GetPublicKey` hands it out.
    /// One block, nothing around it but line breaks; the DER inside is read
    /// as strictly as [`PublicKey::from_spki_der`] reads it.
    pub fn from_spki_pem(text: &str) -> Result<Self, SigningError> {
        use base64::Engine;
        const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
        const END: &str = "-----END PUBLIC KEY-----";
        let bad = |why: &str| SigningError::Encoding(format!("not a PEM public key: {why}"));
        let body = text
            .trim_end_matches(['\n', '\r'])
            .strip_prefix(BEGIN)
            .ok_or_else(|| bad("it does not begin with -----BEGIN PUBLIC KEY-----"))?
            .strip_suffix(END)
            .ok_or_else(|| bad("it does not end with -----END PUBLIC KEY-----"))?;
        let base64: String = body.split(['\n', '\r']).collect();
        if base64.len() > 16 * 1024 {
            return Err(bad("it is longer than any key sealbroker reads"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64.as_bytes())
            .map_err(|e| bad(&format!("the body is not base64 ({e})")))?;
        Self::from_spki_der(&der)
    }

    /// The key as ring reads it: PKCS#1 `RSAPublicKey` DER, the
    /// uncompressed EC point, or the 32 Ed25519 bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    fn spki(algorithm: KeyAlgorithm, oid: &[u64], null_params: bool, raw: Vec<u8>) -> Self {
        let spki_der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                    if null_params {
                        w.next().write_null();
                    } else if let Some(curve) = ec_curve_oid(algorithm) {
                        w.next().write_oid(&ObjectIdentifier::from_slice(curve));
                    }
                });
                w.next().write_bitvec_bytes(&raw, raw.len() * 8);
            })
        });
        PublicKey {
            algorithm,
            spki_der,
            raw,
        }
    }

    /// PEM (`-----BEGIN PUBLIC KEY-----`), for people and `openssl`.
    pub fn pem(&self) -> String {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(&self.spki_der);
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }

    /// Checks `signature` over `input` with `scheme`. Only whole messages
    /// can be checked here (ring hashes them itself); a digest is refused,
    /// for the backend to check.
    pub fn verify(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, SigningError> {
        if !scheme.fits(self.algorithm) {
            return Err(SigningError::Unsupported(format!(
                "a {} key cannot verify {}",
                self.algorithm,
                scheme.name()
            )));
        }
        let SignInput::Message(message) = input else {
            return Err(SigningError::Unsupported(
                "verifying against a digest needs the backend".into(),
            ));
        };
        let algorithm: &dyn ring_sig::VerificationAlgorithm = match (scheme, self.algorithm) {
            (SignScheme::RsaPkcs1v15(Hash::Sha256), _) => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
            (SignScheme::RsaPkcs1v15(Hash::Sha384), _) => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
            (SignScheme::RsaPkcs1v15(Hash::Sha512), _) => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
            (SignScheme::RsaPss(Hash::Sha256), _) => &ring_sig::RSA_PSS_2048_8192_SHA256,
            (SignScheme::RsaPss(Hash::Sha384), _) => &ring_sig::RSA_PSS_2048_8192_SHA384,
            (SignScheme::RsaPss(Hash::Sha512), _) => &ring_sig::RSA_PSS_2048_8192_SHA512,
            (SignScheme::Ecdsa(Hash::Sha256), KeyAlgorithm::EcdsaP256) => &ring_sig::ECDSA_P256_SHA256_ASN1,
            (SignScheme::Ecdsa(Hash::Sha384), KeyAlgorithm::EcdsaP256) => &ring_sig::ECDSA_P256_SHA384_ASN1,
            (SignScheme::Ecdsa(Hash::Sha256), KeyAlgorithm::EcdsaP384) => &ring_sig::ECDSA_P384_SHA256_ASN1,
            (SignScheme::Ecdsa(Hash::Sha384), KeyAlgorithm::EcdsaP384) => &ring_sig::ECDSA_P384_SHA384_ASN1,
            (SignScheme::Ed25519, _) => &ring_sig::ED25519,
            (scheme, algorithm) => {
                return Err(SigningError::Unsupported(format!(
                    "{} with a {algorithm} key is not offered",
                    scheme.name()
                )));
            }
        };
        Ok(UnparsedPublicKey::new(algorithm, &self.raw)
            .verify(message, signature)
            .is_ok())
    }
}

fn ec_curve_oid(algorithm: KeyAlgorithm) -> Option<&'static [u64]> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => Some(OID_P256),
        KeyAlgorithm::EcdsaP384 => Some(OID_P384),
        _ => None,
    }
}

/// `r || s` (each `field_len` bytes, as PKCS#11's `CKM_ECDSA` returns them)
/// as the DER `ECDSA-Sig-Value` Go and x509 expect.
pub fn ecdsa_der_from_raw(raw: &[u8], field_len: usize) -> Result<Vec<u8>, SigningError> {
    if raw.len() != 2 * field_len {
        return Err(SigningError::Encoding(format!(
            "an ECDSA signature from the token is {} bytes, not {}",
            raw.len(),
            2 * field_len
        )));
    }
    let (r, s) = raw.split_at(field_len);
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_bigint_bytes(strip_leading_zeros(r), true);
            w.next().write_bigint_bytes(strip_leading_zeros(s), true);
        })
    }))
}

/// The DER `ECDSA-Sig-Value` as `r || s`, each left-padded to `field_len`
/// bytes, for a token's `CKM_ECDSA` verify. Refuses anything else.
pub fn ecdsa_raw_from_der(der: &[u8], field_len: usize) -> Result<Vec<u8>, SigningError> {
    let bad = |why: &str| SigningError::Encoding(format!("not a DER ECDSA signature: {why}"));
    let (r, s) = yasna::parse_der(der, |reader| {
        reader.read_sequence(|reader| {
            let r = reader.next().read_bigint_bytes()?;
            let s = reader.next().read_bigint_bytes()?;
            Ok((r, s))
        })
    })
    .map_err(|e| bad(&e.to_string()))?;
    let mut raw = vec![0u8; 2 * field_len];
    for (i, (bytes, positive)) in [r, s].into_iter().enumerate() {
        let bytes = strip_leading_zeros(&bytes);
        if !positive || bytes.len() > field_len {
            return Err(bad("an integer is negative or too long for the curve"));
        }
        let end = (i + 1) * field_len;
        raw[end - bytes.len()..end].copy_from_slice(bytes);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests;
