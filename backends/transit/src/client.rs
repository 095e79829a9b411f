//! The HTTP side: one `reqwest` client per `[backends.NAME]`, the token, and
//! the mapping of OpenBao's answers to [`BackendError`]s in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use sealbroker_core::{BackendError, BackendErrorKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::batch::BatchSettings;
use crate::token::{TokenOrigin, TokenSource};
use crate::{BackendConfig, ConfigError, valid_segment};

const X_VAULT_TOKEN: HeaderName = HeaderName::from_static("x-vault-token");
const X_VAULT_REQUEST: HeaderName = HeaderName::from_static("x-vault-request");
const X_VAULT_NAMESPACE: HeaderName = HeaderName::from_static("x-vault-namespace");

/// Upper bound on an answer body; a batch of 1000 DEKs is well under 1 MiB.
const MAX_REPLY_BYTES: usize = 8 << 20;

/// The upstream's wording when a ciphertext is below `min_decryption_version`.
pub(crate) const RETIRED_MARKER: &str = "disallowed by policy (too old)";

/// A client of one upstream OpenBao: address, mount, namespace, token, TLS.
/// Cheap to clone; clones share the connection pool, token and renewal.
#[derive(Clone)]
pub struct TransitClient {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for TransitClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitClient")
            .field("address", &self.inner.address)
            .field("mount", &self.inner.mount)
            .field("namespace", &self.inner.namespace)
            .field("token", &self.inner.token.origin())
            .finish_non_exhaustive()
    }
}

pub(crate) struct ClientInner {
    http: reqwest::Client,
    /// Normalized address, for messages and key identities.
    pub(crate) address: String,
    /// `address` + `/v1/`.
    api: String,
    pub(crate) mount: String,
    pub(crate) namespace: Option<String>,
    namespace_header: Option<HeaderValue>,
    pub(crate) token: TokenSource,
    timeout: Duration,
    pub(crate) batch: BatchSettings,
    tls: bool,
    requests: AtomicU64,
    renew: bool,
    renewal_started: AtomicBool,
    /// Wakes the renewal task: the token changed, or the client is gone.
    pub(crate) renewal_wake: Arc<Notify>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.renewal_wake.notify_one();
    }
}

/// One HTTP call to the upstream.
pub(crate) struct Call<'a> {
    pub method: Method,
    /// Path under `/v1/`, e.g. `transit/encrypt/k`.
    pub path: &'a str,
    /// What the call does, for messages: `encrypt with transit key "k"`.
    pub what: &'a str,
    pub body: Option<bytes::Bytes>,
}

/// A complete answer. The body may hold DEKs or the token (lookup-self echoes
/// it), so it is zeroed on drop and never logged.
pub(crate) struct Reply {
    pub status: StatusCode,
    body: Zeroizing<Vec<u8>>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
    #[serde(default)]
    errors: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ErrorsOnly {
    #[serde(default)]
    errors: Option<Vec<String>>,
}

impl Reply {
    /// The upstream's `errors` list, best effort.
    pub fn errors(&self) -> Vec<String> {
        serde_json::from_slice::<ErrorsOnly>(&self.body)
            .ok()
            .and_then(|e| e.errors)
            .unwrap_or_default()
    }

    /// `data` of a successful answer, or the classified error.
    pub fn data<T: DeserializeOwned>(
        &self,
        client: &ClientInner,
        what: &str,
        decrypting: bool,
    ) -> Result<T, BackendError> {
        if !self.status.is_success() {
            return Err(client.status_error(self.status, &self.errors(), what, decrypting));
        }
        let envelope: Envelope<T> = serde_json::from_slice(&self.body).map_err(|e| {
            BackendError::internal(format!(
                "{what}: cannot parse the answer of upstream OpenBao at {}: {}",
                client.address,
                redact_serde(&e)
            ))
        })?;
        envelope.data.ok_or_else(|| {
            BackendError::internal(format!(
                "{what}: upstream OpenBao at {} answered {} without data{}",
                client.address,
                self.status,
                describe_errors(&envelope.errors.unwrap_or_default())
            ))
        })
    }

