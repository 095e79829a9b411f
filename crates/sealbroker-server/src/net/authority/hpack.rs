//! HPACK (RFC 7541), as far as rewriting a request's header block needs: a
//! complete decoder with its dynamic table, and an encoder that emits only
//! static-table references and literals that are never indexed. The encoder
//! therefore adds nothing to the receiving decoder's dynamic table, and
//! keeps no state of its own that could fall out of step with it.

use std::collections::VecDeque;

use super::huffman::{self, HuffmanError};

/// RFC 7541 Appendix A.
#[rustfmt::skip]
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"),
    (b":status", b"200"), (b":status", b"204"), (b":status", b"206"), (b":status", b"304"),
    (b":status", b"400"), (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"), (b"accept-language", b""), (b"accept-ranges", b""),
    (b"accept", b""), (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""),
    (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""),
    (b"from", b""), (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""),
    (b"if-none-match", b""), (b"if-range", b""), (b"if-unmodified-since", b""),
    (b"last-modified", b""), (b"link", b""), (b"location", b""), (b"max-forwards", b""),
    (b"proxy-authenticate", b""), (b"proxy-authorization", b""), (b"range", b""),
    (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
];

/// An entry's size in the dynamic table (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// One decoded header field.
#[derive(Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// Sent as "never indexed": it must stay so when re-encoded.
    pub sensitive: bool,
}

impl std::fmt::Debug for Field {
    // Values may be credentials (`authorization`); only names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Field({:?}, {} bytes)",
            self.name.escape_ascii().to_string(),
            self.value.len()
        )
    }
}

/// Why a header block does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("the header block ends inside a field")]
    Truncated,
    #[error("an HPACK integer is larger than 2^32")]
    IntegerOverflow,
    #[error("index {0} is in neither the static nor the dynamic table")]
    BadIndex(u64),
    #[error(transparent)]
    Huffman(#[from] HuffmanError),
    #[error("a dynamic table size update to {asked} exceeds the advertised {limit}")]
    TableTooLarge { asked: u64, limit: usize },
    #[error("a dynamic table size update follows a header field")]
    LateSizeUpdate,
    #[error("the decoded header list exceeds {0} bytes")]
    ListTooLarge(usize),
}

/// One direction's decoding context: the dynamic table, newest entry first.
pub struct Decoder {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as the receiving endpoint advertises it.
    limit: usize,
    max_list: usize,
}

