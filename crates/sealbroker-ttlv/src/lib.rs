//! TTLV, the KMIP wire encoding, and the small part of KMIP that both of
//! sealbroker's KMIP sides share: the KMIP backend (a client of someone
//! else's KMS) and the KMIP door (a server in front of the broker).
//!
//! - the codec ([`Item`], [`Value`], [`Tag`]): every item is a 3-byte tag,
//!   a 1-byte type, a 4-byte big-endian length and a value padded with zeros
//!   to a multiple of 8 bytes. A KMIP message is one structure. Decoding is
//!   strict and bounded ([`MAX_MESSAGE_LEN`], [`MAX_DEPTH`]) because both
//!   sides read bytes from the network: it never panics, and every error
//!   names the byte offset at fault. `fuzz/` holds its cargo-fuzz target.
//! - [`tag`], [`enums`], [`operation`]: the numbers of KMIP 1.2 to 2.0 that
//!   either side sends or reads.
//! - [`ProtocolVersion`] and [`ResultReason`]: typed, with the spec's names.
//!
//! Message shapes (which fields a request or response holds) stay with each
//! side: the client builds requests and parses responses, the server does
//! the reverse, and neither needs the other's half.

mod codec;
pub mod enums;
pub mod operation;
mod reason;
pub mod tag;
mod version;

pub use codec::{
    DecodeError, EncodeError, HEADER_LEN, Item, ItemType, MAX_DEPTH, MAX_MESSAGE_LEN, Tag, Value, message_len,
};
pub use reason::ResultReason;
pub use version::ProtocolVersion;
