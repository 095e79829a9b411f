//! The backend kinds this binary ships. Each kind's crate owns its config,
//! Hardened rules and key creation; this list is the only wiring.

use sealbroker_server::broker::registry::BackendRegistry;

/// Every backend kind in this build.
pub fn registry() -> BackendRegistry {
    BackendRegistry::default()
        .with(&sealbroker_backend_pkcs11::KIND)
        .with(&sealbroker_backend_software::KIND)
        .with(&sealbroker_backend_transit::KIND)
        .with(&sealbroker_backend_kmip::KIND)
        .with(&sealbroker_backend_awskms::KIND)
        .with(&sealbroker_backend_gcpckms::KIND)
        .with(&sealbroker_backend_azurekeyvault::KIND)
}
