//! What every part of the configuration shares: the one field-path error
//! type, the security profile, and typed parsing of a TOML table.
//!
//! Errors are built where the problem is found, relative to the table being
//! read (`max_sessions`), and prefixed by whoever knows where that table sits
//! ([`ConfigError::under`]), so the operator always reads a full dotted
//! path such as `backends.hsm.max_sessions`.

use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `keys.unseal.mechanism`;
    /// empty when the error is about the file as a whole.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error, with its path placed under `prefix` (the path of
    /// the table it was found in).
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = join_path(prefix, &self.path);
        self
    }
}

/// `prefix` and `field` joined as a dotted path (`a.b`, `a[0]`, or either alone).
pub fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (_, true) => prefix.to_owned(),
        (true, false) => field.to_owned(),
        (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
        (false, false) => format!("{prefix}.{field}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "config: {}", self.message)
        } else {
            write!(f, "config field `{}`: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Security posture; see docs/security.md.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Production: external root of trust, mTLS, no software keys.
    #[default]
    Hardened,
    /// Local testing only; reported as a security risk everywhere.
    Development,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Hardened => "hardened",
            Profile::Development => "development",
        }
    }

    /// The Hardened refusal of a plaintext `http://` URL at `field`: `what`
    /// (credentials, tokens, data keys) would cross the network in the clear.
    pub fn refuse_plaintext_url(self, field: &str, url: &str, what: &str) -> Result<(), ConfigError> {
        if self == Profile::Hardened && url.trim_start().to_ascii_lowercase().starts_with("http://") {
            return Err(ConfigError::new(
                field,
                format!(
                    "the hardened profile refuses a plaintext http:// address: {what} would cross the network \
                     in the clear; use https://"
                ),
            ));
        }
        Ok(())
    }
}

/// Deserializes `table` into `T`, with error paths under `prefix`.
pub fn parse_table<T: DeserializeOwned>(table: &toml::Table, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let inner = e.path().to_string();
        let field = if inner == "." { String::new() } else { inner };
        ConfigError::new(field, e.into_inner().message().to_owned()).under(prefix)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_under_their_table() {
        let e = ConfigError::new("max_sessions", "must be at least 1").under("backends.hsm");
        assert_eq!(e.path, "backends.hsm.max_sessions");
        assert_eq!(ConfigError::new("", "x").under("keys.k").path, "keys.k");
        assert_eq!(
            ConfigError::new("[1].backend", "x").under("keys.k.members").path,
            "keys.k.members[1].backend"
        );
        assert_eq!(
            e.to_string(),
            "config field `backends.hsm.max_sessions`: must be at least 1"
        );
    }

    #[test]
    fn hardened_refuses_plaintext_urls_and_says_why() {
        let err = Profile::Hardened
            .refuse_plaintext_url("endpoint", "HTTP://kms.local", "credentials and data keys")
            .unwrap_err();
        assert_eq!(err.path, "endpoint");
        assert!(
            err.message.contains("plaintext http://") && err.message.contains("credentials"),
            "{err}"
        );
        Profile::Hardened
            .refuse_plaintext_url("endpoint", "https://kms.local", "x")
            .unwrap();
        Profile::Development
            .refuse_plaintext_url("endpoint", "http://kms.local", "x")
            .unwrap();
    }

    #[test]
    fn parse_table_prefixes_paths() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Key {
            #[allow(dead_code)]
            size: u32,
        }
        let table: toml::Table = toml::from_str("size = \"x\"").unwrap();
        let err = parse_table::<Key>(&table, "keys.k").unwrap_err();
        assert_eq!(err.path, "keys.k.size");
        let table: toml::Table = toml::from_str("sise = 1").unwrap();
        let err = parse_table::<Key>(&table, "keys.k").unwrap_err();
        assert_eq!(err.path, "keys.k.sise", "{err}");
    }
}
