//! Throws arbitrary bytes at the KMIP response parser: whatever the shared
//! TTLV decoder accepts (fuzzed on its own in crates/sealbroker-ttlv/fuzz) is
//! read as the answer to every operation the backend sends, with every
//! payload parser. None may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealbroker_backend_kmip::ttlv::Item;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = Item::decode(data) {
        sealbroker_backend_kmip::fuzzing::parse_any_response(item);
    }
});