    /// The whole body of a successful answer (for `auth` answers).
    pub fn json<T: DeserializeOwned>(&self, client: &ClientInner, what: &str) -> Result<T, BackendError> {
        if !self.status.is_success() {
            return Err(client.status_error(self.status, &self.errors(), what, false));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            BackendError::internal(format!(
                "{what}: cannot parse the answer of upstream OpenBao at {}: {}",
                client.address,
                redact_serde(&e)
            ))
        })
    }

    /// `data.batch_results` of a batch answer. OpenBao answers 400 when any
    /// item failed, with the per-item errors in the results; only an answer
    /// without results is an error for the whole batch.
    pub fn batch<T: DeserializeOwned>(
        &self,
        client: &ClientInner,
        what: &str,
        decrypting: bool,
        expected: usize,
    ) -> Result<Vec<T>, BackendError> {
        let parsed = serde_json::from_slice::<Envelope<crate::BatchResults<T>>>(&self.body);
        let results = match parsed {
            Ok(Envelope { data: Some(data), .. })
                if self.status.is_success() || self.status == StatusCode::BAD_REQUEST =>
            {
                data.batch_results
            }
            _ if !self.status.is_success() => {
                return Err(client.status_error(self.status, &self.errors(), what, decrypting));
            }
            Ok(_) => {
                return Err(BackendError::internal(format!(
                    "{what}: upstream OpenBao at {} answered a batch without batch_results",
                    client.address
                )));
            }
            Err(e) => {
                return Err(BackendError::internal(format!(
                    "{what}: cannot parse the batch answer of upstream OpenBao at {}: {}",
                    client.address,
                    redact_serde(&e)
                )));
            }
        };
        if results.len() != expected {
            return Err(BackendError::internal(format!(
                "{what}: upstream OpenBao at {} answered {} batch results for {expected} inputs",
                client.address,
                results.len()
            )));
        }
        Ok(results)
    }
}

/// serde_json errors quote no input, but say so explicitly by keeping only
/// the category and position.
fn redact_serde(error: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        error.classify(),
        error.line(),
        error.column()
    )
}

fn describe_errors(errors: &[String]) -> String {
    let text: Vec<String> = errors
        .iter()
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect();
    if text.is_empty() {
        String::new()
    } else {
        format!("; OpenBao said: {}", text.join("; "))
    }
}

impl TransitClient {
    pub(crate) fn from_config(config: &BackendConfig) -> Result<Self, ConfigError> {
        let url = Url::parse(config.address.trim())
            .map_err(|e| ConfigError::new("address", format!("{:?} is not a URL: {e}", config.address)))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(ConfigError::new(
                    "address",
                    format!("scheme {other:?} is not supported; use https:// (or http:// on loopback)"),
                ));
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new("address", "has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(
                "address",
                "must not carry credentials; use token_file or token_env",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new("address", "must not have a query or fragment"));
        }
        let address = url.as_str().trim_end_matches('/').to_owned();

