//! Throws arbitrary bytes at the helper protocol's decoders (both
//! directions) and its framing. None may panic; whatever decodes must
//! re-encode to the same bytes (the encoding is canonical).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealbroker_backend_pkcs11::wire::{Request, Response, decode_stream, read_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(data) {
        assert_eq!(&request.encode()[..], data, "a decoded request re-encodes to its bytes");
    }
    if let Ok(response) = Response::decode(data) {
        assert_eq!(&response.encode()[..], data, "a decoded response re-encodes to its bytes");
    }
    let _ = decode_stream(data);
    let mut input = data;
    while let Ok(Some(_)) = read_frame(&mut input) {}
});
