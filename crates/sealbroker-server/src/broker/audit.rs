//! The audit trail: one JSON line per operation, each carrying the SHA-256
//! of the line before it, so a changed, removed or reordered line breaks the
//! chain at a point `sealbroker audit verify` can name.
//!
//! A line records who did what to which key and how it ended: never
//! plaintext, AAD, DEKs or tokens. The line is written (and flushed) before
//! the caller gets its answer; if it cannot be written the operation fails
//! ("fail closed"), unless `audit.fail_open` is set (Development only).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::config::{AuditConfig, ConfigError};

/// The `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// SHA-256 (hex) of the previous line, or [`GENESIS`].
    pub prev: String,
}

struct Chain {
    file: Option<File>,
    prev: String,
}

/// Where audit lines go.
pub struct AuditLog {
    chain: Mutex<Chain>,
    path: Option<PathBuf>,
    stdout: bool,
    fail_open: bool,
}

/// Why an audit line could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log {path}: {source}")]
pub struct AuditError {
    pub path: String,
    pub source: std::io::Error,
}

fn line_hash(line: &str) -> String {
    hex::encode(digest(&SHA256, line.as_bytes()))
}

/// The last line of a regular file, reading only its tail (audit lines are
/// short; the file may be huge). Not for devices and pipes.
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let mut file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    file.seek(SeekFrom::Start(meta.len().saturating_sub(TAIL))).ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    tail.lines().rfind(|l| !l.is_empty()).map(str::to_owned)
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

impl AuditLog {
    /// Opens the configured destinations; continues the chain of an
    /// existing file.
    pub fn open(config: &AuditConfig) -> Result<Self, ConfigError> {
        let mut prev = GENESIS.to_owned();
        let file = match &config.file {
            Some(path) => {
                if let Some(last) = last_line(path) {
                    prev = line_hash(&last);
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        ConfigError::new(
                            "audit.file",
                            format!("cannot open {} for appending: {e}", path.display()),
                        )
                    })?;
                Some(file)
            }
            None => None,
        };
        Ok(AuditLog {
            chain: Mutex::new(Chain { file, prev }),
            path: config.file.clone(),
            stdout: config.stdout,
            fail_open: config.fail_open,
        })
    }

    /// An audit log that writes nowhere (tests, in-process plugin).
    pub fn disabled() -> Self {
        AuditLog {
            chain: Mutex::new(Chain {
                file: None,
                prev: GENESIS.to_owned(),
            }),
            path: None,
            stdout: false,
            fail_open: true,
        }
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
        record.prev = chain.prev.clone();
        let line = serde_json::to_string(&record).expect("audit records serialize");
        let path = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if let Some(file) = chain.file.as_mut() {
            let written = file
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|_| file.flush());
            if let Err(source) = written {
                tracing::error!(path = %path, error = %source, "audit line not written");
                if !self.fail_open {
                    return Err(AuditError { path, source });
                }
                return Ok(());
            }
        }
        if self.stdout {
            println!("{line}");
        }
        chain.prev = line_hash(&line);
        Ok(())
    }
}

/// The outcome of verifying an audit file.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every line chains to the one before; `lines` were checked.
    Intact { lines: usize },
    /// The chain breaks at this 1-based line number, for this reason.
    Broken { line: usize, reason: String },
}

/// Checks the hash chain of an audit file.
pub fn verify(path: &Path) -> std::io::Result<Verdict> {
    let reader = BufReader::new(File::open(path)?);
    let mut prev = GENESIS.to_owned();
    let mut count = 0;
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        let number = i + 1;
        let record: AuditRecord = match serde_json::from_str(&line) {
            Ok(record) => record,
            Err(e) => {
                return Ok(Verdict::Broken {
                    line: number,
                    reason: format!("not an audit record: {e}"),
                });
            }
        };
        if record.prev != prev {
            let reason = if number == 1 {
                "the first line does not start the chain: lines before it were removed".to_owned()
            } else {
                format!(
                    "it does not follow line {}: that line was changed, or lines between them were removed or reordered",
                    number - 1
                )
            };
            return Ok(Verdict::Broken { line: number, reason });
        }
        prev = line_hash(&line);
        count = number;
    }
    Ok(Verdict::Intact { lines: count })
}

#[cfg(test)]
mod tests {
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

    fn write_log(dir: &Path, n: usize) -> PathBuf {
        let path = dir.join("audit.log");
        let log = AuditLog::open(&AuditConfig {
            file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        for i in 0..n {
            log.record(record(&format!("op{i}"))).unwrap();
        }
        path
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

    #[test]
    fn intact_chain_verifies_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3);
        // Reopening continues the chain.
        let log = AuditLog::open(&AuditConfig {
            file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        log.record(record("after-restart")).unwrap();
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { lines: 4 });
    }

    #[test]
    fn edited_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 5);
        let mut all = lines(&path);
        all[2] = all[2].replace("\"op2\"", "\"op9\"");
        rewrite(&path, &all);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 4, .. }));
    }

    #[test]
    fn removed_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 5);
        let mut all = lines(&path);
        all.remove(1);
        rewrite(&path, &all);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 2, .. }));
        all.remove(0);
        rewrite(&path, &all);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 1, .. }));
    }

    #[test]
    fn swapped_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 5);
        let mut all = lines(&path);
        all.swap(2, 3);
        rewrite(&path, &all);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 3, .. }));
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
