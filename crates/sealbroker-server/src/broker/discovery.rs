//! Versions found on the backend, not in this process's memory.
//!
//! Several brokers serve one key, and any of them may have lost its state
//! directory or never seen a rotation that another made. When a blob names
//! a version this broker does not know, the version is derived from the
//! key's newest configured version by the backend kind's naming convention
//! ([`sealbroker_core::Backend::derive_version`]: `<label>-v<N>` on
//! PKCS#11, `<key_file>.v<N>`, the same cloud key, ...). It joins the key
//! ring only when the blob opens through it: a derived key id proves
//! nothing, an authenticated decryption does. Deriving contacts no backend,
//! so a blob naming an unknown version costs what one naming a known
//! version does: a decryption per DEK entry whose id matches, at most
//! [`PER_BLOB`] of them. Retired versions are never looked for.

use std::sync::Arc;

use sealbroker_core::{Backend, Error, KeyRing, KeyVersion, LogicalKey, Unwrapped, WrappedBlob};

use super::Broker;
use super::keystate::{MemberRecord, VersionRecord};

/// How far above the newest known version a blob may name a version for it
/// to be looked for (rotations happen one version at a time).
const WINDOW: u32 = 64;
/// At most this many unknown versions are tried for one blob.
const PER_BLOB: usize = 2;

/// A version derived from the template, with what rebuilds it after a restart.
struct Derived {
    version: KeyVersion,
    records: Vec<MemberRecord>,
}

impl Broker {
    /// Opens `blob` with `ring`; when the blob names versions the ring does
    /// not have, looks for them on the backend (see the module docs).
    pub(super) async fn open_blob(
        &self,
        ring: &KeyRing,
        expected: Option<&str>,
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Unwrapped, Error> {
        let first = match ring.unwrap(expected, blob, aad).await {
            Err(first @ Error::UnknownKeyVersion { .. }) => first,
            done => return done,
        };
        // The ring decoded the blob and found its key, or it would have said so.
        let Ok(decoded) = WrappedBlob::from_bytes(blob) else {
            return Err(first);
        };
        let Ok(key) = ring.get(&decoded.key_name) else {
            return Err(first);
        };
        let newest = key.versions().map(|v| v.version).max().unwrap_or(0);
        let mut tried = Vec::new();
        let mut refusal = first;
        for entry in &decoded.deks {
            let version = entry.key_version;
            if tried.len() == PER_BLOB
                || tried.contains(&version)
                || key.version(version).is_some()
                || version < key.min_decryption_version()
                || version > newest.saturating_add(WINDOW)
            {
                continue;
            }
            let Some(derived) = self.derive(key, version) else {
                continue;
            };
            if !derived
                .version
                .members
                .iter()
                .any(|m| m.key_id.as_str() == entry.key_id)
            {
                continue;
            }
            tried.push(version);
            let Ok(trial) = key.with_version(derived.version.clone()) else {
                continue;
            };
            match ring.with_key(trial).unwrap(expected, blob, aad).await {
                Ok(opened) => {
                    self.adopt(&key.name, derived).await;
                    return Ok(opened);
                }
                // The version is plausibly real (its id matched): say why
                // this blob did not open under it.
                Err(e) => refusal = e,
            }
        }
        Err(refusal)
    }

    /// Version `version` of `key`, derived from its template members.
    fn derive(&self, key: &LogicalKey, version: u32) -> Option<Derived> {
        let template = self.template(key);
        let mut members: Vec<(String, Arc<dyn Backend>)> = Vec::new();
        let mut records = Vec::new();
        for member in &template.members {
            let derived = member.backend.derive_version(version)?;
            members.push((member.backend_name.clone(), derived.backend));
            records.push(MemberRecord {
                backend: member.backend_name.clone(),
                settings: derived.settings,
            });
        }
        Some(Derived {
            version: KeyVersion::with_members(&key.name, version, members),
            records,
        })
    }

    /// The version new versions of `key` are made from: its newest
    /// configured version (every replica reads the same config), else its
    /// primary.
    pub(super) fn template<'k>(&self, key: &'k LogicalKey) -> &'k KeyVersion {
        let template = self.policy().templates.get(&key.name).copied();
        template
            .and_then(|v| key.version(v))
            .unwrap_or_else(|| key.primary())
    }

    /// Adds a version that opened a blob to the ring, and to the state so a
    /// restart does not have to look for it again. The primary is not moved.
    async fn adopt(&self, key: &str, derived: Derived) {
        let _changing = self.changing_keys.lock().await;
        let ring = self.key_ring();
        let Ok(current) = ring.get(key) else { return };
        let number = derived.version.version;
        if current.version(number).is_some() {
            return;
        }
        let Ok(grown) = current.with_version(derived.version) else {
            return;
        };
        let primary = current.primary().version;
        if let Some(store) = &self.state {
            let record = VersionRecord {
                version: number,
                members: derived.records,
            };
            let recorded = store
                .update(|state| {
                    let entry = state.keys.entry(key.to_owned()).or_default();
                    entry.primary_version.get_or_insert(primary);
                    entry.versions.push(record);
                })
                .await;
            if let Err(e) = recorded {
                // Still served from memory; found again after a restart.
                tracing::warn!(key, version = number, error = %e, "cannot record a key version found on the backend");
            }
        }
        self.replace_key(grown);
        tracing::info!(
            key,
            version = number,
            "found a key version on the backend: a blob sealed under it opened"
        );
    }
}