        let mount = config.mount_path.trim_matches('/').to_owned();
        if !mount.split('/').all(valid_segment) {
            return Err(ConfigError::new(
                "mount_path",
                format!(
                    "{:?} is not a mount path (segments of letters, digits, '-', '_', '.')",
                    config.mount_path
                ),
            ));
        }
        let namespace = match &config.namespace {
            None => None,
            Some(ns) => {
                let trimmed = ns.trim_matches('/');
                if !trimmed.split('/').all(valid_segment) {
                    return Err(ConfigError::new(
                        "namespace",
                        format!("{ns:?} is not a namespace path"),
                    ));
                }
                Some(trimmed.to_owned())
            }
        };
        let namespace_header = namespace
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| ConfigError::new("namespace", "is not a valid header value"))?;

        let origin = match (&config.token_file, &config.token_env) {
            (Some(path), None) => TokenOrigin::File(path.clone()),
            (None, Some(var)) if !var.is_empty() => TokenOrigin::Env(var.clone()),
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "token_env",
                    "is empty; name an environment variable",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "token_file",
                    "set either `token_file` or `token_env`, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "token_file",
                    "set `token_file` (preferred) or `token_env`",
                ));
            }
        };
        let token = TokenSource::load(origin)?;

        if config.timeout_secs == 0 || config.timeout_secs > 600 {
            return Err(ConfigError::new("timeout_secs", "must be between 1 and 600"));
        }
        if config.batch_max == 0 || config.batch_max > 1000 {
            return Err(ConfigError::new(
                "batch_max",
                "must be between 1 (no batching) and 1000",
            ));
        }
        if config.batch_window_ms > 1000 {
            return Err(ConfigError::new("batch_window_ms", "must be at most 1000"));
        }
        if !tls {
            for (field, set) in [
                ("tls_ca_file", config.tls_ca_file.is_some()),
                ("tls_client_cert", config.tls_client_cert.is_some()),
                ("tls_client_key", config.tls_client_key.is_some()),
                ("tls_server_name", config.tls_server_name.is_some()),
            ] {
                if set {
                    return Err(ConfigError::new(
                        field,
                        format!("is set but address {address} is plain http://; use https://"),
                    ));
                }
            }
        }
        let tls_config = crate::tls::client_config(config)?;

        let timeout = Duration::from_secs(config.timeout_secs);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("sealbroker-backend-transit/", env!("CARGO_PKG_VERSION")))
            // The token is a custom header that reqwest would carry across a
            // redirect to another host; OpenBao forwards standby requests
            // itself, so no redirect is needed.
            .redirect(reqwest::redirect::Policy::none())
            // Proxies from the environment would see the token.
            .no_proxy()
            .https_only(tls)
            .build()
            .map_err(|e| ConfigError::new("address", format!("cannot build the HTTP client: {e}")))?;

        let inner = Arc::new(ClientInner {
            http,
            api: format!("{address}/v1/"),
            address,
            mount,
            namespace,
            namespace_header,
            token,
            timeout,
            batch: BatchSettings {
                max_items: config.batch_max,
                window: Duration::from_millis(config.batch_window_ms),
            },
            tls,
            requests: AtomicU64::new(0),
            renew: !config.disable_renewal,
            renewal_started: AtomicBool::new(false),
            renewal_wake: Arc::new(Notify::new()),
        });
        inner.start_renewal();
        Ok(TransitClient { inner })
    }

    /// The normalized upstream address.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Whether the upstream is reached over TLS. The server refuses plain
    /// `http://` upstreams under the Hardened profile.
    pub fn uses_tls(&self) -> bool {
        self.inner.tls
    }

    /// HTTP requests sent upstream so far (all kinds), for metrics and tests.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }
}

impl ClientInner {
    /// Starts background token renewal once, when a Tokio runtime is at hand.
    pub(crate) fn start_renewal(self: &Arc<Self>) {
        if !self.renew || self.renewal_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.renewal_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(crate::token::renewal_loop(
            Arc::downgrade(self),
            self.renewal_wake.clone(),
        ));
    }

    pub(crate) fn namespace_note(&self) -> String {
        match &self.namespace {
            Some(ns) => format!(" in namespace {ns:?}"),
            None => String::new(),
        }
    }

