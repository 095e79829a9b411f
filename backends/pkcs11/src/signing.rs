//! Asymmetric keys on the token (External Keys): key pairs that sign, made
//! non-extractable and sensitive, read for their public half, and used
//! with the token's raw mechanisms on a digest.
//!
//! The broker hands the token a digest for every scheme but Ed25519: a
//! message is hashed once, with ring, before the call. So RSA PKCS#1 v1.5
//! is `CKM_RSA_PKCS` over `DigestInfo || digest`, PSS is `CKM_RSA_PKCS_PSS`
//! with the salt as long as the hash, ECDSA is `CKM_ECDSA` (whose `r || s`
//! becomes DER), and Ed25519 is `CKM_EDDSA` over the message.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism as CkMechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectHandle};
use cryptoki::session::Session;
use sealbroker_core::signing::{
    algorithm_of_ec_params, ec_params_der, ecdsa_der_from_raw, ecdsa_raw_from_der,
};
use sealbroker_core::{BackendError, BackendErrorKind, Hash, KeyAlgorithm, PublicKey, SignScheme};

use crate::OpError;

/// What the token signs: the digest (every scheme but Ed25519) or the
/// message (Ed25519).
pub fn sign(
    session: &Session,
    key: ObjectHandle,
    algorithm: KeyAlgorithm,
    scheme: SignScheme,
    data: &[u8],
) -> Result<Result<Vec<u8>, BackendError>, CkError> {
    Ok(match scheme {
        SignScheme::RsaPkcs1v15(hash) => {
            let mut info = hash.digest_info_prefix().to_vec();
            info.extend_from_slice(data);
            Ok(session.sign(&CkMechanism::RsaPkcs, key, &info)?)
        }
        SignScheme::RsaPss(hash) => Ok(session.sign(&CkMechanism::RsaPkcsPss(pss(hash)), key, data)?),
        SignScheme::Ecdsa(_) => {
            let raw = session.sign(&CkMechanism::Ecdsa, key, data)?;
            let field = algorithm.ec_field_len().unwrap_or(32);
            ecdsa_der_from_raw(&raw, field).map_err(|e| BackendError::internal(e.to_string()))
        }
        SignScheme::Ed25519 => Ok(session.sign(&eddsa(), key, data)?),
    })
}

/// Checks a signature with the public key object. A signature the token
/// calls invalid (or that is not even well formed) is `Ok(false)`.
pub fn verify(
    session: &Session,
    key: ObjectHandle,
    algorithm: KeyAlgorithm,
    scheme: SignScheme,
    data: &[u8],
    signature: &[u8],
) -> Result<bool, CkError> {
    let outcome = match scheme {
        SignScheme::RsaPkcs1v15(hash) => {
            let mut info = hash.digest_info_prefix().to_vec();
            info.extend_from_slice(data);
            session.verify(&CkMechanism::RsaPkcs, key, &info, signature)
        }
        SignScheme::RsaPss(hash) => session.verify(&CkMechanism::RsaPkcsPss(pss(hash)), key, data, signature),
        SignScheme::Ecdsa(_) => {
            let field = algorithm.ec_field_len().unwrap_or(32);
            let Ok(raw) = ecdsa_raw_from_der(signature, field) else {
                return Ok(false);
            };
            session.verify(&CkMechanism::Ecdsa, key, data, &raw)
        }
        SignScheme::Ed25519 => session.verify(&eddsa(), key, data, signature),
    };
    match outcome {
        Ok(()) => Ok(true),
        Err(CkError::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn pss(hash: Hash) -> PkcsPssParams {
    let (hash_alg, mgf) = match hash {
        Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        Hash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    };
    PkcsPssParams {
        hash_alg,
        mgf,
        s_len: (hash.digest_len() as u64).into(),
    }
}

fn eddsa() -> CkMechanism<'static> {
    CkMechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
}

/// The public half of the key pair, read from its public key object, and
/// checked against the configured algorithm.
pub fn public_key(
    session: &Session,
    key: ObjectHandle,
    configured: KeyAlgorithm,
    describe: &str,
) -> Result<PublicKey, OpError> {
    let attributes = session
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::EcParams,
                AttributeType::EcPoint,
            ],
        )
        .map_err(|e| OpError::Device(e, "C_GetAttributeValue(public key)"))?;
    let mut key_type = None;
    let (mut modulus, mut exponent, mut params, mut point) = (None, None, None, None);
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let bad = |why: String| OpError::Backend(BackendError::new(BackendErrorKind::InvalidInput, why));
    let public = match key_type {
        Some(KeyType::RSA) => match (modulus, exponent) {
            (Some(m), Some(e)) => PublicKey::rsa(&m, &e).map_err(|e| bad(e.to_string()))?,
            _ => {
                return Err(bad(format!(
                    "the RSA public key with {describe} has no modulus or exponent"
                )));
            }
        },
        Some(KeyType::EC) | Some(KeyType::EC_EDWARDS) => {
            let algorithm = params
                .as_deref()
                .and_then(algorithm_of_ec_params)
                .ok_or_else(|| {
                    bad(format!(
                        "the public key with {describe} is on a curve sealbroker does not sign with"
                    ))
                })?;
            let point =
                point.ok_or_else(|| bad(format!("the public key with {describe} has no CKA_EC_POINT")))?;
            // CKA_EC_POINT is a DER OCTET STRING; some tokens give the bare
            // point (Ed25519: 32 bytes).
            let point = match yasna::parse_der(&point, |r| r.read_bytes()) {
                Ok(inner) => inner,
                Err(_) => point,
            };
            match algorithm {
                KeyAlgorithm::Ed25519 => PublicKey::ed25519(&point),
                ec => PublicKey::ec(ec, &point),
            }
            .map_err(|e| bad(e.to_string()))?
        }
        other => {
            return Err(bad(format!(
                "the public key with {describe} is of type {other:?}; sealbroker signs with RSA, ECDSA and Ed25519"
            )));
        }
    };
    if public.algorithm != configured {
        return Err(bad(format!(
            "the key pair with {describe} is {}, but the config says algorithm = \"{configured}\"",
            public.algorithm
        )));
    }
    Ok(public)
}