#[cfg(test)]
mod tests {
    use sealbroker_core::SecretBytes;
    use sealbroker_testkit::memory::MemoryKind;

    use super::*;
    use crate::broker::caller::{Call, Door};
    use crate::broker::registry::BackendRegistry;
    use crate::config::Config;

    /// One replica of a key on a shared backend, with its own state directory.
    async fn replica(registry: &BackendRegistry, state: &std::path::Path, extra: &str) -> Broker {
        let text = format!(
            "profile = \"development\"\n[server]\nunix_socket = \"/tmp/unused.sock\"\nstate_dir = {state:?}\n\
             [backends.hsm]\ntype = \"shared\"\n[keys.unseal]\nbackend = \"hsm\"\nlabel = \"unseal\"\n{extra}"
        );
        let config = Config::parse(&text).unwrap();
        Broker::from_config(&config, registry).await.unwrap()
    }

    fn admin() -> Call {
        Call::internal(Door::Admin)
    }

    async fn wrap(broker: &Broker, secret: &[u8]) -> (Vec<u8>, u32, String) {
        let wrapped = broker
            .wrap(&admin(), "unseal", SecretBytes::copy_from(secret), b"aad")
            .await
            .unwrap();
        (wrapped.blob, wrapped.key_version, wrapped.key_id.to_string())
    }

    fn versions(broker: &Broker) -> Vec<u32> {
        let info = broker.get_key(&admin(), "unseal").unwrap();
        info.versions.iter().map(|(v, _)| *v).collect()
    }

    #[tokio::test]
    async fn a_replica_that_never_saw_the_rotation_opens_its_blobs_and_keeps_the_version() {
        let registry = BackendRegistry::default().with(MemoryKind::leak("shared"));
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = replica(&registry, dir_a.path(), "").await;
        let b = replica(&registry, dir_b.path(), "").await;
        let (old_blob, _, _) = wrap(&a, b"old").await;

        a.rotate(&admin(), "unseal").await.unwrap();
        let (new_blob, version, key_id) = wrap(&a, b"new").await;
        assert_eq!(version, 2);

        // B never heard of v2: it opens the blob anyway, and keeps wrapping
        // under the config's primary, v1, which every replica can open.
        assert_eq!(versions(&b), [1]);
        let opened = b.unwrap(&admin(), "unseal", &new_blob, b"aad").await.unwrap();
        assert_eq!(opened.plaintext.expose(), b"new");
        assert_eq!(
            (opened.key_version, opened.key_id.to_string()),
            (2, key_id.clone())
        );
        assert_eq!(versions(&b), [1, 2]);
        assert_eq!(wrap(&b, b"x").await.1, 1);
        let info = b.get_key(&admin(), "unseal").unwrap();
        assert_eq!(
            info.versions[1].1.as_str(),
            key_id,
            "both replicas give v2 one id"
        );

        // Recorded: B restarted on its state knows v2 before any blob names it.
        drop(b);
        let b = replica(&registry, dir_b.path(), "").await;
        assert_eq!(versions(&b), [1, 2]);
        assert_eq!(wrap(&b, b"x").await.1, 1, "finding a version does not promote it");
        assert_eq!(
            b.unwrap(&admin(), "unseal", &old_blob, b"aad")
                .await
                .unwrap()
                .plaintext
                .expose(),
            b"old"
        );
    }