    /// Sends one request. On 403 the token is read again once, so a token
    /// file rotated by an agent takes effect without a restart.
    pub(crate) async fn execute(self: &Arc<Self>, call: Call<'_>) -> Result<Reply, BackendError> {
        self.start_renewal();
        let url = format!("{}{}", self.api, call.path);
        let mut retried = false;
        loop {
            let mut request = self
                .http
                .request(call.method.clone(), &url)
                .header(X_VAULT_REQUEST, HeaderValue::from_static("true"))
                .header(X_VAULT_TOKEN, self.token.header());
            if let Some(ns) = &self.namespace_header {
                request = request.header(X_VAULT_NAMESPACE, ns.clone());
            }
            if let Some(body) = &call.body {
                request = request
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(body.clone());
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let response = request
                .send()
                .await
                .map_err(|e| self.transport_error(&e, call.what))?;
            let status = response.status();
            let body = read_body(response)
                .await
                .map_err(|e| self.transport_error(&e, call.what))?;
            if status == StatusCode::FORBIDDEN && !retried && self.token.reload() {
                tracing::info!(
                    address = %self.address,
                    token = %self.token.origin(),
                    "upstream refused the token; retrying once with the token just read again"
                );
                self.renewal_wake.notify_one();
                retried = true;
                continue;
            }
            if body.len() > MAX_REPLY_BYTES {
                return Err(BackendError::internal(format!(
                    "{}: the answer of upstream OpenBao at {} is larger than {MAX_REPLY_BYTES} bytes",
                    call.what, self.address
                )));
            }
            return Ok(Reply { status, body });
        }
    }

    fn transport_error(&self, error: &reqwest::Error, what: &str) -> BackendError {
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if causes.last() != Some(&text) {
                causes.push(text);
            }
            source = cause.source();
        }
        let detail = if causes.is_empty() {
            error.to_string()
        } else {
            causes.join(": ")
        };
        let hint = if detail.contains("certificate") || detail.contains("UnknownIssuer") {
            " (check tls_ca_file and tls_server_name)"
        } else {
            ""
        };
        if error.is_timeout() {
            BackendError::new(
                BackendErrorKind::Timeout,
                format!(
                    "upstream OpenBao at {} did not answer {what} within {} s: {detail}",
                    self.address,
                    self.timeout.as_secs()
                ),
            )
        } else if error.is_connect() {
            BackendError::unavailable(format!(
                "cannot connect to upstream OpenBao at {} for {what}: {detail}{hint}",
                self.address
            ))
        } else {
            BackendError::unavailable(format!(
                "request to upstream OpenBao at {} for {what} failed: {detail}{hint}",
                self.address
            ))
        }
    }

    /// The one mapping of an HTTP status and OpenBao's `errors` to a kind.
    pub(crate) fn status_error(
        &self,
        status: StatusCode,
        errors: &[String],
        what: &str,
        decrypting: bool,
    ) -> BackendError {
        classify(
            &self.address,
            &self.namespace_note(),
            status,
            errors,
            what,
            decrypting,
        )
    }

    /// An error of one item of a batch answer.
    pub(crate) fn item_error(&self, what: &str, error: &str, decrypting: bool) -> BackendError {
        self.status_error(StatusCode::BAD_REQUEST, &[error.to_owned()], what, decrypting)
    }
}

