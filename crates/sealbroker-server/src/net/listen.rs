//! Binding listeners: unix sockets with their mode set before anyone can
//! connect, and TCP listeners whose connections (TLS or plain) come out of
//! the one accept loop.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::net::accept::{ConnLimits, accept_loop};
use crate::net::tls::{LiveTls, ServerConn, TlsConnectInfo};

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Binds a unix socket atomically with `mode`: bind under a temporary name,
/// chmod, then rename into place, so the socket is never reachable with the
/// process umask's looser mode. A stale socket (nobody listening) is replaced;
/// a live one is an error.
pub fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServeError::Io {
                what: format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::Io {
                what: format!("another process is already serving on {}", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
        }
        std::fs::remove_file(path).map_err(io_error(format!("removing stale socket {}", path.display())))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    }
    let staging = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener =
        UnixListener::bind(&staging).map_err(io_error(format!("binding {}", staging.display())))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .map_err(io_error(format!("chmod {}", staging.display())))?;
    std::fs::rename(&staging, path).map_err(io_error(format!("renaming socket to {}", path.display())))?;
    Ok(listener)
}

/// Binds `address` and accepts on it, in a task of `tasks`, until `stop`.
/// Connections arrive on the returned channel once their TLS handshake is
/// done; gRPC and transit serve from such channels alike.
pub async fn listen_tcp(
    address: SocketAddr,
    tls: Option<LiveTls>,
    stop: watch::Receiver<bool>,
    tasks: &mut JoinSet<Result<(), ServeError>>,
    what: &'static str,
    limits: ConnLimits,
) -> Result<(SocketAddr, mpsc::Receiver<ServerConn>), ServeError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(io_error(format!("binding TCP {address}")))?;
    let local = listener.local_addr().map_err(io_error("reading TCP address"))?;
    let (conn_tx, conn_rx) = mpsc::channel::<ServerConn>(64);
    tasks.spawn(async move {
        accept_loop(listener, tls, TlsConnectInfo::of, conn_tx, stop, what, limits).await;
        Ok(())
    });
    Ok((local, conn_rx))
}
