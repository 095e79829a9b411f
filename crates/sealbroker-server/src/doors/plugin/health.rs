//! OpenBao's seal health check, answered from a cached probe.
//!
//! OpenBao checks an auto seal every `health_check_interval` (10 min by
//! default, 1 min while unhealthy) by encrypting `"Heartbeat <0-999>"` and
//! decrypting the answer. Sent to the backend, each check would be HSM or
//! KMS crypto (and a quota unit) that tells nothing the seal's real calls
//! have not already told. So each instance keeps the outcome of its last
//! real call or probe; a heartbeat is answered from it while it is fresh
//! ([`HEALTHY_FOR`] after a success, [`UNHEALTHY_FOR`] after a failure), and
//! only a stale outcome costs one real round trip, which refreshes it.
//!
//! A healthy answer is a heartbeat blob: the heartbeat text itself under
//! [`HEARTBEAT_MECHANISM`], which Decrypt answers from the cache again. The
//! text is OpenBao's public test value, and only that text is ever
//! answered this way, so the blob protects nothing and can open nothing else.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `KeyInfo.mechanism` of a heartbeat blob: no stock wrapper uses it.
pub const HEARTBEAT_MECHANISM: u64 = 0x5EA1_B0C4_4EA1_7000;

/// How long a success answers heartbeats before a real probe.
pub const HEALTHY_FOR: Duration = Duration::from_secs(60 * 60);

/// How long a failure answers heartbeats before a real probe (OpenBao
/// checks every minute while unhealthy, so recovery shows at its next check).
pub const UNHEALTHY_FOR: Duration = Duration::from_secs(30);

/// Whether `plaintext` is OpenBao's health check value, `"Heartbeat N"`
/// with N in 0..=999 (`fmt.Sprintf("Heartbeat %d", rand.Intn(1000))`).
pub fn is_heartbeat(plaintext: &[u8]) -> bool {
    plaintext.strip_prefix(b"Heartbeat ").is_some_and(|n| {
        !n.is_empty() && n.len() <= 3 && n.iter().all(u8::is_ascii_digit) && (n.len() == 1 || n[0] != b'0')
    })
}

/// The last outcome of a real call or probe of one instance.
#[derive(Default)]
pub struct HealthCache {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl HealthCache {
    /// Records a real call's outcome (a failure's reason is what later
    /// heartbeats report).
    pub fn record(&self, outcome: Result<(), String>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), outcome));
    }

    /// The cached outcome while it is fresh; `None` when a probe is due.
    pub fn fresh(&self) -> Option<Result<(), String>> {
        self.fresh_at(Instant::now())
    }

    /// [`HealthCache::fresh`] as seen at `now`.
    fn fresh_at(&self, now: Instant) -> Option<Result<(), String>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (at, outcome) = last.as_ref()?;
        let ttl = if outcome.is_ok() {
            HEALTHY_FOR
        } else {
            UNHEALTHY_FOR
        };
        (now.saturating_duration_since(*at) < ttl).then(|| outcome.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_openbaos_heartbeat_values_are_heartbeats() {
        for yes in ["Heartbeat 0", "Heartbeat 7", "Heartbeat 42", "Heartbeat 999"] {
            assert!(is_heartbeat(yes.as_bytes()), "{yes}");
        }
        for no in [
            "Heartbeat ",
            "Heartbeat 1000",
            "Heartbeat 07",
            "Heartbeat -1",
            "heartbeat 1",
            "Heartbeat 1 ",
            "a",
            "",
        ] {
            assert!(!is_heartbeat(no.as_bytes()), "{no:?}");
        }
    }

    #[test]
    fn outcomes_stay_fresh_for_their_ttl() {
        let cache = HealthCache::default();
        assert_eq!(cache.fresh(), None);
        let start = Instant::now();
        cache.record(Ok(()));
        let later = |d: Duration| start + d + Duration::from_millis(100);
        assert_eq!(cache.fresh(), Some(Ok(())));
        assert_eq!(
            cache.fresh_at(later(HEALTHY_FOR - Duration::from_secs(1))),
            Some(Ok(()))
        );
        assert_eq!(cache.fresh_at(later(HEALTHY_FOR)), None);
        let start = Instant::now();
        cache.record(Err("HSM gone".into()));
        assert_eq!(cache.fresh(), Some(Err("HSM gone".into())));
        assert_eq!(
            cache.fresh_at(start + UNHEALTHY_FOR + Duration::from_millis(100)),
            None
        );
    }
}
