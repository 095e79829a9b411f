//! The audit trail: one JSON line per operation, each carrying the link of
//! the line before it, so a changed, removed or reordered line breaks the
//! chain at a point `sealbroker audit verify` can name.
//!
//! With `audit.seal_key` the links are HMACs under a chain key sealed under
//! that broker key ([`chain`]), and a [`checkpoint`] apart from the log
//! records its length and head, so an edit with every later link
//! recomputed, a cut end, a replaced or a deleted log are all detected, and
//! the broker refuses to start on one.
//!
//! A line records who did what to which key and how it ended: never
//! plaintext, AAD, DEKs or tokens. The line is written (and, with
//! `sync = "line"`, on disk) before the caller gets its answer; if it cannot
//! be written the operation fails ("fail closed"), unless `audit.fail_open`
//! is set (Development only). A write cut short (a full disk) is undone, so
//! the log never keeps half a line.

pub mod chain;
pub mod checkpoint;

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use sealbroker_core::keyring::KeyRing;
use sealbroker_core::secret::SecretBytes;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use self::chain::GENESIS;
use self::chain::{Break, ChainKey, Scan, scan};
use self::checkpoint::Checkpoint;
use crate::config::{AuditConfig, AuditSync, ConfigError};

/// One audited operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339 UTC time with milliseconds.
    pub time: String,
    pub request_id: String,
    /// The front door: grpc, transit, kms-plugin, kms-v2, admin.
    pub door: String,
    pub caller: String,
    pub operation: String,
    pub key: String,
    /// Key version used (0 when the operation failed before one was chosen).
    pub key_version: u32,
    /// `ok`, or the error category (e.g. `PermissionDenied`).
    pub outcome: String,
    pub latency_us: u64,
    /// The link of the previous line (see [`chain`]), or the genesis.
    pub prev: String,
}

/// What a keyed chain needs to seal its key again when the seal key
/// rotates: the key in clear (zeroed on drop) and the version it is
/// sealed under now.
struct Sealing {
    secret: Zeroizing<[u8; 32]>,
    version: Mutex<u32>,
}

struct Chain {
    file: Option<File>,
    prev: String,
    lines: u64,
    /// Bytes of the log file: where an interrupted write is cut back to.
    len: u64,
    /// Set when a failed write could not be undone: nothing more is added
    /// until a restart repairs the log.
    broken: Option<String>,
    checkpoint: Option<Checkpoint>,
}

/// Where audit lines go.
pub struct AuditLog {
    chain: Mutex<Chain>,
    key: ChainKey,
    sealing: Option<Sealing>,
    path: Option<PathBuf>,
    checkpoint_path: Option<PathBuf>,
    stdout: bool,
    fail_open: bool,
    sync: bool,
}

/// Why an audit line could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log {path}: {source}")]
pub struct AuditError {
    pub path: String,
    pub source: std::io::Error,
}

/// The AAD the chain key is sealed with: binds it to its log.
fn chain_key_aad(log_id: &str) -> Vec<u8> {
    format!("sealbroker-audit-chain-key\0{log_id}").into_bytes()
}

/// RFC 3339 UTC from a system time, without a date crate.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Reads the log at `path` under `key` (a missing file is an empty log).
fn scan_file(path: &Path, key: &ChainKey, at: Option<u64>) -> Result<Scan, Break> {
    match File::open(path) {
        // A device or a pipe (/dev/full in a test, a FIFO to a collector)
        // has no past lines to read.
        Ok(file) if !file.metadata().is_ok_and(|m| m.is_file()) => scan(&b""[..], key, at),
        Ok(file) => scan(BufReader::new(file), key, at),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => scan(&b""[..], key, at),
        Err(e) => Err(Break {
            line: 1,
            reason: format!("cannot be opened: {e}"),
        }),
    }
}

