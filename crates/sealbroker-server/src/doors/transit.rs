//! The transit front door: the part of Vault's transit HTTP API that a stock
//! OpenBao/Vault `seal "transit"` stanza and hvac use, translated to
//! [`Broker`] calls. See docs/transit.md.
//!
//! Callers present a token (`X-Vault-Token` or `Authorization: Bearer`)
//! from `[[server.transit.tokens]]`. The token is checked before anything
//! else, so an unauthenticated caller learns nothing about keys; then the
//! token's key scope; then the request. Ciphertexts are our envelope blobs in
//! Vault's `vault:v<N>:<base64>` wrapping, where N is the key version.
//!
//! Before even the token, a peer that failed too many token attempts lately
//! is answered 429 ([`throttle`]).

mod body;
pub mod throttle;
pub mod tokens;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, put};
use axum::{Extension, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealbroker_core::Error;
use serde_json::{Value, json};
use zeroize::Zeroize;

use crate::broker::Broker;
use crate::config::{ConfigError, TransitConfig};
use crate::doors::status::http_status;
use crate::net::tls::TlsConnectInfo;

use self::body::{DecryptRequest, EncryptRequest, VaultCiphertext};
use self::throttle::{FailureThrottle, Peer};
use self::tokens::{LiveTokens, TokenGrant, TokenTable};

/// ALPN for the transit listener: Go clients (OpenBao) negotiate h2, Python
/// clients (hvac) HTTP/1.1.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why a transit request failed. [`TransitError::status`] is its HTTP status;
/// the message goes to the caller as Vault's `{"errors":[...]}` and never
/// holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum TransitError {
    /// No token, or one that matches no configured token. Deliberately vague.
    #[error("permission denied")]
    Unauthenticated,
    /// The peer failed too many token attempts; its token was not checked.
    #[error("too many failed token attempts from this address; retry in {retry_after_secs}s")]
    Throttled { retry_after_secs: u64 },
    /// The token is valid but not scoped to the key.
    #[error("{0}")]
    OutOfScope(Error),
    /// The request is malformed: JSON, base64, ciphertext format, fields.
    #[error("invalid request: `{field}` {reason}")]
    InvalidRequest { field: String, reason: String },
    #[error("request body is larger than the {limit}-byte limit")]
    BodyTooLarge { limit: usize },
    #[error("no handler for {path}")]
    NoRoute { path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
    /// The broker refused or failed the operation (it logs these itself).
    #[error("{0}")]
    Broker(#[from] Error),
}

impl TransitError {
    pub fn status(&self) -> StatusCode {
        match self {
            TransitError::Unauthenticated => StatusCode::FORBIDDEN,
            TransitError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            TransitError::OutOfScope(e) | TransitError::Broker(e) => http_status(e.code()),
            TransitError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            TransitError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TransitError::NoRoute { .. } => StatusCode::NOT_FOUND,
            TransitError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

impl IntoResponse for TransitError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            // The throttle logs once per peer and window itself.
            TransitError::Broker(_) | TransitError::Throttled { .. } => {}
            TransitError::NoRoute { .. } | TransitError::MethodNotAllowed { .. } => {
                tracing::debug!(status = status.as_u16(), error = %self, "transit request refused")
            }
            _ => tracing::info!(status = status.as_u16(), error = %self, "transit request refused"),
        }
        let mut response = (status, Json(json!({ "errors": [self.to_string()] }))).into_response();
        if let TransitError::Throttled { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

/// What every handler shares.
struct TransitApi {
    broker: Arc<Broker>,
    tokens: LiveTokens,
    /// Failed token attempts per peer; outlives reloads.
    throttle: Arc<FailureThrottle>,
    body_limit: usize,
    /// Reported as each key version's creation time, which the broker does
    /// not know: the time this listener started.
    started_unix: u64,
}

impl TransitApi {
    fn body(&self, body: Result<Bytes, BytesRejection>) -> Result<Bytes, TransitError> {
        body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                TransitError::BodyTooLarge {
                    limit: self.body_limit,
                }
            } else {
                TransitError::InvalidRequest {
                    field: "body".into(),
                    reason: format!("could not be read: {}", rejection.body_text()),
                }
            }
        })
    }
}

/// The largest request body: a maximum-size plaintext in base64, room for
/// AAD as large, and slack for a ciphertext's envelope and the JSON.
fn body_limit(max_plaintext_bytes: usize) -> usize {
    2 * (max_plaintext_bytes.div_ceil(3) * 4) + 64 * 1024
}

/// The transit API for `config`, reading its token files.
pub fn router(broker: Arc<Broker>, config: &TransitConfig) -> Result<Router, ConfigError> {
    Ok(live_router(broker, config)?.0)
}

/// Like [`router`], with the handle a reload replaces the tokens through.
pub fn live_router(broker: Arc<Broker>, config: &TransitConfig) -> Result<(Router, LiveTokens), ConfigError> {
    let tokens = LiveTokens::new(TokenTable::load(config)?);
    let throttle = Arc::new(FailureThrottle::default());
    let router = build_router(broker, tokens.clone(), throttle, config.mount());
    Ok((router, tokens))
}

/// Like [`router`], counting failed token attempts in `throttle` (whose
/// clock a test or fuzz target may drive).
pub fn router_with_throttle(
    broker: Arc<Broker>,
    config: &TransitConfig,
    throttle: Arc<FailureThrottle>,
) -> Result<Router, ConfigError> {
    let tokens = LiveTokens::new(TokenTable::load(config)?);
    Ok(build_router(broker, tokens, throttle, config.mount()))
}

fn build_router(
    broker: Arc<Broker>,
    tokens: LiveTokens,
    throttle: Arc<FailureThrottle>,
    mount: &str,
) -> Router {
    let body_limit = body_limit(broker.limits().max_plaintext_bytes);
    let api = Arc::new(TransitApi {
        broker,
        tokens,
        throttle,
        body_limit,
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    let writes = |method_router: MethodRouter<Arc<TransitApi>>| method_router.fallback(method_not_allowed);
    let needs_token = Router::new()
        .route(
            &format!("/v1/{mount}/encrypt/{{key}}"),
            writes(put(encrypt).post(encrypt)),
        )
        .route(
            &format!("/v1/{mount}/decrypt/{{key}}"),
            writes(put(decrypt).post(decrypt)),
        )
        .route(&format!("/v1/{mount}/keys/{{key}}"), writes(get(read_key)))
        .route(
            "/v1/auth/token/renew-self",
            writes(put(renew_self).post(renew_self)),
        )
        .route(
            "/v1/auth/token/lookup-self",
            writes(get(lookup_self).post(lookup_self)),
        )
        // A route layer runs only for matched routes and methods, so 404 and
        // 405 stay about the path, and a token is checked before any handler.
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate));
    Router::new()
        .route("/v1/sys/health", writes(get(health)))
        .merge(needs_token)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(api)
}

async fn authenticate(State(api): State<Arc<TransitApi>>, mut request: Request, next: Next) -> Response {
    let peer = Peer::of(request.extensions().get::<TlsConnectInfo>());
    // Before the token: a throttled peer learns nothing about it, right or wrong.
    let attempt = api.throttle.attempt(&peer, || {
        api.tokens.current().authenticate_headers(request.headers())
    });
    let grant = match attempt {
        Ok(grant) => grant,
        Err(throttled) => {
            if let Some(metrics) = api.broker.metrics() {
                metrics.transit_throttled();
            }
            if throttled.first_in_window {
                let limits = api.throttle.limits();
                tracing::warn!(
                    %peer,
                    path = request.uri().path(),
                    max_failures = limits.max_failures,
                    window_secs = limits.window.as_secs(),
                    retry_after_secs = throttled.retry_after_secs(),
                    "transit requests from this peer refused with 429 until its window ends: too many \
                     failed token attempts (logged once per window)"
                );
            }
            return TransitError::Throttled {
                retry_after_secs: throttled.retry_after_secs(),
            }
            .into_response();
        }
    };
    match grant {
        Some(grant) => {
            let caller = grant.caller();
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            request.extensions_mut().insert(grant);
            let response = next.run(request).await;
            tracing::debug!(%caller, %method, path, status = response.status().as_u16(), "transit request");
            response
        }
        None => {
            tracing::info!(
                %peer,
                path = request.uri().path(),
                "transit request refused: no token, or not a configured token"
            );
            // Vault's own wording; not routed through `TransitError`'s log.
            (
                StatusCode::FORBIDDEN,
                Json(json!({ "errors": [TransitError::Unauthenticated.to_string()] })),
            )
                .into_response()
        }
    }
}

/// The key named in the path; the caller's token must be scoped to it.
fn scoped_key(
    grant: &TokenGrant,
    operation: &'static str,
    key: Result<Path<String>, PathRejection>,
) -> Result<String, TransitError> {
    let Path(key) = key.map_err(|rejection| TransitError::InvalidRequest {
        field: "key name in the path".into(),
        reason: rejection.body_text(),
    })?;
    grant.permit(operation, &key).map_err(TransitError::OutOfScope)?;
    Ok(key)
}

async fn encrypt(
    State(api): State<Arc<TransitApi>>,
    Extension(grant): Extension<Arc<TokenGrant>>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, TransitError> {
    let key = scoped_key(&grant, "encrypt", key)?;
    let body = api.body(body)?;
    let request = EncryptRequest::parse(&body);
    // The body holds the plaintext in base64: wipe it when we hold the only copy.
    if let Ok(mut buffer) = body.try_into_mut() {
        buffer.as_mut().zeroize();
    }
    let request = request?;
    let wrapped = api
        .broker
        .wrap(&grant.call(), &key, request.plaintext, &request.aad)
        .await?;
    Ok(Json(json!({
        "data": {
            "ciphertext": VaultCiphertext::format(wrapped.key_version, &wrapped.blob),
            "key_version": wrapped.key_version,
        }
    })))
}

async fn decrypt(
    State(api): State<Arc<TransitApi>>,
    Extension(grant): Extension<Arc<TokenGrant>>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, TransitError> {
    let key = scoped_key(&grant, "decrypt", key)?;
    let request = DecryptRequest::parse(&api.body(body)?)?;
    // Naming the key makes the broker refuse a blob sealed under another key.
    let opened = api
        .broker
        .unwrap(&grant.call(), &key, &request.ciphertext.blob, &request.aad)
        .await?;
    // The prefix is not authenticated; a mismatch means it was edited.
    if opened.key_version != request.ciphertext.version {
        return Err(TransitError::InvalidRequest {
            field: "ciphertext".into(),
            reason: format!(
                "says v{} but the blob is sealed under version {}",
                request.ciphertext.version, opened.key_version
            ),
        });
    }
    let plaintext = zeroize::Zeroizing::new(STANDARD.encode(opened.plaintext.expose()));
    Ok(Json(json!({ "data": { "plaintext": plaintext.as_str() } })))
}

async fn read_key(
    State(api): State<Arc<TransitApi>>,
    Extension(grant): Extension<Arc<TokenGrant>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, TransitError> {
    let key = scoped_key(&grant, "read", key)?;
    let info = api.broker.get_key(&grant.call(), &key)?;
    let versions: serde_json::Map<String, Value> = info
        .versions
        .iter()
        .map(|(version, _)| (version.to_string(), json!(api.started_unix)))
        .collect();
    Ok(Json(json!({
        "data": {
            "name": info.name,
            // The payload cipher of every envelope, whatever seals the DEK.
            "type": "aes256-gcm96",
            "latest_version": info.primary_version,
            "min_available_version": 0,
            "min_decryption_version": info.min_decryption_version,
            "min_encryption_version": 0,
            "deletion_allowed": false,
            "exportable": false,
            "allow_plaintext_backup": false,
            "derived": false,
            "supports_encryption": true,
            "supports_decryption": true,
            "supports_derivation": false,
            "supports_signing": false,
            "keys": versions,
        }
    })))
}

/// Our tokens do not expire. A non-renewable answer makes the transit seal
/// stop its renewal loop instead of failing.
async fn renew_self(Extension(grant): Extension<Arc<TokenGrant>>) -> Json<Value> {
    Json(json!({
        "auth": {
            "client_token": "",
            "accessor": "",
            "policies": policies(&grant),
            "token_policies": policies(&grant),
            "metadata": { "identity": grant.identity },
            "renewable": false,
            "lease_duration": 0,
        }
    }))
}

/// Who the token is; never the token itself.
async fn lookup_self(Extension(grant): Extension<Arc<TokenGrant>>) -> Json<Value> {
    let keys: Vec<&str> = grant.keys.iter().map(String::as_str).collect();
    Json(json!({
        "data": {
            "display_name": grant.identity,
            "policies": policies(&grant),
            "renewable": false,
            "ttl": 0,
            "expire_time": null,
            "meta": { "keys": keys.join(",") },
        }
    }))
}

fn policies(_grant: &TokenGrant) -> Vec<&'static str> {
    vec!["sealbroker-transit"]
}

async fn health() -> Json<Value> {
    Json(json!({
        "initialized": true,
        "sealed": false,
        "standby": false,
        "version": concat!("sealbroker ", env!("CARGO_PKG_VERSION")),
    }))
}

async fn no_route(uri: Uri) -> TransitError {
    TransitError::NoRoute {
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> TransitError {
    TransitError::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}

#[cfg(test)]
mod tests;
