//! Failed token attempts, counted per peer: a peer that fails too often
//! within a window is refused (HTTP 429) without its token being checked
//! until that window ends.
//!
//! A window opens at a peer's first failure and lasts [`ThrottleLimits::window`].
//! Its [`ThrottleLimits::max_failures`]th failure throttles the peer for the
//! rest of it. Successes neither reset the count nor lift a throttle: a caller
//! holding one valid token must not earn more guesses at another. The check,
//! the token comparison and the count happen under one lock
//! ([`FailureThrottle::attempt`]), so concurrent requests cannot overshoot.
//!
//! The table is bounded ([`ThrottleLimits::max_peers`]): when it is full, a
//! new peer's failure first drops windows that have ended, then the window
//! that ends soonest. A flood of distinct addresses costs a fixed amount of
//! memory; each address still gets only its own few guesses per window.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::tls::TlsConnectInfo;

/// How many failures, over how long, from how many peers at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// The failure that throttles a peer, counted within one window.
    pub max_failures: u32,
    /// How long a window lasts from a peer's first failure.
    pub window: Duration,
    /// The most peers the table tracks at once.
    pub max_peers: usize,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        ThrottleLimits {
            max_failures: 10,
            window: Duration::from_secs(60),
            max_peers: 4096,
        }
    }
}

/// Where the throttle reads the time, so tests can move it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to; for tests and fuzzing.
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    pub fn new() -> Self {
        ManualClock(Mutex::new(Instant::now()))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whom failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// An IPv4 address, or an IPv6 /64 (one host commonly holds a whole /64,
    /// so a single address would let it rotate through 2^64 budgets).
    Address(IpAddr),
    /// A request that reached the router without connection information
    /// (in-process callers only: every listener supplies it). All such
    /// requests share one budget rather than escape counting.
    Unidentified,
}

impl Peer {
    /// The peer of a request carrying `info`, as the transit listener adds it.
    pub fn of(info: Option<&TlsConnectInfo>) -> Peer {
        match info {
            Some(info) => Peer::from_ip(info.remote_addr.ip()),
            None => Peer::Unidentified,
        }
    }

