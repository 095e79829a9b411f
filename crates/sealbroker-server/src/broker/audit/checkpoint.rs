//! The checkpoint of a keyed audit chain: how many lines the log holds and
//! the link after the last one, under a MAC of the chain key, kept in a
//! file apart from the log. Rewritten (atomically) after every line, so a
//! log cut at its end, replaced by an older copy, or deleted no longer
//! matches it. It also holds the chain key itself, sealed under a broker
//! key: the only place the key is stored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::chain::ChainKey;

/// The only checkpoint format so far.
const FORMAT: u32 = 1;

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: u32,
    /// Random, per chain: the genesis link names it.
    pub log_id: String,
    /// The broker key the chain key is sealed under.
    pub seal_key: String,
    /// The chain key as a sealbroker blob (base64) under `seal_key`.
    pub sealed_key: String,
    /// Lines in the log when this was written.
    pub lines: u64,
    /// The link after line `lines` (the genesis for 0).
    pub head: String,
    /// When this was written (RFC 3339).
    pub time: String,
    /// HMAC of everything above under the chain key.
    pub mac: String,
}

impl Checkpoint {
    fn parts(&self) -> [Vec<u8>; 7] {
        [
            FORMAT.to_be_bytes().to_vec(),
            self.log_id.as_bytes().to_vec(),
            self.seal_key.as_bytes().to_vec(),
            self.sealed_key.as_bytes().to_vec(),
            self.lines.to_be_bytes().to_vec(),
            self.head.as_bytes().to_vec(),
            self.time.as_bytes().to_vec(),
        ]
    }

    /// Sets `mac` for the current contents.
    pub fn sign(&mut self, key: &ChainKey) {
        let parts = self.parts();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        self.mac = key.mac(&refs).unwrap_or_default();
    }

    /// Whether `mac` matches the contents under `key`.
    pub fn verifies(&self, key: &ChainKey) -> bool {
        let parts = self.parts();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        self.format == FORMAT && key.verify_mac(&refs, &self.mac)
    }

    /// A fresh checkpoint for an empty chain (sign it before writing).
    pub fn new(log_id: String, seal_key: String, sealed_key: String, head: String, time: String) -> Self {
        Checkpoint {
            format: FORMAT,
            log_id,
            seal_key,
            sealed_key,
            lines: 0,
            head,
            time,
            mac: String::new(),
        }
    }

    /// The checkpoint at `path`; `None` when there is no file.
    pub fn read(path: &Path) -> io::Result<Option<Checkpoint>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the file at `path` atomically (a temporary file renamed
    /// over it); with `sync`, its contents reach the disk before the rename.
    /// The directory is not synced: after a power loss the checkpoint may
    /// be the one before, which only lags the log (the log was synced
    /// first), and a lagging checkpoint is caught up at start-up.
    pub fn write(&self, path: &Path, sync: bool) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        let staging = path.with_extension("tmp");
        let mut file: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staging)?;
        file.write_all(&bytes)?;
        if sync {
            file.sync_data()?;
        }
        fs::rename(&staging, path)
    }

    /// Makes the checkpoint's directory entry durable: for a new chain,
    /// whose log must never outlive a checkpoint lost in a crash.
    pub fn sync_directory(path: &Path) -> io::Result<()> {
        match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &ChainKey) -> Checkpoint {
        let mut cp = Checkpoint::new("id".into(), "k".into(), "blob".into(), key.genesis(), "t".into());
        cp.lines = 3;
        cp.sign(key);
        cp
    }

    #[test]
    fn an_edited_checkpoint_no_longer_verifies() {
        let key = ChainKey::keyed(&[3; 32], "id");
        let cp = signed(&key);
        assert!(cp.verifies(&key));
        let mut edited = cp.clone();
        edited.lines = 2;
        assert!(!edited.verifies(&key));
        assert!(!cp.verifies(&ChainKey::keyed(&[4; 32], "id")));
    }

    #[test]
    fn written_checkpoints_read_back_and_replace_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.checkpoint");
        assert!(Checkpoint::read(&path).unwrap().is_none());
        let key = ChainKey::keyed(&[3; 32], "id");
        let mut cp = signed(&key);
        cp.write(&path, true).unwrap();
        cp.lines = 4;
        cp.sign(&key);
        cp.write(&path, false).unwrap();
        let back = Checkpoint::read(&path).unwrap().unwrap();
        assert_eq!(back.lines, 4);
        assert!(back.verifies(&key));
        assert!(!path.with_extension("tmp").exists());
    }
}