    #[tokio::test]
    async fn the_config_promotes_and_retires_on_a_replica_that_lost_its_state() {
        let registry = BackendRegistry::default().with(MemoryKind::leak("shared"));
        let dir_a = tempfile::tempdir().unwrap();
        let a = replica(&registry, dir_a.path(), "").await;
        let (v1_blob, _, _) = wrap(&a, b"one").await;
        a.rotate(&admin(), "unseal").await.unwrap();
        let (v2_blob, _, v2_id) = wrap(&a, b"two").await;

        // A fresh disk and a config that says v2 is primary: wraps use v2,
        // under the id A gave it, and v1 blobs still open.
        let fresh = tempfile::tempdir().unwrap();
        let c = replica(&registry, fresh.path(), "primary_version = 2\n").await;
        let (_, version, key_id) = wrap(&c, b"x").await;
        assert_eq!((version, key_id), (2, v2_id));
        assert!(c.unwrap(&admin(), "unseal", &v1_blob, b"aad").await.is_ok());

        // Retirement in the config cannot be forgotten with the disk.
        let fresh = tempfile::tempdir().unwrap();
        let d = replica(
            &registry,
            fresh.path(),
            "primary_version = 2\nmin_decryption_version = 2\n",
        )
        .await;
        let err = d
            .unwrap(&admin(), "unseal", &v1_blob, b"aad")
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                Error::VersionRetired {
                    version: 1,
                    min: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            d.unwrap(&admin(), "unseal", &v2_blob, b"aad")
                .await
                .unwrap()
                .plaintext
                .expose(),
            b"two"
        );
    }

    #[tokio::test]
    async fn a_staged_version_opens_everywhere_but_wraps_nowhere_until_promoted() {
        let registry = BackendRegistry::default().with(MemoryKind::leak("shared"));
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = replica(&registry, dir_a.path(), "").await;
        let staged = a.stage(&admin(), "unseal").await.unwrap();
        assert_eq!(staged.primary_version, 1);
        assert_eq!(versions(&a), [1, 2]);
        assert_eq!(wrap(&a, b"x").await.1, 1);
        // Staging again on another replica converges on the same key.
        let b = replica(&registry, dir_b.path(), "").await;
        let again = b.stage(&admin(), "unseal").await.unwrap();
        assert_eq!(again.versions, staged.versions);
        // And a restart keeps it staged, not primary.
        drop(a);
        let a = replica(&registry, dir_a.path(), "").await;
        assert_eq!((versions(&a), wrap(&a, b"x").await.1), (vec![1, 2], 1));
    }

    #[tokio::test]
    async fn newest_version_in_the_config_makes_a_replica_report_a_staged_version() {
        let registry = BackendRegistry::default().with(MemoryKind::leak("shared"));
        let dir = tempfile::tempdir().unwrap();
        let broker = replica(&registry, dir.path(), "newest_version = 3\nprimary_version = 2\n")
            .await
            .with_metrics(Arc::new(crate::broker::metrics::Metrics::new(true)));
        let status = broker.status(true).await;
        let seen: Vec<(u32, &str, Option<bool>)> = status
            .versions
            .iter()
            .map(|v| (v.version, v.role.as_str(), v.usable))
            .collect();
        assert_eq!(
            seen,
            [
                (1, "decrypt", None),
                (2, "primary", Some(true)),
                (3, "staged", Some(true))
            ]
        );
        assert_eq!(wrap(&broker, b"x").await.1, 2);
        let scrape = broker.metrics().unwrap().encode();
        for line in [
            "sealbroker_key_primary_version{key=\"unseal\"} 2",
            "sealbroker_key_version_usable{key=\"unseal\",version=\"3\"} 1",
        ] {
            assert!(scrape.contains(line), "{line} missing from\n{scrape}");
        }
    }

