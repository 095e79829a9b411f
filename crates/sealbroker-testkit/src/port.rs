//! Free loopback ports, for peers (OpenBao, PyKMIP, moto, the daemon) that
//! bind their own socket from a port number on their command line.
//!
//! A port found this way is free when it is returned, not reserved: a test
//! that can hand over a bound listener instead should (see
//! [`https_stub::StubListener`](crate::https_stub::StubListener)).

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago; also the
/// way to name an address where nothing listens.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("cannot bind a free port on 127.0.0.1")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound_on_loopback() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
