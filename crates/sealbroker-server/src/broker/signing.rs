//! Asymmetric keys (External Keys): Sign, Verify and the public key under
//! the `sign` and `verify` grants, and RSA-OAEP encryption under `encrypt`
//! and `decrypt`, audited like wraps.
//!
//! An asymmetric key's version has one member, whose backend holds the
//! private key; the broker checks the scheme against the key and the input
//! against the scheme before the backend is asked, so a backend never sees
//! a digest of the wrong length or a scheme its key cannot make.

use std::sync::Arc;

use sealbroker_core::{
    Backend, BackendError, Error, KeyAlgorithm, OaepHash, PublicKey, SecretBytes, SignInput, SignScheme,
};

use super::acl::Operation;
use super::caller::Call;
use super::{Broker, Done};

/// A signature, and the key version that made it.
pub struct Signature {
    pub key_name: String,
    pub key_version: u32,
    pub scheme: SignScheme,
    pub signature: Vec<u8>,
}

/// Whether a signature is good, and under which key version it was checked.
pub struct Verdict {
    pub key_name: String,
    pub key_version: u32,
    pub valid: bool,
}

/// A key version's public key.
pub struct PublicKeyOf {
    pub key_name: String,
    pub key_version: u32,
    pub public: PublicKey,
}

/// An RSA-OAEP ciphertext, and the key version it was made for.
pub struct Ciphertext {
    pub key_name: String,
    pub key_version: u32,
    pub ciphertext: Vec<u8>,
}

/// What an RSA-OAEP decryption opened. Holds the plaintext: not `Debug`.
pub struct Opened {
    pub key_name: String,
    pub key_version: u32,
    pub plaintext: SecretBytes,
}

macro_rules! done {
    ($t:ty) => {
        impl Done for $t {
            fn key_name(&self) -> &str {
                &self.key_name
            }
            fn key_version(&self) -> u32 {
                self.key_version
            }
        }
    };
}
done!(Signature);
done!(Verdict);
done!(PublicKeyOf);
done!(Ciphertext);
done!(Opened);

/// What kind of key a name holds, from its primary version, for doors that
/// present keys by kind (KMIP's object types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyShape {
    /// A symmetric sealing key (or a ring of them): wrap and unwrap.
    Sealing,
    /// A key pair that signs.
    Signing(KeyAlgorithm),
    /// An RSA key pair that encrypts with OAEP under this hash.
    Encryption(KeyAlgorithm, OaepHash),
}

/// The backend of one asymmetric key version.
struct SigningKey {
    version: u32,
    backend_name: String,
    backend: Arc<dyn Backend>,
    algorithm: KeyAlgorithm,
}

impl Broker {
    /// The shape of `key`'s primary version. Not an ACL check: doors call
    /// it for keys the caller may already see ([`Broker::list_keys`],
    /// [`Broker::get_key`]).
    pub fn key_shape(&self, key: &str) -> Result<KeyShape, Error> {
        let ring = self.key_ring();
        let primary = ring.get(key)?.primary();
        Ok(match primary.members.as_slice() {
            [member] => match (member.backend.algorithm(), member.backend.oaep_hash()) {
                (Some(algorithm), Some(hash)) => KeyShape::Encryption(algorithm, hash),
                (Some(algorithm), None) => KeyShape::Signing(algorithm),
                (None, _) => KeyShape::Sealing,
            },
            _ => KeyShape::Sealing,
        })
    }

