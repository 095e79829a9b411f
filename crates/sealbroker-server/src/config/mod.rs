//! The daemon's TOML configuration, validated into typed structs at load
//! time. Every error names the field it is about, as a dotted path.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod keys;

pub use sealbroker_core::{ConfigError, Profile, parse_table};

pub use self::keys::{Grants, KeySpec, MemberSpec, VersionSpec};

/// The whole file. Its `Debug` names the backend and key tables but never
/// prints their contents, which may hold an inline PIN.
#[derive(Clone, Deserialize)]
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
    /// `[audit]`: the hash-chained audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[report]`: where this replica reports the key versions it can use.
    #[serde(default)]
    pub report: ReportConfig,
    /// `[backends.NAME]`: connections to HSMs and KMSes, each with a `type`.
    #[serde(default)]
    pub backends: BTreeMap<String, toml::Table>,
    /// `[keys.NAME]` as written; parsed into [`Config::keys`].
    #[serde(default, rename = "keys")]
    key_tables: BTreeMap<String, toml::Table>,
    /// `[keys.NAME]`: logical keys (see [`keys`]).
    #[serde(skip)]
    pub keys: BTreeMap<String, KeySpec>,
}

/// `[server]`: where the daemon listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Unix socket for local callers (e.g. an OpenBao sidecar).
    pub unix_socket: Option<PathBuf>,
    /// Octal file mode of the socket.
    #[serde(default = "default_socket_mode")]
    pub unix_socket_mode: String,
    /// gRPC over TCP.
    pub tcp: Option<TcpConfig>,
    /// The Vault-transit-compatible HTTP front door (see docs/transit.md).
    pub transit: Option<TransitConfig>,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Where the broker records key versions it creates (rotation).
    /// Without it, keys can only be rotated in the config.
    pub state_dir: Option<PathBuf>,
    /// The Kubernetes KMS v2 front door (see docs/kubernetes-kms.md).
    pub kms_v2: Option<KmsV2Config>,
    /// The KMIP front door (see docs/kmip-server.md).
    pub kmip: Option<KmipConfig>,
    /// Prometheus metrics and health endpoints.
    pub metrics: Option<MetricsConfig>,
    /// How often (seconds) `serve --config` compares the config file, the
    /// transit token files and the TLS files with what it loaded, and
    /// reloads when they changed. SIGHUP reloads at once.
    #[serde(default = "default_reload_poll")]
    pub reload_poll_secs: u64,
}

/// `[server.kms_v2]`: a unix socket for kube-apiserver's KMS v2 plugin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsV2Config {
    pub socket: PathBuf,
    /// The key that encrypts the apiserver's data keys.
    pub key_name: String,
    /// Octal file mode of the socket.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
}

/// `[server.metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for `/metrics`, `/livez` and `/readyz` (plain HTTP; nothing
    /// secret is served, but key and backend names are). Loopback only under
    /// the Hardened profile.
    pub listen: SocketAddr,
}

/// `[audit]` in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append audit lines to this file.
    pub file: Option<PathBuf>,
    /// Also write audit lines to stdout.
    #[serde(default)]
    pub stdout: bool,
    /// Let operations succeed when the audit line cannot be written.
    /// Development profile only.
    #[serde(default)]
    pub fail_open: bool,
    /// A broker key (a `[keys.NAME]`) to seal the chain key under: the
    /// chain's links become HMACs, so rewriting the log needs that key's
    /// backend. Required with `file` under the Hardened profile.
    pub seal_key: Option<String>,
    /// Where a keyed chain keeps its checkpoint (line count, head and the
    /// sealed chain key). Default: `<state_dir>/audit.checkpoint`, else
    /// `<file>.checkpoint`. Hardened: not in the log's directory.
    pub checkpoint_file: Option<PathBuf>,
    /// `line` (default): every line, and its checkpoint, reaches the disk
    /// before the caller gets its answer. `os`: the OS writes them back
    /// when it likes (a crash can lose the last lines). Hardened: `line`.
    #[serde(default)]
    pub sync: AuditSync,
}