pub(crate) fn classify(
    address: &str,
    namespace_note: &str,
    status: StatusCode,
    errors: &[String],
    what: &str,
    decrypting: bool,
) -> BackendError {
    let said = describe_errors(errors);
    let text = errors.join(" ").to_lowercase();
    let new = |kind, message: String| BackendError::new(kind, message);
    if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
        return new(
            BackendErrorKind::PermissionDenied,
            format!(
                "upstream OpenBao at {address} refused the token (revoked or expired?) for {what}{namespace_note}; \
                 if the token is valid, its policy must allow this path{said}"
            ),
        );
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return new(
            BackendErrorKind::Throttled,
            format!("upstream OpenBao at {address} is rate limiting {what}{said}"),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE && text.contains("sealed") {
        return new(
            BackendErrorKind::Unavailable,
            format!("upstream OpenBao at {address} is sealed ({what}){said}"),
        );
    }
    // 412 and OpenBao's 472/473 are standby and consistency answers.
    if status.is_server_error() || matches!(status.as_u16(), 412 | 472 | 473) {
        return new(
            BackendErrorKind::Unavailable,
            format!("upstream OpenBao at {address} cannot serve {what} right now (HTTP {status}){said}"),
        );
    }
    if text.contains("encryption key not found") || status == StatusCode::NOT_FOUND {
        return new(
            BackendErrorKind::KeyNotFound,
            format!(
                "upstream OpenBao at {address} has no such key or mount for {what}{namespace_note}; \
                 is the transit engine mounted there, and does the key exist?{said}"
            ),
        );
    }
    if text.contains(RETIRED_MARKER) {
        return new(
            BackendErrorKind::KeyNotFound,
            format!("upstream OpenBao at {address} no longer decrypts this key version{said}"),
        );
    }
    if text.contains("non-aead") {
        return new(
            BackendErrorKind::InvalidInput,
            format!(
                "{what}: the upstream key type cannot bind associated data; \
                 use an aes256-gcm96 (or other AEAD) transit key{said}"
            ),
        );
    }
    if decrypting
        && (text.contains("message authentication failed")
            || text.contains("invalid ciphertext")
            || text.contains("unable to decrypt")
            || text.contains("illegal base64"))
    {
        return new(
            BackendErrorKind::NotAuthentic,
            format!("{what}: the upstream ciphertext does not authenticate with this AAD{said}"),
        );
    }
    if status == StatusCode::BAD_REQUEST {
        return new(
            BackendErrorKind::InvalidInput,
            format!("upstream OpenBao at {address} rejected {what}{said}"),
        );
    }
    new(
        BackendErrorKind::Internal,
        format!("upstream OpenBao at {address} answered {what} with HTTP {status}{said}"),
    )
}

/// Reads the whole body into memory that is zeroed on drop, sized from
/// `Content-Length` so it does not reallocate.
async fn read_body(mut response: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, reqwest::Error> {
    let hint = response
        .content_length()
        .map_or(4096, |n| (n as usize).min(MAX_REPLY_BYTES) + 1);
    let mut body = Zeroizing::new(Vec::with_capacity(hint));
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            let room = MAX_REPLY_BYTES + 1 - body.len();
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        if body.len() + chunk.len() > body.capacity() {
            // Grow into a fresh zeroizing buffer so the old one is zeroed.
            let mut bigger = Zeroizing::new(Vec::with_capacity((body.len() + chunk.len()) * 2));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, errors: &[&str], decrypting: bool) -> BackendErrorKind {
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        classify(
            "http://bao:8200",
            "",
            StatusCode::from_u16(status).unwrap(),
            &errors,
            "decrypt",
            decrypting,
        )
        .kind
    }

    #[test]
    fn maps_openbao_answers_to_kinds() {
        use BackendErrorKind::*;
        assert_eq!(kind(403, &["permission denied"], false), PermissionDenied);
        assert_eq!(
            kind(400, &["cipher: message authentication failed"], true),
            NotAuthentic
        );
        assert_eq!(kind(400, &["invalid ciphertext: no prefix"], true), NotAuthentic);
        assert_eq!(kind(400, &["encryption key not found"], true), KeyNotFound);
        assert_eq!(kind(404, &[], false), KeyNotFound);
        assert_eq!(
            kind(
                400,
                &["ciphertext or signature version is disallowed by policy (too old)"],
                true
            ),
            KeyNotFound
        );
        assert_eq!(kind(503, &["Vault is sealed"], false), Unavailable);
        assert_eq!(kind(500, &["internal error"], false), Unavailable);
        assert_eq!(kind(429, &[], false), Throttled);
        assert_eq!(
            kind(
                400,
                &["'[0].associated_data' provided for non-AEAD cipher suite rsa-2048"],
                false
            ),
            InvalidInput
        );
        assert_eq!(kind(400, &["something else"], false), InvalidInput);
        assert_eq!(kind(418, &[], false), Internal);
    }

    #[test]
    fn permission_denied_names_the_address_and_quotes_upstream() {
        let e = classify(
            "https://bao:8200",
            "",
            StatusCode::FORBIDDEN,
            &["1 error occurred:\n\t* permission denied\n\n".into()],
            "encrypt with transit key \"k\"",
            false,
        );
        assert!(
            e.message
                .contains("upstream OpenBao at https://bao:8200 refused the token (revoked or expired?)")
        );
        assert!(
            e.message
                .contains("OpenBao said: 1 error occurred: * permission denied"),
            "{}",
            e.message
        );
    }

    #[test]
    fn sealed_upstream_says_sealed() {
        let e = classify(
            "http://b",
            "",
            StatusCode::SERVICE_UNAVAILABLE,
            &["Vault is sealed".into()],
            "x",
            false,
        );
        assert!(e.message.contains("is sealed"), "{}", e.message);
    }
}