    pub fn from_ip(ip: IpAddr) -> Peer {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Peer::Address(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Peer::Address(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Address(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Peer::Address(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Peer::Unidentified => f.write_str("an unidentified peer"),
        }
    }
}

/// A refusal: how long until the peer's window ends, and whether this is
/// the first refusal of that window (the one worth a log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    pub first_in_window: bool,
}

impl Throttled {
    /// `retry_after` in whole seconds, rounded up and at least 1, for a
    /// `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// One peer's current window.
struct Window {
    started: Instant,
    failures: u32,
    /// A throttled request of this window was logged.
    logged: bool,
}

/// Failed token attempts per peer, shared by every request of one transit
/// listener.
pub struct FailureThrottle {
    limits: ThrottleLimits,
    clock: Arc<dyn Clock>,
    peers: Mutex<HashMap<Peer, Window>>,
}

impl FailureThrottle {
    pub fn new(limits: ThrottleLimits, clock: Arc<dyn Clock>) -> Self {
        FailureThrottle {
            limits,
            clock,
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> ThrottleLimits {
        self.limits
    }

    fn ended(&self, window: &Window, now: Instant) -> bool {
        now.saturating_duration_since(window.started) >= self.limits.window
    }

    /// Runs `attempt` (a token check: `None` when it fails) unless `peer` is
    /// throttled, and counts a failure. The table stays locked throughout,
    /// so concurrent attempts from one peer cannot slip past the limit
    /// together; `attempt` must therefore be quick and must not block.
    pub fn attempt<T>(
        &self,
        peer: &Peer,
        attempt: impl FnOnce() -> Option<T>,
    ) -> Result<Option<T>, Throttled> {
        let now = self.clock.now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        self.check(&mut peers, peer, now)?;
        let outcome = attempt();
        if outcome.is_none() {
            self.record_failure(&mut peers, peer, now);
        }
        Ok(outcome)
    }

    /// Refuses `peer` while its window holds `max_failures` failures.
    fn check(&self, peers: &mut HashMap<Peer, Window>, peer: &Peer, now: Instant) -> Result<(), Throttled> {
        let Some(window) = peers.get_mut(peer) else {
            return Ok(());
        };
        if self.ended(window, now) {
            peers.remove(peer);
            return Ok(());
        }
        if window.failures < self.limits.max_failures {
            return Ok(());
        }
        let first_in_window = !window.logged;
        window.logged = true;
        Err(Throttled {
            retry_after: (window.started + self.limits.window).saturating_duration_since(now),
            first_in_window,
        })
    }

    /// Counts a failed attempt by `peer`.
    fn record_failure(&self, peers: &mut HashMap<Peer, Window>, peer: &Peer, now: Instant) {
        if !peers.contains_key(peer) && peers.len() >= self.limits.max_peers {
            peers.retain(|_, window| !self.ended(window, now));
            if peers.len() >= self.limits.max_peers {
                let soonest = peers
                    .iter()
                    .min_by_key(|(_, window)| window.started)
                    .map(|(peer, _)| peer.clone());
                if let Some(soonest) = soonest {
                    peers.remove(&soonest);
                }
            }
        }
        let window = peers.entry(peer.clone()).or_insert(Window {
            started: now,
            failures: 0,
            logged: false,
        });
        if self.ended(window, now) {
            *window = Window {
                started: now,
                failures: 0,
                logged: false,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    /// How many peers the table holds now.
    pub fn tracked_peers(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Default for FailureThrottle {
    fn default() -> Self {
        FailureThrottle::new(ThrottleLimits::default(), Arc::new(SystemClock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ThrottleLimits = ThrottleLimits {
        max_failures: 3,
        window: Duration::from_secs(60),
        max_peers: 4,
    };

    fn throttle() -> (FailureThrottle, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (FailureThrottle::new(LIMITS, clock.clone()), clock)
    }

    fn peer(last: u8) -> Peer {
        Peer::from_ip(IpAddr::from([192, 0, 2, last]))
    }

    impl FailureThrottle {
        /// A failed token check by `peer`, unless it is throttled.
        fn fail(&self, peer: &Peer) -> Result<(), Throttled> {
            self.attempt(peer, || None::<()>).map(|_| ())
        }

        /// A successful token check by `peer`, unless it is throttled.
        fn succeed(&self, peer: &Peer) -> Result<(), Throttled> {
            self.attempt(peer, || Some(())).map(|_| ())
        }
    }

    #[test]
    fn the_limit_th_failure_in_a_window_throttles_until_the_window_ends() {
        let (throttle, clock) = throttle();
        let p = peer(1);
        for _ in 0..LIMITS.max_failures - 1 {
            throttle.fail(&p).unwrap();
            clock.advance(Duration::from_secs(5));
            assert_eq!(throttle.succeed(&p), Ok(()));
        }
        throttle.fail(&p).unwrap();
        // 10 s into the window that opened at the first failure.
        let refused = throttle.succeed(&p).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(50));
        assert_eq!(refused.retry_after_secs(), 50);

        clock.advance(Duration::from_secs(49));
        assert_eq!(throttle.succeed(&p).unwrap_err().retry_after_secs(), 1);
        clock.advance(Duration::from_millis(999));
        assert_eq!(
            throttle.succeed(&p).unwrap_err().retry_after_secs(),
            1,
            "rounded up"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(throttle.succeed(&p), Ok(()), "the window has ended");
        assert_eq!(throttle.tracked_peers(), 0, "an ended window is dropped");
    }

    #[test]
    fn failures_spread_over_windows_never_throttle() {
        let (throttle, clock) = throttle();
        let p = peer(1);
        for _ in 0..10 {
            for _ in 0..LIMITS.max_failures - 1 {
                throttle.fail(&p).unwrap();
            }
            assert_eq!(throttle.succeed(&p), Ok(()));
            clock.advance(LIMITS.window);
        }
    }

    #[test]
    fn only_the_first_refusal_of_a_window_is_marked_for_logging() {
        let (throttle, clock) = throttle();
        let p = peer(1);
        for _ in 0..LIMITS.max_failures {
            throttle.fail(&p).unwrap();
        }
        assert!(throttle.succeed(&p).unwrap_err().first_in_window);
        for _ in 0..5 {
            assert!(!throttle.succeed(&p).unwrap_err().first_in_window);
        }
        // The next window logs again.
        clock.advance(LIMITS.window);
        for _ in 0..LIMITS.max_failures {
            throttle.fail(&p).unwrap();
        }
        assert!(throttle.succeed(&p).unwrap_err().first_in_window);
        assert!(!throttle.succeed(&p).unwrap_err().first_in_window);
    }

    #[test]
    fn concurrent_attempts_from_one_peer_never_exceed_the_limit() {
        let (throttle, _clock) = throttle();
        let throttle = Arc::new(throttle);
        let admitted: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let throttle = throttle.clone();
                    scope.spawn(move || (0..200).filter(|_| throttle.fail(&peer(1)).is_ok()).count())
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(admitted, LIMITS.max_failures as usize);
    }

    #[test]
    fn other_peers_are_unaffected() {
        let (throttle, _clock) = throttle();
        for _ in 0..LIMITS.max_failures {
            throttle.fail(&peer(1)).unwrap();
        }
        assert!(throttle.succeed(&peer(1)).is_err());
        assert_eq!(throttle.succeed(&peer(2)), Ok(()));
        assert_eq!(throttle.succeed(&Peer::Unidentified), Ok(()));
    }

    #[test]
    fn ipv6_peers_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Peer::from_ip(a), Peer::from_ip(b));
        assert_ne!(Peer::from_ip(a), Peer::from_ip(c));
        assert_eq!(Peer::from_ip(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Peer::from_ip(mapped), peer(7));
        assert_eq!(peer(7).to_string(), "192.0.2.7");
    }

    #[test]
    fn a_flood_of_peers_keeps_the_table_bounded() {
        let (throttle, clock) = throttle();
        for last in 0..=255u8 {
            throttle.fail(&peer(last)).unwrap();
            clock.advance(Duration::from_millis(10));
            assert!(throttle.tracked_peers() <= LIMITS.max_peers);
        }
        for high in 0..2000u32 {
            throttle
                .fail(&Peer::from_ip(IpAddr::from(Ipv6Addr::from(
                    u128::from(high) << 64,
                ))))
                .unwrap();
        }
        assert_eq!(throttle.tracked_peers(), LIMITS.max_peers);
    }

    #[test]
    fn a_full_table_drops_every_ended_window_before_evicting_a_live_one() {
        let (throttle, clock) = throttle();
        for last in 1..=3 {
            throttle.fail(&peer(last)).unwrap();
        }
        clock.advance(Duration::from_secs(30));
        for _ in 0..LIMITS.max_failures {
            throttle.fail(&peer(4)).unwrap();
        }
        assert_eq!(throttle.tracked_peers(), LIMITS.max_peers);
        // Peers 1 to 3's windows end; peer 4 is throttled for 30 s more.
        clock.advance(Duration::from_secs(30));
        throttle.fail(&peer(5)).unwrap();
        assert_eq!(throttle.tracked_peers(), 2, "peers 4 and 5 remain");
        assert_eq!(
            throttle.succeed(&peer(4)).unwrap_err().retry_after,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_full_table_of_live_windows_evicts_the_one_ending_soonest() {
        let (throttle, clock) = throttle();
        for last in 1..=4 {
            for _ in 0..LIMITS.max_failures {
                throttle.fail(&peer(last)).unwrap();
            }
            clock.advance(Duration::from_secs(1));
        }
        throttle.fail(&peer(5)).unwrap();
        assert_eq!(throttle.tracked_peers(), 4);
        assert_eq!(throttle.succeed(&peer(1)), Ok(()), "the oldest window made room");
        for last in 2..=4 {
            assert!(throttle.succeed(&peer(last)).is_err(), "peer {last}");
        }
    }
}
