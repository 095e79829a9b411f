//! Request parsing and response shapes, item by item.

use sealbroker_ttlv::{Item, ProtocolVersion, ResultReason, Value, enums, operation, tag};

use super::*;

fn header(version: ProtocolVersion, count: i32) -> Item {
    Item::structure(
        tag::REQUEST_HEADER,
        vec![version.item(), Item::integer(tag::BATCH_COUNT, count)],
    )
}

#[test]
fn a_request_reads_its_version_items_ids_and_payloads() {
    let message = Item::structure(
        tag::REQUEST_MESSAGE,
        vec![
            header(ProtocolVersion::V2_0, 1),
            Item::structure(
                tag::BATCH_ITEM,
                vec![
                    Item::enumeration(tag::OPERATION, operation::LOCATE),
                    Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, b"id-1"),
                    Item::structure(tag::REQUEST_PAYLOAD, vec![Item::integer(tag::MAXIMUM_ITEMS, 1)]),
                ],
            ),
        ],
    );
    let request = parse_request(&message).unwrap();
    assert_eq!(request.version, ProtocolVersion::V2_0);
    assert_eq!(request.on_error, OnError::Stop);
    assert_eq!(
        request.items,
        [BatchItem {
            operation: operation::LOCATE,
            id: Some(b"id-1".to_vec()),
            payload: vec![Item::integer(tag::MAXIMUM_ITEMS, 1)],
        }]
    );
}

#[test]
fn a_request_without_header_or_version_is_invalid_and_says_what_is_missing() {
    let no_header = Item::structure(tag::REQUEST_MESSAGE, vec![]);
    let err = parse_request(&no_header).unwrap_err();
    assert_eq!(err.refusal.reason, ResultReason::INVALID_MESSAGE);
    assert!(err.refusal.message.contains("Request Header"), "{err:?}");
    let no_version = Item::structure(
        tag::REQUEST_MESSAGE,
        vec![Item::structure(
            tag::REQUEST_HEADER,
            vec![Item::integer(tag::BATCH_COUNT, 1)],
        )],
    );
    let err = parse_request(&no_version).unwrap_err();
    assert!(err.refusal.message.contains("Protocol Version"), "{err:?}");
    assert_eq!(err.version, None);
}

#[test]
fn a_batch_item_without_an_operation_is_invalid_in_the_requests_version() {
    let message = Item::structure(
        tag::REQUEST_MESSAGE,
        vec![
            header(ProtocolVersion::V1_3, 1),
            Item::structure(tag::BATCH_ITEM, vec![]),
        ],
    );
    let err = parse_request(&message).unwrap_err();
    assert_eq!(err.version, Some(ProtocolVersion::V1_3));
    assert!(
        err.refusal.message.contains("Batch Item 0 has no Operation"),
        "{err:?}"
    );
}

#[test]
fn a_failed_response_item_carries_status_reason_message_and_no_payload() {
    let response = response(
        ProtocolVersion::V1_4,
        1_700_000_000,
        &[ResponseItem {
            operation: Some(operation::GET),
            id: Some(vec![7]),
            outcome: Outcome::Failed(Refusal::new(ResultReason::PERMISSION_DENIED, "no")),
        }],
    );
    let fields = response.items().unwrap();
    assert_eq!(
        fields[0],
        Item::structure(
            tag::RESPONSE_HEADER,
            vec![
                ProtocolVersion::V1_4.item(),
                Item::new(tag::TIME_STAMP, Value::DateTime(1_700_000_000)),
                Item::integer(tag::BATCH_COUNT, 1),
            ]
        )
    );
    assert_eq!(
        fields[1],
        Item::structure(
            tag::BATCH_ITEM,
            vec![
                Item::enumeration(tag::OPERATION, operation::GET),
                Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, &[7]),
                Item::enumeration(tag::RESULT_STATUS, enums::RESULT_FAILED),
                Item::enumeration(tag::RESULT_REASON, ResultReason::PERMISSION_DENIED.0),
                Item::text(tag::RESULT_MESSAGE, "no"),
            ]
        )
    );
}

#[test]
fn a_locate_filter_on_an_attribute_no_key_has_matches_nothing() {
    let key = KeyAttributes {
        unique_identifier: "k".into(),
        name: "k".into(),
        object_type: enums::OBJECT_TYPE_SYMMETRIC_KEY,
        algorithm: enums::ALGORITHM_AES,
        length: 256,
        usage: enums::USAGE_ENCRYPT | enums::USAGE_DECRYPT,
        state: enums::STATE_ACTIVE,
    };
    let filter = |name: &str, value: Item| {
        parse_locate(&[Item::structure(
            tag::ATTRIBUTE,
            vec![Item::text(tag::ATTRIBUTE_NAME, name), value],
        )])
        .unwrap()
    };
    let length = |n| Item::integer(tag::ATTRIBUTE_VALUE, n);
    assert!(filter("Cryptographic Length", length(256)).matches(&key));
    assert!(!filter("Cryptographic Length", length(128)).matches(&key));
    assert!(!filter("Object Group", Item::text(tag::ATTRIBUTE_VALUE, "default")).matches(&key));
    assert!(parse_locate(&[]).unwrap().matches(&key), "no filter: everything");
}

#[test]
fn locate_refuses_negative_paging_and_attributes_without_values() {
    let err = parse_locate(&[Item::integer(tag::MAXIMUM_ITEMS, -1)]).unwrap_err();
    assert!(err.message.contains("Maximum Items"), "{err:?}");
    let err = parse_locate(&[Item::structure(
        tag::ATTRIBUTE,
        vec![Item::text(tag::ATTRIBUTE_NAME, "Name")],
    )])
    .unwrap_err();
    assert!(err.message.contains("no Attribute Value"), "{err:?}");
}

#[test]
fn get_attributes_needs_a_text_unique_identifier() {
    let err = parse_get_attributes(&[]).unwrap_err();
    assert_eq!(err.reason, ResultReason::MISSING_DATA);
    let err = parse_get_attributes(&[Item::integer(tag::UNIQUE_IDENTIFIER, 1)]).unwrap_err();
    assert_eq!(err.reason, ResultReason::INVALID_MESSAGE);
}
