//! The PKCS#11 helper as its own small binary: what `sealbroker
//! pkcs11-helper` runs, without the broker around it. This crate's tests
//! start it; the broker re-executes itself instead, so a deployment ships
//! one binary.

fn main() -> std::process::ExitCode {
    sealbroker_backend_pkcs11::helper::serve_stdin()
}