/// Holds a log against its checkpoint: every line chains, the log is at
/// least as long as the checkpoint says, and the checkpoint's head is the
/// link after that line. A torn last line is left for the caller to judge.
fn check_against(path: &Path, key: &ChainKey, checkpoint: &Checkpoint) -> Result<Scan, Break> {
    let found = scan_file(path, key, Some(checkpoint.lines))?;
    if !path.exists() && checkpoint.lines > 0 {
        return Err(Break {
            line: 1,
            reason: format!(
                "the log is missing, but its checkpoint records {} lines: it was deleted or moved",
                checkpoint.lines
            ),
        });
    }
    if found.lines < checkpoint.lines {
        return Err(Break {
            line: found.lines + 1,
            reason: format!(
                "the log ends after line {}, but its checkpoint records {} lines: lines were cut from \
                 its end, or it was replaced by an older copy",
                found.lines, checkpoint.lines
            ),
        });
    }
    if found.head_at.as_deref() != Some(checkpoint.head.as_str()) {
        return Err(Break {
            line: checkpoint.lines,
            reason: "this is not the line the checkpoint records: the log was replaced".to_owned(),
        });
    }
    Ok(found)
}

/// Unseals the chain key a checkpoint holds, through the broker's keys.
async fn unseal_chain_key(
    checkpoint: &Checkpoint,
    ring: &KeyRing,
    checkpoint_path: &Path,
) -> Result<(ChainKey, u32, SecretBytes), String> {
    let blob = B64
        .decode(&checkpoint.sealed_key)
        .map_err(|e| format!("{}: sealed_key is not base64: {e}", checkpoint_path.display()))?;
    let opened = ring
        .unwrap(
            Some(&checkpoint.seal_key),
            &blob,
            &chain_key_aad(&checkpoint.log_id),
        )
        .await
        .map_err(|e| {
            format!(
                "cannot unseal the chain key in {} with key {}: {e}",
                checkpoint_path.display(),
                checkpoint.seal_key
            )
        })?;
    let key = ChainKey::keyed(opened.plaintext.expose(), &checkpoint.log_id);
    if !checkpoint.verifies(&key) {
        return Err(format!(
            "{}: its MAC does not verify: the checkpoint was edited",
            checkpoint_path.display()
        ));
    }
    Ok((key, opened.key_version, opened.plaintext))
}

fn open_append(path: &Path) -> Result<File, ConfigError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            ConfigError::new(
                "audit.file",
                format!("cannot open {} for appending: {e}", path.display()),
            )
        })
}

/// Cuts a torn last line (a write that failed part-way) off the log.
fn cut_torn_tail(path: &Path, found: &Scan) -> Result<(), ConfigError> {
    if found.torn_bytes == 0 {
        return Ok(());
    }
    tracing::warn!(
        path = %path.display(),
        bytes = found.torn_bytes,
        line = found.lines + 1,
        "removing an incomplete last audit line (a write that failed; its operation was refused)"
    );
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(found.complete_bytes).and_then(|_| f.sync_all()))
        .map_err(|e| {
            ConfigError::new(
                "audit.file",
                format!("cannot cut the incomplete last line of {}: {e}", path.display()),
            )
        })
}

