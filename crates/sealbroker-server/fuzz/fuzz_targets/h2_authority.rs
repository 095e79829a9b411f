//! Feeds arbitrary bytes, as a client's side of a unix-socket HTTP/2
//! connection, to the `:authority` rewriter (first byte: where to split the
//! input in two reads), and arbitrary bytes to the HPACK decoder.
//!
//! It may not panic, and:
//! - splitting the input changes neither the output nor whether it fails;
//! - a connection with no rewritten request reaches the server byte for
//!   byte (the output is a prefix of the input).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealbroker_server::net::authority::Rewriter;
use sealbroker_server::net::authority::hpack::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let _ = Decoder::new(4096, 256 * 1024).decode(input);

    let mut whole = Rewriter::default();
    let mut whole_out = Vec::new();
    let whole_result = whole.push(input, &mut whole_out);

    let at = usize::from(split) * input.len() / 256;
    let mut parts = Rewriter::default();
    let mut parts_out = Vec::new();
    let parts_result = parts
        .push(&input[..at], &mut parts_out)
        .and_then(|()| parts.push(&input[at..], &mut parts_out));

    assert_eq!(whole_result.is_ok(), parts_result.is_ok(), "splitting changed the outcome");
    if whole_result.is_ok() {
        assert_eq!(whole_out, parts_out, "splitting changed the output");
        assert_eq!(whole.rewritten(), parts.rewritten());
        if whole.rewritten() == 0 {
            assert!(input.starts_with(&whole_out), "an unrewritten connection was altered");
        }
    }
});
