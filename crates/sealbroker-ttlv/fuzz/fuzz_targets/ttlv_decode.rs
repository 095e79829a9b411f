//! Throws arbitrary bytes at the TTLV decoder and the framing check. None
//! may panic or allocate beyond the input's size; whatever decodes must
//! re-encode to something that decodes to the same item. (The KMIP
//! backend's response parser and the KMIP door's request parser have their
//! own targets beside their crates.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealbroker_ttlv::{HEADER_LEN, Item, message_len};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<HEADER_LEN>() {
        let _ = message_len(header);
    }
    if let Ok(item) = Item::decode(data) {
        let again = item.encode().expect("a decoded item re-encodes");
        assert_eq!(Item::decode(&again).expect("re-encoded bytes decode"), item);
    }
});
