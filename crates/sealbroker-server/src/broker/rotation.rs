//! Key changes: rotation and the minimum decryption version, recorded in
//! the state directory so they survive restarts. One change at a time.

use std::time::Instant;

use sealbroker_core::{Error, KeyInfo, KeyVersion};

use super::acl::Operation;
use super::caller::{Call, Caller};
use super::keystate::{KeyStateStore, MemberRecord, VersionRecord};
use super::{Broker, NO_REQUEST_ID, Op, request_id};

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
        let started = Instant::now();
        let (request_id, result) = match request_id() {
            Ok(id) => (id, self.rotate_unaudited(&call.caller, key).await),
            Err(e) => (NO_REQUEST_ID.to_owned(), Err(e)),
        };
        self.audited(
            Op {
                name: "rotate",
                request_id: &request_id,
                call,
                key,
                started,
            },
            |k: &KeyInfo| k.primary_version,
            result,
        )
    }

    async fn rotate_unaudited(&self, caller: &Caller, key: &str) -> Result<KeyInfo, Error> {
        self.acls.check(caller, Operation::Admin, key)?;
        let _changing = self.changing_keys.lock().await;
        let store = self.state_store()?;
        let current = self.key_ring().get(key)?.clone();
        let next = current.versions().map(|v| v.version).max().unwrap_or(0) + 1;
        let mut members = Vec::new();
        let mut records = Vec::new();
        for member in &current.primary().members {
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
        let rotated = current
            .with_new_primary(KeyVersion::with_members(key, next, members))
            .map_err(Error::Internal)?;
        store
            .update(|state| {
                state
                    .keys
                    .entry(key.to_owned())
                    .or_default()
                    .versions
                    .push(VersionRecord {
                        version: next,
                        members: records,
                    })
            })
            .await
            .map_err(|e| Error::Internal(format!("cannot record the new key version: {e}")))?;
        self.replace_key(rotated);
        let info = self.key_ring().describe(key)?;
        tracing::info!(%caller, key, version = next, key_id = %info.primary_key_id, "key rotated");
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
        self.acls.check(caller, Operation::Admin, key)?;
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