    /// Version `version` (the primary when `None`) of `key`, which must be
    /// an asymmetric key.
    fn signing_key(&self, key: &str, version: Option<u32>) -> Result<SigningKey, Error> {
        let ring = self.key_ring();
        let logical = ring.get(key)?;
        let chosen = match version {
            None | Some(0) => logical.primary(),
            Some(n) => logical.version(n).ok_or_else(|| Error::InvalidArgument {
                field: "key_version",
                reason: format!("key {key:?} has no version {n}"),
            })?,
        };
        let [member] = chosen.members.as_slice() else {
            return Err(Error::Precondition(format!(
                "key {key:?} version {} has several members: it is a sealing key ring, which does not sign",
                chosen.version
            )));
        };
        let Some(algorithm) = member.backend.algorithm() else {
            return Err(Error::Precondition(format!(
                "key {key:?} is a symmetric sealing key: it wraps and unwraps, and does not sign; \
                 configure an asymmetric key (algorithm = \"ecdsa-p256\", \"rsa-3072\", …)"
            )));
        };
        Ok(SigningKey {
            version: chosen.version,
            backend_name: member.backend_name.clone(),
            backend: member.backend.clone(),
            algorithm,
        })
    }

    /// Checks `scheme` (the key's default when `None`) and `input` against
    /// the key, before any backend call.
    fn scheme_for(
        signing: &SigningKey,
        key: &str,
        scheme: Option<SignScheme>,
        input: &SignInput<'_>,
    ) -> Result<SignScheme, Error> {
        let scheme = scheme.unwrap_or_else(|| signing.algorithm.default_scheme());
        if !scheme.fits(signing.algorithm) {
            return Err(Error::InvalidArgument {
                field: "scheme",
                reason: format!(
                    "key {key:?} is {}; it cannot sign with {}",
                    signing.algorithm,
                    scheme.name()
                ),
            });
        }
        input.check(scheme).map_err(|reason| Error::InvalidArgument {
            field: "data",
            reason,
        })?;
        Ok(scheme)
    }

    fn backend_error(signing: &SigningKey, key: &str, source: BackendError) -> Error {
        Error::Backend {
            backend: signing.backend_name.clone(),
            key: key.to_owned(),
            source,
        }
    }

