//! The front doors: each turns one wire protocol into [`Broker`] calls,
//! naming itself ([`Door`]) and its authenticated caller. A door decides
//! nothing about keys; the broker does.
//!
//! [`Broker`]: crate::broker::Broker
//! [`Door`]: crate::broker::caller::Door

pub mod grpc;
pub mod kmip;
pub mod kmsv2;
pub mod plugin;
pub mod status;
pub mod transit;