impl AuditLog {
    /// Opens the configured destinations and continues the chain of an
    /// existing file. A keyed chain is unsealed through `ring` and held
    /// against its checkpoint: a log that does not match is refused.
    pub async fn open(
        config: &AuditConfig,
        state_dir: Option<&Path>,
        ring: &KeyRing,
    ) -> Result<Self, ConfigError> {
        let sync = config.sync == AuditSync::Line;
        for (field, path) in [
            ("audit.file", config.file.clone()),
            ("audit.checkpoint_file", config.checkpoint_path(state_dir)),
        ] {
            if let Some(dir) = path
                .as_deref()
                .and_then(Path::parent)
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ConfigError::new(field, format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let (key, checkpoint_path, checkpoint) = match &config.seal_key {
            Some(seal_key) => {
                let path = config
                    .checkpoint_path(state_dir)
                    .ok_or_else(|| ConfigError::new("audit.seal_key", "a keyed chain needs audit.file"))?;
                let (key, checkpoint, sealing) = Self::keyed(config, seal_key, &path, ring, sync).await?;
                (key, Some(path), Some((checkpoint, sealing)))
            }
            None => (ChainKey::Unkeyed, None, None),
        };
        let (checkpoint, sealing) = checkpoint.unzip();
        let mut chain = Chain {
            file: None,
            prev: key.genesis(),
            lines: 0,
            len: 0,
            broken: None,
            checkpoint,
        };
        if let Some(path) = &config.file {
            let found = match &chain.checkpoint {
                Some(cp) => check_against(path, &key, cp).map_err(|b| {
                    ConfigError::new(
                        "audit.file",
                        format!(
                            "{} does not match its checkpoint {}: line {}: {}. The broker adds nothing to a \
                             trail that was tampered with: keep both files as evidence (`sealbroker audit \
                             verify --config`), then move them away to start a new chain",
                            path.display(),
                            checkpoint_path.as_deref().unwrap_or(Path::new("")).display(),
                            b.line,
                            b.reason
                        ),
                    )
                })?,
                None => Self::tail_of_unkeyed(path)?,
            };
            cut_torn_tail(path, &found)?;
            chain.prev = found.head.clone();
            chain.lines = found.lines;
            chain.len = found.complete_bytes;
            chain.file = Some(open_append(path)?);
            if let (Some(cp), Some(cp_path)) = (chain.checkpoint.as_mut(), &checkpoint_path)
                && cp.lines != found.lines
            {
                // Lines written after the last checkpoint (a crash between
                // the two writes): they chain under the key, so keep them.
                cp.lines = found.lines;
                cp.head = found.head;
                cp.time = rfc3339(SystemTime::now());
                cp.sign(&key);
                cp.write(cp_path, sync).map_err(|e| {
                    ConfigError::new(
                        "audit.checkpoint_file",
                        format!("cannot write {}: {e}", cp_path.display()),
                    )
                })?;
            }
        }
        Ok(AuditLog {
            chain: Mutex::new(chain),
            key,
            sealing,
            path: config.file.clone(),
            checkpoint_path,
            stdout: config.stdout,
            fail_open: config.fail_open,
            sync,
        })
    }

    /// The chain key of a keyed log: unsealed from its checkpoint, or made,
    /// sealed and checkpointed for a new log. Re-seals it under the seal
    /// key's primary version when that moved on.
    async fn keyed(
        config: &AuditConfig,
        seal_key: &str,
        path: &Path,
        ring: &KeyRing,
        sync: bool,
    ) -> Result<(ChainKey, Checkpoint, Sealing), ConfigError> {
        let at =
            |e: std::io::Error| ConfigError::new("audit.checkpoint_file", format!("{}: {e}", path.display()));
        let log = config.file.as_deref().unwrap_or(Path::new(""));
        let existing = Checkpoint::read(path).map_err(at)?;
        let rng = SystemRandom::new();
        let mut secret = Zeroizing::new([0u8; 32]);
        let (key, mut checkpoint, sealed_version) = match existing {
            Some(checkpoint) => {
                let (key, version, opened) = unseal_chain_key(&checkpoint, ring, path)
                    .await
                    .map_err(|e| ConfigError::new("audit.seal_key", e))?;
                if opened.len() != secret.len() {
                    return Err(ConfigError::new(
                        "audit.checkpoint_file",
                        "the sealed chain key is not 32 bytes",
                    ));
                }
                secret.copy_from_slice(opened.expose());
                (key, checkpoint, Some(version))
            }
            None => {
                let holds = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
                if holds > 0 {
                    return Err(ConfigError::new(
                        "audit.checkpoint_file",
                        format!(
                            "{} does not exist, but the log {} holds {holds} bytes: its checkpoint was \
                             deleted, or the log belongs to another chain. Keep both as evidence and move \
                             the log away to start a new chain",
                            path.display(),
                            log.display()
                        ),
                    ));
                }
                let mut id = [0u8; 16];
                rng.fill(&mut id)
                    .and_then(|_| rng.fill(secret.as_mut()))
                    .map_err(|_| ConfigError::new("audit.seal_key", "the system RNG failed"))?;
                let log_id = hex::encode(id);
                let key = ChainKey::keyed(secret.as_ref(), &log_id);
                let checkpoint = Checkpoint::new(
                    log_id,
                    seal_key.to_owned(),
                    String::new(),
                    key.genesis(),
                    rfc3339(SystemTime::now()),
                );
                (key, checkpoint, None)
            }
        };
        let primary = ring.get(seal_key).map(|k| k.primary().version).ok();
        let fresh = sealed_version.is_none();
        if fresh || checkpoint.seal_key != seal_key || sealed_version != primary {
            let sealed = ring
                .wrap(seal_key, secret.as_ref(), &chain_key_aad(&checkpoint.log_id))
                .await
                .map_err(|e| {
                    ConfigError::new(
                        "audit.seal_key",
                        format!("cannot seal the audit chain key under key {seal_key}: {e}"),
                    )
                })?;
            checkpoint.seal_key = seal_key.to_owned();
            checkpoint.sealed_key = B64.encode(&sealed.blob);
            checkpoint.sign(&key);
            checkpoint.write(path, sync).map_err(at)?;
            if fresh && sync {
                Checkpoint::sync_directory(path).map_err(at)?;
            }
        }
        let version = primary.or(sealed_version).unwrap_or(0);
        Ok((
            key,
            checkpoint,
            Sealing {
                secret,
                version: Mutex::new(version),
            },
        ))
    }

    /// Where an unkeyed log stands: its line count and head, read whole
    /// (the broker reads its log once, at start-up).
    fn tail_of_unkeyed(path: &Path) -> Result<Scan, ConfigError> {
        scan_file(path, &ChainKey::Unkeyed, None).map_err(|b| {
            ConfigError::new(
                "audit.file",
                format!(
                    "{} is broken at line {}: {}. Keep it as evidence and move it away to start a new chain",
                    path.display(),
                    b.line,
                    b.reason
                ),
            )
        })
    }

    /// An audit log that writes nowhere (tests, in-process plugin).
    pub fn disabled() -> Self {
        AuditLog {
            chain: Mutex::new(Chain {
                file: None,
                prev: GENESIS.to_owned(),
                lines: 0,
                len: 0,
                broken: None,
                checkpoint: None,
            }),
            key: ChainKey::Unkeyed,
            sealing: None,
            path: None,
            checkpoint_path: None,
            stdout: false,
            fail_open: true,
            sync: false,
        }
    }

    /// Seals the chain key again under the seal key's primary version when
    /// a reload moved it on, so retiring the old version later cannot lock
    /// the broker out of its own trail.
    pub async fn reseal(&self, ring: &KeyRing) -> Result<(), String> {
        let (Some(sealing), Some(cp_path)) = (&self.sealing, &self.checkpoint_path) else {
            return Ok(());
        };
        let Some((seal_key, log_id)) = self
            .chain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .checkpoint
            .as_ref()
            .map(|cp| (cp.seal_key.clone(), cp.log_id.clone()))
        else {
            return Ok(());
        };
        let primary = ring.get(&seal_key).map_err(|e| e.to_string())?.primary().version;
        if *sealing.version.lock().unwrap_or_else(|p| p.into_inner()) == primary {
            return Ok(());
        }
        let sealed = ring
            .wrap(&seal_key, sealing.secret.as_ref(), &chain_key_aad(&log_id))
            .await
            .map_err(|e| format!("cannot seal the audit chain key under {seal_key} v{primary}: {e}"))?;
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cp) = chain.checkpoint.as_mut() else {
            return Ok(());
        };
        let mut next = cp.clone();
        next.sealed_key = B64.encode(&sealed.blob);
        next.sign(&self.key);
        next.write(cp_path, self.sync)
            .map_err(|e| format!("cannot write {}: {e}", cp_path.display()))?;
        *cp = next;
        *sealing.version.lock().unwrap_or_else(|p| p.into_inner()) = primary;
        tracing::info!(key = %seal_key, version = primary, "audit chain key sealed under the new primary version");
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.path.is_some() || self.stdout
    }

    /// Appends `record` (its `prev` is filled in here). Returns an error only
    /// when the line could not be written and the log fails closed.
    pub fn record(&self, mut record: AuditRecord) -> Result<(), AuditError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let sink = self
            .path
            .as_ref()
            .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
        let failed = |source: std::io::Error| {
            tracing::error!(path = %sink, error = %source, "audit line not written");
            if self.fail_open {
                Ok(())
            } else {
                Err(AuditError {
                    path: sink.clone(),
                    source,
                })
            }
        };
        if let Some(why) = &chain.broken {
            return failed(std::io::Error::other(why.clone()));
        }
        record.prev = chain.prev.clone();
        let line = match serde_json::to_string(&record) {
            Ok(line) => line,
            Err(e) => return failed(std::io::Error::other(e)),
        };
        let link = self.key.link(line.as_bytes());
        if chain.file.is_some()
            && let Err(e) = self.append(&mut chain, &line, &link)
        {
            return failed(e);
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let written = out
                .write_all(line.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
                .and_then(|_| out.flush());
            if let Err(e) = written {
                if chain.file.is_some() {
                    // The file has the line: the chain moves on regardless.
                    chain.prev = link;
                }
                return failed(e);
            }
        }
        chain.prev = link;
        Ok(())
    }

    /// Writes one line to the file (and its checkpoint); on any failure
    /// the file is cut back to where it was, so no half line stays.
    fn append(&self, chain: &mut Chain, line: &str, link: &str) -> std::io::Result<()> {
        let Chain {
            file,
            len,
            lines,
            broken,
            checkpoint,
            ..
        } = chain;
        let Some(f) = file.as_mut() else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let mut written = f.write_all(&bytes).and_then(|_| f.flush());
        if written.is_ok() && self.sync {
            written = f.sync_data();
        }
        if written.is_ok()
            && let (Some(cp), Some(cp_path)) = (checkpoint.as_mut(), &self.checkpoint_path)
        {
            let mut next = cp.clone();
            next.lines = *lines + 1;
            next.head = link.to_owned();
            next.time = rfc3339(SystemTime::now());
            next.sign(&self.key);
            written = next.write(cp_path, self.sync);
            if written.is_ok() {
                *cp = next;
            }
        }
        if let Err(e) = written {
            if let Err(undo) = f.set_len(*len) {
                *broken = Some(format!(
                    "an earlier write failed ({e}) and could not be undone ({undo}); restart to repair the log"
                ));
            }
            return Err(e);
        }
        *len += bytes.len() as u64;
        *lines += 1;
        Ok(())
    }
}

/// The outcome of verifying an audit file.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every line chains to the one before; `lines` were checked.
    Intact { lines: u64 },
    /// The chain breaks at this 1-based line number, for this reason.
    Broken { line: u64, reason: String },
}

