//! HPACK's Huffman code (RFC 7541 section 5.2 and Appendix B), decoding only.
//!
//! The code is canonical: codes of one length are consecutive in symbol
//! order and shorter codes come first. So the 257 code lengths below (the
//! spec's `len` column, symbol 256 being EOS) determine every code, and the
//! decoder needs no tree: it accumulates bits until the code falls inside
//! the range of its length. The tests pin codes from the spec's table, and
//! the tests crate cross-checks against python-hyper's `hpack`.

use std::sync::LazyLock;

const MAX_LEN: usize = 30;
const EOS: u16 = 256;

#[rustfmt::skip]
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
];

/// The canonical code's ranges: for each length, its first code, how many
/// codes it has, and where its symbols start in `symbols`.
struct Canonical {
    first: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    offset: [usize; MAX_LEN + 1],
    /// Symbols sorted by (length, symbol).
    symbols: [u16; 257],
}

static CODE: LazyLock<Canonical> = LazyLock::new(|| {
    let mut count = [0u32; MAX_LEN + 1];
    for &len in &LENGTHS {
        count[len as usize] += 1;
    }
    let mut first = [0u32; MAX_LEN + 1];
    let mut offset = [0usize; MAX_LEN + 1];
    let mut code = 0u32;
    let mut at = 0usize;
    for len in 1..=MAX_LEN {
        code = (code + count[len - 1]) << 1;
        first[len] = code;
        offset[len] = at;
        at += count[len] as usize;
    }
    let mut symbols = [0u16; 257];
    let mut next = offset;
    for (symbol, &len) in LENGTHS.iter().enumerate() {
        symbols[next[len as usize]] = symbol as u16;
        next[len as usize] += 1;
    }
    Canonical {
        first,
        count,
        offset,
        symbols,
    }
});

/// Why a Huffman string does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("the Huffman string contains the EOS symbol")]
    Eos,
    #[error("the Huffman string ends in padding that is longer than 7 bits or not all ones")]
    Padding,
}

/// Decodes one Huffman-coded string literal, appending to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let table = &*CODE;
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let index = code.wrapping_sub(table.first[len]);
            if code >= table.first[len] && index < table.count[len] {
                let symbol = table.symbols[table.offset[len] + index as usize];
                if symbol == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(symbol as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Every 30-bit pattern not yet matched is EOS's prefix or EOS.
                return Err(HuffmanError::Eos);
            }
        }
    }
    // What is left must be a prefix of EOS (all ones), shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn encode(input: &[u8]) -> Vec<u8> {
    let table = &*CODE;
    let code_of = |symbol: u16| {
        let len = LENGTHS[symbol as usize] as usize;
        let rank = table.symbols[table.offset[len]..table.offset[len] + table.count[len] as usize]
            .iter()
            .position(|&s| s == symbol)
            .expect("every symbol has a code");
        (table.first[len] + rank as u32, len)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0usize);
    for &byte in input {
        let (code, len) = code_of(u16::from(byte));
        acc = (acc << len) | u64::from(code);
        bits += len;
        while bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(symbol: u16) -> (u32, usize) {
        let table = &*CODE;
        let len = LENGTHS[symbol as usize] as usize;
        let slice = &table.symbols[table.offset[len]..table.offset[len] + table.count[len] as usize];
        let rank = slice.iter().position(|&s| s == symbol).unwrap();
        (table.first[len] + rank as u32, len)
    }

    #[test]
    fn codes_match_the_spec_table() {
        // Rows of RFC 7541 Appendix B: (sym, code as hex, len).
        for (symbol, hex, len) in [
            (0u16, 0x1ff8u32, 13usize),
            (b' ' as u16, 0x14, 6),
            (b'0' as u16, 0x0, 5),
            (b'a' as u16, 0x3, 5),
            (b'/' as u16, 0x18, 6),
            (b'%' as u16, 0x15, 6),
            (b'z' as u16, 0x7b, 7),
            (b'~' as u16, 0x1ffd, 13),
            (255, 0x3ffffee, 26),
            (EOS, 0x3fffffff, 30),
        ] {
            assert_eq!(code(symbol), (hex, len), "symbol {symbol}");
        }
    }

    #[test]
    fn spec_example_decodes() {
        // RFC 7541 C.4.1: "www.example.com".
        let coded = hex::decode("f1e3c2e5f23a6ba0ab90f4ff").unwrap();
        let mut out = Vec::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        assert_eq!(encode(b"www.example.com"), coded);
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut out = Vec::new();
        decode(&encode(&all), &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        let mut out = Vec::new();
        // 'a' (00011) padded with zeros instead of ones.
        assert_eq!(decode(&[0b0001_1000], &mut out), Err(HuffmanError::Padding));
        // A whole byte of ones after a complete symbol is padding longer than 7 bits.
        assert_eq!(decode(&[0b0001_1111, 0xff], &mut out), Err(HuffmanError::Padding));
        // EOS itself (30 ones).
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::Eos)
        );
        assert_eq!(decode(&[], &mut out), Ok(()));
    }
}
