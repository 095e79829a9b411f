//! sealbroker's server side, in three rooms and a config:
//!
//! - [`broker`]: the one inner [`broker::Broker`] every request reaches, with
//!   what it enforces and records: ACLs, the audit trail, metrics, key state
//!   and per-backend limits. Built from a config by
//!   [`broker::Broker::from_config`]; backends are plugged in through
//!   [`broker::registry::BackendRegistry`] by the binary.
//! - [`doors`]: thin adapters from wire protocols to the broker: native
//!   gRPC, Kubernetes KMS v2, transit-compatible HTTP and OpenBao's KMS
//!   plugin. They translate and authenticate; they hold no crypto and no
//!   policy.
//! - [`net`]: listeners, TLS and the one accept loop the doors share, plus
//!   the client side used to reach a daemon.
//! - [`config`]: the parsed config file, with field-path errors.
//! - [`daemon`]: `sealbroker serve`: each configured door on its listener.
//!
//! Dependencies point inward: the daemon uses doors and net, doors use the
//! broker and net, and the broker uses neither.

pub mod broker;
pub mod config;
pub mod daemon;
pub mod doors;
pub mod logging;
pub mod net;
