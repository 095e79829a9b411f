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
        link: None,
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

fn rsa_request(params: Vec<Item>, extra: Vec<Item>) -> Vec<Item> {
    let mut payload = vec![Item::text(tag::UNIQUE_IDENTIFIER, "pair")];
    if !params.is_empty() {
        payload.push(Item::structure(tag::CRYPTOGRAPHIC_PARAMETERS, params));
    }
    payload.push(Item::bytes(tag::DATA, b"the data"));
    payload.extend(extra);
    payload
}

#[test]
fn an_rsa_request_may_name_exactly_the_keys_oaep_parameters_or_none() {
    let all = vec![
        Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, enums::ALGORITHM_RSA),
        Item::enumeration(tag::PADDING_METHOD, enums::PADDING_OAEP),
        Item::enumeration(tag::HASHING_ALGORITHM, enums::HASH_SHA_384),
        Item::enumeration(tag::MASK_GENERATOR, enums::MASK_GENERATOR_MGF1),
        Item::enumeration(tag::MASK_GENERATOR_HASHING_ALGORITHM, enums::HASH_SHA_384),
    ];
    for params in [all, Vec::new()] {
        let data = parse_rsa_crypt(&rsa_request(params, Vec::new()), OaepHash::Sha384, "pair").unwrap();
        assert_eq!(&data[..], b"the data");
    }
}

#[test]
fn an_rsa_request_for_another_padding_hash_or_cipher_is_an_invalid_field_naming_the_keys_own() {
    let cases = [
        (
            tag::CRYPTOGRAPHIC_ALGORITHM,
            enums::ALGORITHM_AES,
            "Cryptographic Algorithm 0x03",
        ),
        (tag::PADDING_METHOD, enums::PADDING_PKCS5, "Padding Method 0x03"),
        (
            tag::HASHING_ALGORITHM,
            enums::HASH_SHA_1,
            "Hashing Algorithm 0x04",
        ),
        (
            tag::MASK_GENERATOR_HASHING_ALGORITHM,
            enums::HASH_SHA_512,
            "Mask Generator Hashing Algorithm 0x08",
        ),
        (tag::MASK_GENERATOR, 2, "Mask Generator 0x02"),
        (
            tag::BLOCK_CIPHER_MODE,
            enums::MODE_GCM,
            "Block Cipher Mode does not apply",
        ),
    ];
    for (field, value, says) in cases {
        let payload = rsa_request(vec![Item::enumeration(field, value)], Vec::new());
        let refusal = parse_rsa_crypt(&payload, OaepHash::Sha256, "pair").unwrap_err();
        assert_eq!(refusal.reason, ResultReason::INVALID_FIELD, "{says}");
        assert!(refusal.message.contains(says), "{}", refusal.message);
        assert!(
            refusal.message.contains("OAEP with sha256"),
            "{}",
            refusal.message
        );
    }
}

#[test]
fn an_rsa_request_with_an_iv_aad_or_tag_or_without_data_is_refused() {
    for (field, says) in [
        (tag::IV_COUNTER_NONCE, "IV/Counter/Nonce"),
        (tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, "Additional Data"),
        (tag::AUTHENTICATED_ENCRYPTION_TAG, "Authenticated Encryption Tag"),
    ] {
        let payload = rsa_request(Vec::new(), vec![Item::bytes(field, &[1; 12])]);
        let refusal = parse_rsa_crypt(&payload, OaepHash::Sha256, "pair").unwrap_err();
        assert_eq!(refusal.reason, ResultReason::INVALID_FIELD);
        assert!(refusal.message.contains(says), "{}", refusal.message);
    }
    let payload = vec![Item::text(tag::UNIQUE_IDENTIFIER, "pair")];
    let refusal = parse_rsa_crypt(&payload, OaepHash::Sha256, "pair").unwrap_err();
    assert_eq!(refusal.reason, ResultReason::MISSING_DATA);
    let payload = rsa_request(Vec::new(), vec![Item::bytes(tag::CORRELATION_VALUE, &[1])]);
    let refusal = parse_rsa_crypt(&payload, OaepHash::Sha256, "pair").unwrap_err();
    assert_eq!(refusal.reason, ResultReason::FEATURE_NOT_SUPPORTED);
}

#[test]
fn a_key_pair_half_reports_its_link_to_the_other_half() {
    let private = KeyAttributes {
        unique_identifier: "pair".into(),
        name: "pair".into(),
        object_type: enums::OBJECT_TYPE_PRIVATE_KEY,
        algorithm: enums::ALGORITHM_RSA,
        length: 3072,
        usage: enums::USAGE_DECRYPT,
        state: enums::STATE_ACTIVE,
        link: Some((enums::LINK_PUBLIC_KEY, "pair/public".into())),
    };
    let payload = get_attributes_response(ProtocolVersion::V2_0, &private, &[Selector::Tag(tag::LINK)]);
    assert_eq!(
        payload,
        vec![
            Item::text(tag::UNIQUE_IDENTIFIER, "pair"),
            Item::structure(
                tag::ATTRIBUTES,
                vec![Item::structure(
                    tag::LINK,
                    vec![
                        Item::enumeration(tag::LINK_TYPE, enums::LINK_PUBLIC_KEY),
                        Item::text(tag::LINKED_OBJECT_IDENTIFIER, "pair/public"),
                    ]
                )]
            ),
        ]
    );
}
