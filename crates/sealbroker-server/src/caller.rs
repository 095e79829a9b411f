//! Who is calling. Every front door turns its connection into a [`Caller`].

use std::fmt;

/// The authenticated identity of a request's sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A local process on the unix socket, identified by its credentials.
    Unix { uid: u32, gid: u32, pid: Option<i32> },
    /// A TLS client, identified by its certificate: its SHA-256
    /// fingerprint and its names (`uri:…`, `dns:…` SANs, `cn:…`).
    Tls { fingerprint: String, names: Vec<String> },
    /// A transit (HTTP) client, identified by the configured identity of the
    /// token it presented. Never the token itself.
    Token { identity: String },
    /// A plaintext TCP client (development profile only): no identity.
    Anonymous { peer: String },
    /// The broker itself (health probes, CLI tools in-process).
    Internal(&'static str),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Unix {
                uid,
                gid,
                pid: Some(pid),
            } => write!(f, "unix:uid={uid},gid={gid},pid={pid}"),
            Caller::Unix { uid, gid, pid: None } => write!(f, "unix:uid={uid},gid={gid}"),
            Caller::Tls { names, .. } if !names.is_empty() => write!(f, "tls:{}", names[0]),
            Caller::Tls { fingerprint, .. } => write!(f, "tls:sha256={fingerprint}"),
            Caller::Token { identity } => write!(f, "token:{identity}"),
            Caller::Anonymous { peer } => write!(f, "anonymous:{peer}"),
            Caller::Internal(what) => write!(f, "internal:{what}"),
        }
    }
}

impl Caller {
    /// The principals an ACL can name this caller by (see `acl`).
    pub fn principals(&self) -> Vec<String> {
        match self {
            Caller::Unix { uid, gid, .. } => vec![format!("uid:{uid}"), format!("gid:{gid}")],
            Caller::Tls { fingerprint, names } => {
                let mut all = names.clone();
                all.push(format!("sha256:{fingerprint}"));
                all
            }
            Caller::Token { identity } => vec![format!("token:{identity}")],
            Caller::Anonymous { .. } | Caller::Internal(_) => Vec::new(),
        }
    }

    /// Whether the caller proved an identity (everything but plaintext TCP).
    pub fn is_authenticated(&self) -> bool {
        !matches!(self, Caller::Anonymous { .. })
    }

    /// The front door this caller came through, for audit and metrics.
    pub fn door(&self) -> &'static str {
        match self {
            Caller::Unix { .. } | Caller::Tls { .. } | Caller::Anonymous { .. } => "grpc",
            Caller::Token { .. } => "transit",
            Caller::Internal(what) => what,
        }
    }
}