impl Decoder {
    /// `limit` is the receiver's SETTINGS_HEADER_TABLE_SIZE; a block whose
    /// decoded list (RFC 7540 section 6.5.2 sizes) exceeds `max_list` is refused.
    pub fn new(limit: usize, max_list: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
            max_list,
        }
    }

    /// Decodes one complete header block, updating the dynamic table.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        let mut pos = 0usize;
        while pos < block.len() {
            let first = block[pos];
            let field = if first & 0x80 != 0 {
                let (name, value) = self.entry(integer(block, &mut pos, 7)?)?;
                Field {
                    name: name.to_vec(),
                    value: value.to_vec(),
                    sensitive: false,
                }
            } else if first & 0x40 != 0 {
                let field = self.literal(block, &mut pos, 6, false)?;
                self.insert(field.name.clone(), field.value.clone());
                field
            } else if first & 0x20 != 0 {
                if !fields.is_empty() {
                    return Err(HpackError::LateSizeUpdate);
                }
                let asked = integer(block, &mut pos, 5)?;
                if asked > self.limit as u64 {
                    return Err(HpackError::TableTooLarge {
                        asked,
                        limit: self.limit,
                    });
                }
                self.max_size = asked as usize;
                self.evict_to(self.max_size);
                continue;
            } else {
                self.literal(block, &mut pos, 4, first & 0x10 != 0)?
            };
            list_size += field.name.len() + field.value.len() + ENTRY_OVERHEAD;
            if list_size > self.max_list {
                return Err(HpackError::ListTooLarge(self.max_list));
            }
            fields.push(field);
        }
        Ok(fields)
    }

    fn entry(&self, index: u64) -> Result<(&[u8], &[u8]), HpackError> {
        let bad = HpackError::BadIndex(index);
        match usize::try_from(index).map_err(|_| bad.clone())? {
            0 => Err(bad),
            i @ 1..=61 => Ok(STATIC[i - 1]),
            i => self
                .table
                .get(i - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(bad),
        }
    }

    fn literal(
        &self,
        block: &[u8],
        pos: &mut usize,
        prefix: u8,
        sensitive: bool,
    ) -> Result<Field, HpackError> {
        let index = integer(block, pos, prefix)?;
        let name = if index == 0 {
            string(block, pos)?
        } else {
            self.entry(index)?.0.to_vec()
        };
        let value = string(block, pos)?;
        Ok(Field {
            name,
            value,
            sensitive,
        })
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.table.push_front((name, value));
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// An integer with an N-bit prefix (RFC 7541 section 5.1), at most 2^32.
fn integer(block: &[u8], pos: &mut usize, prefix: u8) -> Result<u64, HpackError> {
    let mask = ((1u16 << prefix) - 1) as u8;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)? & mask;
    *pos += 1;
    if first < mask {
        return Ok(u64::from(first));
    }
    let mut value = u64::from(mask);
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
        value += u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    if value > u64::from(u32::MAX) {
        return Err(HpackError::IntegerOverflow);
    }
    Ok(value)
}

/// A string literal (RFC 7541 section 5.2), raw or Huffman-coded.
fn string(block: &[u8], pos: &mut usize) -> Result<Vec<u8>, HpackError> {
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, pos, 7)? as usize;
    let end = pos
        .checked_add(len)
        .filter(|&end| end <= block.len())
        .ok_or(HpackError::Truncated)?;
    let raw = &block[*pos..end];
    *pos = end;
    if huffman {
        let mut out = Vec::with_capacity(len * 8 / 5 + 1);
        huffman::decode(raw, &mut out)?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

/// Encodes `fields` into a block that leaves the receiver's dynamic table
/// untouched: static-table references where name and value match, otherwise
/// literals "without indexing" (or "never indexed" for sensitive fields),
/// naming the static entry where only the name matches.
pub fn encode(fields: &[Field], out: &mut Vec<u8>) {
    for field in fields {
        if !field.sensitive
            && let Some(i) = STATIC
                .iter()
                .position(|&(n, v)| n == field.name && v == field.value)
        {
            put_integer(out, i as u64 + 1, 7, 0x80);
            continue;
        }
        let flags = if field.sensitive { 0x10 } else { 0x00 };
        match STATIC.iter().position(|&(n, _)| n == field.name) {
            Some(i) => put_integer(out, i as u64 + 1, 4, flags),
            None => {
                out.push(flags);
                put_string(out, &field.name);
            }
        }
        put_string(out, &field.value);
    }
}

fn put_integer(out: &mut Vec<u8>, mut value: u64, prefix: u8, flags: u8) {
    let mask = (1u64 << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, s.len() as u64, 7, 0);
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    fn pairs(fields: &[Field]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields.iter().map(|x| (x.name.clone(), x.value.clone())).collect()
    }

    #[test]
    fn spec_requests_without_huffman() {
        // RFC 7541 C.3: three requests on one connection.
        let mut d = Decoder::new(4096, 1 << 16);
        let one = hex::decode("828684410f7777772e6578616d706c652e636f6d").unwrap();
        assert_eq!(
            pairs(&d.decode(&one).unwrap()),
            [
                f(":method", "GET"),
                f(":scheme", "http"),
                f(":path", "/"),
                f(":authority", "www.example.com")
            ]
        );
        assert_eq!(d.size, 57);
        let two = hex::decode("828684be58086e6f2d6361636865").unwrap();
        assert_eq!(
            pairs(&d.decode(&two).unwrap()),
            [
                f(":method", "GET"),
                f(":scheme", "http"),
                f(":path", "/"),
                f(":authority", "www.example.com"),
                f("cache-control", "no-cache")
            ]
        );
        assert_eq!(d.size, 110);
        let three = hex::decode("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565").unwrap();
        assert_eq!(
            pairs(&d.decode(&three).unwrap()),
            [
                f(":method", "GET"),
                f(":scheme", "https"),
                f(":path", "/index.html"),
                f(":authority", "www.example.com"),
                f("custom-key", "custom-value")
            ]
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn spec_requests_with_huffman() {
        // RFC 7541 C.4.1 and C.4.2.
        let mut d = Decoder::new(4096, 1 << 16);
        let one = hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap();
        assert_eq!(
            pairs(&d.decode(&one).unwrap())[3],
            f(":authority", "www.example.com")
        );
        let two = hex::decode("828684be5886a8eb10649cbf").unwrap();
        assert_eq!(pairs(&d.decode(&two).unwrap())[4], f("cache-control", "no-cache"));
    }

    #[test]
    fn eviction_follows_the_table_size() {
        // A 64-byte table holds one small entry at a time.
        let mut d = Decoder::new(4096, 1 << 16);
        let mut block = vec![0x20 | 0x1f, 64 - 31]; // size update to 64
        for value in ["aaaa", "bbbb"] {
            block.push(0x40);
            put_string(&mut block, b"k");
            put_string(&mut block, value.as_bytes());
        }
        d.decode(&block).unwrap();
        assert_eq!(d.table.len(), 1);
        assert_eq!(d.entry(62).unwrap(), (&b"k"[..], &b"bbbb"[..]));
        assert_eq!(d.decode(&[0x80 | 63]), Err(HpackError::BadIndex(63)));
        // An entry larger than the table empties it.
        let mut big = vec![0x40];
        put_string(&mut big, b"k");
        put_string(&mut big, &[b'x'; 40]);
        d.decode(&big).unwrap();
        assert!(d.table.is_empty());
        assert_eq!(d.size, 0);
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let mut d = Decoder::new(4096, 1 << 16);
        assert_eq!(d.decode(&[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(d.decode(&[0x41]), Err(HpackError::Truncated));
        assert_eq!(d.decode(&[0x41, 0x05, b'a']), Err(HpackError::Truncated));
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(
            d.decode(&[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableTooLarge {
                asked: 4097,
                limit: 4096
            })
        );
        assert_eq!(d.decode(&[0x82, 0x20]), Err(HpackError::LateSizeUpdate));
        let mut small = Decoder::new(4096, 40);
        assert_eq!(small.decode(&[0x82, 0x82]), Err(HpackError::ListTooLarge(40)));
    }

    #[test]
    fn encoded_blocks_decode_to_the_same_fields_and_touch_no_table() {
        let fields = vec![
            Field {
                name: b":method".to_vec(),
                value: b"POST".to_vec(),
                sensitive: false,
            },
            Field {
                name: b":authority".to_vec(),
                value: b"localhost".to_vec(),
                sensitive: false,
            },
            Field {
                name: b"authorization".to_vec(),
                value: b"Bearer x".to_vec(),
                sensitive: true,
            },
            Field {
                name: b"x-long".to_vec(),
                value: vec![b'v'; 300],
                sensitive: false,
            },
        ];
        let mut block = Vec::new();
        encode(&fields, &mut block);
        let mut d = Decoder::new(4096, 1 << 16);
        assert_eq!(d.decode(&block).unwrap(), fields);
        assert!(d.table.is_empty());
        assert_eq!(block[0], 0x83);
    }
}