/// Makes a key pair of `algorithm` under `label` and `id`: the private half
/// sensitive, non-extractable and for signing only.
pub fn generate(
    session: &Session,
    algorithm: KeyAlgorithm,
    label: Vec<u8>,
    id: Vec<u8>,
) -> Result<(), CkError> {
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Label(label.clone()),
        Attribute::Id(id.clone()),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label),
        Attribute::Id(id),
    ];
    let mechanism = match algorithm.rsa_bits() {
        Some(bits) => {
            public.push(Attribute::ModulusBits(u64::from(bits).into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            CkMechanism::RsaPkcsKeyPairGen
        }
        None => {
            public.push(Attribute::EcParams(ec_params_der(algorithm).unwrap_or_default()));
            if algorithm == KeyAlgorithm::Ed25519 {
                CkMechanism::EccEdwardsKeyPairGen
            } else {
                CkMechanism::EccKeyPairGen
            }
        }
    };
    session.generate_key_pair(&mechanism, &public, &private)?;
    Ok(())
}

/// Scheme codes on the helper protocol: an index into this list.
pub const SCHEMES: [SignScheme; 10] = [
    SignScheme::RsaPkcs1v15(Hash::Sha256),
    SignScheme::RsaPkcs1v15(Hash::Sha384),
    SignScheme::RsaPkcs1v15(Hash::Sha512),
    SignScheme::RsaPss(Hash::Sha256),
    SignScheme::RsaPss(Hash::Sha384),
    SignScheme::RsaPss(Hash::Sha512),
    SignScheme::Ecdsa(Hash::Sha256),
    SignScheme::Ecdsa(Hash::Sha384),
    SignScheme::Ecdsa(Hash::Sha512),
    SignScheme::Ed25519,
];

pub fn scheme_code(scheme: SignScheme) -> u8 {
    SCHEMES.iter().position(|s| *s == scheme).unwrap_or(0) as u8
}

pub fn scheme_of(code: u8) -> Option<SignScheme> {
    SCHEMES.get(usize::from(code)).copied()
}

/// A public key on the helper protocol: the algorithm's index, then the
/// key as ring reads it.
pub fn encode_public(public: &PublicKey) -> Vec<u8> {
    let index = KeyAlgorithm::ALL
        .iter()
        .position(|a| *a == public.algorithm)
        .unwrap_or(0) as u8;
    let mut out = vec![index];
    out.extend_from_slice(public.raw());
    out
}

pub fn decode_public(bytes: &[u8]) -> Result<PublicKey, BackendError> {
    let bad = |why: String| BackendError::internal(format!("the helper sent a malformed public key: {why}"));
    let (&index, raw) = bytes.split_first().ok_or_else(|| bad("empty".into()))?;
    let algorithm = KeyAlgorithm::ALL
        .get(usize::from(index))
        .copied()
        .ok_or_else(|| bad(format!("algorithm {index}")))?;
    PublicKey::from_raw(algorithm, raw.to_vec()).map_err(|e| bad(e.to_string()))
}
