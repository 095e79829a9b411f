//! The codec: items to bytes and back.
//!
//! Every item is a 3-byte tag, a 1-byte type, a 4-byte big-endian length and
//! a value padded with zeros to a multiple of 8 bytes. A structure's value is
//! the concatenation of its items. A KMIP message is one structure.
//!
//! The decoder reads untrusted bytes from the network, so it is strict and
//! bounded: it never panics; its memory is a small multiple of its input
//! (every item takes at least 8 input bytes and a 40-byte [`Item`], so about
//! 10x counting `Vec` growth), and [`message_len`] caps the input at
//! [`MAX_MESSAGE_LEN`] before the transport allocates it; it refuses
//! structures nested deeper than [`MAX_DEPTH`]; and every error names the byte
//! offset and what was wrong there.

use std::fmt;

use zeroize::Zeroizing;

/// Largest message we send or accept, header included. PyKMIP uses the same
/// bound; our requests and the responses we expect are a few hundred bytes.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// Deepest structure nesting we send or accept. KMIP messages nest about six
/// levels (message, batch item, payload, attribute, value, parameters).
pub const MAX_DEPTH: usize = 16;

/// Length of an item header: tag, type and length.
pub const HEADER_LEN: usize = 8;

/// A KMIP tag: a 3-byte number, `0x42xxxx` for standard tags.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(u32);

impl Tag {
    /// A tag from its numeric value; only the low 24 bits are kept.
    pub const fn new(value: u32) -> Self {
        Tag(value & 0x00FF_FFFF)
    }

    /// The numeric value, e.g. `0x42007B`.
    pub const fn value(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:06X}", self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The item types of KMIP 1.x and 2.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemType {
    Structure = 0x01,
    Integer = 0x02,
    LongInteger = 0x03,
    BigInteger = 0x04,
    Enumeration = 0x05,
    Boolean = 0x06,
    TextString = 0x07,
    ByteString = 0x08,
    DateTime = 0x09,
    Interval = 0x0A,
    /// KMIP 2.0: microseconds since the epoch.
    DateTimeExtended = 0x0B,
}

impl ItemType {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => ItemType::Structure,
            0x02 => ItemType::Integer,
            0x03 => ItemType::LongInteger,
            0x04 => ItemType::BigInteger,
            0x05 => ItemType::Enumeration,
            0x06 => ItemType::Boolean,
            0x07 => ItemType::TextString,
            0x08 => ItemType::ByteString,
            0x09 => ItemType::DateTime,
            0x0A => ItemType::Interval,
            0x0B => ItemType::DateTimeExtended,
            _ => return None,
        })
    }

    /// The value length this type requires, when it is fixed.
    fn fixed_len(self) -> Option<usize> {
        match self {
            ItemType::Integer | ItemType::Enumeration | ItemType::Interval => Some(4),
            ItemType::LongInteger | ItemType::Boolean | ItemType::DateTime | ItemType::DateTimeExtended => {
                Some(8)
            }
            ItemType::Structure | ItemType::BigInteger | ItemType::TextString | ItemType::ByteString => None,
        }
    }
}

/// The value of an item.
///
/// Byte strings are zeroed when dropped: a Decrypt response carries the
/// plaintext in one. For the same reason `Debug` prints only their length.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Structure(Vec<Item>),
    Integer(i32),
    LongInteger(i64),
    /// Two's complement, big-endian, a multiple of 8 bytes long (as on the wire).
    BigInteger(Vec<u8>),
    Enumeration(u32),
    Boolean(bool),
    TextString(String),
    ByteString(Zeroizing<Vec<u8>>),
    /// Seconds since the POSIX epoch.
    DateTime(i64),
    /// Seconds.
    Interval(u32),
    /// Microseconds since the POSIX epoch (KMIP 2.0).
    DateTimeExtended(i64),
}

