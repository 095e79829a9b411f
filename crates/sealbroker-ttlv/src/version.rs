//! KMIP protocol versions.

use std::fmt;

use crate::{Item, Value, tag};

/// A KMIP protocol version, as sent in every request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    pub major: i32,
    pub minor: i32,
}

impl ProtocolVersion {
    /// The first version with Encrypt and Decrypt.
    pub const V1_2: Self = ProtocolVersion { major: 1, minor: 2 };
    pub const V1_3: Self = ProtocolVersion { major: 1, minor: 3 };
    /// The first version with Authenticated Encryption Additional Data and Tag (GCM).
    pub const V1_4: Self = ProtocolVersion { major: 1, minor: 4 };
    pub const V2_0: Self = ProtocolVersion { major: 2, minor: 0 };

    /// Every version sealbroker speaks, most preferred first.
    pub const SUPPORTED: [Self; 4] = [Self::V2_0, Self::V1_4, Self::V1_3, Self::V1_2];

    /// Whether attributes travel under their own tags (2.0) rather than as
    /// `Attribute {name, value}` (1.x).
    pub fn attributes_are_tagged(self) -> bool {
        self.major >= 2
    }

    /// Whether Encrypt and Decrypt carry AAD and tag (needed for AES-GCM).
    pub fn has_aead_fields(self) -> bool {
        self >= Self::V1_4
    }

    /// The `Protocol Version` structure.
    pub fn item(self) -> Item {
        Item::structure(
            tag::PROTOCOL_VERSION,
            vec![
                Item::integer(tag::PROTOCOL_VERSION_MAJOR, self.major),
                Item::integer(tag::PROTOCOL_VERSION_MINOR, self.minor),
            ],
        )
    }

    /// Reads a `Protocol Version` structure; `None` when it lacks an integer
    /// major or minor number.
    pub fn from_item(item: &Item) -> Option<Self> {
        let fields = item.items()?;
        let number = |wanted| {
            fields
                .iter()
                .find(|i| i.tag == wanted)
                .and_then(|i| match i.value {
                    Value::Integer(n) => Some(n),
                    _ => None,
                })
        };
        Some(ProtocolVersion {
            major: number(tag::PROTOCOL_VERSION_MAJOR)?,
            minor: number(tag::PROTOCOL_VERSION_MINOR)?,
        })
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_reads_back_from_its_structure() {
        for version in ProtocolVersion::SUPPORTED {
            assert_eq!(ProtocolVersion::from_item(&version.item()), Some(version));
        }
    }

    #[test]
    fn a_version_without_integer_numbers_is_none() {
        let text_minor = Item::structure(
            tag::PROTOCOL_VERSION,
            vec![
                Item::integer(tag::PROTOCOL_VERSION_MAJOR, 1),
                Item::text(tag::PROTOCOL_VERSION_MINOR, "4"),
            ],
        );
        assert_eq!(ProtocolVersion::from_item(&text_minor), None);
        assert_eq!(
            ProtocolVersion::from_item(&Item::integer(tag::PROTOCOL_VERSION, 1)),
            None
        );
    }
}
