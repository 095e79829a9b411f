//! The links of the audit chain, and reading a chain back.
//!
//! Each line's `prev` is the link of the line before it. Unkeyed (the
//! Development default) a link is the line's SHA-256, which anyone can
//! recompute after editing a line. Keyed, a link is an HMAC-SHA256 under a
//! chain key that exists in clear only inside the broker and is stored only
//! sealed under a broker key (see `checkpoint`), so recomputing a chain needs
//! the HSM. A keyed chain starts from a genesis that names its log id, so
//! the lines of one log cannot pass as another's.

use std::io::BufRead;

use ring::digest::{SHA256, digest};
use ring::hmac;

/// The `prev` of the first line of an unkeyed chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How lines are linked.
pub enum ChainKey {
    /// SHA-256: detects accidents and careless edits, not a careful forger.
    Unkeyed,
    /// HMAC-SHA256 under the chain key, for the log named `log_id`.
    Keyed { key: hmac::Key, log_id: String },
}

impl ChainKey {
    /// A keyed chain from the 32 key bytes (copied into ring's key schedule).
    pub fn keyed(key: &[u8], log_id: &str) -> ChainKey {
        ChainKey::Keyed {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            log_id: log_id.to_owned(),
        }
    }

    /// The `prev` of a chain's first line.
    pub fn genesis(&self) -> String {
        match self {
            ChainKey::Unkeyed => GENESIS.to_owned(),
            ChainKey::Keyed { key, log_id } => hex::encode(hmac::sign(
                key,
                format!("sealbroker-audit-genesis\0{log_id}").as_bytes(),
            )),
        }
    }

    /// The link a line passes to the line after it.
    pub fn link(&self, line: &[u8]) -> String {
        match self {
            ChainKey::Unkeyed => hex::encode(digest(&SHA256, line)),
            ChainKey::Keyed { key, .. } => hex::encode(hmac::sign(key, line)),
        }
    }

    /// A MAC over `parts`, each length-prefixed (checkpoints). `None` when
    /// unkeyed: an unkeyed chain has nothing to authenticate with.
    pub fn mac(&self, parts: &[&[u8]]) -> Option<String> {
        let ChainKey::Keyed { key, .. } = self else {
            return None;
        };
        Some(hex::encode(hmac::sign(key, &framed(parts))))
    }

    /// Checks `mac` against [`mac`](Self::mac) in constant time.
    pub fn verify_mac(&self, parts: &[&[u8]], mac: &str) -> bool {
        let ChainKey::Keyed { key, .. } = self else {
            return false;
        };
        let Ok(tag) = hex::decode(mac) else {
            return false;
        };
        hmac::verify(key, &framed(parts), &tag).is_ok()
    }
}

/// `parts`, each behind its length, so no two lists frame alike.
fn framed(parts: &[&[u8]]) -> Vec<u8> {
    let mut message = Vec::new();
    for part in parts {
        message.extend_from_slice(&(part.len() as u64).to_be_bytes());
        message.extend_from_slice(part);
    }
    message
}

/// What reading a chain found.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    /// Complete lines that chain correctly.
    pub lines: u64,
    /// The link of the last complete line (the genesis for none).
    pub head: String,
    /// The link after line `at` when [`scan`] was asked for one.
    pub head_at: Option<String>,
    /// Bytes of complete lines: where a torn last line starts.
    pub complete_bytes: u64,
    /// Bytes after the last newline: a line whose write was cut short.
    pub torn_bytes: u64,
}

/// Where and why a chain breaks.
#[derive(Debug, PartialEq, Eq)]
pub struct Break {
    /// 1-based line number.
    pub line: u64,
    pub reason: String,
}