/// `[report]`: a replica's report of the key versions it can use, for an
/// orchestrator that promotes a version only once every replica has it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Keep the `sealbroker.io/key-versions` annotation on this broker's own
    /// Pod (named by `SEALBROKER_POD_NAME` and `SEALBROKER_POD_NAMESPACE`),
    /// through the Kubernetes API with the Pod's service account token.
    #[serde(default)]
    pub kubernetes_pod: bool,
    /// The API server. Default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_server: Option<String>,
    /// The bearer token, read again for every request (projected tokens rotate).
    #[serde(default = "default_report_token")]
    pub token_file: PathBuf,
    /// The CA bundle the API server's certificate chains to.
    #[serde(default = "default_report_ca")]
    pub ca_file: PathBuf,
    /// Seconds between looks at the versions; the annotation is written
    /// only when the report changed.
    #[serde(default = "default_report_interval")]
    pub interval_secs: u64,
}

fn default_report_token() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
fn default_report_ca() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
}
fn default_report_interval() -> u64 {
    10
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            kubernetes_pod: false,
            api_server: None,
            token_file: default_report_token(),
            ca_file: default_report_ca(),
            interval_secs: default_report_interval(),
        }
    }
}

/// `audit.sync`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    #[default]
    Line,
    Os,
}

impl AuditConfig {
    /// Where the checkpoint of a keyed chain lives (see `checkpoint_file`).
    pub fn checkpoint_path(&self, state_dir: Option<&Path>) -> Option<PathBuf> {
        self.seal_key.as_ref()?;
        if let Some(path) = &self.checkpoint_file {
            return Some(path.clone());
        }
        if let Some(dir) = state_dir {
            return Some(dir.join("audit.checkpoint"));
        }
        let file = self.file.as_ref()?;
        let mut name = file.as_os_str().to_owned();
        name.push(".checkpoint");
        Some(PathBuf::from(name))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            unix_socket: None,
            unix_socket_mode: default_socket_mode(),
            tcp: None,
            transit: None,
            shutdown_grace_secs: default_shutdown_grace(),
            state_dir: None,
            kms_v2: None,
            kmip: None,
            metrics: None,
            reload_poll_secs: default_reload_poll(),
        }
    }
}

fn default_reload_poll() -> u64 {
    5
}

fn default_socket_mode() -> String {
    "0600".into()
}
fn default_shutdown_grace() -> u64 {
    10
}

/// `[server.tcp]`.
#[derive(Clone, Debug, Deserialize)]
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

/// `[server.kmip]`: KMIP over mutual TLS, always: the client certificate
/// is the caller's identity, under every profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmipConfig {
    pub listen: SocketAddr,
    /// Required, with `client_ca_file`; optional here only so that its
    /// absence is reported with the field path.
    pub tls: Option<TlsConfig>,
}

/// `[server.transit]`: HTTP(S) that speaks Vault's transit API, so a stock
/// `seal "transit"` stanza (or hvac) can use the broker.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitConfig {
    pub listen: SocketAddr,
    /// The mount the callers name, as in `/v1/<mount_path>/encrypt/<key>`.
    #[serde(default = "default_transit_mount")]
    pub mount_path: String,
    /// Serve without TLS. Development profile only.
    #[serde(default)]
    pub plaintext: bool,
    pub tls: Option<TlsConfig>,
    /// `[[server.transit.tokens]]`: who may call, and on which keys.
    #[serde(default)]
    pub tokens: Vec<TransitTokenConfig>,
}

fn default_transit_mount() -> String {
    "transit".into()
}

impl TransitConfig {
    /// The mount path without leading or trailing slashes.
    pub fn mount(&self) -> &str {
        self.mount_path.trim_matches('/')
    }
}

/// One `[[server.transit.tokens]]` entry. Holds the token's file, never the token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitTokenConfig {
    /// Who this token is; logged as the caller.
    pub identity: String,
    /// File holding the token; a trailing newline is ignored.
    pub token_file: PathBuf,
    /// Keys this token may use.
    pub keys: Vec<String>,
}

