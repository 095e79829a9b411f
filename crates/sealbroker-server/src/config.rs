//! The daemon's TOML configuration, validated into typed structs at load
//! time. Every error names the field it is about, as a dotted path.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `keys.unseal.mechanism`.
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
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub profile: Profile,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// `[backends.NAME]`: connections to HSMs and KMSes, each with a `type`.
    #[serde(default)]
    pub backends: BTreeMap<String, toml::Table>,
    /// `[keys.NAME]`: logical keys, each naming a `backend` plus that backend's key settings.
    #[serde(default)]
    pub keys: BTreeMap<String, toml::Table>,
}

/// `[server]`: where the daemon listens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Unix socket for local callers (e.g. an OpenBao sidecar).
    pub unix_socket: Option<PathBuf>,
    /// Octal file mode of the socket.
    #[serde(default = "default_socket_mode")]
    pub unix_socket_mode: String,
    /// gRPC over TCP.
    pub tcp: Option<TcpConfig>,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            unix_socket: None,
            unix_socket_mode: default_socket_mode(),
            tcp: None,
            shutdown_grace_secs: default_shutdown_grace(),
        }
    }
}

fn default_socket_mode() -> String {
    "0600".into()
}
fn default_shutdown_grace() -> u64 {
    10
}

/// `[server.tcp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    pub listen: SocketAddr,
    /// Serve without TLS. Development profile only.
    #[serde(default)]
    pub plaintext: bool,
    pub tls: Option<TlsConfig>,
}

/// `[server.tcp.tls]`: server certificate and the CA that client certificates must chain to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle for client certificates. Required: clients must authenticate.
    pub client_ca_file: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest plaintext Wrap accepts.
    #[serde(default = "default_max_plaintext")]
    pub max_plaintext_bytes: usize,
    /// Bound on one backend operation, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// How long a backend health result is reused, in seconds.
    #[serde(default = "default_health_ttl")]
    pub health_cache_secs: u64,
}

