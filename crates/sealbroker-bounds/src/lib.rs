//! Connection bounds for a listener, shared by every sealbroker door and the
//! operator's admission webhook.
//!
//! A listener holds at most `max_connections` ([`ConnLimits`]), counting
//! connections still in their handshake and established ones. When it is
//! full, the oldest connection still in its handshake is cancelled to make
//! room, so a flood of idle or half-open sockets cannot lock out a client
//! that completes its handshake; when every slot holds an established
//! connection, the new one is refused. [`IdleTimeout`] closes an
//! established connection that sends nothing for `idle`. Every drop is
//! reported to [`ConnLimits::on_limit`] and logged, at most once a second
//! per listener.
//!
//! ```text
//! accept ──▶ Slots::admit ──▶ Slots::start_handshake ──▶ Handshake::established ──▶ SlotGuard
//!              (evicts the        (a queue entry; dropped     (the slot is held until
//!               oldest handshake)  early, it frees the slot)   the connection closes)
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Why a connection was dropped by a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// Still in its handshake when the listener was full: closed for a newer one.
    Evicted,
    /// Arrived while every slot held an established connection.
    Refused,
    /// Did not finish its handshake in time.
    HandshakeTimeout,
    /// Sent nothing for the idle timeout.
    Idle,
}

impl LimitHit {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::Evicted => "evicted",
            LimitHit::Refused => "refused",
            LimitHit::HandshakeTimeout => "handshake_timeout",
            LimitHit::Idle => "idle",
        }
    }
}

/// Counts a hit: `(listener, why)`.
pub type OnLimit = Arc<dyn Fn(&'static str, LimitHit) + Send + Sync>;

/// The bounds of one listener.
#[derive(Clone)]
pub struct ConnLimits {
    /// Connections held at once, in their handshake or established.
    pub max_connections: usize,
    /// How long a client may take to finish its handshake.
    pub handshake: Duration,
    /// How long an established connection may send nothing.
    pub idle: Duration,
    pub on_limit: Option<OnLimit>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 256,
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            on_limit: None,
        }
    }
}

/// One listener's connections: a count of established ones and a queue of
/// those still in their handshake, oldest first.
pub struct Slots {
    established: AtomicUsize,
    handshaking: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
    /// The second (counted from `started`, plus one) a hit was last logged.
    last_logged: AtomicU64,
    started: Instant,
    limits: ConnLimits,
    what: &'static str,
}

impl Slots {
    /// The slots of the listener named `what` (in logs and metrics).
    pub fn new(what: &'static str, limits: ConnLimits) -> Arc<Slots> {
        Arc::new(Slots {
            established: AtomicUsize::new(0),
            handshaking: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
            last_logged: AtomicU64::new(0),
            started: Instant::now(),
            limits,
            what,
        })
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections established now (not counting handshakes).
    pub fn established(&self) -> usize {
        self.established.load(Ordering::SeqCst)
    }

    /// Reports a dropped connection: counted, and logged at most once a second.
    pub fn hit(&self, hit: LimitHit, peer: &str) {
        if let Some(count) = &self.limits.on_limit {
            count(self.what, hit);
        }
        let now = self.started.elapsed().as_secs() + 1;
        if self.last_logged.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                listener = self.what,
                peer,
                reason = hit.as_str(),
                max_connections = self.limits.max_connections,
                "connection dropped by a listener bound (logged at most once a second)"
            );
        }
    }

    /// Makes room for one more connection, cancelling the oldest handshake
    /// when full; false (and counted) when every slot is established.
    pub fn admit(&self, peer: &str) -> bool {
        let mut handshaking = self.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        if self.established() + handshaking.len() < self.limits.max_connections {
            return true;
        }
        match handshaking.pop_front() {
            Some((_, cancel)) => {
                cancel.notify_one();
                drop(handshaking);
                self.hit(LimitHit::Evicted, peer);
                true
            }
            None => {
                drop(handshaking);
                self.hit(LimitHit::Refused, peer);
                false
            }
        }
    }

    /// A connection entering its handshake; it holds a slot until it is
    /// established or dropped.
    pub fn start_handshake(self: &Arc<Self>) -> Handshake {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(Notify::new());
        self.handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((id, cancel.clone()));
        Handshake {
            slots: self.clone(),
            id,
            cancel,
        }
    }

    /// A connection established without a handshake (plaintext).
    pub fn establish(self: &Arc<Self>) -> SlotGuard {
        self.established.fetch_add(1, Ordering::SeqCst);
        SlotGuard(self.clone())
    }

    fn forget(&self, id: u64) {
        self.handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(other, _)| *other != id);
    }
}

