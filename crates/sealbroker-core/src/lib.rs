//! The heart of sealbroker: what a seal backend is, how a logical key maps to
//! backend keys, what a sealed blob looks like, and what can go wrong.
//!
//! Design, in one paragraph: every wrap is an envelope. The payload is sealed
//! locally with a fresh 32-byte DEK under AES-256-GCM (ring), and the DEK is
//! sealed by a [`Backend`] — an HSM key, a KMS key, a software key. The
//! [`KeyRing`] names logical keys, picks the backend key version, and binds the
//! key name and the caller's AAD into the authenticated data. This crate does
//! no I/O of its own: backends live in their own crates, front doors and
//! policy in `sealbroker-server`, and the binary wires them together.

pub mod backend;
pub mod blob;
pub mod config;
pub mod error;
pub mod keyring;
pub mod kind;
pub mod secret;
pub mod signing;
pub mod stock;

pub use backend::{Backend, NewVersion, Sealed};
pub use blob::{Mechanism, WrappedBlob, WrappedDek};
pub use config::{ConfigError, Profile, parse_table};
pub use error::{BackendError, BackendErrorKind, BlobError, Code, Error};
pub use keyring::{KeyId, KeyInfo, KeyRing, KeyVersion, LogicalKey, Member, Unwrapped, WrapPolicy, Wrapped};
pub use kind::{BackendKind, KeygenError, OpenedBackend};
pub use secret::SecretBytes;
pub use signing::{Hash, KeyAlgorithm, OaepHash, PublicKey, SignInput, SignScheme};
pub use stock::{StanzaError, StockBlob, StockSeal, StockStanza};
