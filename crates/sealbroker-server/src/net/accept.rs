//! The one accept loop. Every listener that speaks TLS or may (gRPC,
//! transit and metrics on TCP, the KMS plugin's unix socket) accepts here.
//! Each TLS handshake runs in its own task with a deadline, so one slow or
//! silent client cannot hold up others. Finished connections arrive on a
//! channel that tonic or hyper serve from, each carrying what its door
//! needs to know about the peer.
//!
//! Each listener holds at most `max_connections` ([`ConnLimits`]). When it
//! is full, the oldest connection still in its handshake is dropped to make
//! room (a flood of idle sockets cannot lock out a client that completes
//! its handshake); when every connection has finished its handshake, the
//! new one is refused. An established connection that sends nothing for
//! the idle timeout is closed. Every hit is counted and logged (at most
//! once a second per listener).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::net::tls::LiveTls;

/// Why a connection was dropped by a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// Still in its handshake when the listener was full: closed for a newer one.
    Evicted,
    /// Arrived while every slot held an established connection.
    Refused,
    /// Did not finish its TLS handshake in time.
    HandshakeTimeout,
    /// Sent nothing for the idle timeout.
    Idle,
}

impl LimitHit {
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
    /// How long a client may take to finish its TLS handshake.
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
struct Slots {
    established: AtomicUsize,
    handshaking: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
    /// The second (since start) a hit was last logged.
    last_logged: AtomicU64,
    started: Instant,
    limits: ConnLimits,
    what: &'static str,
}

impl Slots {
    fn hit(&self, hit: LimitHit, peer: &str) {
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

    /// Makes room for one more connection; false when there is none.
    fn admit(&self, peer: &str) -> bool {
        let mut handshaking = self.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        if self.established.load(Ordering::SeqCst) + handshaking.len() < self.limits.max_connections {
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

    fn start_handshake(&self) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(Notify::new());
        self.handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((id, cancel.clone()));
        (id, cancel)
    }

    /// The handshake `id` ended; with `established`, it holds a slot on.
    fn end_handshake(self: &Arc<Self>, id: u64, established: bool) -> Option<SlotGuard> {
        self.handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(other, _)| *other != id);
        established.then(|| self.establish())
    }

    fn establish(self: &Arc<Self>) -> SlotGuard {
        self.established.fetch_add(1, Ordering::SeqCst);
        SlotGuard(self.clone())
    }
}

/// An established connection's slot, given back when it closes.
struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.established.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A bound listener the loop can accept from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What the socket says about the peer before any TLS.
    type Peer: Send + 'static;
    fn next(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Peer)>> + Send;
    /// The peer, for log lines.
    fn describe(peer: &Self::Peer) -> String;
}

impl Listener for TcpListener {
    type Io = TcpStream;
    type Peer = SocketAddr;
    async fn next(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
    fn describe(peer: &SocketAddr) -> String {
        peer.to_string()
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;
    /// The peer's credentials (SO_PEERCRED), taken before the handshake.
    type Peer = UdsConnectInfo;
    async fn next(&self) -> io::Result<(UnixStream, UdsConnectInfo)> {
        let (stream, _) = self.accept().await?;
        let info = stream.connect_info();
        Ok((stream, info))
    }
    fn describe(peer: &UdsConnectInfo) -> String {
        match &peer.peer_cred {
            Some(cred) => format!("uid {}", cred.uid()),
            None => "a unix peer".to_owned(),
        }
    }
}

/// A stream after the handshake: TLS, or (where the profile allows it) plain.
pub enum Accepted<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

impl<S> Accepted<S> {
    /// The client's leaf certificate, when it presented one over TLS.
    pub fn client_certificate(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        match self {
            Accepted::Plain(_) => None,
            Accepted::Tls(tls) => tls.get_ref().1.peer_certificates()?.first(),
        }
    }
}

/// A served connection: the stream and what its door knows of the peer,
/// handed to every request as tonic's connect info. Holds its listener
/// slot, and closes itself when the peer sends nothing for the idle timeout.
pub struct Conn<S, I> {
    io: Accepted<S>,
    info: I,
    _slot: SlotGuard,
    idle: Duration,
    idle_deadline: Pin<Box<Sleep>>,
    slots: Arc<Slots>,
}

impl<S, I: Clone + Send + Sync + 'static> Connected for Conn<S, I> {
    type ConnectInfo = I;
    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, I: Unpin> AsyncRead for Conn<S, I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.io {
            Accepted::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let next = Instant::now() + this.idle;
                this.idle_deadline.as_mut().reset(next);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.idle_deadline.as_mut().poll(cx).is_ready() => {
                this.slots.hit(LimitHit::Idle, "an idle peer");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent nothing for the idle timeout",
                )))
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, I: Unpin> AsyncWrite for Conn<S, I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Accepted::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Accepted::Plain(s) => Pin::new(s).poll_flush(cx),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Accepted::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts on `listener` until `stop`, within `limits`: with `tls`, each
/// connection's TLS handshake (under the settings current when it was
/// accepted) runs in its own task; without, connections pass through
/// plain. `info` says what the door will know of the peer. `what` names the
/// listener in log lines and metrics.
pub async fn accept_loop<L, I>(
    listener: L,
    tls: Option<LiveTls>,
    info: fn(&Accepted<L::Io>, L::Peer) -> I,
    conns: mpsc::Sender<Conn<L::Io, I>>,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    limits: ConnLimits,
) where
    L: Listener,
    I: Send + 'static,
{
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    tokio::pin!(stopped);
    let slots = Arc::new(Slots {
        established: AtomicUsize::new(0),
        handshaking: Mutex::new(VecDeque::new()),
        next_id: AtomicU64::new(0),
        last_logged: AtomicU64::new(0),
        started: Instant::now(),
        limits,
        what,
    });
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.next() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !slots.admit(&L::describe(&peer)) {
            drop(stream);
            continue;
        }
        let conns = conns.clone();
        let acceptor = tls.as_ref().map(LiveTls::current);
        let slots = slots.clone();
        let idle = slots.limits.idle;
        let conn_slots = slots.clone();
        let served = move |io: Accepted<L::Io>, slot: SlotGuard, peer: L::Peer| Conn {
            info: info(&io, peer),
            io,
            _slot: slot,
            idle,
            idle_deadline: Box::pin(tokio::time::sleep(idle)),
            slots: conn_slots,
        };
        let Some(acceptor) = acceptor else {
            let slot = slots.establish();
            tokio::spawn(async move {
                let _ = conns.send(served(Accepted::Plain(stream), slot, peer)).await;
            });
            continue;
        };
        let (id, cancel) = slots.start_handshake();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(slots.limits.handshake, acceptor.accept(stream));
            let outcome = tokio::select! {
                outcome = handshake => outcome,
                _ = cancel.notified() => {
                    // Evicted by `admit`, which counted it.
                    slots.end_handshake(id, false);
                    return;
                }
            };
            let io = match outcome {
                Ok(Ok(tls)) => Accepted::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    slots.end_handshake(id, false);
                    tracing::info!(listener = what, peer = L::describe(&peer), error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    slots.end_handshake(id, false);
                    slots.hit(LimitHit::HandshakeTimeout, &L::describe(&peer));
                    return;
                }
            };
            let Some(slot) = slots.end_handshake(id, true) else {
                return;
            };
            let _ = conns.send(served(io, slot, peer)).await;
        });
    }
}
