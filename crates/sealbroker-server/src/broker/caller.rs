//! Who is calling, and through which door. Every front door turns its
//! connection into a [`Caller`] and hands the broker a [`Call`]: the caller
//! plus the door, so audit lines and metrics name the door the request
//! really came through.

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
}

/// The front doors, as audit lines and metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// The native gRPC API (`sealbroker.v1.SealService`), unix socket or TCP.
    Grpc,
    /// Kubernetes KMS v2 (`v2.KeyManagementService`).
    KmsV2,
    /// The transit-compatible HTTP API.
    Transit,
    /// OpenBao's KMS plugin, with the keys in-process (`config_file`).
    KmsPlugin,
    /// KMIP over mutual TLS (`[server.kmip]`).
    Kmip,
    /// The broker's own work: health probes and start-up checks.
    Admin,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::KmsV2 => "kms-v2",
            Door::Transit => "transit",
            Door::KmsPlugin => "kms-plugin",
            Door::Kmip => "kmip",
            Door::Admin => "admin",
        }
    }
}

impl fmt::Display for Door {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request's origin: who, and through which door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub door: Door,
    pub caller: Caller,
}

impl Call {
    pub fn new(door: Door, caller: Caller) -> Self {
        Call { door, caller }
    }

    /// The broker itself calling through `door` (status answers, probes).
    pub fn internal(door: Door) -> Self {
        Call::new(door, Caller::Internal(door.as_str()))
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.caller.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doors_have_the_names_audit_lines_use() {
        let names: Vec<&str> = [
            Door::Grpc,
            Door::KmsV2,
            Door::Transit,
            Door::KmsPlugin,
            Door::Kmip,
            Door::Admin,
        ]
        .into_iter()
        .map(Door::as_str)
        .collect();
        assert_eq!(
            names,
            ["grpc", "kms-v2", "transit", "kms-plugin", "kmip", "admin"]
        );
    }

    #[test]
    fn a_call_displays_as_its_caller() {
        let call = Call::new(
            Door::KmsV2,
            Caller::Unix {
                uid: 0,
                gid: 0,
                pid: None,
            },
        );
        assert_eq!(call.to_string(), "unix:uid=0,gid=0");
        assert_eq!(Call::internal(Door::Admin).to_string(), "internal:admin");
    }
}
