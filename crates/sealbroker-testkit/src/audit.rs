//! The `[audit]` table a Hardened test broker needs: a keyed chain whose
//! log sits in the test's directory (where the secret sweep finds it) and
//! whose checkpoint sits apart, in a directory of its own.

use std::path::{Path, PathBuf};

/// The audit log [`audit_toml`] names for `dir`.
pub fn audit_log(dir: &Path) -> PathBuf {
    dir.join("audit.jsonl")
}

/// `[audit]` with `file` = [`audit_log`], the chain key sealed under the
/// broker key `seal_key`, and the checkpoint in `dir/audit-checkpoint/`.
pub fn audit_toml(dir: &Path, seal_key: &str) -> String {
    format!(
        "[audit]\nfile = \"{}\"\nseal_key = \"{seal_key}\"\ncheckpoint_file = \"{}\"\n",
        audit_log(dir).display(),
        dir.join("audit-checkpoint").join("audit.checkpoint").display()
    )
}
