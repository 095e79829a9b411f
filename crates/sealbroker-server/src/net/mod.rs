//! Network plumbing: binding listeners, TLS on both sides, and the one
//! accept loop every listener uses (TLS handshakes off the loop, so a slow
//! client cannot hold up others).

pub mod accept;
pub mod authority;
pub mod client;
pub mod http;
pub mod listen;
pub mod tls;
