//! The backend kinds this binary ships, wired into the server's registry.

use std::sync::Arc;

use sealbroker_backend_awskms as awskms;
use sealbroker_backend_azurekeyvault as azurekeyvault;
use sealbroker_backend_gcpckms as gcpckms;
use sealbroker_backend_kmip as kmip;
use sealbroker_backend_pkcs11 as pkcs11;
use sealbroker_backend_software as software;
use sealbroker_backend_transit as transit;
use sealbroker_server::config::{ConfigError, Profile, parse_table};
use sealbroker_server::registry::{BackendKind, BackendRegistry, KeyFactory};

/// Every backend kind in this build.
pub fn registry() -> BackendRegistry {
    BackendRegistry::default()
        .with(BackendKind {
            name: "pkcs11",
            development_only: false,
            open: open_pkcs11,
        })
        .with(BackendKind {
            name: "software",
            development_only: true,
            open: open_software,
        })
        .with(BackendKind {
            name: "transit",
            development_only: false,
            open: open_transit,
        })
        .with(BackendKind {
            name: "kmip",
            development_only: false,
            open: open_kmip,
        })
        .with(BackendKind {
            name: "awskms",
            development_only: false,
            open: open_awskms,
        })
        .with(BackendKind {
            name: "gcpckms",
            development_only: false,
            open: open_gcpckms,
        })
        .with(BackendKind {
            name: "azurekeyvault",
            development_only: false,
            open: open_azurekeyvault,
        })
}

/// Hardened refuses a plaintext endpoint override: credentials and data keys
/// would cross the network in the clear.
fn refuse_plaintext(profile: Profile, path: &str, endpoint: Option<&str>) -> Result<(), ConfigError> {
    match endpoint {
        Some(url) if profile == Profile::Hardened && url.starts_with("http://") => Err(ConfigError::new(
            format!("{path}.endpoint"),
            "the hardened profile refuses a plaintext http:// endpoint: credentials and data keys would \
             cross the network in the clear; use https://",
        )),
        _ => Ok(()),
    }
}

fn field_error(path: &str, e: pkcs11::ConfigError) -> ConfigError {
    ConfigError::new(format!("{path}.{}", e.field), e.reason)
}

fn open_pkcs11(table: &toml::Table, path: &str, _: Profile) -> Result<KeyFactory, ConfigError> {
    let config: pkcs11::BackendConfig = parse_table(table, path)?;
    let pool = config.pool().map_err(|e| field_error(path, e))?;
    Ok(Box::new(move |key_table, key_path| {
        let key_config: pkcs11::KeyConfig = parse_table(key_table, key_path)?;
        let key = pkcs11::Pkcs11Key::new(pool.clone(), &key_config).map_err(|e| field_error(key_path, e))?;
        Ok(Arc::new(key))
    }))
}

fn open_software(table: &toml::Table, path: &str, _: Profile) -> Result<KeyFactory, ConfigError> {
    let _: software::BackendConfig = parse_table(table, path)?;
    Ok(Box::new(|key_table, key_path| {
        let key_config: software::KeyConfig = parse_table(key_table, key_path)?;
        let key = software::SoftwareKey::load(&key_config)
            .map_err(|e| ConfigError::new(format!("{key_path}.key_file"), e.to_string()))?;
        Ok(Arc::new(key))
    }))
}

fn open_transit(table: &toml::Table, path: &str, profile: Profile) -> Result<KeyFactory, ConfigError> {
    let config: transit::BackendConfig = parse_table(table, path)?;
    let client = config
        .client()
        .map_err(|e| ConfigError::new(format!("{path}.{}", e.field), e.reason))?;
    if profile == Profile::Hardened && !client.uses_tls() {
        return Err(ConfigError::new(
            format!("{path}.address"),
            "the hardened profile refuses a plaintext http:// upstream: the token and the data keys would cross \
             the network in the clear; use https://",
        ));
    }
    Ok(Box::new(move |key_table, key_path| {
        let key_config: transit::KeyConfig = parse_table(key_table, key_path)?;
        let key = transit::TransitKey::new(client.clone(), &key_config)
            .map_err(|e| ConfigError::new(format!("{key_path}.{}", e.field), e.reason))?;
        Ok(Arc::new(key))
    }))
}

fn open_kmip(table: &toml::Table, path: &str, _: Profile) -> Result<KeyFactory, ConfigError> {
    let config: kmip::BackendConfig = parse_table(table, path)?;
    let pool = config
        .pool()
        .map_err(|e| ConfigError::new(format!("{path}.{}", e.field), e.reason))?;
    Ok(Box::new(move |key_table, key_path| {
        let key_config: kmip::KeyConfig = parse_table(key_table, key_path)?;
        let key = kmip::KmipKey::new(pool.clone(), &key_config)
            .map_err(|e| ConfigError::new(format!("{key_path}.{}", e.field), e.reason))?;
        Ok(Arc::new(key))
    }))
}

fn open_awskms(table: &toml::Table, path: &str, profile: Profile) -> Result<KeyFactory, ConfigError> {
    let config: awskms::BackendConfig = parse_table(table, path)?;
    refuse_plaintext(profile, path, config.endpoint.as_deref())?;
    // The SDK loads its configuration asynchronously; the key ring is
    // built once at start-up on the multi-threaded runtime.
    let client =
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(awskms::connect(&config)))
            .map_err(|e| ConfigError::new(format!("{path}.{}", e.field), e.reason))?;
    Ok(Box::new(move |key_table, key_path| {
        let key_config: awskms::KeyConfig = parse_table(key_table, key_path)?;
        let key = awskms::AwsKmsKey::new(&client, &key_config)
            .map_err(|e| ConfigError::new(format!("{key_path}.{}", e.field), e.reason))?;
        Ok(Arc::new(key))
    }))
}

fn open_gcpckms(table: &toml::Table, path: &str, profile: Profile) -> Result<KeyFactory, ConfigError> {
    let config: gcpckms::BackendConfig = parse_table(table, path)?;
    refuse_plaintext(profile, path, config.endpoint.as_deref())?;
    // As for AWS: the client is built once, at start-up, on the runtime.
    let client =
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(gcpckms::connect(&config)))
            .map_err(|e| ConfigError::new(format!("{path}.{}", e.field), e.reason))?;
    Ok(Box::new(move |key_table, key_path| {
        let key_config: gcpckms::KeyConfig = parse_table(key_table, key_path)?;
        let key = gcpckms::GcpKmsKey::new(&client, &key_config)
            .map_err(|e| ConfigError::new(format!("{key_path}.{}", e.field), e.reason))?;
        Ok(Arc::new(key))
    }))
}

fn open_azurekeyvault(table: &toml::Table, path: &str, _: Profile) -> Result<KeyFactory, ConfigError> {
    let config: azurekeyvault::BackendConfig = parse_table(table, path)?;
    let client = azurekeyvault::connect(&config)
        .map_err(|e| ConfigError::new(format!("{path}.{}", e.field), e.reason))?;
    Ok(Box::new(move |key_table, key_path| {
        let key_config: azurekeyvault::KeyConfig = parse_table(key_table, key_path)?;
        let key = azurekeyvault::KeyVaultKey::new(&client, &key_config)
            .map_err(|e| ConfigError::new(format!("{key_path}.{}", e.field), e.reason))?;
        Ok(Arc::new(key))
    }))
}
