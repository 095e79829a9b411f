//! Throws arbitrary bytes at the TTLV decoder, the framing check and the
//! KMIP response parser. None may panic or allocate beyond the input's size;
//! whatever decodes must re-encode to something that decodes to the same item.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealbroker_backend_kmip::ttlv::{HEADER_LEN, Item, message_len};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<HEADER_LEN>() {
        let _ = message_len(header);
    }
    if let Ok(item) = Item::decode(data) {
        let again = item.encode().expect("a decoded item re-encodes");
        assert_eq!(Item::decode(&again).expect("re-encoded bytes decode"), item);
        sealbroker_backend_kmip::fuzzing::parse_any_response(item);
    }
});