impl TransitTokenConfig {
    /// Reads the token, refusing an unreadable or empty file and bytes no
    /// HTTP client could send in a header. `field` names the entry in errors.
    pub fn read_token(&self, field: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, ConfigError> {
        let path = format!("{field}.token_file");
        let mut token = zeroize::Zeroizing::new(std::fs::read(&self.token_file).map_err(|e| {
            ConfigError::new(&path, format!("cannot read {}: {e}", self.token_file.display()))
        })?);
        while token.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            token.pop();
        }
        if token.is_empty() {
            return Err(ConfigError::new(
                &path,
                format!("{} is empty; put the token in it", self.token_file.display()),
            ));
        }
        // Headers carry visible ASCII only; reject what could never match.
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                &path,
                format!(
                    "{} must hold one token of printable ASCII without spaces (one trailing newline is fine)",
                    self.token_file.display()
                ),
            ));
        }
        let strength = TokenStrength::of(&token);
        if strength.bits() < MIN_TRANSIT_TOKEN_BITS {
            // Length and alphabet size only: never the token.
            return Err(ConfigError::new(
                &path,
                format!(
                    "{} holds a token too weak to guard the transit door: {} characters from an alphabet \
                     of {} give about {} bits, and at least {MIN_TRANSIT_TOKEN_BITS} are required; make one \
                     with `openssl rand -hex 16` (32 hex digits) or `head -c 32 /dev/urandom | base64`",
                    self.token_file.display(),
                    strength.length,
                    strength.alphabet,
                    strength.bits().floor()
                ),
            ));
        }
        Ok(token)
    }
}

/// The least estimated strength of a transit token, in bits.
pub const MIN_TRANSIT_TOKEN_BITS: f64 = 128.0;

/// An estimate of a token's strength: `length x log2(alphabet)`, where the
/// alphabet is the sum of the character classes the token uses (digits 10,
/// lower case 26, upper case 26, other printable ASCII 32). A token of hex
/// digits only, in one case, counts 16: that is what `openssl rand -hex`
/// gives. It is an upper bound, as if each character were drawn at random:
/// it refuses short tokens and small alphabets, not patterns such as a
/// repeated letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStrength {
    pub length: usize,
    pub alphabet: u32,
}

impl TokenStrength {
    pub fn of(token: &[u8]) -> TokenStrength {
        let uses = |class: fn(&u8) -> bool| token.iter().any(class);
        let classes = [
            (uses(u8::is_ascii_digit), 10),
            (uses(u8::is_ascii_lowercase), 26),
            (uses(u8::is_ascii_uppercase), 26),
            (uses(|b| b.is_ascii_graphic() && !b.is_ascii_alphanumeric()), 32),
        ];
        let mut alphabet: u32 = classes
            .iter()
            .filter(|(used, _)| *used)
            .map(|(_, size)| size)
            .sum();
        let hex_in = |letters: std::ops::RangeInclusive<u8>| {
            token.iter().all(|b| b.is_ascii_digit() || letters.contains(b))
        };
        if hex_in(b'a'..=b'f') || hex_in(b'A'..=b'F') {
            alphabet = alphabet.min(16);
        }
        TokenStrength {
            length: token.len(),
            alphabet,
        }
    }

    /// The estimate in bits (0 for an empty token).
    pub fn bits(&self) -> f64 {
        if self.alphabet == 0 {
            return 0.0;
        }
        self.length as f64 * f64::from(self.alphabet).log2()
    }
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
    /// Connections each TCP listener (and the plugin socket) holds at once,
    /// in their TLS handshake or established. When full, the oldest one
    /// still in its handshake is dropped for a new one; if none is, the new
    /// one is refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may take for its TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// Seconds an HTTP/1 client (transit, metrics) may take to send a
    /// request's headers.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds an established connection may send nothing before it is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// HTTP/2 streams one connection may have open at once (gRPC, transit).
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
}

