//! The one accept loop. Every listener that speaks TLS or may (gRPC,
//! transit and metrics on TCP, the KMS plugin's unix socket) accepts here.
//! Each TLS handshake runs in its own task with a deadline, so one slow or
//! silent client cannot hold up others. Finished connections arrive on a
//! channel that tonic or hyper serve from, each carrying what its door
//! needs to know about the peer.
//!
//! Each listener is bounded by `sealbroker_bounds` (a connection cap that
//! evicts the oldest handshake, handshake and idle timeouts), configured
//! from `[limits]`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use sealbroker_bounds::{ConnLimits, LimitHit, OnLimit};
use sealbroker_bounds::{IdleTimeout, Slots};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::net::authority::UnixAuthority;
use crate::net::tls::LiveTls;

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

/// A unix listener for gRPC: each connection gets the `:authority`
/// rewriter stock clients need on unix sockets (see `net::authority`).
pub struct AuthorityUnixListener(pub UnixListener);

impl Listener for AuthorityUnixListener {
    type Io = UnixAuthority<UnixStream>;
    type Peer = UdsConnectInfo;
    async fn next(&self) -> io::Result<(UnixAuthority<UnixStream>, UdsConnectInfo)> {
        let (stream, info) = self.0.next().await?;
        Ok((UnixAuthority::new(stream), info))
    }
    fn describe(peer: &UdsConnectInfo) -> String {
        UnixListener::describe(peer)
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
/// slot, and fails once the peer sends nothing for the idle timeout.
pub struct Conn<S, I> {
    io: IdleTimeout<Accepted<S>>,
    info: I,
}

impl<S, I: Clone + Send + Sync + 'static> Connected for Conn<S, I> {
    type ConnectInfo = I;
    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Accepted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Accepted::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Accepted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Accepted::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Accepted::Plain(s) => Pin::new(s).poll_flush(cx),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Accepted::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Accepted::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, I: Unpin> AsyncRead for Conn<S, I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, I: Unpin> AsyncWrite for Conn<S, I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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
    let slots = Slots::new(what, limits);
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
        let Some(acceptor) = acceptor else {
            let io = Accepted::Plain(stream);
            let info = info(&io, peer);
            let io = IdleTimeout::new(io, slots.establish());
            tokio::spawn(async move {
                let _ = conns.send(Conn { io, info }).await;
            });
            continue;
        };
        let handshake = slots.start_handshake();
        let refused = tls.as_ref().and_then(LiveTls::refused_hook);
        tokio::spawn(async move {
            let described = L::describe(&peer);
            let io = match handshake.run(acceptor.accept(stream), &described).await {
                Some(Ok(tls)) => Accepted::Tls(Box::new(tls)),
                Some(Err(e)) => {
                    tracing::info!(listener = what, peer = described, error = %e, "TLS handshake refused");
                    if let Some(refused) = refused {
                        refused(&described);
                    }
                    return;
                }
                // Timed out or evicted: counted by the bounds.
                None => return,
            };
            let info = info(&io, peer);
            let io = IdleTimeout::new(io, handshake.established());
            let _ = conns.send(Conn { io, info }).await;
        });
    }
}
