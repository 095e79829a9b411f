//! Key changes: rotation and the minimum decryption version, recorded in
//! the state directory so they survive restarts. One change at a time.

use std::time::Instant;

use sealbroker_core::{Error, KeyInfo, KeyVersion};

use super::acl::Operation;
use super::caller::{Call, Caller};
use super::keystate::{KeyStateStore, MemberRecord, VersionRecord};
use super::{Broker, NO_REQUEST_ID, Op, request_id};

#[derive(Clone, Copy)]
enum Step {
    /// The new version becomes primary at once (one broker).
    Promote,
    /// The new version only decrypts until the config promotes it (replicas).
    Stage,
}

impl Broker {
    fn state_store(&self) -> Result<&KeyStateStore, Error> {
        self.state.as_deref().ok_or_else(|| {
            Error::Precondition(
                "this broker has no state directory, so it cannot record key changes: set server.state_dir \
                 (or add the version to the config)"
                    .into(),
            )
        })
    }

    /// Creates a new version of `key` on its backends, records it, and makes
    /// it primary. Old versions keep unwrapping; `Rewrap` moves blobs forward.
    pub async fn rotate(&self, call: &Call, key: &str) -> Result<KeyInfo, Error> {
        self.new_version(call, key, Step::Promote).await
    }

    /// The first half of a rotation across replicas: creates the next
    /// version on the backends (or finds it, when another replica or a
    /// retried job made it) and records it, without making it primary.
    /// Every replica can open blobs under it from now on; once all of them
    /// report it, promote it with `primary_version` in the config.
    pub async fn stage(&self, call: &Call, key: &str) -> Result<KeyInfo, Error> {
        self.new_version(call, key, Step::Stage).await
    }

    async fn new_version(&self, call: &Call, key: &str, step: Step) -> Result<KeyInfo, Error> {
        let started = Instant::now();
        let (request_id, result) = match request_id() {
            Ok(id) => (id, self.new_version_unaudited(&call.caller, key, step).await),
            Err(e) => (NO_REQUEST_ID.to_owned(), Err(e)),
        };
        let name = match step {
            Step::Promote => "rotate",
            Step::Stage => "stage",
        };
        self.audited(
            Op {
                name,
                request_id: &request_id,
                call,
                key,
                started,
            },
            |k: &KeyInfo| k.versions.last().map_or(k.primary_version, |(v, _)| *v),
            result,
        )
    }

    async fn new_version_unaudited(&self, caller: &Caller, key: &str, step: Step) -> Result<KeyInfo, Error> {
        self.policy().acls.check(caller, Operation::Admin, key)?;
        let _changing = self.changing_keys.lock().await;
        let store = self.state_store()?;
        let current = self.key_ring().get(key)?.clone();
        let next = current.versions().map(|v| v.version).max().unwrap_or(0) + 1;
        let mut members = Vec::new();
        let mut records = Vec::new();
        for member in &self.template(&current).members {
            let created = member
                .backend
                .create_version(next)
                .await
                .map_err(|source| Error::Backend {
                    backend: member.backend_name.clone(),
                    key: key.to_owned(),
                    source,
                })?;
            members.push((member.backend_name.clone(), created.backend));
            records.push(MemberRecord {
                backend: member.backend_name.clone(),
                settings: created.settings,
            });
        }
        let version = KeyVersion::with_members(key, next, members);
        let changed = match step {
            Step::Promote => current.with_new_primary(version),
            Step::Stage => current.with_version(version),
        }
        .map_err(Error::Internal)?;
        let primary = changed.primary().version;
        store
            .update(|state| {
                let entry = state.keys.entry(key.to_owned()).or_default();
                entry.primary_version = Some(primary);
                entry.versions.push(VersionRecord {
                    version: next,
                    members: records,
                })
            })
            .await
            .map_err(|e| Error::Internal(format!("cannot record the new key version: {e}")))?;
        self.replace_key(changed);
        let info = self.key_ring().describe(key)?;
        match step {
            Step::Promote => {
                tracing::info!(%caller, key, version = next, key_id = %info.primary_key_id, "key rotated")
            }
            Step::Stage => {
                tracing::info!(%caller, key, version = next, primary = primary, "key version staged")
            }
        }
        Ok(info)
    }

    /// Refuses blobs under versions below `min` from now on.
    pub async fn set_min_decryption_version(
        &self,
        call: &Call,
        key: &str,
        min: u32,
    ) -> Result<KeyInfo, Error> {
        let started = Instant::now();
        let (request_id, result) = match request_id() {
            Ok(id) => (id, self.set_min_unaudited(&call.caller, key, min).await),
            Err(e) => (NO_REQUEST_ID.to_owned(), Err(e)),
        };
        let version = |k: &KeyInfo| k.min_decryption_version;
        self.audited(
            Op {
                name: "set-min-decryption-version",
                request_id: &request_id,
                call,
                key,
                started,
            },
            version,
            result,
        )
    }

    async fn set_min_unaudited(&self, caller: &Caller, key: &str, min: u32) -> Result<KeyInfo, Error> {
        self.policy().acls.check(caller, Operation::Admin, key)?;
        let _changing = self.changing_keys.lock().await;
        let store = self.state_store()?;
        let current = self.key_ring().get(key)?.clone();
        let changed = current
            .with_min_decryption_version(min)
            .map_err(|reason| Error::InvalidArgument {
                field: "min_decryption_version",
                reason,
            })?;
        store
            .update(|state| {
                state
                    .keys
                    .entry(key.to_owned())
                    .or_default()
                    .min_decryption_version = Some(min)
            })
            .await
            .map_err(|e| Error::Internal(format!("cannot record the minimum decryption version: {e}")))?;
        self.replace_key(changed);
        tracing::info!(%caller, key, min, "minimum decryption version set");
        self.key_ring().describe(key)
    }
}
