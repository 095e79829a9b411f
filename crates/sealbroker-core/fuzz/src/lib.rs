//! What the core fuzz targets and their seed generator share: a fixture key
//! ring on fixed software keys (so blobs wrapped by the seed generator open
//! again inside the fuzzer), and the byte layout of a `keyring_unwrap` input.

use std::path::PathBuf;
use std::sync::Arc;

use sealbroker_backend_software::{KeyConfig, SoftwareKey};
use sealbroker_core::{Backend, KeyRing, KeyVersion, LogicalKey, WrapPolicy};

/// Key names an input can ask for; index 0 means "no expected key".
pub const EXPECTED_KEYS: [Option<&str>; 5] = [
    None,
    Some("unseal"),
    Some("retired"),
    Some("other"),
    Some("absent"),
];

/// One `keyring_unwrap` input: which key the caller names, its AAD, and the blob.
pub struct UnwrapInput<'a> {
    pub expected_key: Option<&'static str>,
    pub aad: &'a [u8],
    pub blob: &'a [u8],
}

impl<'a> UnwrapInput<'a> {
    /// `[expected key index][aad length][aad][blob]`; short inputs read as empty fields.
    pub fn parse(data: &'a [u8]) -> Self {
        let expected_key =
            EXPECTED_KEYS[usize::from(data.first().copied().unwrap_or(0)) % EXPECTED_KEYS.len()];
        let rest = data.get(1..).unwrap_or_default();
        let aad_len = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
        let rest = rest.get(1..).unwrap_or_default();
        let (aad, blob) = rest.split_at(aad_len);
        UnwrapInput {
            expected_key,
            aad,
            blob,
        }
    }

    /// The inverse of [`parse`](Self::parse), for the seed generator.
    pub fn encode(expected_key: Option<&str>, aad: &[u8], blob: &[u8]) -> Vec<u8> {
        let index = EXPECTED_KEYS
            .iter()
            .position(|k| *k == expected_key)
            .expect("a known key");
        let aad_len = u8::try_from(aad.len()).expect("AAD under 256 bytes");
        let mut out = vec![index as u8, aad_len];
        out.extend_from_slice(aad);
        out.extend_from_slice(blob);
        out
    }
}

/// A software key with fixed bytes, so its key id and the DEKs it sealed are
/// the same in every process.
fn fixed_key(name: &str, byte: u8) -> Arc<dyn Backend> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let dir = std::env::temp_dir().join("sealbroker-core-fuzz");
    std::fs::create_dir_all(&dir).expect("fixture directory");
    let path: PathBuf = dir.join(format!("{name}.key"));
    let text = format!("{}\n", hex_of(&[byte; 32]));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        // Written beside and renamed, so parallel fuzz jobs never see half a key.
        let partial = dir.join(format!("{name}.key.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .expect("fixture key file");
        file.write_all(text.as_bytes()).expect("fixture key written");
        std::fs::rename(&partial, &path).expect("fixture key in place");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("fixture key mode");
    let key = SoftwareKey::load(&KeyConfig {
        key_file: path,
        generate: false,
        algorithm: None,
    })
    .expect("fixture software key");
    Arc::new(key)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `unseal`: version 1 on one key, version 2 (primary) an HA pair;
/// `retired`: versions 1 and 2 with only 2 decryptable; `other`: one key.
pub fn key_ring() -> KeyRing {
    ring_with_retired(2, 2)
}

/// The same ring while `retired` still wrapped under version 1 (what the
/// seed generator seals the soon-retired blobs with).
pub fn key_ring_before_retirement() -> KeyRing {
    ring_with_retired(1, 1)
}

fn ring_with_retired(primary: u32, min_decryption_version: u32) -> KeyRing {
    let unseal = LogicalKey::new(
        "unseal",
        vec![
            KeyVersion::new("unseal", 1, "soft-a", fixed_key("unseal-v1", 0x11)),
            KeyVersion::with_members(
                "unseal",
                2,
                vec![
                    ("soft-a".to_owned(), fixed_key("unseal-v2-a", 0x12)),
                    ("soft-b".to_owned(), fixed_key("unseal-v2-b", 0x13)),
                ],
            ),
        ],
        None,
        1,
        WrapPolicy::All,
    )
    .expect("unseal key");
    let retired = LogicalKey::new(
        "retired",
        vec![
            KeyVersion::new("retired", 1, "soft-a", fixed_key("retired-v1", 0x21)),
            KeyVersion::new("retired", 2, "soft-a", fixed_key("retired-v2", 0x22)),
        ],
        Some(primary),
        min_decryption_version,
        WrapPolicy::Primary,
    )
    .expect("retired key");
    let other = LogicalKey::single(
        "other",
        KeyVersion::new("other", 1, "soft-a", fixed_key("other-v1", 0x31)),
    );
    KeyRing::new([unseal, retired, other])
}