fn verdict(found: Result<Scan, Break>) -> Verdict {
    match found {
        Ok(found) if found.torn_bytes > 0 => Verdict::Broken {
            line: found.lines + 1,
            reason: format!(
                "an incomplete last line ({} bytes, no newline): a write that failed, whose operation was \
                 refused; `sealbroker serve` removes it at start-up",
                found.torn_bytes
            ),
        },
        Ok(found) => Verdict::Intact { lines: found.lines },
        Err(b) => Verdict::Broken {
            line: b.line,
            reason: b.reason,
        },
    }
}

/// Checks the hash chain of an unkeyed audit file.
pub fn verify(path: &Path) -> std::io::Result<Verdict> {
    File::open(path)?;
    Ok(verdict(scan_file(path, &ChainKey::Unkeyed, None)))
}

/// Checks the log `config` names as the broker does: a keyed chain is
/// unsealed through `ring` and held against its checkpoint. Errors are what
/// kept it from checking at all (no checkpoint key, an unopenable file).
pub async fn verify_configured(
    config: &AuditConfig,
    state_dir: Option<&Path>,
    ring: &KeyRing,
) -> Result<Verdict, String> {
    let log = config
        .file
        .as_deref()
        .ok_or("the config has no audit.file to verify")?;
    let Some(cp_path) = config.checkpoint_path(state_dir) else {
        return verify(log).map_err(|e| format!("cannot read {}: {e}", log.display()));
    };
    let checkpoint = match Checkpoint::read(&cp_path) {
        Ok(Some(cp)) => cp,
        Ok(None) => {
            return Ok(Verdict::Broken {
                line: 1,
                reason: format!(
                    "its checkpoint {} is missing: it was deleted, or the chain never started",
                    cp_path.display()
                ),
            });
        }
        Err(e) => return Err(format!("cannot read the checkpoint {}: {e}", cp_path.display())),
    };
    let (key, _, _) = match unseal_chain_key(&checkpoint, ring, &cp_path).await {
        Ok(key) => key,
        Err(reason) if reason.contains("MAC does not verify") => {
            return Ok(Verdict::Broken { line: 0, reason });
        }
        Err(reason) => return Err(reason),
    };
    Ok(verdict(check_against(log, &key, &checkpoint)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sealbroker_core::keyring::{KeyVersion, LogicalKey};
    use sealbroker_testkit::memory::{Knobs, MemoryKey};

    use super::*;

    fn record(op: &str) -> AuditRecord {
        AuditRecord {
            time: rfc3339(SystemTime::now()),
            request_id: "r".into(),
            door: "grpc".into(),
            caller: "unix:uid=1".into(),
            operation: op.into(),
            key: "k".into(),
            key_version: 1,
            outcome: "ok".into(),
            latency_us: 5,
            prev: String::new(),
        }
    }

    /// A ring with key `audit` on a memory backend named `identity`.
    fn ring(identity: &str) -> KeyRing {
        let backend = Arc::new(MemoryKey::new(identity, Arc::new(Knobs::default())));
        KeyRing::new([LogicalKey::single(
            "audit",
            KeyVersion::new("audit", 1, "mem", backend),
        )])
    }

    fn unkeyed(dir: &Path) -> AuditConfig {
        AuditConfig {
            file: Some(dir.join("audit.log")),
            ..Default::default()
        }
    }

    fn keyed(dir: &Path) -> AuditConfig {
        AuditConfig {
            file: Some(dir.join("log/audit.log")),
            seal_key: Some("audit".into()),
            checkpoint_file: Some(dir.join("state/audit.checkpoint")),
            ..Default::default()
        }
    }

    async fn write_log(config: &AuditConfig, ring: &KeyRing, n: usize) -> PathBuf {
        let log = AuditLog::open(config, None, ring).await.unwrap();
        for i in 0..n {
            log.record(record(&format!("op{i}"))).unwrap();
        }
        config.file.clone().unwrap()
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    async fn keyed_verdict(config: &AuditConfig, ring: &KeyRing) -> Verdict {
        verify_configured(config, None, ring).await.unwrap()
    }

    #[tokio::test]
    async fn intact_chain_verifies_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let config = unkeyed(dir.path());
        let path = write_log(&config, &KeyRing::default(), 3).await;
        // Reopening continues the chain.
        let log = AuditLog::open(&config, None, &KeyRing::default()).await.unwrap();
        log.record(record("after-restart")).unwrap();
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { lines: 4 });
    }

    #[tokio::test]
    async fn edited_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(&unkeyed(dir.path()), &KeyRing::default(), 5).await;
        let mut all = lines(&path);
        all[2] = all[2].replace("\"op2\"", "\"op9\"");
        rewrite(&path, &all);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 4, .. }));
    }

    #[tokio::test]
    async fn removed_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(&unkeyed(dir.path()), &KeyRing::default(), 5).await;
        let mut all = lines(&path);
        all.remove(1);
        rewrite(&path, &all);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 2, .. }));
        all.remove(0);
        rewrite(&path, &all);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 1, .. }));
    }

    #[tokio::test]
    async fn swapped_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(&unkeyed(dir.path()), &KeyRing::default(), 5).await;
        let mut all = lines(&path);
        all.swap(2, 3);
        rewrite(&path, &all);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 3, .. }));
    }

    #[tokio::test]
    async fn a_keyed_chain_detects_a_cut_last_line_and_refuses_to_continue_it() {
        let dir = tempfile::tempdir().unwrap();
        let (config, ring) = (keyed(dir.path()), ring("hsm"));
        let path = write_log(&config, &ring, 4).await;
        assert_eq!(keyed_verdict(&config, &ring).await, Verdict::Intact { lines: 4 });
        let mut all = lines(&path);
        all.pop();
        rewrite(&path, &all);
        // The unkeyed view cannot tell; the checkpoint can.
        let Verdict::Broken { line, reason } = keyed_verdict(&config, &ring).await else {
            panic!("a cut log verified");
        };
        assert_eq!(line, 4);
        assert!(reason.contains("checkpoint records 4 lines"), "{reason}");
        let refused = AuditLog::open(&config, None, &ring)
            .await
            .err()
            .expect("a cut log was continued");
        assert_eq!(refused.path, "audit.file");
        assert!(
            refused.message.contains("does not match its checkpoint"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_keyed_chain_detects_an_edit_with_every_later_hash_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let (config, ring) = (keyed(dir.path()), ring("hsm"));
        let path = write_log(&config, &ring, 5).await;
        let mut all = lines(&path);
        all[1] = all[1].replace("\"op1\"", "\"op7\"");
        // The forger recomputes every later link the only way open to them.
        for i in 2..all.len() {
            let prev = ChainKey::Unkeyed.link(all[i - 1].as_bytes());
            let mut record: AuditRecord = serde_json::from_str(&all[i]).unwrap();
            record.prev = prev;
            all[i] = serde_json::to_string(&record).unwrap();
        }
        rewrite(&path, &all);
        assert!(matches!(
            keyed_verdict(&config, &ring).await,
            Verdict::Broken { line: 3, .. }
        ));
    }

    #[tokio::test]
    async fn a_keyed_chain_detects_a_replaced_or_deleted_log() {
        let dir = tempfile::tempdir().unwrap();
        let (config, ring) = (keyed(dir.path()), ring("hsm"));
        let path = write_log(&config, &ring, 3).await;
        // Replaced by a fresh chain of the same length under another key.
        let other = tempfile::tempdir().unwrap();
        let other_path = write_log(&keyed(other.path()), &ring, 3).await;
        std::fs::copy(&other_path, &path).unwrap();
        assert!(matches!(
            keyed_verdict(&config, &ring).await,
            Verdict::Broken { line: 1, .. }
        ));
        // Deleted.
        std::fs::remove_file(&path).unwrap();
        let Verdict::Broken { reason, .. } = keyed_verdict(&config, &ring).await else {
            panic!("a deleted log verified");
        };
        assert!(reason.contains("missing"), "{reason}");
        assert!(AuditLog::open(&config, None, &ring).await.is_err());
    }

    #[tokio::test]
    async fn a_keyed_chain_needs_the_seal_keys_backend() {
        let dir = tempfile::tempdir().unwrap();
        let config = keyed(dir.path());
        write_log(&config, &ring("hsm"), 2).await;
        // Same key name, another device: the chain key does not open.
        let err = verify_configured(&config, None, &ring("another-hsm"))
            .await
            .unwrap_err();
        assert!(err.contains("cannot unseal the chain key"), "{err}");
        // The checkpoint holds no chain key in clear.
        let checkpoint = std::fs::read_to_string(config.checkpoint_file.as_ref().unwrap()).unwrap();
        assert!(checkpoint.contains("\"sealed_key\""));
    }

    #[tokio::test]
    async fn a_log_whose_checkpoint_was_deleted_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (config, ring) = (keyed(dir.path()), ring("hsm"));
        write_log(&config, &ring, 2).await;
        std::fs::remove_file(config.checkpoint_file.as_ref().unwrap()).unwrap();
        let refused = AuditLog::open(&config, None, &ring).await.err().expect("opened");
        assert_eq!(refused.path, "audit.checkpoint_file");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_at_start_up_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (config, ring) = (keyed(dir.path()), ring("hsm"));
        let path = write_log(&config, &ring, 3).await;
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"time\":\"2026-").unwrap();
        drop(file);
        assert!(matches!(
            keyed_verdict(&config, &ring).await,
            Verdict::Broken { line: 4, .. }
        ));
        let log = AuditLog::open(&config, None, &ring).await.unwrap();
        log.record(record("after")).unwrap();
        assert_eq!(keyed_verdict(&config, &ring).await, Verdict::Intact { lines: 4 });
    }

    #[tokio::test]
    async fn lines_written_after_the_last_checkpoint_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (config, ring) = (keyed(dir.path()), ring("hsm"));
        write_log(&config, &ring, 2).await;
        let cp_path = config.checkpoint_file.clone().unwrap();
        let stale = std::fs::read(&cp_path).unwrap();
        AuditLog::open(&config, None, &ring)
            .await
            .unwrap()
            .record(record("x"))
            .unwrap();
        // A crash between the line and its checkpoint.
        std::fs::write(&cp_path, stale).unwrap();
        let log = AuditLog::open(&config, None, &ring).await.unwrap();
        log.record(record("y")).unwrap();
        assert_eq!(keyed_verdict(&config, &ring).await, Verdict::Intact { lines: 4 });
    }

    #[tokio::test]
    async fn a_failed_write_refuses_and_leaves_no_half_line() {
        let dir = tempfile::tempdir().unwrap();
        let (config, ring) = (keyed(dir.path()), ring("hsm"));
        let path = write_log(&config, &ring, 2).await;
        let log = AuditLog::open(&config, None, &ring).await.unwrap();
        // The checkpoint cannot be replaced: its directory is gone.
        let state = config
            .checkpoint_file
            .as_ref()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        std::fs::rename(&state, dir.path().join("moved")).unwrap();
        assert!(log.record(record("refused")).is_err());
        assert_eq!(lines(&path).len(), 2);
        std::fs::rename(dir.path().join("moved"), &state).unwrap();
        log.record(record("after")).unwrap();
        assert_eq!(keyed_verdict(&config, &ring).await, Verdict::Intact { lines: 3 });
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_478_400_123)),
            "2026-11-24T00:00:00.123Z"
        );
    }
}
