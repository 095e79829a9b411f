//! The one trait every backend implements.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::blob::Mechanism;
use crate::error::BackendError;
use crate::secret::SecretBytes;
use crate::signing::{KeyAlgorithm, PublicKey, SignInput, SignScheme};

/// A DEK as sealed by a backend key: everything needed to open it again,
/// none of it secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sealed {
    pub mechanism: Mechanism,
    /// IV chosen for this operation, empty when the mechanism has none.
    pub iv: Vec<u8>,
    pub ciphertext: Vec<u8>,
    /// RSA-OAEP hash name, empty otherwise.
    pub oaep_hash: String,
    /// Non-secret backend data needed to decrypt (e.g. a service key version).
    pub metadata: BTreeMap<String, String>,
}

/// A backend key made to serve as a new version of a logical key.
pub struct NewVersion {
    pub backend: Arc<dyn Backend>,
    /// Key settings that rebuild this backend key after a restart, laid over
    /// the settings of the key it was made from (an empty value removes a
    /// setting). Never secret: they are persisted in the broker's state.
    pub settings: BTreeMap<String, String>,
}

/// One backend key: seals and opens small secrets (32-byte DEKs).
///
/// Implementations must be cheap to share (`Arc<dyn Backend>`), must never
/// block the async runtime (move blocking device calls to a blocking pool),
/// and must put no secret material in their errors or logs.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend kind, e.g. `"pkcs11"`; recorded in blobs and metrics.
    fn kind(&self) -> &'static str;

    /// A stable, non-secret description of the exact key this instance uses
    /// (module, token, label, id; or service key name). Key ids are derived
    /// from it, so it must change when the key changes.
    fn key_identity(&self) -> String;

    /// Seals `secret`, binding `aad` where the mechanism supports AAD.
    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError>;

    /// Opens what [`Backend::encrypt`] sealed with the same `aad`.
    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError>;

    /// Creates a new key on the backend to serve as `version` of the logical
    /// key this key belongs to (rotation). Idempotent where the kind can
    /// derive versions: when the key for `version` already exists (another
    /// replica, or a retried job, made it) it is used, not made again.
    /// Backends that cannot create keys say so; their versions are added in
    /// the config instead.
    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let _ = version;
        Err(BackendError::new(
            crate::error::BackendErrorKind::InvalidInput,
            format!(
                "the {} backend cannot create key versions; add a version to the config instead",
                self.kind()
            ),
        ))
    }

    /// The backend key that serves as `version` by this kind's naming
    /// convention (what [`Backend::create_version`] made, or would make),
    /// built without contacting the backend. This is how a replica that never
    /// saw a rotation, or lost its state, still finds every version: the
    /// broker adds a derived version only once a blob sealed under it opens,
    /// or the config names it. `None` for kinds whose versions cannot be
    /// derived; their versions are declared in the config.
    fn derive_version(&self, version: u32) -> Option<NewVersion> {
        let _ = version;
        None
    }

    /// How many times this backend has retried a call because the service
    /// throttled it, since start (cumulative; keys sharing one client may
    /// report the same count). Exported as a metric.
    fn throttling_retries(&self) -> u64 {
        0
    }

    /// How many times this backend restarted the isolated process that holds
    /// its device module (PKCS#11 `isolation = "process"`), since start.
    /// Exported as a metric.
    fn helper_restarts(&self) -> u64 {
        0
    }

    /// The algorithm of an asymmetric key (a key pair that signs); `None`
    /// for the symmetric sealing keys most backends hold. Known from the
    /// settings, without contacting the backend.
    fn algorithm(&self) -> Option<KeyAlgorithm> {
        None
    }

    /// For an RSA encryption key pair (one that answers
    /// [`Backend::encrypt_asymmetric`]), the OAEP hash it uses; `None` for
    /// every other key. Known from the settings.
    fn oaep_hash(&self) -> Option<crate::signing::OaepHash> {
        None
    }

    /// The public half of an asymmetric key.
    async fn public_key(&self) -> Result<PublicKey, BackendError> {
        Err(not_asymmetric(self.kind()))
    }

    /// Signs `input` with `scheme` (already checked to fit the key and the
    /// input). Backends that cannot sign a digest, or a whole message, say
    /// so: nothing is ever hashed twice.
    async fn sign(&self, scheme: SignScheme, input: SignInput<'_>) -> Result<Vec<u8>, BackendError> {
        let _ = (scheme, input);
        Err(not_asymmetric(self.kind()))
    }

    /// Checks a signature. By default against [`Backend::public_key`] with
    /// ring, which checks whole messages only; backends that can check a
    /// digest override this.
    async fn verify(
        &self,
        scheme: SignScheme,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        let public = self.public_key().await?;
        public.verify(scheme, input, signature).map_err(|e| {
            BackendError::new(
                crate::error::BackendErrorKind::InvalidInput,
                format!("the {} backend cannot verify this: {e}", self.kind()),
            )
        })
    }

    /// RSA encryption key pairs (External Keys): encrypts `plaintext` to the
    /// public key with RSA-OAEP. The ciphertext is the raw OAEP block.
    async fn encrypt_asymmetric(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        let _ = plaintext;
        Err(no_oaep(self.kind()))
    }

    /// Opens what [`Backend::encrypt_asymmetric`] made, with the private key.
    async fn decrypt_asymmetric(&self, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        let _ = ciphertext;
        Err(no_oaep(self.kind()))
    }

    /// A real round trip through the key: proves the device or service and the
    /// key are usable right now.
    async fn health(&self) -> Result<(), BackendError> {
        let probe = b"sealbroker health probe";
        let sealed = self.encrypt(probe, b"health").await?;
        let opened = self.decrypt(&sealed, b"health").await?;
        if opened.expose() == probe {
            Ok(())
        } else {
            Err(BackendError::internal(
                "health probe round trip returned different bytes",
            ))
        }
    }
}

fn no_oaep(kind: &str) -> BackendError {
    BackendError::new(
        crate::error::BackendErrorKind::InvalidInput,
        format!("this {kind} key is not an RSA encryption key pair: it does no RSA-OAEP"),
    )
}

fn not_asymmetric(kind: &str) -> BackendError {
    BackendError::new(
        crate::error::BackendErrorKind::InvalidInput,
        format!("this {kind} key is not an asymmetric key: it seals data keys and does not sign"),
    )
}
