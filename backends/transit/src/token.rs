//! The upstream token: where it comes from, and keeping it alive.
//!
//! The token is read from `token_file` or `token_env` at config time and
//! again whenever the upstream refuses it (so a file rotated by an agent takes
//! effect). It lives only as a sensitive header value over zeroizing memory;
//! it is never `Debug`, never logged, and never part of an error message.
//!
//! Renewal: a background task asks `lookup-self`; when the token is renewable
//! with a TTL it calls `renew-self` at 2/3 of the TTL, again and again. A
//! token that never expires needs nothing; a non-renewable one (or one at its
//! maximum TTL) is left to expire with a warning, after which operations fail
//! with PermissionDenied until `token_file` holds a new token.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderValue;
use sealbroker_core::{BackendError, BackendErrorKind};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::ConfigError;
use crate::client::{Call, ClientInner};

/// Where the token comes from. Names a file or a variable, never the value.
#[derive(Debug, Clone)]
pub enum TokenOrigin {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for TokenOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenOrigin::File(path) => write!(f, "token_file {}", path.display()),
            TokenOrigin::Env(var) => write!(f, "token_env {var}"),
        }
    }
}

/// The current token, as a sensitive `X-Vault-Token` value.
pub(crate) struct TokenSource {
    origin: TokenOrigin,
    current: Mutex<HeaderValue>,
}

impl TokenSource {
    pub(crate) fn load(origin: TokenOrigin) -> Result<Self, ConfigError> {
        let field = match origin {
            TokenOrigin::File(_) => "token_file",
            TokenOrigin::Env(_) => "token_env",
        };
        let header =
            read(&origin).map_err(|reason| ConfigError::new(field, format!("{origin}: {reason}")))?;
        Ok(TokenSource {
            origin,
            current: Mutex::new(header),
        })
    }

    pub(crate) fn origin(&self) -> &TokenOrigin {
        &self.origin
    }

    pub(crate) fn header(&self) -> HeaderValue {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the token again; true when it changed.
    pub(crate) fn reload(&self) -> bool {
        match read(&self.origin) {
            Ok(fresh) => {
                let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
                if current.as_bytes() == fresh.as_bytes() {
                    false
                } else {
                    *current = fresh;
                    true
                }
            }
            Err(reason) => {
                tracing::warn!(token = %self.origin, %reason, "cannot read the upstream token again");
                false
            }
        }
    }
}

fn read(origin: &TokenOrigin) -> Result<HeaderValue, String> {
    let raw: Zeroizing<Vec<u8>> = match origin {
        TokenOrigin::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                return Err(format!(
                    "is readable by everyone (mode {mode:04o}); chmod 600 (or 640 for a group-shared agent sink)"
                ));
            }
            Zeroizing::new(std::fs::read(path).map_err(|e| e.to_string())?)
        }
        TokenOrigin::Env(var) => match std::env::var_os(var) {
            Some(value) => Zeroizing::new(value.into_encoded_bytes()),
            None => return Err("the variable is not set".into()),
        },
    };
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    if !trimmed.iter().all(|b| b.is_ascii_graphic()) {
        return Err("holds characters no OpenBao token has (is it the right file?)".into());
    }
    let owned = Zeroizing::new(trimmed.to_vec());
    let mut header = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(owned))
        .map_err(|_| "is not a valid header value".to_owned())?;
    header.set_sensitive(true);
    Ok(header)
}

/// What `lookup-self` says, minus the token itself (which it echoes).
#[derive(Debug, Deserialize)]
struct Lookup {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    creation_ttl: u64,
    /// `null` for tokens that never expire (root, or no TTL).
    #[serde(default)]
    expire_time: Option<String>,
}

#[derive(Deserialize)]
struct RenewReply {
    auth: Option<RenewAuth>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
}

/// `auth` of `renew-self`, minus `client_token`.
#[derive(Deserialize)]
struct RenewAuth {
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Serialize)]
struct RenewRequest {
    increment: u64,
}