fn default_max_connections() -> usize {
    256
}
fn default_handshake_timeout() -> u64 {
    10
}
fn default_header_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_max_streams() -> u32 {
    128
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
            max_connections: default_max_connections(),
            handshake_timeout_secs: default_handshake_timeout(),
            header_timeout_secs: default_header_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            max_concurrent_streams: default_max_streams(),
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

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("profile", &self.profile)
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
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
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(
                if path == "." { String::new() } else { path },
                e.into_inner().message().to_owned(),
            )
        })?;
        let backends = config.backends.keys().map(String::as_str).collect();
        let keys = std::mem::take(&mut config.key_tables)
            .iter()
            .map(|(name, table)| Ok((name.clone(), KeySpec::parse(name, table, &backends)?)))
            .collect::<Result<_, ConfigError>>()?;
        config.keys = keys;
        config.check()?;
        Ok(config)
    }

    /// The TLS-or-plaintext rules every network listener shares.
    fn check_listener(&self, l: Listener<'_>) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{}.{name}", l.path);
        match (l.tls, l.plaintext) {
            (Some(_), true) => Err(ConfigError::new(
                field("plaintext"),
                "cannot be true when `tls` is set",
            )),
            (None, false) => Err(ConfigError::new(
                field("tls"),
                format!(
                    "is missing: {} (or `plaintext = true` under the development profile)",
                    l.needs_tls
                ),
            )),
            (None, true) if self.profile == Profile::Hardened => {
                Err(ConfigError::new(field("plaintext"), l.hardened_plaintext))
            }
            (Some(tls), false) if tls.client_ca_file.is_none() => match l.needs_client_ca {
                Some(why) => Err(ConfigError::new(
                    field("tls.client_ca_file"),
                    format!("is missing: {why}; set the CA that signs client certificates"),
                )),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Checks that need more than one field, and the profile's refusals.
    fn check(&self) -> Result<(), ConfigError> {
        parse_mode(&self.server.unix_socket_mode).ok_or_else(|| {
            ConfigError::new(
                "server.unix_socket_mode",
                "must be an octal file mode such as \"0600\"",
            )
        })?;
        if let Some(tcp) = &self.server.tcp {
            self.check_listener(Listener {
                path: "server.tcp",
                tls: tcp.tls.as_ref(),
                plaintext: tcp.plaintext,
                needs_tls: "TCP needs TLS with client certificates",
                hardened_plaintext: "the hardened profile refuses plaintext TCP: anyone on the network could call the broker and read unwrapped secrets; configure [server.tcp.tls] with client_ca_file",
                needs_client_ca: Some("the broker requires mutual TLS so that every caller has an identity"),
            })?;
        }
        if let Some(transit) = &self.server.transit {
            self.check_transit(transit)?;
        }
        if let Some(kmip) = &self.server.kmip {
            match &kmip.tls {
                None => {
                    return Err(ConfigError::new(
                        "server.kmip.tls",
                        "is missing: the KMIP door always uses mutual TLS; set cert_file, key_file and \
                         client_ca_file",
                    ));
                }
                Some(tls) if tls.client_ca_file.is_none() => {
                    return Err(ConfigError::new(
                        "server.kmip.tls.client_ca_file",
                        "is missing: the KMIP door requires client certificates under every profile, \
                         because the certificate is the caller's identity; set the CA that signs them",
                    ));
                }
                Some(_) => {}
            }
        }
        if self.limits.max_plaintext_bytes == 0 {
            return Err(ConfigError::new(
                "limits.max_plaintext_bytes",
                "must be at least 1",
            ));
        }
        if self.server.reload_poll_secs == 0 {
            return Err(ConfigError::new(
                "server.reload_poll_secs",
                "must be at least 1 (seconds between checks of the config's files; SIGHUP reloads at once)",
            ));
        }
        if self.limits.request_timeout_secs == 0 {
            return Err(ConfigError::new(
                "limits.request_timeout_secs",
                "must be at least 1",
            ));
        }
        for (field, value) in [
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.handshake_timeout_secs",
                self.limits.handshake_timeout_secs,
            ),
            ("limits.header_timeout_secs", self.limits.header_timeout_secs),
            ("limits.idle_timeout_secs", self.limits.idle_timeout_secs),
            (
                "limits.max_concurrent_streams",
                u64::from(self.limits.max_concurrent_streams),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
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
        if let Some(kms) = &self.server.kms_v2 {
            if !self.keys.contains_key(&kms.key_name) {
                return Err(ConfigError::new(
                    "server.kms_v2.key_name",
                    format!(
                        "names key {:?}, but there is no [keys.{}] table",
                        kms.key_name, kms.key_name
                    ),
                ));
            }
            parse_mode(&kms.socket_mode).ok_or_else(|| {
                ConfigError::new(
                    "server.kms_v2.socket_mode",
                    "must be an octal file mode such as \"0600\"",
                )
            })?;
        }
        if let Some(metrics) = &self.server.metrics
            && self.profile == Profile::Hardened
            && !metrics.listen.ip().is_loopback()
        {
            return Err(ConfigError::new(
                "server.metrics.listen",
                format!(
                    "the hardened profile serves metrics only on loopback, not {}: /metrics names keys \
                     and backends and /readyz gives backend error text to anyone who reaches it, \
                     unauthenticated and in plaintext; listen on 127.0.0.1 and scrape from the same \
                     host or pod",
                    metrics.listen
                ),
            ));
        }
        if self.audit.fail_open && self.profile == Profile::Hardened {
            return Err(ConfigError::new(
                "audit.fail_open",
                "the hardened profile refuses it: every operation must be audited, or not happen",
            ));
        }
        if self.keys.is_empty() {
            return Err(ConfigError::new(
                "keys",
                "no keys are configured; add a [keys.NAME] table",
            ));
        }
        Ok(())
    }

    /// `[audit]`: Hardened needs a trail, a keyed chain for a file, and the
    /// checkpoint apart from the log. Checked when the broker is built,
    /// after its backends, so a backend's own refusal is reported first.
    pub fn check_audit(&self) -> Result<(), ConfigError> {
        let audit = &self.audit;
        let hardened = self.profile == Profile::Hardened;
        if let Some(key) = &audit.seal_key {
            if audit.file.is_none() {
                return Err(ConfigError::new(
                    "audit.seal_key",
                    "a keyed chain needs audit.file: its checkpoint is kept against that log",
                ));
            }
            if !self.keys.contains_key(key) {
                return Err(ConfigError::new(
                    "audit.seal_key",
                    format!("names no configured key: add [keys.{key}] or name one of the [keys] tables"),
                ));
            }
        }
        if !hardened {
            return Ok(());
        }
        if audit.file.is_none() && !audit.stdout {
            return Err(ConfigError::new(
                "audit",
                "the hardened profile requires an audit trail: set [audit] file (with seal_key) or \
                 stdout = true; an operation that cannot be recorded must not happen",
            ));
        }
        if audit.file.is_some() && audit.seal_key.is_none() {
            return Err(ConfigError::new(
                "audit.seal_key",
                "the hardened profile requires a keyed chain for audit.file: name a broker key to seal \
                 the chain key under, so rewriting the log needs that key's HSM or KMS",
            ));
        }
        if audit.sync != AuditSync::Line {
            return Err(ConfigError::new(
                "audit.sync",
                "the hardened profile requires \"line\": an answered operation's record must be on disk",
            ));
        }
        if let (Some(file), Some(checkpoint)) = (
            &audit.file,
            audit.checkpoint_path(self.server.state_dir.as_deref()),
        ) {
            let dir = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
            if dir(file) == dir(&checkpoint) {
                return Err(ConfigError::new(
                    if audit.checkpoint_file.is_some() {
                        "audit.checkpoint_file"
                    } else {
                        "audit"
                    },
                    format!(
                        "the hardened profile keeps the checkpoint apart from the log, not beside it in {}: \
                         whoever may rewrite that directory could cut the log and restore an older \
                         checkpoint together; set checkpoint_file or server.state_dir elsewhere",
                        dir(file).display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[server.transit]`: the same TLS refusals as `[server.tcp]`, except
    /// that the development profile may skip client certificates (the
    /// tokens still authenticate), and a sound token table.
    fn check_transit(&self, transit: &TransitConfig) -> Result<(), ConfigError> {
        let mount = transit.mount();
        let mount_ok = !mount.is_empty()
            && mount.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !mount_ok {
            return Err(ConfigError::new(
                "server.transit.mount_path",
                "must be one or more path segments of letters, digits, `-`, `_` and `.`, such as \"transit\"",
            ));
        }
        if matches!(mount.split('/').next(), Some("auth" | "sys")) {
            return Err(ConfigError::new(
                "server.transit.mount_path",
                "cannot start with `auth` or `sys`: those paths are the token and health endpoints",
            ));
        }
        self.check_listener(Listener {
            path: "server.transit",
            tls: transit.tls.as_ref(),
            plaintext: transit.plaintext,
            needs_tls: "the transit listener needs TLS with client certificates",
            hardened_plaintext: "the hardened profile refuses plaintext HTTP: tokens and unwrapped secrets would cross the network in the clear; configure [server.transit.tls] with client_ca_file",
            needs_client_ca: (self.profile == Profile::Hardened).then_some(
                "the hardened profile requires mutual TLS on the transit listener, so a stolen token alone cannot unwrap",
            ),
        })?;
        if transit.tokens.is_empty() {
            return Err(ConfigError::new(
                "server.transit.tokens",
                "no tokens: add a [[server.transit.tokens]] table with identity, token_file and keys",
            ));
        }
        let mut identities = std::collections::BTreeSet::new();
        // Zeroed on drop, like every copy of a token.
        let mut tokens_seen: Vec<zeroize::Zeroizing<Vec<u8>>> = Vec::new();
        for (index, entry) in transit.tokens.iter().enumerate() {
            let field = format!("server.transit.tokens[{index}]");
            let identity_ok = !entry.identity.is_empty()
                && entry
                    .identity
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            if !identity_ok {
                return Err(ConfigError::new(
                    format!("{field}.identity"),
                    "must be a non-empty name of letters, digits, `-`, `_`, `.` and `@` (it appears in logs)",
                ));
            }
            if !identities.insert(entry.identity.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.identity"),
                    format!(
                        "{:?} is used by an earlier token; each token needs its own identity",
                        entry.identity
                    ),
                ));
            }
            if entry.keys.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.keys"),
                    "is empty: list the keys this token may use",
                ));
            }
            for key in &entry.keys {
                if !self.keys.contains_key(key) {
                    return Err(ConfigError::new(
                        format!("{field}.keys"),
                        format!("names key {key:?}, but there is no [keys.{key}] table"),
                    ));
                }
            }
            let token = entry.read_token(&field)?;
            // Two entries with one token would make the caller's identity ambiguous.
            if tokens_seen.contains(&token) {
                return Err(ConfigError::new(
                    format!("{field}.token_file"),
                    "holds the same token as an earlier entry; give each identity its own token",
                ));
            }
            tokens_seen.push(token);
        }
        Ok(())
    }

    /// A daemon needs somewhere to listen (the KMS plugin's in-process mode
    /// reads the same file and needs none).
    pub fn require_listener(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        // Metrics alone serve no caller, so they do not count.
        if server.unix_socket.is_none()
            && server.tcp.is_none()
            && server.transit.is_none()
            && server.kms_v2.is_none()
            && server.kmip.is_none()
        {
            return Err(ConfigError::new(
                "server",
                "no listener: set `unix_socket`, a `[server.tcp]`, `[server.transit]`, \
                 `[server.kms_v2]` and/or `[server.kmip]` table",
            ));
        }
        Ok(())
    }

    pub fn unix_socket_mode(&self) -> u32 {
        parse_mode(&self.server.unix_socket_mode).unwrap_or(0o600)
    }
}

/// Parses an octal file mode such as "0600".
pub fn parse_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
}

#[cfg(test)]
mod tests;

/// One network listener's transport settings and how to explain refusing them.
struct Listener<'a> {
    path: &'static str,
    tls: Option<&'a TlsConfig>,
    plaintext: bool,
    needs_tls: &'static str,
    hardened_plaintext: &'static str,
    /// Why a client CA is required, where it is.
    needs_client_ca: Option<&'static str>,
}
