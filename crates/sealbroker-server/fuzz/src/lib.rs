//! What the server fuzz targets and their seed generator share.
//!
//! The fixture is a Development-profile broker on software keys with fixed
//! bytes, built the way `sealbroker serve` builds one: a TOML config through
//! [`Config::parse`], a backend registry, ACLs from the config, and the
//! transit router from `[server.transit]`. Fixed keys and tokens make seeds
//! captured from one process (blobs, ciphertexts) valid in every other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use sealbroker_backend_software as software;
use sealbroker_server::config::Config;
use sealbroker_server::broker::metrics::Metrics;
use sealbroker_server::broker::registry::BackendRegistry;
use sealbroker_server::broker::Broker;
use sealbroker_server::doors::transit::throttle::{FailureThrottle, ManualClock, ThrottleLimits};

/// The transit token of OpenBao's seal: key `unseal` only.
pub const OPENBAO_TOKEN: &str = "s.fuzz-openbao-3f9a6c1d";
/// An operator's transit token: keys `unseal` and `other`.
pub const OPS_TOKEN: &str = "hvs.fuzz-ops-b27e0d54Xq7Lm3Rv";
/// The key of `[server.kms_v2]`.
pub const KMS_KEY: &str = "kube";
/// The key the fixture KMS plugin instance wraps under.
pub const PLUGIN_KEY: &str = "unseal";
/// The transit routes' prefix (`mount_path` is the default, `transit`).
pub const MOUNT_PREFIX: &str = "/v1/transit/";
/// A `wrapper_id` the `kms_plugin` target replaces by its live instance's id.
pub const WRAPPER_PLACEHOLDER: &str = "fixture-wrapper";

/// Where the fixture's key, token and config files live.
pub fn fixture_dir() -> PathBuf {
    std::env::temp_dir().join("sealbroker-server-fuzz")
}

/// Writes `text` to `path` with mode 0600 unless it already holds it;
/// written beside and renamed, so parallel fuzz jobs never read half a file.
pub fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        let partial = path.with_extension(format!("partial{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .expect("fixture file");
        file.write_all(text.as_bytes()).expect("fixture file written");
        std::fs::rename(&partial, path).expect("fixture file in place");
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("fixture file mode");
}

/// The backend kinds of the fixture: the software key, as the binary links it.
pub fn registry() -> BackendRegistry {
    BackendRegistry::default().with(&software::KIND)
}

/// The fixture config for files in `dir`: a plaintext transit listener with
/// two tokens, a KMS v2 socket, and the keys of [`keys_text`].
pub fn config_text(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"profile = "development"

[server]
unix_socket = "{d}/sealbroker.sock"

[server.transit]
listen = "127.0.0.1:8200"
plaintext = true

[[server.transit.tokens]]
identity = "openbao"
token_file = "{d}/openbao.token"
keys = ["unseal"]

[[server.transit.tokens]]
identity = "ops"
token_file = "{d}/ops.token"
keys = ["unseal", "other"]

[server.kms_v2]
socket = "{d}/kms.sock"
key_name = "kube"

{keys}"#,
        keys = keys_text(dir)
    )
}

/// The config of the in-process KMS plugin (`config_file` mode): the
/// daemon's keys and limits without its listener tables, which the plugin
/// refuses because it serves OpenBao's socket only.
pub fn plugin_config_text(dir: &Path) -> String {
    format!("profile = \"development\"\n\n{}", keys_text(dir))
}

/// Limits, the software backend, an HA key with two versions, and a key
/// whose ACL admits the operator's token only.
pub fn keys_text(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"[limits]
max_plaintext_bytes = 4096
request_timeout_secs = 5

[backends.soft]
type = "software"

[[keys.unseal.versions]]
version = 1
backend = "soft"
key_file = "{dir}/unseal-v1.key"

[[keys.unseal.versions]]
version = 2
members = [
  {{ backend = "soft", key_file = "{dir}/unseal-v2-a.key" }},
  {{ backend = "soft", key_file = "{dir}/unseal-v2-b.key" }},
]

[keys.other]
backend = "soft"
key_file = "{dir}/other.key"
allow = {{ any = ["token:ops"] }}

[keys.kube]
backend = "soft"
key_file = "{dir}/kube.key"
"#
    )
}

