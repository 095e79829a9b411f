//! Feeds arbitrary text to the config's load and validate path:
//! `Config::parse` (TOML, field types, profile refusals, transit token
//! files), then what `serve` builds from a parsed config: the ACLs, the key
//! ring through a backend registry, and the listener check.
//!
//! It may not panic, and:
//! - every error but a TOML syntax error carries a non-empty field path that starts at
//!   a section of the config (or at the offending top-level key itself), and its
//!   message and `Display` name that path;
//! - no error and no `Debug` of a parsed config holds a transit token's contents;
//! - a parsed config parses again, and a key ring built from it has exactly its keys.
//!
//! The registry's backend kinds (the test kit's memory kind) accept any settings and open nothing, so
//! the key-table rules (versions, members, policy) are what is fuzzed,
//! without creating files. Inputs naming a device, FIFO or large file are
//! skipped: reading one is the operator's choice, not the parser's bug.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sealbroker_server::broker::acl::Acls;
use sealbroker_server::config::{Config, ConfigError};
use sealbroker_server::broker::registry::BackendRegistry;
use sealbroker_server_fuzz::write_private;
use sealbroker_testkit::memory::MemoryKind;

/// Transit token files the seeds name; their contents must never surface.
const TOKENS: [(&str, &str); 2] = [
    ("openbao.token", "s.config-fuzz-token-one\n"),
    ("ops.token", "s.config-fuzz-token-two"),
];

/// The config's top-level sections.
const SECTIONS: &[&str] = &["profile", "server", "limits", "log", "audit", "backends", "keys"];

static FILES: LazyLock<()> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join("sealbroker-config-fuzz");
    std::fs::create_dir_all(&dir).expect("fixture directory");
    for (name, token) in TOKENS {
        write_private(&dir.join(name), token);
    }
});

/// Builds key rings (kinds open asynchronously).
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
});

static REGISTRY: LazyLock<BackendRegistry> = LazyLock::new(|| {
    let kinds = [
        MemoryKind::leak_development_only("software"),
        MemoryKind::leak("pkcs11"),
        MemoryKind::leak("kmip"),
        MemoryKind::leak("transit"),
        MemoryKind::leak("awskms"),
    ];
    kinds.into_iter().fold(BackendRegistry::default(), |registry, kind| registry.with(kind))
});

/// Whether some string in the document names something unsafe to read.
fn names_unsafe_file(value: &toml::Value) -> bool {
    match value {
        toml::Value::String(text) if !text.is_empty() => match std::fs::metadata(text) {
            Ok(meta) => !(meta.is_file() || meta.is_dir()) || meta.len() > 1 << 20,
            Err(_) => false,
        },
        toml::Value::Array(items) => items.iter().any(names_unsafe_file),
        toml::Value::Table(table) => table.values().any(names_unsafe_file),
        _ => false,
    }
}

fn assert_names_a_field(error: &ConfigError, document: &toml::Table) {
    let path = &error.path;
    let starts_at = |name: &str| {
        path.strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    assert!(
        SECTIONS.iter().any(|s| starts_at(s)) || document.keys().any(|k| starts_at(k)),
        "error path {path:?} names no field: {error}"
    );
    assert!(!error.message.is_empty(), "error at {path:?} has no message");
    assert!(
        error.to_string().contains(path.as_str()),
        "`{error}` does not name {path:?}"
    );
}

fn assert_no_token(text: &str) {
    for (_, token) in TOKENS {
        assert!(
            !text.contains(token.trim_end()),
            "a transit token surfaced: {text}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    LazyLock::force(&FILES);
    let document = toml::from_str::<toml::Table>(text);
    if let Ok(document) = &document
        && names_unsafe_file(&toml::Value::Table(document.clone()))
    {
        return;
    }
    let config = match Config::parse(text) {
        Ok(config) => config,
        Err(error) => {
            assert_no_token(&error.to_string());
            match &document {
                // A syntax error is located by line and column instead.
                Err(_) => assert!(!error.message.is_empty()),
                Ok(document) => {
                    assert!(!error.path.is_empty(), "error without a field path: {error}");
                    assert_names_a_field(&error, document);
                }
            }
            return;
        }
    };
    let document = document.expect("a config that parses is a TOML table");
    assert_no_token(&format!("{config:?}"));
    assert!(Config::parse(text).is_ok(), "the same text parsed once only");

    if let Err(error) = config.require_listener() {
        assert_eq!(error.path, "server");
    }
    if let Err(error) = Acls::from_config(&config) {
        assert!(error.path.starts_with("keys."), "ACL error outside keys: {error}");
        assert_names_a_field(&error, &document);
    }
    match RUNTIME.block_on(REGISTRY.build_keyring(&config)) {
        Ok(ring) => assert!(
            ring.names().eq(config.keys.keys().map(String::as_str)),
            "the key ring and the config name different keys"
        ),
        Err(error) => {
            assert!(
                error.path.starts_with("keys.") || error.path.starts_with("backends."),
                "key ring error outside keys and backends: {error}"
            );
            assert_names_a_field(&error, &document);
            assert_no_token(&error.to_string());
        }
    }
});
