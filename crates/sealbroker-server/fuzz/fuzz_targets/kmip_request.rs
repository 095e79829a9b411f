//! Throws arbitrary bytes at the KMIP door's request path: TTLV decoding,
//! request parsing, every operation's payload reader and the response
//! encoder, over the fixture broker, as a TLS client with no grants.
//!
//! It may not panic, and whatever arrives gets a KMIP Response Message that
//! decodes, whose header counts its batch items, and that never carries a
//! Response Payload for Get or Export (key material never leaves).
//!
//! The fixture holds no RSA key pair, so the RSA-OAEP request reader is
//! also run directly on every structure the bytes decode to: it may not
//! panic, and what it accepts is the structure's Data.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealbroker_server::broker::caller::{Call, Caller, Door};
use sealbroker_core::OaepHash;
use sealbroker_server::doors::kmip::{KmipDoor, message};
use sealbroker_server_fuzz::fixture;
use sealbroker_ttlv::{Item, Value, operation, tag};

/// Every structure in `item`, depth first.
fn structures<'a>(item: &'a Item, out: &mut Vec<&'a [Item]>) {
    if let Some(fields) = item.items() {
        out.push(fields);
        for field in fields {
            structures(field, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Item::decode(data) {
        let mut found = Vec::new();
        structures(&request, &mut found);
        for payload in found {
            if let Ok(plaintext) = message::parse_rsa_crypt(payload, OaepHash::Sha1, "fuzz") {
                let data = payload.iter().find(|i| i.tag == tag::DATA).map(|i| &i.value);
                assert_eq!(data, Some(&Value::ByteString(plaintext)));
            }
        }
    }
    let fixture = fixture();
    let door = KmipDoor::new(fixture.broker.clone());
    let call = Call::new(
        Door::Kmip,
        Caller::Tls {
            fingerprint: "00".into(),
            names: vec!["dns:kmip-fuzz.test".into()],
        },
    );
    let answer = fixture.runtime.block_on(door.answer(&call, data));
    let response = Item::decode(&answer).expect("the door's answer decodes");
    assert_eq!(response.tag, tag::RESPONSE_MESSAGE);
    let fields = response.items().expect("a Response Message is a structure");
    let header = fields[0].items().expect("a Response Header");
    let count = header
        .iter()
        .find(|i| i.tag == tag::BATCH_COUNT)
        .map(|i| i.value.clone());
    let items: Vec<&Item> = fields.iter().filter(|i| i.tag == tag::BATCH_ITEM).collect();
    assert_eq!(count, Some(Value::Integer(items.len() as i32)));
    assert!(!items.is_empty(), "every answer has at least one batch item");
    for item in items {
        let fields = item.items().expect("a Batch Item is a structure");
        let op = fields.iter().find(|i| i.tag == tag::OPERATION);
        let exports = matches!(op.map(|i| &i.value), Some(Value::Enumeration(code)) if *code == operation::GET || *code == operation::EXPORT);
        let has_payload = fields.iter().any(|i| i.tag == tag::RESPONSE_PAYLOAD);
        assert!(!(exports && has_payload), "Get or Export answered with a payload");
    }
});