/// The broker, its config and the transit router, built once per process.
pub struct Fixture {
    pub config_path: PathBuf,
    /// The `config_file` of the KMS plugin target's instances.
    pub plugin_config_path: PathBuf,
    pub config: Config,
    pub runtime: tokio::runtime::Runtime,
    pub broker: Arc<Broker>,
    pub transit: Router,
    /// The clock of the transit router's failed-token throttle: a target
    /// moves it past a window before each input, so inputs without a token
    /// do not leave every later one answered 429.
    pub transit_clock: Arc<ManualClock>,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::create)
}

impl Fixture {
    fn create() -> Fixture {
        let dir = fixture_dir();
        std::fs::create_dir_all(&dir).expect("fixture directory");
        for (name, byte) in [
            ("unseal-v1", 0x41u8),
            ("unseal-v2-a", 0x42),
            ("unseal-v2-b", 0x43),
            ("other", 0x44),
            ("kube", 0x45),
        ] {
            let hex: String = std::iter::repeat_n(format!("{byte:02x}"), 32).collect();
            write_private(&dir.join(format!("{name}.key")), &format!("{hex}\n"));
        }
        write_private(&dir.join("openbao.token"), &format!("{OPENBAO_TOKEN}\n"));
        write_private(&dir.join("ops.token"), OPS_TOKEN);
        let text = config_text(&dir);
        let config_path = dir.join("sealbroker.toml");
        write_private(&config_path, &text);
        let plugin_config_path = dir.join("plugin.toml");
        write_private(&plugin_config_path, &plugin_config_text(&dir));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = Config::parse(&text).expect("fixture config");
        // Metrics on, though the config serves no endpoint: the targets
        // exercise the labelling of every outcome.
        let broker = runtime
            .block_on(Broker::from_config(&config, &registry()))
            .expect("fixture broker")
            .with_metrics(Arc::new(Metrics::new(true)));
        let broker = Arc::new(broker);
        let transit_clock = Arc::new(ManualClock::new());
        let transit = sealbroker_server::doors::transit::router_with_throttle(
            broker.clone(),
            config.server.transit.as_ref().expect("fixture transit table"),
            Arc::new(FailureThrottle::new(
                ThrottleLimits::default(),
                transit_clock.clone(),
            )),
        )
        .expect("fixture transit router");
        Fixture {
            config_path,
            plugin_config_path,
            config,
            runtime,
            broker,
            transit,
            transit_clock,
        }
    }
}

/// A transit request as text, the way it crosses the wire in HTTP/1.1:
/// a request line, header lines, a blank line, the body. Lines may end in
/// `\r\n` or `\n`; header lines that are not valid HTTP are skipped.
pub struct HttpInput {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl HttpInput {
    /// `None` when the request line holds no valid method and target
    /// (hyper would refuse such a request before the router saw it).
    pub fn parse(data: &[u8]) -> Option<HttpInput> {
        let (head, body) = split_head(data);
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let mut request_line = lines.next()?.split(|b| *b == b' ').filter(|p| !p.is_empty());
        let method = Method::from_bytes(request_line.next()?).ok()?;
        let uri = Uri::try_from(request_line.next()?).ok()?;
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(name, value);
            }
        }
        Some(HttpInput {
            method,
            uri,
            headers,
            body: body.to_vec(),
        })
    }

    /// The inverse of [`parse`](Self::parse), for seeds.
    pub fn encode(method: &str, target: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
        let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    pub fn to_request(&self) -> Request<Body> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .body(Body::from(self.body.clone()))
            .expect("parts that parsed build a request");
        *request.headers_mut() = self.headers.clone();
        request
    }
}

fn split_head(data: &[u8]) -> (&[u8], &[u8]) {
    let crlf = find(data, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(data, b"\n\n").map(|i| (i, 2));
    match [crlf, lf].into_iter().flatten().min_by_key(|(i, _)| *i) {
        Some((i, len)) => (&data[..i], &data[i + len..]),
        None => (data, &[]),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A gRPC call as a fuzz input: one byte choosing the method, then the
/// request message's protobuf encoding.
pub fn grpc_input(method: u8, message: &impl prost::Message) -> Vec<u8> {
    let mut out = vec![method];
    out.extend_from_slice(&message.encode_to_vec());
    out
}

/// Percent-decodes one path segment, as axum's `Path` extractor does.
pub fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}
