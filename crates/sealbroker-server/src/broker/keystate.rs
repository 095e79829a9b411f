//! Key versions made at run time (rotation) and minimum decryption
//! versions, persisted so they survive restarts. The config file stays the
//! operator's; this state file only ever grows by what the broker itself
//! created, and records no secrets (labels and file names, not keys).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

const FILE_NAME: &str = "keyring-state.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyStateFile {
    #[serde(default)]
    pub keys: BTreeMap<String, KeyState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_decryption_version: Option<u32>,
    /// The version this broker last made primary. Absent in state files
    /// written before versions could be staged or found: there the newest
    /// recorded version is the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_version: Option<u32>,
    /// Versions this broker created, staged or found on the backend.
    #[serde(default)]
    pub versions: Vec<VersionRecord>,
}

impl KeyState {
    /// The primary this state asks for, if any.
    pub fn primary(&self) -> Option<u32> {
        self.primary_version
            .or_else(|| self.versions.iter().map(|v| v.version).max())
    }
}

/// A version the broker created or found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u32,
    pub members: Vec<MemberRecord>,
}

/// A member of a created version: its backend, and the key settings laid
/// over that member's configured settings (an empty value removes one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRecord {
    pub backend: String,
    pub settings: BTreeMap<String, String>,
}

/// The state file on disk, written atomically.
pub struct KeyStateStore {
    path: PathBuf,
    state: tokio::sync::Mutex<KeyStateFile>,
}

impl KeyStateStore {
    /// Opens (or starts) the state in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(FILE_NAME);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ConfigError::new(
                    "server.state_dir",
                    format!("{} is not a valid state file: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyStateFile::default(),
            Err(e) => {
                return Err(ConfigError::new(
                    "server.state_dir",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        Ok(KeyStateStore {
            path,
            state: tokio::sync::Mutex::new(state),
        })
    }

    pub async fn snapshot(&self) -> KeyStateFile {
        self.state.lock().await.clone()
    }

    /// Applies `change` and persists the result before returning; on a
    /// write failure the in-memory state is left as it was.
    pub async fn update(&self, change: impl FnOnce(&mut KeyStateFile)) -> Result<(), std::io::Error> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        change(&mut next);
        write_atomically(
            &self.path,
            &serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?,
        )?;
        *state = next;
        Ok(())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn updates_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStateStore::open(dir.path()).unwrap();
        store
            .update(|s| {
                s.keys
                    .entry("k".into())
                    .or_default()
                    .versions
                    .push(VersionRecord {
                        version: 2,
                        members: vec![MemberRecord {
                            backend: "hsm".into(),
                            settings: [("key_label".into(), "k-v2".into())].into(),
                        }],
                    })
            })
            .await
            .unwrap();
        let reloaded = KeyStateStore::open(dir.path()).unwrap().snapshot().await;
        assert_eq!(
            reloaded.keys["k"].versions[0].members[0].settings["key_label"],
            "k-v2"
        );
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let err = KeyStateStore::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }
}