/// Reads a chain from `reader`, checking every line's `prev` against the
/// link of the line before; also returns the head after line `at`.
pub fn scan(mut reader: impl BufRead, key: &ChainKey, at: Option<u64>) -> Result<Scan, Break> {
    let mut prev = key.genesis();
    let mut head_at = (at == Some(0)).then(|| prev.clone());
    let (mut lines, mut complete_bytes) = (0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(|e| Break {
            line: lines + 1,
            reason: format!("cannot be read: {e}"),
        })?;
        if read == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            return Ok(Scan {
                lines,
                head: prev,
                head_at,
                complete_bytes,
                torn_bytes: read as u64,
            });
        }
        let number = lines + 1;
        let line = &buf[..buf.len() - 1];
        let claimed = serde_json::from_slice::<LinkOnly>(line).map_err(|e| Break {
            line: number,
            reason: format!("not an audit record: {e}"),
        })?;
        if claimed.prev != prev {
            let reason = match (number, key) {
                (1, ChainKey::Unkeyed) => {
                    "the first line does not start the chain: lines before it were removed (or the log is keyed: verify it with --config)".to_owned()
                }
                (1, ChainKey::Keyed { log_id, .. }) => format!(
                    "the first line does not start this log's chain (log id {log_id}): the log was replaced, \
                     lines before it were removed, or lines were forged without the chain key"
                ),
                _ => format!(
                    "it does not follow line {}: that line was changed, lines between them were removed or \
                     reordered{}",
                    number - 1,
                    if matches!(key, ChainKey::Keyed { .. }) {
                        ", or links were recomputed without the chain key"
                    } else {
                        ""
                    }
                ),
            };
            return Err(Break { line: number, reason });
        }
        prev = key.link(line);
        lines = number;
        complete_bytes += read as u64;
        if at == Some(lines) {
            head_at = Some(prev.clone());
        }
    }
    Ok(Scan {
        lines,
        head: prev,
        head_at,
        complete_bytes,
        torn_bytes: 0,
    })
}

/// The one field a chain check needs from a record.
#[derive(serde::Deserialize)]
struct LinkOnly {
    prev: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &ChainKey, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = key.genesis();
        for i in 0..n {
            let line = format!("{{\"op\":\"op{i}\",\"prev\":\"{prev}\"}}");
            prev = key.link(line.as_bytes());
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn a_keyed_chain_verifies_only_under_its_key_and_log_id() {
        let key = ChainKey::keyed(&[7; 32], "log-a");
        let log = chain(&key, 4);
        let scan = scan(&log[..], &key, Some(2)).unwrap();
        assert_eq!(scan.lines, 4);
        assert_eq!(scan.torn_bytes, 0);
        assert_eq!(scan.complete_bytes, log.len() as u64);
        assert!(scan.head_at.is_some() && scan.head_at != Some(scan.head.clone()));
        let other_key = ChainKey::keyed(&[8; 32], "log-a");
        assert_eq!(super::scan(&log[..], &other_key, None).unwrap_err().line, 1);
        let other_log = ChainKey::keyed(&[7; 32], "log-b");
        assert_eq!(super::scan(&log[..], &other_log, None).unwrap_err().line, 1);
        assert_eq!(
            super::scan(&log[..], &ChainKey::Unkeyed, None).unwrap_err().line,
            1
        );
    }

    #[test]
    fn links_recomputed_without_the_key_break_the_keyed_chain() {
        let key = ChainKey::keyed(&[7; 32], "log-a");
        let mut lines: Vec<String> = String::from_utf8(chain(&key, 4))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        // An editor without the key recomputes unkeyed links after line 2.
        lines[1] = lines[1].replace("op1", "op9");
        for i in 2..lines.len() {
            let prev = ChainKey::Unkeyed.link(lines[i - 1].as_bytes());
            let start = lines[i].find("\"prev\":\"").unwrap() + 8;
            lines[i].replace_range(start..start + 64, &prev);
        }
        let log = lines.join("\n") + "\n";
        assert_eq!(scan(log.as_bytes(), &key, None).unwrap_err().line, 3);
    }

    #[test]
    fn a_torn_last_line_is_measured_not_counted() {
        let key = ChainKey::Unkeyed;
        let mut log = chain(&key, 3);
        let complete = log.len() as u64;
        log.extend_from_slice(b"{\"op\":\"cut sh");
        let scan = scan(&log[..], &key, None).unwrap();
        assert_eq!(
            (scan.lines, scan.complete_bytes, scan.torn_bytes),
            (3, complete, 13)
        );
    }

    #[test]
    fn checkpoint_macs_bind_every_part() {
        let key = ChainKey::keyed(&[1; 32], "l");
        let mac = key.mac(&[b"a", b"bc"]).unwrap();
        assert!(key.verify_mac(&[b"a", b"bc"], &mac));
        assert!(!key.verify_mac(&[b"ab", b"c"], &mac));
        assert!(!ChainKey::keyed(&[2; 32], "l").verify_mac(&[b"a", b"bc"], &mac));
        assert!(ChainKey::Unkeyed.mac(&[b"a"]).is_none());
    }
}