    #[tokio::test]
    async fn a_blob_naming_an_unknown_version_under_a_forged_id_adds_nothing() {
        let registry = BackendRegistry::default().with(MemoryKind::leak("shared"));
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = replica(&registry, dir_a.path(), "").await;
        a.rotate(&admin(), "unseal").await.unwrap();
        let (blob, _, _) = wrap(&a, b"new").await;
        let b = replica(&registry, dir_b.path(), "").await;

        // The same DEK entry, claiming version 5: the derived v5 id differs.
        let mut forged = WrappedBlob::from_bytes(&blob).unwrap();
        forged.deks[0].key_version = 5;
        let err = b
            .unwrap(&admin(), "unseal", &forged.to_bytes(), b"aad")
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::UnknownKeyVersion { .. }), "{err}");
        // Version 2's id on an entry claiming 2 but sealed for another AAD: not authentic, not kept.
        let err = b
            .unwrap(&admin(), "unseal", &blob, b"other aad")
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::NotAuthentic), "{err}");
        assert_eq!(versions(&b), [1]);
        // Far above the newest known version: not looked for at all.
        let mut far = WrappedBlob::from_bytes(&blob).unwrap();
        far.deks[0].key_version = 1 + WINDOW + 1;
        assert!(
            b.unwrap(&admin(), "unseal", &far.to_bytes(), b"aad")
                .await
                .is_err()
        );
        assert_eq!(versions(&b), [1]);
    }

    #[tokio::test]
    async fn an_unknown_key_id_opens_only_a_blob_under_an_unknown_version() {
        let registry = BackendRegistry::default().with(MemoryKind::leak("shared"));
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = replica(&registry, dir_a.path(), "").await;
        let b = replica(&registry, dir_b.path(), "").await;
        let (v1_blob, _, v1_id) = wrap(&a, b"old").await;
        a.rotate(&admin(), "unseal").await.unwrap();
        let (v2_blob, _, v2_id) = wrap(&a, b"new").await;

        // KMS v2 names the id it was given: B has not seen v2 yet, finds it.
        let opened = b
            .unwrap_issued(&admin(), "unseal", &v2_id, &v2_blob, b"aad")
            .await
            .unwrap();
        assert_eq!(opened.plaintext.expose(), b"new");
        // An id B does not know on a blob under a version B knows is refused
        // as never issued, whatever the blob holds (no trial decryption).
        let c = replica(&registry, tempfile::tempdir().unwrap().path(), "").await;
        for aad in [&b"aad"[..], b"other aad"] {
            let err = c
                .unwrap_issued(
                    &admin(),
                    "unseal",
                    "0123456789abcdef0123456789abcdef",
                    &v1_blob,
                    aad,
                )
                .await
                .err()
                .unwrap();
            assert!(
                matches!(err, Error::InvalidArgument { field: "key_id", .. }),
                "{err}"
            );
        }
        // Nor on a blob whose known member's entry claims an unknown version.
        let mut relabelled = WrappedBlob::from_bytes(&v1_blob).unwrap();
        relabelled.deks[0].key_version = 50;
        relabelled.deks[0].wrapped_dek[0] ^= 1;
        let err = c
            .unwrap_issued(
                &admin(),
                "unseal",
                "0123456789abcdef0123456789abcdef",
                &relabelled.to_bytes(),
                b"aad",
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, Error::InvalidArgument { field: "key_id", .. }),
            "{err}"
        );
        // Nor on another key's blob.
        let other = replica(
            &registry,
            tempfile::tempdir().unwrap().path(),
            "[keys.other]\nbackend = \"hsm\"\nlabel = \"other\"\n",
        )
        .await;
        let foreign = other
            .wrap(&admin(), "other", SecretBytes::copy_from(b"x"), b"aad")
            .await
            .unwrap();
        let err = c
            .unwrap_issued(
                &admin(),
                "unseal",
                "0123456789abcdef0123456789abcdef",
                &foreign.blob,
                b"aad",
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, Error::InvalidArgument { field: "key_id", .. }),
            "{err}"
        );
        // The blob's own id still opens it.
        let opened = c
            .unwrap_issued(&admin(), "unseal", &v1_id, &v1_blob, b"aad")
            .await
            .unwrap();
        assert_eq!(opened.plaintext.expose(), b"old");
    }

    #[tokio::test]
    async fn a_blob_repeating_one_member_costs_one_backend_decrypt() {
        // A kind of its own, so no other test's calls are counted.
        let kind = MemoryKind::leak("shared");
        let registry = BackendRegistry::default().with(kind);
        let dir = tempfile::tempdir().unwrap();
        let broker = replica(&registry, dir.path(), "").await;
        let (blob, _, _) = wrap(&broker, b"x").await;
        // Sixteen copies of the one entry, its wrapped key altered: none opens.
        let mut forged = WrappedBlob::from_bytes(&blob).unwrap();
        forged.deks[0].wrapped_dek[0] ^= 1;
        forged.deks = vec![forged.deks[0].clone(); 16];
        let before = kind.knobs().concurrency.calls();
        let err = broker
            .unwrap(&admin(), "unseal", &forged.to_bytes(), b"aad")
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::NotAuthentic), "{err}");
        assert_eq!(
            kind.knobs().concurrency.calls() - before,
            1,
            "one decrypt for one member"
        );
    }
}