/// The token's lifetime as last seen.
#[derive(Debug, Clone, Copy)]
struct Lifetime {
    /// False for tokens that never expire.
    expires: bool,
    ttl: Duration,
    renewable: bool,
    increment: u64,
    seen: Instant,
}

impl ClientInner {
    async fn lookup_self(self: &Arc<Self>) -> Result<Lifetime, BackendError> {
        let what = "token lookup-self";
        let reply = self
            .execute(Call {
                method: Method::GET,
                path: "auth/token/lookup-self",
                what,
                body: None,
            })
            .await?;
        let lookup: Lookup = reply.data(self, what, false)?;
        Ok(Lifetime {
            expires: lookup.expire_time.is_some() || lookup.ttl > 0,
            ttl: Duration::from_secs(lookup.ttl),
            renewable: lookup.renewable,
            increment: lookup.creation_ttl,
            seen: Instant::now(),
        })
    }

    async fn renew_self(self: &Arc<Self>, increment: u64) -> Result<(Lifetime, Vec<String>), BackendError> {
        let what = "token renew-self";
        let body = serde_json::to_vec(&RenewRequest { increment })
            .map_err(|e| BackendError::internal(format!("cannot encode the renewal: {e}")))?;
        let reply = self
            .execute(Call {
                method: Method::POST,
                path: "auth/token/renew-self",
                what,
                body: Some(body.into()),
            })
            .await?;
        if !reply.status.is_success() {
            return Err(self.status_error(reply.status, &reply.errors(), what, false));
        }
        let renewed: RenewReply = reply.json(self, what)?;
        let auth = renewed
            .auth
            .ok_or_else(|| BackendError::internal(format!("{what}: the answer has no auth")))?;
        Ok((
            Lifetime {
                expires: true,
                ttl: Duration::from_secs(auth.lease_duration),
                renewable: auth.renewable,
                increment,
                seen: Instant::now(),
            },
            renewed.warnings.unwrap_or_default(),
        ))
    }
}

/// Sleeps for `duration` (forever when `None`); true when woken early
/// because the token changed or the client is gone.
async fn pause(wake: &Notify, duration: Option<Duration>) -> bool {
    match duration {
        Some(duration) => tokio::select! {
            _ = tokio::time::sleep(duration) => false,
            _ = wake.notified() => true,
        },
        None => {
            wake.notified().await;
            true
        }
    }
}