impl Value {
    /// The wire type of this value.
    pub fn item_type(&self) -> ItemType {
        match self {
            Value::Structure(_) => ItemType::Structure,
            Value::Integer(_) => ItemType::Integer,
            Value::LongInteger(_) => ItemType::LongInteger,
            Value::BigInteger(_) => ItemType::BigInteger,
            Value::Enumeration(_) => ItemType::Enumeration,
            Value::Boolean(_) => ItemType::Boolean,
            Value::TextString(_) => ItemType::TextString,
            Value::ByteString(_) => ItemType::ByteString,
            Value::DateTime(_) => ItemType::DateTime,
            Value::Interval(_) => ItemType::Interval,
            Value::DateTimeExtended(_) => ItemType::DateTimeExtended,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Structure(items) => f.debug_list().entries(items).finish(),
            Value::Integer(v) => write!(f, "Integer({v})"),
            Value::LongInteger(v) => write!(f, "LongInteger({v})"),
            Value::BigInteger(v) => write!(f, "BigInteger(<{} bytes>)", v.len()),
            Value::Enumeration(v) => write!(f, "Enumeration(0x{v:08X})"),
            Value::Boolean(v) => write!(f, "Boolean({v})"),
            Value::TextString(v) => write!(f, "TextString({v:?})"),
            Value::ByteString(v) => write!(f, "ByteString(<{} bytes>)", v.len()),
            Value::DateTime(v) => write!(f, "DateTime({v})"),
            Value::Interval(v) => write!(f, "Interval({v})"),
            Value::DateTimeExtended(v) => write!(f, "DateTimeExtended({v})"),
        }
    }
}

/// One TTLV item: a tag and a typed value.
#[derive(Clone, PartialEq, Eq)]
pub struct Item {
    pub tag: Tag,
    pub value: Value,
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ", self.tag)?;
        fmt::Debug::fmt(&self.value, f)
    }
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("the message would be longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("structures nest deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("Big Integer with tag {tag} is {len} bytes; TTLV needs a non-zero multiple of 8")]
    BigIntegerLength { tag: Tag, len: usize },
}

/// Why bytes could not be decoded. Every variant names the offset of the
/// item at fault, counted from the start of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated at byte {offset}: {what} needs {needed} bytes, {available} remain")]
    Truncated {
        offset: usize,
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("message length {len} exceeds the limit of {limit} bytes")]
    TooLong { len: usize, limit: usize },
    #[error("structure at byte {offset} nests deeper than {limit} levels")]
    TooDeep { offset: usize, limit: usize },
    #[error("item at byte {offset} (tag {tag}) has unknown type 0x{type_byte:02X}")]
    UnknownType { offset: usize, tag: Tag, type_byte: u8 },
    #[error("item at byte {offset} (tag {tag}, {item_type:?}) has invalid length {len}")]
    BadLength {
        offset: usize,
        tag: Tag,
        item_type: ItemType,
        len: usize,
    },
    #[error("Text String at byte {offset} (tag {tag}) is not valid UTF-8")]
    InvalidUtf8 { offset: usize, tag: Tag },
    #[error("Boolean at byte {offset} (tag {tag}) has value {value}; only 0 and 1 are allowed")]
    InvalidBoolean { offset: usize, tag: Tag, value: u64 },
    #[error("{count} bytes follow the message at byte {offset}")]
    TrailingBytes { offset: usize, count: usize },
    #[error("a KMIP message is a Structure; the first item has type 0x{type_byte:02X}")]
    NotAStructure { type_byte: u8 },
}

impl Item {
    pub fn new(tag: Tag, value: Value) -> Self {
        Item { tag, value }
    }
    pub fn structure(tag: Tag, items: Vec<Item>) -> Self {
        Item::new(tag, Value::Structure(items))
    }
    pub fn integer(tag: Tag, value: i32) -> Self {
        Item::new(tag, Value::Integer(value))
    }
    pub fn enumeration(tag: Tag, value: u32) -> Self {
        Item::new(tag, Value::Enumeration(value))
    }
    pub fn boolean(tag: Tag, value: bool) -> Self {
        Item::new(tag, Value::Boolean(value))
    }
    pub fn text(tag: Tag, value: impl Into<String>) -> Self {
        Item::new(tag, Value::TextString(value.into()))
    }
    /// A byte string; the copy is zeroed when the item is dropped.
    pub fn bytes(tag: Tag, value: &[u8]) -> Self {
        Item::new(tag, Value::ByteString(Zeroizing::new(value.to_vec())))
    }