fn default_max_plaintext() -> usize {
    64 * 1024
}
fn default_request_timeout() -> u64 {
    30
}
fn default_health_ttl() -> u64 {
    10
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_plaintext_bytes: default_max_plaintext(),
            request_timeout_secs: default_request_timeout(),
            health_cache_secs: default_health_ttl(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `sealbroker=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses TOML text, checking field names and types.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::new("", e.to_string()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(
                if path == "." { String::new() } else { path },
                e.into_inner().message().to_owned(),
            )
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks that need more than one field, and the profile's refusals.
    fn check(&self) -> Result<(), ConfigError> {
        u32::from_str_radix(self.server.unix_socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                ConfigError::new(
                    "server.unix_socket_mode",
                    "must be an octal file mode such as \"0600\"",
                )
            })?;
        if let Some(tcp) = &self.server.tcp {
            match (&tcp.tls, tcp.plaintext) {
                (Some(_), true) => {
                    return Err(ConfigError::new(
                        "server.tcp.plaintext",
                        "cannot be true when `tls` is set",
                    ));
                }
                (None, false) => {
                    return Err(ConfigError::new(
                        "server.tcp.tls",
                        "is missing: TCP needs TLS with client certificates (or `plaintext = true` under the development profile)",
                    ));
                }
                (None, true) if self.profile == Profile::Hardened => {
                    return Err(ConfigError::new(
                        "server.tcp.plaintext",
                        "the hardened profile refuses plaintext TCP: anyone on the network could call the broker and read unwrapped secrets; configure [server.tcp.tls] with client_ca_file",
                    ));
                }
                (Some(tls), false) if tls.client_ca_file.is_none() => {
                    return Err(ConfigError::new(
                        "server.tcp.tls.client_ca_file",
                        "is missing: the broker requires mutual TLS so that every caller has an identity; set the CA that signs client certificates",
                    ));
                }
                _ => {}
            }
        }
        if self.limits.max_plaintext_bytes == 0 {
            return Err(ConfigError::new(
                "limits.max_plaintext_bytes",
                "must be at least 1",
            ));
        }
        if self.limits.request_timeout_secs == 0 {
            return Err(ConfigError::new(
                "limits.request_timeout_secs",
                "must be at least 1",
            ));
        }
        for (name, key) in &self.keys {
            match key.get("backend") {
                Some(toml::Value::String(backend)) if self.backends.contains_key(backend) => {}
                Some(toml::Value::String(backend)) => {
                    return Err(ConfigError::new(
                        format!("keys.{name}.backend"),
                        format!("names backend {backend:?}, but there is no [backends.{backend}] table"),
                    ));
                }
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("keys.{name}.backend"),
                        "must be a string",
                    ));
                }
                None => {
                    return Err(ConfigError::new(format!("keys.{name}.backend"), "is missing"));
                }
            }
        }
        for (name, backend) in &self.backends {
            if !matches!(backend.get("type"), Some(toml::Value::String(_))) {
                return Err(ConfigError::new(
                    format!("backends.{name}.type"),
                    "is missing: say which kind of backend this is (e.g. \"pkcs11\")",
                ));
            }
        }
        if self.keys.is_empty() {
            return Err(ConfigError::new(
                "keys",
                "no keys are configured; add a [keys.NAME] table",
            ));
        }
        Ok(())
    }

    /// A daemon needs somewhere to listen (the KMS plugin's in-process mode
    /// reads the same file and needs none).
    pub fn require_listener(&self) -> Result<(), ConfigError> {
        if self.server.unix_socket.is_none() && self.server.tcp.is_none() {
            return Err(ConfigError::new(
                "server",
                "no listener: set `unix_socket` and/or a `[server.tcp]` table",
            ));
        }
        Ok(())
    }

    pub fn unix_socket_mode(&self) -> u32 {
        u32::from_str_radix(self.server.unix_socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o600)
    }
}

/// Deserializes a sub-table into `T`, prefixing error paths with `prefix`.
pub fn parse_table<T: DeserializeOwned>(table: &toml::Table, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{inner}")
        };
        ConfigError::new(path, e.into_inner().message().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        profile = "development"
        [server]
        unix_socket = "/tmp/x.sock"
        [backends.soft]
        type = "software"
        [keys.k]
        backend = "soft"
        key_file = "/tmp/k"
    "#;

    fn error_of(text: &str) -> ConfigError {
        Config::parse(text).expect_err("config should be rejected")
    }

    #[test]
    fn absent_tables_get_the_documented_defaults() {
        let config = Config::parse("[backends.b]\ntype = \"x\"\n[keys.k]\nbackend = \"b\"\n").unwrap();
        assert_eq!(config.profile, Profile::Hardened);
        assert_eq!(config.unix_socket_mode(), 0o600);
        assert_eq!(config.server.shutdown_grace_secs, 10);
        assert_eq!(config.limits.request_timeout_secs, 30);
        assert!(config.require_listener().is_err());
    }

    #[test]
    fn minimal_development_config_parses() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.profile, Profile::Development);
        assert_eq!(config.limits.max_plaintext_bytes, 65536);
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err = error_of(&MINIMAL.replace("[server]", "[server]\nunix_sockett = 1"));
        assert_eq!(err.path, "server.unix_sockett", "{err}");
        assert!(err.message.contains("unix_sockett"), "{err}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let err = error_of(&format!("{MINIMAL}\n[limits]\nmax_plaintext_bytes = \"big\""));
        assert_eq!(err.path, "limits.max_plaintext_bytes", "{err}");
    }

    #[test]
    fn bad_profile_names_the_choices() {
        let err = error_of(&MINIMAL.replace("\"development\"", "\"prod\""));
        assert_eq!(err.path, "profile");
        assert!(err.message.contains("hardened"), "{err}");
    }

    #[test]
    fn key_naming_missing_backend_is_rejected() {
        let err = error_of(&MINIMAL.replace("backend = \"soft\"", "backend = \"hsm\""));
        assert_eq!(err.path, "keys.k.backend");
        assert!(err.message.contains("[backends.hsm]"), "{err}");
    }

    #[test]
    fn hardened_refuses_plaintext_tcp_and_says_why() {
        let text = MINIMAL.replace("\"development\"", "\"hardened\"")
            + "\n[server.tcp]\nlisten = \"127.0.0.1:1\"\nplaintext = true\n";
        let err = error_of(&text);
        assert_eq!(err.path, "server.tcp.plaintext");
        assert!(
            err.message.contains("hardened profile refuses plaintext TCP"),
            "{err}"
        );
    }

    #[test]
    fn tls_without_client_ca_is_refused() {
        let text = MINIMAL.to_owned()
            + "\n[server.tcp]\nlisten = \"127.0.0.1:1\"\n[server.tcp.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n";
        let err = error_of(&text);
        assert_eq!(err.path, "server.tcp.tls.client_ca_file");
        assert!(err.message.contains("mutual TLS"), "{err}");
    }

    #[test]
    fn syntax_error_reports_the_line() {
        let err = error_of("profile = ");
        assert!(err.message.contains("line 1"), "{err}");
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
    }
}