/// A connection in its handshake. Dropping it frees its slot.
pub struct Handshake {
    slots: Arc<Slots>,
    id: u64,
    cancel: Arc<Notify>,
}

impl Handshake {
    /// Resolves when [`Slots::admit`] evicted this handshake for a newer one.
    pub async fn evicted(&self) {
        self.cancel.notified().await;
    }

    /// Runs `handshake` within the handshake timeout, unless evicted first;
    /// `None` when it timed out (counted) or was evicted (counted by `admit`).
    pub async fn run<T>(&self, handshake: impl Future<Output = T>, peer: &str) -> Option<T> {
        tokio::select! {
            done = tokio::time::timeout(self.slots.limits.handshake, handshake) => match done {
                Ok(done) => Some(done),
                Err(_) => {
                    self.slots.hit(LimitHit::HandshakeTimeout, peer);
                    None
                }
            },
            _ = self.evicted() => None,
        }
    }

    /// The handshake finished: the connection keeps its slot until closed.
    pub fn established(self) -> SlotGuard {
        self.slots.forget(self.id);
        self.slots.establish()
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.slots.forget(self.id);
    }
}

/// An established connection's slot, given back when it closes.
pub struct SlotGuard(Arc<Slots>);

impl SlotGuard {
    pub fn slots(&self) -> &Arc<Slots> {
        &self.0
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.established.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream that fails its reads once the peer has sent nothing for the
/// idle timeout (counted as [`LimitHit::Idle`]), and holds its slot.
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    slot: SlotGuard,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, slot: SlotGuard) -> Self {
        let idle = slot.slots().limits.idle;
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            slot,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let next = Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                this.slot.slots().hit(LimitHit::Idle, "an idle peer");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent nothing for the idle timeout",
                )))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn counted(max: usize) -> (Arc<Slots>, Arc<Mutex<Vec<LimitHit>>>) {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        let limits = ConnLimits {
            max_connections: max,
            idle: Duration::from_secs(5),
            on_limit: Some(Arc::new(move |_, hit| seen.lock().unwrap().push(hit))),
            ..ConnLimits::default()
        };
        (Slots::new("test", limits), hits)
    }

    #[tokio::test]
    async fn a_full_listener_evicts_its_oldest_handshake_for_a_new_connection() {
        let (slots, hits) = counted(2);
        assert!(slots.admit("a"));
        let first = slots.start_handshake();
        assert!(slots.admit("b"));
        let second = slots.start_handshake();
        // Full: the third connection evicts the first handshake.
        assert!(slots.admit("c"));
        tokio::time::timeout(Duration::from_secs(5), first.evicted())
            .await
            .unwrap();
        drop(first);
        let _third = slots.start_handshake();
        assert_eq!(*hits.lock().unwrap(), [LimitHit::Evicted]);
        // The second finishes its handshake and keeps its slot.
        let _kept = second.established();
        assert_eq!(slots.established(), 1);
    }

    #[test]
    fn a_listener_full_of_established_connections_refuses_the_next() {
        let (slots, hits) = counted(2);
        let a = slots.establish();
        let _b = slots.establish();
        assert!(!slots.admit("c"));
        assert_eq!(*hits.lock().unwrap(), [LimitHit::Refused]);
        drop(a);
        assert!(slots.admit("c"), "a closed connection frees its slot");
    }

    #[tokio::test]
    async fn a_dropped_handshake_frees_its_slot() {
        let (slots, _) = counted(1);
        assert!(slots.admit("a"));
        drop(slots.start_handshake());
        let established = slots.establish();
        assert!(!slots.admit("b"));
        drop(established);
        assert!(slots.admit("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handshake_times_out_and_is_counted() {
        let (slots, hits) = counted(4);
        let handshake = slots.start_handshake();
        let outcome = handshake.run(std::future::pending::<()>(), "slow").await;
        assert!(outcome.is_none());
        assert_eq!(*hits.lock().unwrap(), [LimitHit::HandshakeTimeout]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_and_a_talking_one_is_not() {
        let (slots, hits) = counted(4);
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, slots.establish());
        let mut client = client;
        let reads = Arc::new(AtomicUsize::new(0));
        // Bytes every 4 s keep a 5 s idle timeout from firing.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.unwrap();
            reads.fetch_add(1, Ordering::SeqCst);
        }
        assert!(hits.lock().unwrap().is_empty());
        // Then silence.
        let mut byte = [0u8; 1];
        let err = server.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(*hits.lock().unwrap(), [LimitHit::Idle]);
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }
}