    /// The items of a structure; `None` for other types.
    pub fn items(&self) -> Option<&[Item]> {
        match &self.value {
            Value::Structure(items) => Some(items),
            _ => None,
        }
    }

    /// The encoded length of this item, header and padding included.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        self.checked_len(0)
    }

    fn checked_len(&self, depth: usize) -> Result<usize, EncodeError> {
        let too_long = EncodeError::TooLong {
            limit: MAX_MESSAGE_LEN,
        };
        let value_len = match &self.value {
            Value::Structure(items) => {
                if depth >= MAX_DEPTH {
                    return Err(EncodeError::TooDeep { limit: MAX_DEPTH });
                }
                let mut sum = 0usize;
                for item in items {
                    sum = sum
                        .checked_add(item.checked_len(depth + 1)?)
                        .filter(|&n| n <= MAX_MESSAGE_LEN)
                        .ok_or(too_long.clone())?;
                }
                sum
            }
            Value::BigInteger(bytes) => {
                if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
                    return Err(EncodeError::BigIntegerLength {
                        tag: self.tag,
                        len: bytes.len(),
                    });
                }
                bytes.len()
            }
            Value::TextString(text) => text.len(),
            Value::ByteString(bytes) => bytes.len(),
            other => other.item_type().fixed_len().unwrap_or(0),
        };
        padded(value_len)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .filter(|&n| n <= MAX_MESSAGE_LEN)
            .ok_or(too_long)
    }

    /// Encodes the item. The buffer is zeroed when dropped, because requests
    /// carry plaintexts; it is allocated once, at its final size, so no
    /// unzeroed copy is left behind by a reallocation.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        let len = self.encoded_len()?;
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        self.write(&mut out);
        debug_assert_eq!(out.len(), len);
        Ok(out)
    }

    /// Writes the item; lengths were checked by `encoded_len`, so every
    /// length fits in a `u32`.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tag.0.to_be_bytes()[1..]);
        out.push(self.value.item_type() as u8);
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        match &self.value {
            Value::Structure(items) => items.iter().for_each(|item| item.write(out)),
            Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::LongInteger(v) | Value::DateTime(v) | Value::DateTimeExtended(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            Value::BigInteger(bytes) => out.extend_from_slice(bytes),
            Value::Enumeration(v) | Value::Interval(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Boolean(v) => out.extend_from_slice(&u64::from(*v).to_be_bytes()),
            Value::TextString(text) => out.extend_from_slice(text.as_bytes()),
            Value::ByteString(bytes) => out.extend_from_slice(bytes),
        }
        let len = out.len() - start;
        out[length_at..start].copy_from_slice(&(len as u32).to_be_bytes());
        // Structures are already a multiple of 8; everything else is padded.
        let pad = padded(len).unwrap_or(len) - len;
        out.extend_from_slice(&[0u8; 8][..pad]);
    }

    /// Decodes exactly one item from `bytes` (a whole message).
    pub fn decode(bytes: &[u8]) -> Result<Item, DecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong {
                len: bytes.len(),
                limit: MAX_MESSAGE_LEN,
            });
        }
        let mut reader = Reader {
            bytes,
            pos: 0,
            base: 0,
        };
        let item = read_item(&mut reader, 0)?;
        if reader.pos != bytes.len() {
            return Err(DecodeError::TrailingBytes {
                offset: reader.pos,
                count: bytes.len() - reader.pos,
            });
        }
        Ok(item)
    }
}

