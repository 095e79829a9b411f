//! A throwaway SoftHSM2 token for this crate's tests.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "4711-test-pin";

/// A token directory with its own `softhsm2.conf`, removed on drop.
pub struct Token {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// A fresh token labelled `label` holding the AES key `aes-1`, selected for
/// this process through `SOFTHSM2_CONF`.
pub fn token(label: &str) -> Token {
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSM2 is not installed; run tests/run.sh, which installs the test peers"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../softhsm/make-token.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .arg(label)
        .arg("aes-1")
        .env("PIN", PIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.path().to_owned();
    // SAFETY: set before any thread loads the module or reads the
    // environment; nextest runs each test in its own process.
    unsafe { std::env::set_var("SOFTHSM2_CONF", path.join("softhsm2.conf")) };
    Token { _dir: dir, path }
}
