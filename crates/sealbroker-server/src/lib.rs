//! sealbroker's server side: the inner [`service::Broker`], the front doors
//! that adapt wire protocols to it, and the config, TLS and listener
//! plumbing around them. Backends are plugged in through
//! [`registry::BackendRegistry`] by the binary.

pub mod acl;
mod assemble;
pub mod audit;
pub mod caller;
pub mod client;
pub mod config;
pub mod grpc;
pub mod inflight;
pub mod keystate;
pub mod kmsv2;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod plugin;
pub mod registry;
pub mod service;
pub mod status;
pub mod tls;
pub mod transit;