/// Reads a message header (the first 8 bytes) and returns the length of the
/// whole message, header included, so the transport knows how much to read
/// before it allocates anything.
pub fn message_len(header: &[u8; HEADER_LEN]) -> Result<usize, DecodeError> {
    let type_byte = header[3];
    if type_byte != ItemType::Structure as u8 {
        return Err(DecodeError::NotAStructure { type_byte });
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let total = len.saturating_add(HEADER_LEN);
    if total > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLong {
            len: total,
            limit: MAX_MESSAGE_LEN,
        });
    }
    if !len.is_multiple_of(8) {
        return Err(DecodeError::BadLength {
            offset: 0,
            tag: tag_of(header),
            item_type: ItemType::Structure,
            len,
        });
    }
    Ok(total)
}

fn tag_of(header: &[u8]) -> Tag {
    Tag(u32::from_be_bytes([0, header[0], header[1], header[2]]))
}

/// `len` rounded up to a multiple of 8.
fn padded(len: usize) -> Option<usize> {
    len.checked_add(7).map(|n| n & !7)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes[0]` in the whole message, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn take(&mut self, needed: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.bytes.len() - self.pos;
        if needed > available {
            return Err(DecodeError::Truncated {
                offset: self.offset(),
                what,
                needed,
                available,
            });
        }
        let slice = &self.bytes[self.pos..self.pos + needed];
        self.pos += needed;
        Ok(slice)
    }
}

fn read_item(reader: &mut Reader<'_>, depth: usize) -> Result<Item, DecodeError> {
    let offset = reader.offset();
    let header = reader.take(HEADER_LEN, "an item header")?;
    let tag = tag_of(header);
    let type_byte = header[3];
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let item_type = ItemType::from_byte(type_byte).ok_or(DecodeError::UnknownType {
        offset,
        tag,
        type_byte,
    })?;
    let bad_length = DecodeError::BadLength {
        offset,
        tag,
        item_type,
        len,
    };
    let length_ok = match item_type.fixed_len() {
        Some(fixed) => len == fixed,
        None => match item_type {
            ItemType::Structure => len.is_multiple_of(8),
            ItemType::BigInteger => len > 0 && len.is_multiple_of(8),
            _ => true,
        },
    };
    if !length_ok {
        return Err(bad_length);
    }
    if item_type == ItemType::Structure && depth >= MAX_DEPTH {
        return Err(DecodeError::TooDeep {
            offset,
            limit: MAX_DEPTH,
        });
    }
    let padded_len = padded(len).ok_or(bad_length)?;
    let body_offset = reader.offset();
    let body = reader.take(padded_len, "an item value")?;
    let raw = &body[..len];
    let be4 = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    let be8 = |b: &[u8]| [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    let value = match item_type {
        ItemType::Structure => {
            let mut inner = Reader {
                bytes: raw,
                pos: 0,
                base: body_offset,
            };
            let mut items = Vec::new();
            while inner.pos < raw.len() {
                items.push(read_item(&mut inner, depth + 1)?);
            }
            Value::Structure(items)
        }
        ItemType::Integer => Value::Integer(i32::from_be_bytes(be4(raw))),
        ItemType::LongInteger => Value::LongInteger(i64::from_be_bytes(be8(raw))),
        ItemType::BigInteger => Value::BigInteger(raw.to_vec()),
        ItemType::Enumeration => Value::Enumeration(u32::from_be_bytes(be4(raw))),
        ItemType::Boolean => match u64::from_be_bytes(be8(raw)) {
            0 => Value::Boolean(false),
            1 => Value::Boolean(true),
            value => return Err(DecodeError::InvalidBoolean { offset, tag, value }),
        },
        ItemType::TextString => Value::TextString(
            std::str::from_utf8(raw)
                .map_err(|_| DecodeError::InvalidUtf8 { offset, tag })?
                .to_owned(),
        ),
        ItemType::ByteString => Value::ByteString(Zeroizing::new(raw.to_vec())),
        ItemType::DateTime => Value::DateTime(i64::from_be_bytes(be8(raw))),
        ItemType::Interval => Value::Interval(u32::from_be_bytes(be4(raw))),
        ItemType::DateTimeExtended => Value::DateTimeExtended(i64::from_be_bytes(be8(raw))),
    };
    Ok(Item { tag, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tag the KMIP 1.2 spec (section 9.1.2) uses in its encoding examples.
    const T: Tag = Tag::new(0x420020);

    fn hex(s: &str) -> Vec<u8> {
        let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
            .collect()
    }

    fn round_trip(item: Item, golden: &str) {
        let bytes = hex(golden);
        assert_eq!(
            item.encode().unwrap().as_slice(),
            bytes.as_slice(),
            "encoding {item:?}"
        );
        assert_eq!(item.encoded_len().unwrap(), bytes.len());
        assert_eq!(Item::decode(&bytes).unwrap(), item, "decoding {golden}");
    }

    // Golden bytes: the examples of KMIP 1.2 section 9.1.2 ("Examples").

    #[test]
    fn integer_is_four_bytes_plus_four_of_padding() {
        round_trip(
            Item::integer(T, 8),
            "42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00",
        );
        round_trip(
            Item::integer(T, -1),
            "42 00 20 | 02 | 00 00 00 04 | FF FF FF FF 00 00 00 00",
        );
    }

    #[test]
    fn long_integer_spec_example() {
        round_trip(
            Item::new(T, Value::LongInteger(123_456_789_000_000_000)),
            "42 00 20 | 03 | 00 00 00 08 | 01 B6 9B 4B A5 74 92 00",
        );
    }

    #[test]
    fn big_integer_spec_example() {
        let golden = "42 00 20 | 04 | 00 00 00 10 | 00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00";
        let item = Item::new(
            T,
            Value::BigInteger(hex("00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00")),
        );
        round_trip(item, golden);
    }

    #[test]
    fn big_integer_must_be_a_multiple_of_eight() {
        let err = Item::new(T, Value::BigInteger(vec![1, 2, 3]))
            .encode()
            .unwrap_err();
        assert!(
            matches!(err, EncodeError::BigIntegerLength { len: 3, .. }),
            "{err}"
        );
        let err = Item::decode(&hex("42 00 20 | 04 | 00 00 00 04 | 00 00 00 01 00 00 00 00")).unwrap_err();
        assert!(matches!(err, DecodeError::BadLength { len: 4, .. }), "{err}");
        let err = Item::decode(&hex("42 00 20 | 04 | 00 00 00 00")).unwrap_err();
        assert!(matches!(err, DecodeError::BadLength { len: 0, .. }), "{err}");
    }

    #[test]
    fn enumeration_spec_example() {
        round_trip(
            Item::enumeration(T, 255),
            "42 00 20 | 05 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        );
    }

    #[test]
    fn boolean_spec_example_and_false() {
        round_trip(
            Item::boolean(T, true),
            "42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 01",
        );
        round_trip(
            Item::boolean(T, false),
            "42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 00",
        );
    }

    #[test]
    fn boolean_other_than_zero_or_one_is_refused() {
        let err = Item::decode(&hex("42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 02")).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidBoolean { value: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn text_string_spec_example_is_padded_to_eight() {
        round_trip(
            Item::text(T, "Hello World"),
            "42 00 20 | 07 | 00 00 00 0B | 48 65 6C 6C 6F 20 57 6F 72 6C 64 00 00 00 00 00",
        );
    }

    #[test]
    fn text_string_of_exactly_eight_bytes_has_no_padding() {
        round_trip(
            Item::text(T, "12345678"),
            "42 00 20 | 07 | 00 00 00 08 | 31 32 33 34 35 36 37 38",
        );
    }

    #[test]
    fn empty_text_and_byte_strings_have_no_value_bytes() {
        round_trip(Item::text(T, ""), "42 00 20 | 07 | 00 00 00 00");
        round_trip(Item::bytes(T, b""), "42 00 20 | 08 | 00 00 00 00");
    }

    #[test]
    fn text_string_must_be_utf8() {
        let err = Item::decode(&hex("42 00 20 | 07 | 00 00 00 02 | C3 28 00 00 00 00 00 00")).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidUtf8 { offset: 0, .. }), "{err}");
    }

    #[test]
    fn byte_string_spec_example() {
        round_trip(
            Item::bytes(T, &[1, 2, 3]),
            "42 00 20 | 08 | 00 00 00 03 | 01 02 03 00 00 00 00 00",
        );
    }

    #[test]
    fn date_time_spec_example() {
        // Friday, March 14, 2008, 11:56:40 GMT
        round_trip(
            Item::new(T, Value::DateTime(1_205_495_800)),
            "42 00 20 | 09 | 00 00 00 08 | 00 00 00 00 47 DA 67 F8",
        );
    }

    #[test]
    fn interval_spec_example() {
        // 10 days
        round_trip(
            Item::new(T, Value::Interval(864_000)),
            "42 00 20 | 0A | 00 00 00 04 | 00 0D 2F 00 00 00 00 00",
        );
    }

    #[test]
    fn date_time_extended_is_kmip_2_0_type_0b() {
        round_trip(
            Item::new(T, Value::DateTimeExtended(1_205_495_800_000_001)),
            "42 00 20 | 0B | 00 00 00 08 | 00 04 48 64 5C EF EE 01",
        );
    }

    #[test]
    fn structure_spec_example() {
        round_trip(
            Item::structure(
                T,
                vec![
                    Item::enumeration(Tag::new(0x420004), 254),
                    Item::integer(Tag::new(0x420005), 255),
                ],
            ),
            "42 00 20 | 01 | 00 00 00 20 |
             42 00 04 | 05 | 00 00 00 04 | 00 00 00 FE 00 00 00 00 |
             42 00 05 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        );
    }

    #[test]
    fn empty_structure() {
        round_trip(Item::structure(T, vec![]), "42 00 20 | 01 | 00 00 00 00");
    }

    /// An Encrypt request payload as encoded in the KMIP 1.1 test cases
    /// (section 11.1) extended with the 1.2 Cryptographic Parameters fields;
    /// the same bytes PyKMIP's test suite uses for its Encrypt payload.
    #[test]
    fn encrypt_payload_golden_bytes_round_trip() {
        let golden = hex(
            "420079 01 00000128
             420094 07 00000024 62346661656531302D616132612D343434362D386164342D303838316633343232393539 00000000
             42002B 01 000000D0
               420011 05 00000004 00000001 00000000
               42005F 05 00000004 00000003 00000000
               420038 05 00000004 00000004 00000000
               420083 05 00000004 0000000B 00000000
               4200AE 05 00000004 00000005 00000000
               420028 05 00000004 00000003 00000000
               4200C5 06 00000008 0000000000000001
               4200CD 02 00000004 00000060 00000000
               4200CE 02 00000004 00000080 00000000
               4200CF 02 00000004 00000020 00000000
               4200D2 02 00000004 00000040 00000000
               4200D0 02 00000004 00000000 00000000
               4200D1 02 00000004 00000001 00000000
             4200C2 08 00000008 0123456789ABCDEF
             42003D 08 00000001 01 00000000000000",
        );
        let item = Item::decode(&golden).unwrap();
        let items = item.items().unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(
            items[0].value,
            Value::TextString("b4faee10-aa2a-4446-8ad4-0881f3422959".into())
        );
        assert_eq!(items[1].items().unwrap().len(), 13);
        assert_eq!(item.encode().unwrap().as_slice(), golden.as_slice());
    }

    #[test]
    fn every_truncation_of_a_message_is_a_clear_error() {
        let bytes = Item::structure(
            T,
            vec![
                Item::text(Tag::new(0x420094), "abc"),
                Item::structure(Tag::new(0x42002B), vec![Item::enumeration(Tag::new(0x420011), 9)]),
                Item::bytes(Tag::new(0x4200C2), &[7; 20]),
            ],
        )
        .encode()
        .unwrap();
        for len in 0..bytes.len() {
            let err = Item::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "truncated to {len}: {err}"
            );
        }
    }

    #[test]
    fn truncation_error_names_offset_and_need() {
        // A structure claiming 16 bytes of content that holds only 8.
        let err =
            Item::decode(&hex("42 00 20 | 01 | 00 00 00 10 | 42 00 04 | 05 | 00 00 00 04")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "truncated at byte 8: an item value needs 16 bytes, 8 remain"
        );
        // An inner item that claims more than its structure holds.
        let err = Item::decode(&hex(
            "42 00 20 | 01 | 00 00 00 10 | 42 00 04 | 08 | 00 00 00 FF | 00 00 00 00 00 00 00 00",
        ))
        .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated {
                    offset: 16,
                    needed: 256,
                    available: 8,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn fixed_size_types_must_have_their_size() {
        for (type_byte, bad_len) in [
            (0x02u8, 8u32),
            (0x03, 4),
            (0x05, 8),
            (0x06, 4),
            (0x09, 4),
            (0x0A, 8),
            (0x0B, 4),
        ] {
            let mut bytes = vec![0x42, 0x00, 0x20, type_byte];
            bytes.extend_from_slice(&bad_len.to_be_bytes());
            bytes.extend_from_slice(&[0u8; 8]);
            let err = Item::decode(&bytes).unwrap_err();
            assert!(
                matches!(err, DecodeError::BadLength { .. }),
                "type {type_byte:#x}: {err}"
            );
        }
    }

    #[test]
    fn structure_length_must_be_a_multiple_of_eight() {
        let err = Item::decode(&hex("42 00 20 | 01 | 00 00 00 04 | 00 00 00 00")).unwrap_err();
        assert!(matches!(err, DecodeError::BadLength { len: 4, .. }), "{err}");
    }

    #[test]
    fn unknown_type_is_refused_with_offset() {
        let err =
            Item::decode(&hex("42 00 20 | 01 | 00 00 00 08 | 42 00 04 | 0C | 00 00 00 00")).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownType {
                offset: 8,
                tag: Tag::new(0x420004),
                type_byte: 0x0C
            }
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = Item::integer(T, 1).encode().unwrap().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(
            Item::decode(&bytes).unwrap_err(),
            DecodeError::TrailingBytes { offset: 16, count: 8 }
        );
    }

    fn nested(depth: usize) -> Item {
        let mut item = Item::integer(T, 1);
        for _ in 0..depth {
            item = Item::structure(T, vec![item]);
        }
        item
    }

    #[test]
    fn nesting_is_bounded_both_ways() {
        let ok = nested(MAX_DEPTH);
        assert_eq!(Item::decode(&ok.encode().unwrap()).unwrap(), ok);
        assert_eq!(
            nested(MAX_DEPTH + 1).encode().unwrap_err(),
            EncodeError::TooDeep { limit: MAX_DEPTH }
        );
        // Hand-build a message nested far deeper than the limit.
        let levels = 10_000usize;
        let mut bytes = Vec::new();
        for level in 0..levels {
            bytes.extend_from_slice(&[0x42, 0x00, 0x20, 0x01]);
            bytes.extend_from_slice(&(((levels - level - 1) * 8) as u32).to_be_bytes());
        }
        let err = Item::decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::TooDeep { .. }), "{err}");
    }

    #[test]
    fn oversized_messages_are_refused_before_allocation() {
        let mut header = [0x42, 0x00, 0x7B, 0x01, 0, 0, 0, 0];
        header[4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(message_len(&header), Err(DecodeError::TooLong { .. })));
        header[4..].copy_from_slice(&((MAX_MESSAGE_LEN - HEADER_LEN) as u32).to_be_bytes());
        assert_eq!(message_len(&header), Ok(MAX_MESSAGE_LEN));
        header[4..].copy_from_slice(&((MAX_MESSAGE_LEN - HEADER_LEN + 8) as u32).to_be_bytes());
        assert!(matches!(message_len(&header), Err(DecodeError::TooLong { .. })));
        header[4..].copy_from_slice(&12u32.to_be_bytes());
        assert!(matches!(message_len(&header), Err(DecodeError::BadLength { .. })));
        header[3] = 0x02;
        assert_eq!(
            message_len(&header),
            Err(DecodeError::NotAStructure { type_byte: 2 })
        );

        let too_big = Item::bytes(T, &vec![0; MAX_MESSAGE_LEN]);
        assert_eq!(
            too_big.encode().unwrap_err(),
            EncodeError::TooLong {
                limit: MAX_MESSAGE_LEN
            }
        );
        assert!(matches!(
            Item::decode(&vec![0; MAX_MESSAGE_LEN + 1]),
            Err(DecodeError::TooLong { .. })
        ));
    }

    /// Keeps the memory bound in the module docs true.
    #[test]
    fn an_item_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<Item>(), 40);
    }

    #[test]
    fn padding_contents_are_ignored_on_decode() {
        let item = Item::decode(&hex("42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 FF FF FF FF")).unwrap();
        assert_eq!(item, Item::integer(T, 8));
    }

    #[test]
    fn debug_never_prints_byte_string_contents() {
        let item = Item::structure(T, vec![Item::bytes(Tag::new(0x4200C2), b"top secret")]);
        let printed = format!("{item:?}");
        assert!(printed.contains("<10 bytes>"), "{printed}");
        assert!(!printed.contains("116"), "{printed}"); // 't' as a decimal byte
        assert!(!printed.contains("top"), "{printed}");
    }

    /// xorshift64*: a deterministic generator for the bounded random test.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.max(1))
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn random_item(rng: &mut Rng, depth: usize) -> Item {
        let tag = Tag::new(0x420000 | rng.below(0x140) as u32);
        let value = match rng.below(if depth < 4 { 12 } else { 11 }) {
            0 => Value::Integer(rng.next() as i32),
            1 => Value::LongInteger(rng.next() as i64),
            2 => Value::BigInteger((0..8 * (1 + rng.below(3))).map(|_| rng.next() as u8).collect()),
            3 => Value::Enumeration(rng.next() as u32),
            4 => Value::Boolean(rng.below(2) == 1),
            5 => Value::TextString(
                (0..rng.below(20))
                    .map(|_| (b'a' + rng.below(26) as u8) as char)
                    .collect(),
            ),
            6 => Value::ByteString(Zeroizing::new(
                (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
            )),
            7 => Value::DateTime(rng.next() as i64),
            8 => Value::Interval(rng.next() as u32),
            9 => Value::DateTimeExtended(rng.next() as i64),
            _ => Value::Structure((0..rng.below(5)).map(|_| random_item(rng, depth + 1)).collect()),
        };
        Item::new(tag, value)
    }

    /// The fuzz property, run for a bounded time in every `cargo test`:
    /// random bytes and mutations of valid messages never panic, and whatever
    /// decodes re-encodes to something that decodes to the same item.
    #[test]
    fn decoder_survives_random_and_mutated_messages() {
        let mut rng = Rng::new(0x5EA1_B40C);
        let valid: Vec<Vec<u8>> = (0..64)
            .map(|_| {
                let item = Item::structure(
                    Tag::new(0x42007B),
                    (0..4).map(|_| random_item(&mut rng, 1)).collect(),
                );
                item.encode().unwrap().to_vec()
            })
            .collect();
        let mut decoded = 0;
        for round in 0..100_000 {
            let bytes: Vec<u8> = if round % 4 == 0 {
                (0..rng.below(96)).map(|_| rng.next() as u8).collect()
            } else {
                let mut bytes = valid[rng.below(valid.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    match rng.below(4) {
                        0 if !bytes.is_empty() => {
                            let i = rng.below(bytes.len());
                            bytes[i] ^= 1 << rng.below(8);
                        }
                        1 if !bytes.is_empty() => {
                            let i = rng.below(bytes.len());
                            bytes[i] = rng.next() as u8;
                        }
                        2 => bytes.truncate(rng.below(bytes.len() + 1)),
                        _ => {
                            let i = rng.below(bytes.len() + 1);
                            bytes.insert(i, rng.next() as u8);
                        }
                    }
                }
                bytes
            };
            if let Ok(item) = Item::decode(&bytes) {
                decoded += 1;
                let again = item.encode().expect("a decoded item re-encodes");
                assert_eq!(Item::decode(&again).unwrap(), item);
            }
        }
        assert!(
            decoded > 1_000,
            "only {decoded} inputs decoded; mutations too destructive"
        );
    }
}