    /// Runs one backend call for `key` under the request timeout, its
    /// failure named with the key's backend.
    async fn on_backend<T>(
        &self,
        what: &str,
        key: &str,
        signing: &SigningKey,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Error> {
        self.bounded(what, key, async move {
            call.await.map_err(|e| Self::backend_error(signing, key, e))
        })
        .await
    }

    /// Signs `input` with `key` (at `version`, else its primary).
    pub async fn sign(
        &self,
        call: &Call,
        key: &str,
        version: Option<u32>,
        scheme: Option<SignScheme>,
        input: SignInput<'_>,
    ) -> Result<Signature, Error> {
        let body = async {
            self.policy().acls.check(&call.caller, Operation::Sign, key)?;
            let signing = self.signing_key(key, version)?;
            let scheme = Self::scheme_for(&signing, key, scheme, &input)?;
            let signature = self
                .on_backend("sign", key, &signing, signing.backend.sign(scheme, input))
                .await?;
            Ok(Signature {
                key_name: key.to_owned(),
                key_version: signing.version,
                scheme,
                signature,
            })
        };
        self.operate(
            "sign",
            call,
            key,
            |request_id| tracing::info_span!("sign", %request_id, door = %call.door, caller = %call.caller, key),
            body,
        )
        .await
    }

    /// Checks `signature` over `input` with `key` (at `version`, else its
    /// primary). A bad signature is a verdict, not an error.
    pub async fn verify(
        &self,
        call: &Call,
        key: &str,
        version: Option<u32>,
        scheme: Option<SignScheme>,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<Verdict, Error> {
        let body = async {
            self.policy().acls.check(&call.caller, Operation::Verify, key)?;
            let signing = self.signing_key(key, version)?;
            let scheme = Self::scheme_for(&signing, key, scheme, &input)?;
            let valid = self
                .on_backend(
                    "verify",
                    key,
                    &signing,
                    signing.backend.verify(scheme, input, signature),
                )
                .await?;
            Ok(Verdict {
                key_name: key.to_owned(),
                key_version: signing.version,
                valid,
            })
        };
        self.operate(
            "verify",
            call,
            key,
            |request_id| tracing::info_span!("verify", %request_id, door = %call.door, caller = %call.caller, key),
            body,
        )
        .await
    }

    /// The public key of `key` (at `version`, else its primary): readable
    /// by anyone who may verify or sign with it.
    pub async fn public_key(
        &self,
        call: &Call,
        key: &str,
        version: Option<u32>,
    ) -> Result<PublicKeyOf, Error> {
        let body = async {
            // Any grant that uses the key pair lets its holder read the
            // public half; the denial names `verify`, the least of them.
            let acls = &self.policy().acls;
            let uses = [Operation::Sign, Operation::Encrypt, Operation::Decrypt];
            if !uses
                .into_iter()
                .any(|op| acls.check(&call.caller, op, key).is_ok())
            {
                acls.check(&call.caller, Operation::Verify, key)?;
            }
            let signing = self.signing_key(key, version)?;
            let public = self
                .on_backend("public key", key, &signing, signing.backend.public_key())
                .await?;
            Ok(PublicKeyOf {
                key_name: key.to_owned(),
                key_version: signing.version,
                public,
            })
        };
        self.operate(
            "public-key",
            call,
            key,
            |request_id| tracing::info_span!("public_key", %request_id, door = %call.door, caller = %call.caller, key),
            body,
        )
        .await
    }

    /// Encrypts `plaintext` to the public key of `key` (an RSA encryption
    /// key pair) with RSA-OAEP.
    pub async fn encrypt_asymmetric(
        &self,
        call: &Call,
        key: &str,
        version: Option<u32>,
        plaintext: SecretBytes,
    ) -> Result<Ciphertext, Error> {
        let body = async {
            self.policy().acls.check(&call.caller, Operation::Encrypt, key)?;
            let signing = self.signing_key(key, version)?;
            let ciphertext = self
                .on_backend(
                    "encrypt",
                    key,
                    &signing,
                    signing.backend.encrypt_asymmetric(plaintext.expose()),
                )
                .await?;
            Ok(Ciphertext {
                key_name: key.to_owned(),
                key_version: signing.version,
                ciphertext,
            })
        };
        self.operate(
            "encrypt",
            call,
            key,
            |request_id| tracing::info_span!("encrypt", %request_id, door = %call.door, caller = %call.caller, key),
            body,
        )
        .await
    }

    /// Opens an RSA-OAEP `ciphertext` with the private key of `key`.
    pub async fn decrypt_asymmetric(
        &self,
        call: &Call,
        key: &str,
        version: Option<u32>,
        ciphertext: &[u8],
    ) -> Result<Opened, Error> {
        let body = async {
            self.policy().acls.check(&call.caller, Operation::Decrypt, key)?;
            let signing = self.signing_key(key, version)?;
            let plaintext = self
                .on_backend(
                    "decrypt",
                    key,
                    &signing,
                    signing.backend.decrypt_asymmetric(ciphertext),
                )
                .await?;
            Ok(Opened {
                key_name: key.to_owned(),
                key_version: signing.version,
                plaintext,
            })
        };
        self.operate(
            "decrypt",
            call,
            key,
            |request_id| tracing::info_span!("decrypt", %request_id, door = %call.door, caller = %call.caller, key),
            body,
        )
        .await
    }

    /// Refuses a wrap under an asymmetric key, naming what it is for.
    pub(crate) fn refuse_signing_key(&self, key: &str) -> Result<(), Error> {
        let ring = self.key_ring();
        let Ok(logical) = ring.get(key) else {
            return Ok(()); // the wrap reports the unknown key itself
        };
        match logical
            .primary()
            .members
            .iter()
            .find_map(|m| m.backend.algorithm())
        {
            Some(algorithm) => Err(Error::Precondition(format!(
                "key {key:?} is an asymmetric {algorithm} key: it signs and verifies, and does not wrap"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