/// Keeps the token alive while any clone of the client exists.
pub(crate) async fn renewal_loop(client: Weak<ClientInner>, wake: Arc<Notify>) {
    const MIN_PAUSE: Duration = Duration::from_millis(200);
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    /// How often an expired token file is checked for a replacement.
    const EXPIRED_POLL: Duration = Duration::from_secs(10);
    let mut backoff = Duration::from_secs(1);
    let mut expires: Option<Instant> = None;

    'lookup: loop {
        let Some(inner) = client.upgrade() else { return };
        let address = inner.address.clone();
        let origin = inner.token.origin().to_string();
        let looked_up = inner.lookup_self().await;
        drop(inner);
        let mut life = match looked_up {
            Ok(life) => {
                backoff = Duration::from_secs(1);
                life
            }
            Err(error) => {
                // A rotated token file may fix a refusal.
                if error.kind == BackendErrorKind::PermissionDenied
                    && let Some(inner) = client.upgrade()
                    && inner.token.reload()
                {
                    continue 'lookup;
                }
                let left = expires.map(|at| at.saturating_duration_since(Instant::now()));
                tracing::warn!(%address, token = %origin, %error, "cannot look up the upstream token; will retry");
                let wait = left.map_or(backoff, |left| (left / 3).clamp(Duration::from_secs(1), backoff));
                pause(&wake, Some(wait)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue 'lookup;
            }
        };

        loop {
            expires = life.expires.then(|| life.seen + life.ttl);
            if !life.expires {
                tracing::debug!(%address, token = %origin, "the upstream token does not expire; nothing to renew");
                pause(&wake, None).await;
                continue 'lookup;
            }
            let left = (life.seen + life.ttl).saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    %address,
                    token = %origin,
                    "the upstream token has expired; operations are refused until a new token is provided"
                );
                // Wait for an agent to replace the file (a refused operation
                // also reads it again, and wakes us).
                loop {
                    if pause(&wake, Some(EXPIRED_POLL)).await {
                        continue 'lookup;
                    }
                    let Some(inner) = client.upgrade() else { return };
                    if inner.token.reload() {
                        continue 'lookup;
                    }
                }
            }
            if !life.renewable {
                tracing::warn!(
                    %address,
                    token = %origin,
                    ttl_secs = left.as_secs(),
                    "the upstream token cannot be renewed; it will expire and operations will then be refused"
                );
                if pause(&wake, Some(left)).await {
                    continue 'lookup;
                }
                life.ttl = Duration::ZERO;
                life.seen = Instant::now();
                continue;
            }
            let due = (life.ttl * 2 / 3).max(MIN_PAUSE);
            if pause(&wake, Some(due.saturating_sub(life.seen.elapsed()))).await {
                continue 'lookup;
            }
            let Some(inner) = client.upgrade() else { return };
            let renewed = inner.renew_self(life.increment).await;
            drop(inner);
            match renewed {
                Ok((fresh, warnings)) => {
                    if fresh.ttl < life.ttl {
                        tracing::warn!(
                            %address,
                            token = %origin,
                            ttl_secs = fresh.ttl.as_secs(),
                            warnings = %warnings.join("; "),
                            "the upstream token was renewed for less than before (max TTL reached?)"
                        );
                    } else {
                        tracing::debug!(%address, token = %origin, ttl_secs = fresh.ttl.as_secs(), "renewed the upstream token");
                    }
                    backoff = Duration::from_secs(1);
                    life = fresh;
                }
                // OpenBao answers 500 here; it is final, not a passing outage.
                Err(error) if error.message.contains("past the max TTL") => {
                    tracing::warn!(%address, token = %origin, "the upstream token reached its maximum TTL and cannot be renewed again");
                    life.renewable = false;
                }
                Err(error) => {
                    tracing::warn!(%address, token = %origin, %error, "cannot renew the upstream token; will retry");
                    let left = expires.map_or(backoff, |at| at.saturating_duration_since(Instant::now()));
                    pause(&wake, Some((left / 3).clamp(MIN_PAUSE, backoff))).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue 'lookup;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(content: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn reads_and_trims_a_token_file() {
        let file = file_with(b"s.abcdef\n", 0o600);
        let source = TokenSource::load(TokenOrigin::File(file.path().into())).unwrap();
        assert_eq!(source.header().as_bytes(), b"s.abcdef");
        assert!(source.header().is_sensitive());
    }

    #[test]
    fn reload_reports_a_change_only_when_the_file_changed() {
        let file = file_with(b"s.one", 0o600);
        let source = TokenSource::load(TokenOrigin::File(file.path().into())).unwrap();
        assert!(!source.reload());
        std::fs::write(file.path(), b"s.two\n").unwrap();
        assert!(source.reload());
        assert_eq!(source.header().as_bytes(), b"s.two");
    }

    #[test]
    fn refuses_world_readable_empty_and_binary_files_without_quoting_them() {
        let secret = b"s.topsecret";
        let world = file_with(secret, 0o644);
        let e = TokenSource::load(TokenOrigin::File(world.path().into()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");

        let empty = file_with(b"\n", 0o600);
        let e = TokenSource::load(TokenOrigin::File(empty.path().into()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("is empty"), "{e}");

        let binary = file_with(b"s.top\x00secret", 0o600);
        let e = TokenSource::load(TokenOrigin::File(binary.path().into()))
            .err()
            .unwrap();
        assert_eq!(e.path, "token_file");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn names_an_unset_variable() {
        let e = TokenSource::load(TokenOrigin::Env("SEALBROKER_TRANSIT_TEST_UNSET_VAR".into()))
            .err()
            .unwrap();
        assert_eq!(e.path, "token_env");
        assert!(
            e.to_string()
                .contains("SEALBROKER_TRANSIT_TEST_UNSET_VAR is not set")
                || e.to_string().contains("not set")
        );
    }
}
