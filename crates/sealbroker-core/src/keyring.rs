//! Logical keys, their versions, and the envelope that wraps payloads.
//!
//! A logical key has numbered versions; new wraps use the primary version,
//! and any version at or above `min_decryption_version` can unwrap. A
//! version has one or more *members*, each a backend key: with several
//! members on different backends (an HA key ring), the DEK is sealed under
//! each member and any one of them can open the blob again.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::backend::{Backend, Sealed};
use crate::blob::{FORMAT_V1, GCM_IV_LEN, MAX_DEKS, Mechanism, WrappedBlob, WrappedDek};
use crate::error::{BackendError, BackendErrorKind, Error};
use crate::secret::SecretBytes;

const DEK_LEN: usize = 32;

/// A public key identifier: a hash of the key name, version and backend key
/// identities. Stable for a version, different for every version and
/// member, never reused, and safe to log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Derives the id. `backend_identity` is [`Backend::key_identity`] (or
    /// the identities of all members of a version, joined).
    pub fn derive(key_name: &str, version: u32, backend_identity: &str) -> Self {
        let input = length_prefixed(&[
            b"sealbroker/key-id/v1",
            key_name.as_bytes(),
            &version.to_be_bytes(),
            backend_identity.as_bytes(),
        ]);
        let hash = digest::digest(&digest::SHA256, &input);
        KeyId(hex::encode(&hash.as_ref()[..16]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One backend key holding (part of) a key version.
#[derive(Clone)]
pub struct Member {
    /// The config name of the backend (`[backends.NAME]`).
    pub backend_name: String,
    pub backend: Arc<dyn Backend>,
    /// Id of this member; recorded with the DEK it sealed.
    pub key_id: KeyId,
}

/// How a version with several members seals a DEK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WrapPolicy {
    /// Seal under every reachable member; any one can unwrap.
    #[default]
    All,
    /// Seal under the first reachable member, in configured order.
    Primary,
}

/// One version of a logical key.
#[derive(Clone)]
pub struct KeyVersion {
    pub version: u32,
    /// The version's id, exposed to callers.
    pub key_id: KeyId,
    pub members: Vec<Member>,
}

impl KeyVersion {
    /// A version held by one backend key.
    pub fn new(key_name: &str, version: u32, backend_name: &str, backend: Arc<dyn Backend>) -> Self {
        Self::with_members(key_name, version, vec![(backend_name.to_owned(), backend)])
    }

    /// A version held by several backend keys (an HA key ring), in the
    /// order unwraps try them.
    pub fn with_members(key_name: &str, version: u32, members: Vec<(String, Arc<dyn Backend>)>) -> Self {
        let identities: Vec<String> = members.iter().map(|(_, b)| b.key_identity()).collect();
        let key_id = KeyId::derive(key_name, version, &identities.join("\n"));
        let members = members
            .into_iter()
            .map(|(backend_name, backend)| {
                let key_id = KeyId::derive(key_name, version, &backend.key_identity());
                Member {
                    backend_name,
                    backend,
                    key_id,
                }
            })
            .collect();
        KeyVersion {
            version,
            key_id,
            members,
        }
    }

    fn member_by_id(&self, key_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.key_id.as_str() == key_id)
    }

    /// Backend names, comma separated (for messages and listings).
    pub fn backend_names(&self) -> String {
        self.members
            .iter()
            .map(|m| m.backend_name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A named key callers wrap under.
#[derive(Clone)]
pub struct LogicalKey {
    pub name: String,
    versions: BTreeMap<u32, KeyVersion>,
    primary: u32,
    min_decryption_version: u32,
    policy: WrapPolicy,
}

impl LogicalKey {
    /// A key with a single version.
    pub fn single(name: &str, version: KeyVersion) -> Self {
        Self::new(name, vec![version], None, 1, WrapPolicy::All).expect("one version is always valid")
    }

    /// A key from its versions. `primary` defaults to the highest version.
    pub fn new(
        name: &str,
        versions: Vec<KeyVersion>,
        primary: Option<u32>,
        min_decryption_version: u32,
        policy: WrapPolicy,
    ) -> Result<Self, String> {
        let mut by_number = BTreeMap::new();
        for version in versions {
            if version.version == 0 {
                return Err("key versions start at 1".into());
            }
            if version.members.is_empty() || version.members.len() > MAX_DEKS {
                return Err(format!(
                    "version {} must have 1 to {MAX_DEKS} members",
                    version.version
                ));
            }
            if by_number.insert(version.version, version).is_some() {
                return Err("a version number appears twice".into());
            }
        }
        let highest = *by_number
            .keys()
            .next_back()
            .ok_or("a key needs at least one version")?;
        let primary = primary.unwrap_or(highest);
        if !by_number.contains_key(&primary) {
            return Err(format!("primary version {primary} does not exist"));
        }
        if min_decryption_version > primary {
            return Err(format!(
                "min_decryption_version {min_decryption_version} is above the primary version {primary}"
            ));
        }
        Ok(LogicalKey {
            name: name.to_owned(),
            versions: by_number,
            primary,
            min_decryption_version,
            policy,
        })
    }

    pub fn primary(&self) -> &KeyVersion {
        &self.versions[&self.primary]
    }

    pub fn versions(&self) -> impl Iterator<Item = &KeyVersion> {
        self.versions.values()
    }

    pub fn min_decryption_version(&self) -> u32 {
        self.min_decryption_version
    }

    pub fn policy(&self) -> WrapPolicy {
        self.policy
    }

    /// A copy with `version` added and made primary.
    pub fn with_new_primary(&self, version: KeyVersion) -> Result<Self, String> {
        let mut versions: Vec<KeyVersion> = self.versions.values().cloned().collect();
        let number = version.version;
        versions.push(version);
        Self::new(
            &self.name,
            versions,
            Some(number),
            self.min_decryption_version,
            self.policy,
        )
    }

    /// A copy with `version` added; the primary stays as it is.
    pub fn with_version(&self, version: KeyVersion) -> Result<Self, String> {
        let mut versions: Vec<KeyVersion> = self.versions.values().cloned().collect();
        versions.push(version);
        Self::new(
            &self.name,
            versions,
            Some(self.primary),
            self.min_decryption_version,
            self.policy,
        )
    }

    /// Version `version`, when this key has it.
    pub fn version(&self, version: u32) -> Option<&KeyVersion> {
        self.versions.get(&version)
    }

    /// A copy with a new minimum decryption version.
    pub fn with_min_decryption_version(&self, min: u32) -> Result<Self, String> {
        let versions = self.versions.values().cloned().collect();
        Self::new(&self.name, versions, Some(self.primary), min.max(1), self.policy)
    }

    fn member_by_id(&self, key_id: &str) -> Option<(&KeyVersion, &Member)> {
        self.versions
            .values()
            .find_map(|v| v.member_by_id(key_id).map(|m| (v, m)))
    }

    /// Whether `key_id` names one of this key's versions.
    pub fn has_version_id(&self, key_id: &str) -> bool {
        self.versions.values().any(|v| v.key_id.as_str() == key_id)
    }
}

/// A non-secret description of a key, for listing and `GetKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    pub primary_version: u32,
    pub primary_key_id: KeyId,
    pub min_decryption_version: u32,
    pub backend_kind: &'static str,
    /// Backend names of the primary version's members, comma separated.
    pub backend_name: String,
    /// (version, key id) for every version, oldest first.
    pub versions: Vec<(u32, KeyId)>,
}

/// The result of a wrap.
pub struct Wrapped {
    pub blob: Vec<u8>,
    pub key_name: String,
    pub key_id: KeyId,
    pub key_version: u32,
    /// Members of the version that could not seal the DEK (HA keys): the
    /// blob is still good, and `Rewrap` can repair it later.
    pub missing_members: Vec<String>,
}

/// The result of an unwrap. Holds the plaintext, so it is not `Debug`.
pub struct Unwrapped {
    pub plaintext: SecretBytes,
    pub key_name: String,
    pub key_id: KeyId,
    pub key_version: u32,
}

/// All logical keys this broker serves.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, LogicalKey>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = LogicalKey>) -> Self {
        KeyRing {
            keys: keys.into_iter().map(|k| (k.name.clone(), k)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Result<&LogicalKey, Error> {
        self.keys
            .get(name)
            .ok_or_else(|| Error::UnknownKey(name.to_owned()))
    }

    /// A copy of the ring with `key` replacing the key of the same name.
    pub fn with_key(&self, key: LogicalKey) -> KeyRing {
        let mut keys = self.keys.clone();
        keys.insert(key.name.clone(), key);
        KeyRing { keys }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &LogicalKey> {
        self.keys.values()
    }

    pub fn describe(&self, name: &str) -> Result<KeyInfo, Error> {
        let key = self.get(name)?;
        let primary = key.primary();
        Ok(KeyInfo {
            name: key.name.clone(),
            primary_version: primary.version,
            primary_key_id: primary.key_id.clone(),
            min_decryption_version: key.min_decryption_version,
            backend_kind: primary.members[0].backend.kind(),
            backend_name: primary.backend_names(),
            versions: key.versions().map(|v| (v.version, v.key_id.clone())).collect(),
        })
    }

    /// Seals `plaintext` under the primary version of `key_name`, binding `aad`.
    pub async fn wrap(&self, key_name: &str, plaintext: &[u8], aad: &[u8]) -> Result<Wrapped, Error> {
        let key = self.get(key_name)?;
        let version = key.primary();
        let rng = SystemRandom::new();

        let dek = random_secret(&rng, DEK_LEN)?;
        let mut payload_iv = [0u8; GCM_IV_LEN];
        rng.fill(&mut payload_iv)
            .map_err(|_| Error::Internal("system RNG failed".into()))?;
        let ciphertext = seal_payload(&dek, &payload_iv, &payload_aad(key_name, aad), plaintext)?;

        let dek_aad = dek_aad(key_name, version.version);
        let results: Vec<(&Member, Result<Sealed, BackendError>)> = match key.policy {
            WrapPolicy::All => {
                let sealing = version
                    .members
                    .iter()
                    .map(|m| m.backend.encrypt(dek.expose(), &dek_aad));
                version
                    .members
                    .iter()
                    .zip(futures::future::join_all(sealing).await)
                    .collect()
            }
            WrapPolicy::Primary => {
                let mut results = Vec::new();
                for member in &version.members {
                    let result = member.backend.encrypt(dek.expose(), &dek_aad).await;
                    let done = result.is_ok();
                    results.push((member, result));
                    if done {
                        break;
                    }
                }
                results
            }
        };

        let mut deks = Vec::new();
        let mut missing_members = Vec::new();
        let mut first_error = None;
        for (member, result) in results {
            match result {
                Ok(sealed) => deks.push(WrappedDek {
                    key_id: member.key_id.to_string(),
                    key_version: version.version,
                    backend: member.backend.kind().to_owned(),
                    mechanism: sealed.mechanism as i32,
                    iv: sealed.iv,
                    wrapped_dek: sealed.ciphertext,
                    oaep_hash: sealed.oaep_hash,
                    backend_metadata: sealed.metadata.into_iter().collect(),
                }),
                Err(source) => {
                    missing_members.push(member.backend_name.clone());
                    first_error.get_or_insert_with(|| backend_error(member, key_name, source));
                }
            }
        }
        if deks.is_empty() {
            return Err(
                first_error.unwrap_or_else(|| Error::Internal("no member sealed the data key".into()))
            );
        }

        let blob = WrappedBlob {
            format: FORMAT_V1,
            key_name: key_name.to_owned(),
            payload_mechanism: Mechanism::Aes256Gcm as i32,
            payload_iv: payload_iv.to_vec(),
            ciphertext,
            deks,
        };
        Ok(Wrapped {
            blob: blob.to_bytes(),
            key_name: key_name.to_owned(),
            key_id: version.key_id.clone(),
            key_version: version.version,
            missing_members,
        })
    }

    /// Opens a blob. When `expected_key` is given the blob must have been
    /// sealed under that key name.
    pub async fn unwrap(
        &self,
        expected_key: Option<&str>,
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Unwrapped, Error> {
        let blob = WrappedBlob::from_bytes(blob)?;
        if let Some(expected) = expected_key.filter(|k| !k.is_empty())
            && expected != blob.key_name
        {
            // Name the requested key only: whether the blob's key exists
            // here is not the caller's business.
            self.get(expected)?;
            return Err(Error::WrongKey {
                blob_key: blob.key_name,
                requested: expected.to_owned(),
            });
        }
        let key = self.get(&blob.key_name)?;

        // Try every DEK entry we hold a member for, in blob order (which is
        // configured order); the first that opens wins. Each member is asked
        // once: a blob that repeats an entry costs no more backend calls.
        let mut last_error = None;
        let mut tried: Vec<&str> = Vec::new();
        for entry in &blob.deks {
            if tried.contains(&entry.key_id.as_str()) {
                continue;
            }
            let Some((version, member)) = key.member_by_id(&entry.key_id) else {
                continue;
            };
            tried.push(entry.key_id.as_str());
            if version.version < key.min_decryption_version {
                last_error = Some(Error::VersionRetired {
                    key: key.name.clone(),
                    version: version.version,
                    min: key.min_decryption_version,
                });
                continue;
            }
            let sealed = Sealed {
                mechanism: Mechanism::try_from(entry.mechanism).unwrap_or_default(),
                iv: entry.iv.clone(),
                ciphertext: entry.wrapped_dek.clone(),
                oaep_hash: entry.oaep_hash.clone(),
                metadata: entry.backend_metadata.clone().into_iter().collect(),
            };
            let dek = match member
                .backend
                .decrypt(&sealed, &dek_aad(&key.name, version.version))
                .await
            {
                Ok(dek) => dek,
                Err(source) if source.kind == BackendErrorKind::NotAuthentic => {
                    last_error.get_or_insert(Error::NotAuthentic);
                    continue;
                }
                Err(source) => {
                    // Prefer reporting an unreachable member over "not authentic".
                    if !matches!(last_error, Some(Error::Backend { .. })) {
                        last_error = Some(backend_error(member, &key.name, source));
                    }
                    continue;
                }
            };
            if dek.len() != DEK_LEN {
                last_error = Some(Error::NotAuthentic);
                continue;
            }
            let iv: [u8; GCM_IV_LEN] = blob
                .payload_iv
                .as_slice()
                .try_into()
                .map_err(|_| Error::Internal("payload IV length checked at decode".into()))?;
            let plaintext = open_payload(&dek, &iv, &payload_aad(&key.name, aad), &blob.ciphertext)?;
            return Ok(Unwrapped {
                plaintext,
                key_name: key.name.clone(),
                key_id: version.key_id.clone(),
                key_version: version.version,
            });
        }
        Err(last_error.unwrap_or_else(|| Error::UnknownKeyVersion {
            key: key.name.clone(),
            key_id: blob
                .deks
                .iter()
                .map(|d| d.key_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }))
    }

    /// Opens a blob and seals its plaintext again under the key's primary version.
    pub async fn rewrap(
        &self,
        expected_key: Option<&str>,
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Wrapped, Error> {
        let opened = self.unwrap(expected_key, blob, aad).await?;
        self.wrap(&opened.key_name, opened.plaintext.expose(), aad).await
    }
}

fn backend_error(member: &Member, key: &str, source: BackendError) -> Error {
    Error::Backend {
        backend: member.backend_name.clone(),
        key: key.to_owned(),
        source,
    }
}

fn random_secret(rng: &SystemRandom, len: usize) -> Result<SecretBytes, Error> {
    let mut bytes = SecretBytes::new(vec![0u8; len]);
    rng.fill(bytes.expose_mut())
        .map_err(|_| Error::Internal("system RNG failed".into()))?;
    Ok(bytes)
}

/// Length-prefixed concatenation: unambiguous, so no two field lists collide.
fn length_prefixed(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// AAD of the payload encryption: binds the format, key name and caller AAD.
fn payload_aad(key_name: &str, caller_aad: &[u8]) -> Vec<u8> {
    length_prefixed(&[b"sealbroker/payload/v1", key_name.as_bytes(), caller_aad])
}

/// AAD the backend binds to the DEK: the key name and version.
fn dek_aad(key_name: &str, version: u32) -> Vec<u8> {
    length_prefixed(&[b"sealbroker/dek/v1", key_name.as_bytes(), &version.to_be_bytes()])
}

fn gcm_key(dek: &SecretBytes) -> Result<LessSafeKey, Error> {
    let unbound = UnboundKey::new(&aead::AES_256_GCM, dek.expose())
        .map_err(|_| Error::Internal("DEK has the wrong length".into()))?;
    Ok(LessSafeKey::new(unbound))
}

fn seal_payload(
    dek: &SecretBytes,
    iv: &[u8; GCM_IV_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let key = gcm_key(dek)?;
    let mut in_out = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(*iv), Aad::from(aad), &mut in_out)
        .map_err(|_| Error::Internal("AES-GCM seal failed".into()))?;
    Ok(in_out)
}

fn open_payload(
    dek: &SecretBytes,
    iv: &[u8; GCM_IV_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes, Error> {
    let key = gcm_key(dek)?;
    let mut in_out = ciphertext.to_vec();
    let result = key
        .open_in_place(Nonce::assume_unique_for_key(*iv), Aad::from(aad), &mut in_out)
        .map(|plain| plain.len());
    match result {
        Ok(len) => {
            in_out.truncate(len);
            Ok(SecretBytes::new(in_out))
        }
        Err(_) => {
            zeroize::Zeroize::zeroize(&mut in_out);
            Err(Error::NotAuthentic)
        }
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::error::{BackendError, Code};

    /// An in-memory AES-GCM backend for exercising the envelope logic.
    struct MemoryKey {
        key: LessSafeKey,
        identity: &'static str,
    }

    impl MemoryKey {
        fn shared(identity: &'static str, byte: u8) -> Arc<dyn Backend> {
            let key = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, &[byte; 32]).unwrap());
            Arc::new(MemoryKey { key, identity })
        }
    }

    #[async_trait]
    impl Backend for MemoryKey {
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn key_identity(&self) -> String {
            self.identity.to_owned()
        }
        async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
            let iv = [9u8; 12];
            let mut out = secret.to_vec();
            self.key
                .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut out)
                .unwrap();
            Ok(Sealed {
                mechanism: Mechanism::Aes256Gcm,
                iv: iv.to_vec(),
                ciphertext: out,
                ..Default::default()
            })
        }
        async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
            let mut buf = sealed.ciphertext.clone();
            let iv: [u8; 12] = sealed.iv.as_slice().try_into().unwrap();
            let len = self
                .key
                .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf)
                .map_err(|_| BackendError::not_authentic("bad tag"))?
                .len();
            buf.truncate(len);
            Ok(SecretBytes::new(buf))
        }
    }

    fn ring() -> KeyRing {
        KeyRing::new([
            LogicalKey::single("a", KeyVersion::new("a", 1, "mem", MemoryKey::shared("mem:a", 1))),
            LogicalKey::single("b", KeyVersion::new("b", 1, "mem", MemoryKey::shared("mem:b", 2))),
        ])
    }

    #[tokio::test]
    async fn wrap_unwrap_round_trip_reports_key_version() {
        let ring = ring();
        let wrapped = ring.wrap("a", b"secret", b"ctx").await.unwrap();
        assert_eq!(wrapped.key_version, 1);
        let opened = ring.unwrap(None, &wrapped.blob, b"ctx").await.unwrap();
        assert_eq!(opened.plaintext.expose(), b"secret");
        assert_eq!(opened.key_id, wrapped.key_id);
        assert_eq!(opened.key_name, "a");
    }

    #[tokio::test]
    async fn unwrap_rejects_wrong_aad() {
        let ring = ring();
        let wrapped = ring.wrap("a", b"secret", b"ctx").await.unwrap();
        let err = ring.unwrap(None, &wrapped.blob, b"other").await.err().unwrap();
        assert!(matches!(err, Error::NotAuthentic), "{err}");
        assert_eq!(err.code(), Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn unwrap_rejects_tampered_payload_and_dek() {
        let ring = ring();
        let wrapped = ring.wrap("a", b"secret", b"").await.unwrap();
        let mut blob = WrappedBlob::from_bytes(&wrapped.blob).unwrap();
        blob.ciphertext[0] ^= 1;
        let err = ring.unwrap(None, &blob.to_bytes(), b"").await.err().unwrap();
        assert!(matches!(err, Error::NotAuthentic), "{err}");

        let mut blob = WrappedBlob::from_bytes(&wrapped.blob).unwrap();
        blob.deks[0].wrapped_dek[0] ^= 1;
        let err = ring.unwrap(None, &blob.to_bytes(), b"").await.err().unwrap();
        assert!(matches!(err, Error::NotAuthentic), "{err}");
    }

    #[tokio::test]
    async fn unwrap_rejects_blob_sealed_under_other_key() {
        let ring = ring();
        let wrapped = ring.wrap("a", b"secret", b"").await.unwrap();
        let err = ring.unwrap(Some("b"), &wrapped.blob, b"").await.err().unwrap();
        assert!(
            matches!(&err, Error::WrongKey { blob_key, requested } if blob_key == "a" && requested == "b"),
            "{err}"
        );
        assert_eq!(err.code(), Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn renaming_the_key_in_a_blob_does_not_help() {
        let ring = ring();
        let wrapped = ring.wrap("a", b"secret", b"").await.unwrap();
        let mut blob = WrappedBlob::from_bytes(&wrapped.blob).unwrap();
        blob.key_name = "b".into();
        let err = ring.unwrap(None, &blob.to_bytes(), b"").await.err().unwrap();
        assert!(matches!(err, Error::UnknownKeyVersion { .. }), "{err}");
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn blob_from_a_replaced_backend_key_is_unknown_version() {
        let wrapped = ring().wrap("a", b"secret", b"").await.unwrap();
        let replaced = KeyRing::new([LogicalKey::single(
            "a",
            KeyVersion::new("a", 1, "mem", MemoryKey::shared("mem:a-new", 1)),
        )]);
        let err = replaced.unwrap(None, &wrapped.blob, b"").await.err().unwrap();
        assert!(matches!(err, Error::UnknownKeyVersion { .. }), "{err}");
    }

    #[tokio::test]
    async fn unknown_key_is_not_found() {
        let err = ring().wrap("nope", b"x", b"").await.err().unwrap();
        assert!(matches!(&err, Error::UnknownKey(name) if name == "nope"));
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn garbage_and_truncated_blobs_are_invalid_argument() {
        let ring = ring();
        let wrapped = ring.wrap("a", b"secret", b"").await.unwrap();
        for bad in [
            &b"garbage bytes!"[..],
            &wrapped.blob[..wrapped.blob.len() / 2],
            b"",
        ] {
            let err = ring.unwrap(None, bad, b"").await.err().unwrap();
            assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        }
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        let a1 = KeyId::derive("a", 1, "hsm:x");
        assert_eq!(a1, KeyId::derive("a", 1, "hsm:x"));
        assert_ne!(a1, KeyId::derive("a", 2, "hsm:x"));
        assert_ne!(a1, KeyId::derive("b", 1, "hsm:x"));
        assert_ne!(a1, KeyId::derive("a", 1, "hsm:y"));
        assert_eq!(a1.as_str().len(), 32);
    }

    #[tokio::test]
    async fn rewrap_keeps_the_plaintext() {
        let ring = ring();
        let wrapped = ring.wrap("a", b"secret", b"ctx").await.unwrap();
        let rewrapped = ring.rewrap(Some("a"), &wrapped.blob, b"ctx").await.unwrap();
        assert_ne!(rewrapped.blob, wrapped.blob);
        let opened = ring.unwrap(None, &rewrapped.blob, b"ctx").await.unwrap();
        assert_eq!(opened.plaintext.expose(), b"secret");
    }
}
