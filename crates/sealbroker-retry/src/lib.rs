//! Bounded retries with full-jitter exponential backoff, honouring a
//! server-sent `Retry-After`, for the cloud backends (AWS KMS, Cloud KMS, Key
//! Vault). Each backend switches its SDK's own retry loop off, so this is the
//! only one: one place decides how long we wait and when we give up.
//!
//! A backend classifies each failed attempt as [`Attempt::Fatal`] or
//! [`Attempt::Retryable`] and calls [`RetryConfig::run`]; its config embeds
//! [`RetryConfig`] as `[backends.NAME.retry]`.

use std::future::Future;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

fn default_max_retries() -> u32 {
    4
}
fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    5_000
}

/// `[backends.NAME.retry]`: how throttled or transiently failing calls are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt (0 disables retries).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Upper bound of the first backoff; it doubles with each retry.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Cap on any single wait, including one asked for by `Retry-After`.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: default_max_retries(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

/// What one failed attempt says about trying again.
#[derive(Debug)]
pub enum Attempt<E> {
    /// Give up now with this error.
    Fatal(E),
    /// Worth another try, after at least `retry_after` when the server said so.
    Retryable { error: E, retry_after: Option<Duration> },
}

impl RetryConfig {
    /// The wait before retry number `retry` (0-based): a uniformly random
    /// duration up to `min(max, initial * 2^retry)`, or the server's
    /// `Retry-After` (capped) when that is longer.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let max = Duration::from_millis(self.max_backoff_ms);
        let ceiling =
            Duration::from_millis(self.initial_backoff_ms.saturating_mul(1u64 << retry.min(20))).min(max);
        let jittered = ceiling.mul_f64(random_unit());
        match retry_after {
            Some(after) if after > jittered => after.min(max),
            _ => jittered,
        }
    }

    /// Runs `op` until it succeeds, fails fatally, or the retries run out; the
    /// last error is returned as it was. `on_retry` sees each error that is
    /// about to be retried.
    pub async fn run<T, E, F, Fut>(&self, mut op: F, on_retry: impl Fn(&E)) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt<E>>>,
    {
        let mut retry = 0;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(Attempt::Fatal(error)) => return Err(error),
                Err(Attempt::Retryable { error, retry_after }) => {
                    if retry >= self.max_retries {
                        return Err(error);
                    }
                    on_retry(&error);
                    let wait = self.backoff(retry, retry_after);
                    tracing::debug!(
                        retry,
                        wait_ms = wait.as_millis() as u64,
                        "retrying a backend call"
                    );
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
            }
        }
    }
}

/// A uniform value in [0, 1) for jitter. Jitter needs no cryptographic
/// quality, but the system RNG is already at hand and never blocks.
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a `Retry-After` header given in seconds (the HTTP-date form is not
/// used by the cloud KMS services and is ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_the_doubling_ceiling_and_the_cap() {
        let config = RetryConfig {
            max_retries: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        };
        for retry in 0..10 {
            let wait = config.backoff(retry, None);
            let ceiling = Duration::from_millis((100u64 << retry).min(1_000));
            assert!(wait <= ceiling, "retry {retry}: {wait:?} > {ceiling:?}");
        }
    }

    #[test]
    fn backoff_honours_retry_after_up_to_the_cap() {
        let config = RetryConfig {
            max_retries: 3,
            initial_backoff_ms: 1,
            max_backoff_ms: 3_000,
        };
        assert_eq!(
            config.backoff(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            config.backoff(0, Some(Duration::from_secs(60))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn retry_after_parses_seconds_only() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[tokio::test]
    async fn run_gives_up_after_max_retries_with_the_last_error() {
        let config = RetryConfig {
            max_retries: 2,
            initial_backoff_ms: 1,
            max_backoff_ms: 1,
        };
        let mut calls = 0;
        let retried = std::cell::RefCell::new(Vec::new());
        let result: Result<(), u32> = config
            .run(
                || {
                    calls += 1;
                    let n = calls;
                    async move {
                        Err(Attempt::Retryable {
                            error: n,
                            retry_after: None,
                        })
                    }
                },
                |e| retried.borrow_mut().push(*e),
            )
            .await;
        assert_eq!(result, Err(3));
        assert_eq!(calls, 3);
        assert_eq!(
            retried.into_inner(),
            vec![1, 2],
            "the last error is returned, not retried"
        );
    }
}
