//! A hung service: accepts TCP connections on 127.0.0.1 and never sends a
//! byte (no TLS handshake, no HTTP answer), so a client's own time bound is
//! all that can end its call. Dropping it closes every connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A listener that accepts and never answers; stopped on drop.
pub struct SilentListener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SilentListener {
    /// Binds a free port on 127.0.0.1 and starts accepting.
    pub async fn bind() -> SilentListener {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("cannot bind 127.0.0.1 for the silent listener");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            // Held here, never read or written: aborting the task closes them.
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        SilentListener { addr, accepted, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections it has accepted (and left unanswered).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
