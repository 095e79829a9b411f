//! The door over a real broker (test-kit memory keys): requests in as
//! bytes, responses out as bytes, as a client sees them.

use std::sync::Arc;

use sealbroker_testkit::memory::MemoryKind;
use sealbroker_ttlv::{Item, ProtocolVersion, Tag, Value, enums, operation, tag};

use super::*;
use crate::broker::registry::BackendRegistry;
use crate::config::Config;

async fn door() -> KmipDoor {
    let text = "profile = \"development\"\n[server]\nunix_socket = \"/tmp/unused.sock\"\n\
                [backends.hsm]\ntype = \"kmipdoor\"\n\
                [keys.unseal]\nbackend = \"hsm\"\nallow = { wrap = [\"dns:openbao.test\"], unwrap = [\"dns:openbao.test\"] }\n\
                [keys.sealonly]\nbackend = \"hsm\"\nallow = { wrap = [\"dns:openbao.test\"] }\n\
                [keys.secret]\nbackend = \"hsm\"\nallow = { wrap = [\"dns:someone.else\"] }\n";
    let registry = BackendRegistry::default().with(MemoryKind::leak("kmipdoor"));
    let broker = Broker::from_config(&Config::parse(text).unwrap(), &registry)
        .await
        .unwrap();
    KmipDoor::new(Arc::new(broker))
}

fn openbao() -> Call {
    Call::new(
        Door::Kmip,
        Caller::Tls {
            fingerprint: "00".into(),
            names: vec!["dns:openbao.test".into()],
        },
    )
}

fn request(version: ProtocolVersion, items: Vec<(u32, Vec<Item>)>) -> Vec<u8> {
    let mut fields = vec![Item::structure(
        tag::REQUEST_HEADER,
        vec![
            version.item(),
            Item::integer(tag::BATCH_COUNT, items.len() as i32),
        ],
    )];
    for (index, (op, payload)) in items.into_iter().enumerate() {
        fields.push(Item::structure(
            tag::BATCH_ITEM,
            vec![
                Item::enumeration(tag::OPERATION, op),
                Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, &[index as u8 + 1]),
                Item::structure(tag::REQUEST_PAYLOAD, payload),
            ],
        ));
    }
    Item::structure(tag::REQUEST_MESSAGE, fields)
        .encode()
        .unwrap()
        .to_vec()
}

/// The response's header fields and batch items.
fn batch_items(bytes: &[u8]) -> (Vec<Item>, Vec<Vec<Item>>) {
    let response = Item::decode(bytes).unwrap();
    assert_eq!(response.tag, tag::RESPONSE_MESSAGE);
    let fields = response.items().unwrap();
    let header = fields[0].items().unwrap().to_vec();
    let items = fields[1..].iter().map(|i| i.items().unwrap().to_vec()).collect();
    (header, items)
}

fn field(items: &[Item], wanted: Tag) -> Option<&Value> {
    items.iter().find(|i| i.tag == wanted).map(|i| &i.value)
}

fn payload(item: &[Item]) -> Vec<Item> {
    match field(item, tag::RESPONSE_PAYLOAD) {
        Some(Value::Structure(p)) => p.clone(),
        other => panic!("no payload: {other:?} in {item:?}"),
    }
}

fn reason(item: &[Item]) -> (u32, String) {
    assert_eq!(
        field(item, tag::RESULT_STATUS),
        Some(&Value::Enumeration(enums::RESULT_FAILED))
    );
    let Some(Value::Enumeration(reason)) = field(item, tag::RESULT_REASON) else {
        panic!("no reason in {item:?}")
    };
    let Some(Value::TextString(message)) = field(item, tag::RESULT_MESSAGE) else {
        panic!("no message in {item:?}")
    };
    (*reason, message.clone())
}

fn name_filter(name: &str) -> Item {
    Item::structure(
        tag::ATTRIBUTE,
        vec![
            Item::text(tag::ATTRIBUTE_NAME, "Name"),
            Item::structure(
                tag::ATTRIBUTE_VALUE,
                vec![
                    Item::text(tag::NAME_VALUE, name),
                    Item::enumeration(tag::NAME_TYPE, enums::NAME_TYPE_UNINTERPRETED_TEXT),
                ],
            ),
        ],
    )
}

#[tokio::test]
async fn batch_items_echo_their_ids_and_the_header_counts_them() {
    let door = door().await;
    let bytes = request(
        ProtocolVersion::V1_4,
        vec![
            (operation::DISCOVER_VERSIONS, vec![]),
            (
                operation::QUERY,
                vec![Item::enumeration(tag::QUERY_FUNCTION, enums::QUERY_OBJECTS)],
            ),
        ],
    );
    let (header, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    assert_eq!(field(&header, tag::BATCH_COUNT), Some(&Value::Integer(2)));
    assert_eq!(
        ProtocolVersion::from_item(header.iter().find(|i| i.tag == tag::PROTOCOL_VERSION).unwrap()),
        Some(ProtocolVersion::V1_4)
    );
    for (index, item) in items.iter().enumerate() {
        assert_eq!(
            field(item, tag::UNIQUE_BATCH_ITEM_ID),
            Some(&Value::ByteString(vec![index as u8 + 1].into()))
        );
        assert_eq!(
            field(item, tag::RESULT_STATUS),
            Some(&Value::Enumeration(enums::RESULT_SUCCESS))
        );
    }
}

#[tokio::test]
async fn discover_versions_answers_the_shared_versions_in_the_clients_order() {
    let door = door().await;
    let offered = vec![
        ProtocolVersion { major: 3, minor: 0 }.item(),
        ProtocolVersion::V1_2.item(),
        ProtocolVersion { major: 1, minor: 1 }.item(),
        ProtocolVersion::V2_0.item(),
    ];
    let bytes = request(
        ProtocolVersion { major: 1, minor: 1 },
        vec![(operation::DISCOVER_VERSIONS, offered)],
    );
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    let versions: Vec<_> = payload(&items[0])
        .iter()
        .map(|v| ProtocolVersion::from_item(v).unwrap())
        .collect();
    assert_eq!(versions, [ProtocolVersion::V1_2, ProtocolVersion::V2_0]);

    let bytes = request(
        ProtocolVersion::V1_2,
        vec![(operation::DISCOVER_VERSIONS, vec![])],
    );
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    assert_eq!(payload(&items[0]).len(), 4, "all of 2.0, 1.4, 1.3, 1.2");
}

#[tokio::test]
async fn other_operations_under_an_unsupported_version_are_refused_naming_the_versions() {
    let door = door().await;
    let bytes = request(
        ProtocolVersion { major: 1, minor: 1 },
        vec![(operation::LOCATE, vec![])],
    );
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    let (reason, message) = reason(&items[0]);
    assert_eq!(reason, ResultReason::INVALID_MESSAGE.0);
    assert!(
        message.contains("1.1 is not supported") && message.contains("2.0, 1.4, 1.3, 1.2"),
        "{message}"
    );
}

#[tokio::test]
async fn query_lists_the_served_operations_and_symmetric_keys() {
    let door = door().await;
    let bytes = request(
        ProtocolVersion::V1_2,
        vec![(
            operation::QUERY,
            vec![
                Item::enumeration(tag::QUERY_FUNCTION, enums::QUERY_OPERATIONS),
                Item::enumeration(tag::QUERY_FUNCTION, enums::QUERY_OBJECTS),
                Item::enumeration(tag::QUERY_FUNCTION, enums::QUERY_SERVER_INFORMATION),
            ],
        )],
    );
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    let answer = payload(&items[0]);
    let ops: Vec<u32> = answer
        .iter()
        .filter(|i| i.tag == tag::OPERATION)
        .map(|i| match i.value {
            Value::Enumeration(op) => op,
            _ => panic!(),
        })
        .collect();
    assert_eq!(ops, OPERATIONS);
    assert_eq!(
        field(&answer, tag::OBJECT_TYPE),
        Some(&Value::Enumeration(enums::OBJECT_TYPE_SYMMETRIC_KEY))
    );
    assert_eq!(
        field(&answer, tag::VENDOR_IDENTIFICATION),
        Some(&Value::TextString("sealbroker".into()))
    );
}

#[tokio::test]
async fn locate_by_name_finds_a_usable_key_and_nothing_else() {
    let door = door().await;
    let locate = |name: &str| {
        request(
            ProtocolVersion::V1_4,
            vec![(operation::LOCATE, vec![name_filter(name)])],
        )
    };
    let (_, items) = batch_items(&door.answer(&openbao(), &locate("unseal")).await);
    let found = payload(&items[0]);
    assert_eq!(field(&found, tag::LOCATED_ITEMS), Some(&Value::Integer(1)));
    assert_eq!(
        field(&found, tag::UNIQUE_IDENTIFIER),
        Some(&Value::TextString("unseal".into()))
    );
    // A key this caller may not use and a key that does not exist: both empty.
    for name in ["secret", "nonexistent"] {
        let (_, items) = batch_items(&door.answer(&openbao(), &locate(name)).await);
        assert_eq!(
            payload(&items[0]),
            vec![Item::integer(tag::LOCATED_ITEMS, 0)],
            "{name}"
        );
    }
}

#[tokio::test]
async fn locate_reads_kmip_2_0_attributes_and_pages() {
    let door = door().await;
    let attributes = |object_type: u32| {
        Item::structure(
            tag::ATTRIBUTES,
            vec![Item::enumeration(tag::OBJECT_TYPE, object_type)],
        )
    };
    let bytes = request(
        ProtocolVersion::V2_0,
        vec![
            (
                operation::LOCATE,
                vec![attributes(enums::OBJECT_TYPE_SYMMETRIC_KEY)],
            ),
            (operation::LOCATE, vec![attributes(0x03)]), // Public Key
            (
                operation::LOCATE,
                vec![
                    Item::integer(tag::OFFSET_ITEMS, 1),
                    attributes(enums::OBJECT_TYPE_SYMMETRIC_KEY),
                ],
            ),
        ],
    );
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    assert_eq!(
        payload(&items[0]),
        vec![
            Item::integer(tag::LOCATED_ITEMS, 2),
            Item::text(tag::UNIQUE_IDENTIFIER, "sealonly"),
            Item::text(tag::UNIQUE_IDENTIFIER, "unseal")
        ]
    );
    assert_eq!(payload(&items[1]), vec![Item::integer(tag::LOCATED_ITEMS, 0)]);
    assert_eq!(
        payload(&items[2]),
        vec![
            Item::integer(tag::LOCATED_ITEMS, 2),
            Item::text(tag::UNIQUE_IDENTIFIER, "unseal")
        ]
    );
}

#[tokio::test]
async fn get_attributes_reports_the_key_in_each_versions_shape() {
    let door = door().await;
    let uid = Item::text(tag::UNIQUE_IDENTIFIER, "unseal");
    let bytes = request(
        ProtocolVersion::V1_2,
        vec![(operation::GET_ATTRIBUTES, vec![uid.clone()])],
    );
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    let answer = payload(&items[0]);
    let names: Vec<&str> = answer
        .iter()
        .filter(|i| i.tag == tag::ATTRIBUTE)
        .map(|a| match field(a.items().unwrap(), tag::ATTRIBUTE_NAME) {
            Some(Value::TextString(n)) => n.as_str(),
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        names,
        [
            "Unique Identifier",
            "Name",
            "Object Type",
            "Cryptographic Algorithm",
            "Cryptographic Length",
            "Cryptographic Usage Mask",
            "State"
        ]
    );

    let bytes = request(
        ProtocolVersion::V2_0,
        vec![(
            operation::GET_ATTRIBUTES,
            vec![
                uid,
                Item::enumeration(tag::ATTRIBUTE_REFERENCE, tag::STATE.value()),
                Item::enumeration(tag::ATTRIBUTE_REFERENCE, tag::CRYPTOGRAPHIC_ALGORITHM.value()),
            ],
        )],
    );
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    assert_eq!(
        payload(&items[0]),
        vec![
            Item::text(tag::UNIQUE_IDENTIFIER, "unseal"),
            Item::structure(
                tag::ATTRIBUTES,
                vec![
                    Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, enums::ALGORITHM_AES),
                    Item::enumeration(tag::STATE, enums::STATE_ACTIVE),
                ]
            ),
        ]
    );
}

#[tokio::test]
async fn get_attributes_of_a_forbidden_key_reads_like_an_unknown_one() {
    let door = door().await;
    let ask = async |uid: &str| {
        let bytes = request(
            ProtocolVersion::V1_4,
            vec![
                (
                    operation::GET_ATTRIBUTES,
                    vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)],
                ),
                (
                    operation::GET_ATTRIBUTE_LIST,
                    vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)],
                ),
            ],
        );
        let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
        reason(&items[0])
    };
    let (forbidden, forbidden_message) = ask("secret").await;
    let (unknown, unknown_message) = ask("nonexistent").await;
    assert_eq!(forbidden, ResultReason::ITEM_NOT_FOUND.0);
    assert_eq!(unknown, forbidden);
    assert_eq!(
        forbidden_message.replace("secret", "X"),
        unknown_message.replace("nonexistent", "X")
    );
}

#[tokio::test]
async fn get_attribute_list_names_1_x_attributes_and_references_2_0_tags() {
    let door = door().await;
    let uid = vec![Item::text(tag::UNIQUE_IDENTIFIER, "unseal")];
    let bytes = request(
        ProtocolVersion::V1_3,
        vec![(operation::GET_ATTRIBUTE_LIST, uid.clone())],
    );
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    assert!(payload(&items[0]).contains(&Item::text(tag::ATTRIBUTE_NAME, "Cryptographic Length")));
    let bytes = request(ProtocolVersion::V2_0, vec![(operation::GET_ATTRIBUTE_LIST, uid)]);
    let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
    assert!(payload(&items[0]).contains(&Item::enumeration(tag::ATTRIBUTE_REFERENCE, tag::NAME.value())));
}

#[tokio::test]
async fn key_material_never_leaves_and_keys_are_not_made_or_destroyed_over_kmip() {
    let door = door().await;
    let uid = || vec![Item::text(tag::UNIQUE_IDENTIFIER, "unseal")];
    for (op, expected) in [
        (operation::GET, ResultReason::PERMISSION_DENIED),
        (operation::EXPORT, ResultReason::PERMISSION_DENIED),
        (operation::CREATE, ResultReason::OPERATION_NOT_SUPPORTED),
        (operation::REGISTER, ResultReason::OPERATION_NOT_SUPPORTED),
        (operation::DESTROY, ResultReason::OPERATION_NOT_SUPPORTED),
        (operation::REVOKE, ResultReason::OPERATION_NOT_SUPPORTED),
        (0x7777, ResultReason::OPERATION_NOT_SUPPORTED),
    ] {
        let bytes = request(ProtocolVersion::V1_4, vec![(op, uid())]);
        let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
        let (reason, message) = reason(&items[0]);
        assert_eq!(reason, expected.0, "operation 0x{op:X}: {message}");
        assert!(!message.is_empty());
        assert!(payload_absent(&items[0]));
    }
}

fn payload_absent(item: &[Item]) -> bool {
    field(item, tag::RESPONSE_PAYLOAD).is_none()
}

#[tokio::test]
async fn a_failed_item_stops_the_batch_unless_told_to_continue() {
    let door = door().await;
    let items = || {
        vec![
            (operation::QUERY, vec![]),
            (operation::GET, vec![Item::text(tag::UNIQUE_IDENTIFIER, "unseal")]),
            (operation::QUERY, vec![]),
        ]
    };
    let (_, answered) = batch_items(
        &door
            .answer(&openbao(), &request(ProtocolVersion::V1_4, items()))
            .await,
    );
    assert_eq!(
        answered.len(),
        2,
        "Stop (the default) leaves out what follows the failure"
    );

    let with_option = async |option: u32| {
        let mut message = Item::decode(&request(ProtocolVersion::V1_4, items())).unwrap();
        let Value::Structure(fields) = &mut message.value else {
            panic!()
        };
        let Value::Structure(header) = &mut fields[0].value else {
            panic!()
        };
        header.push(Item::enumeration(tag::BATCH_ERROR_CONTINUATION_OPTION, option));
        batch_items(&door.answer(&openbao(), &message.encode().unwrap()).await).1
    };
    assert_eq!(with_option(enums::BATCH_ERROR_CONTINUE).await.len(), 3);
    let undone = with_option(enums::BATCH_ERROR_UNDO).await;
    assert_eq!(undone.len(), 2);
    assert_eq!(
        field(&undone[0], tag::RESULT_STATUS),
        Some(&Value::Enumeration(enums::RESULT_UNDONE))
    );
}

#[tokio::test]
async fn malformed_requests_get_an_invalid_message_answer_never_a_panic() {
    let door = door().await;
    let not_a_request = Item::structure(tag::RESPONSE_MESSAGE, vec![]).encode().unwrap();
    let miscounted = Item::structure(
        tag::REQUEST_MESSAGE,
        vec![
            Item::structure(
                tag::REQUEST_HEADER,
                vec![ProtocolVersion::V1_4.item(), Item::integer(tag::BATCH_COUNT, 2)],
            ),
            Item::structure(
                tag::BATCH_ITEM,
                vec![Item::enumeration(tag::OPERATION, operation::QUERY)],
            ),
        ],
    )
    .encode()
    .unwrap()
    .to_vec();
    for (what, bytes) in [
        ("garbage", b"not ttlv at all".to_vec()),
        ("empty", Vec::new()),
        ("a response message", not_a_request.to_vec()),
        ("a miscounted batch", miscounted),
    ] {
        let (_, items) = batch_items(&door.answer(&openbao(), &bytes).await);
        let (reason, message) = reason(&items[0]);
        assert_eq!(reason, ResultReason::INVALID_MESSAGE.0, "{what}: {message}");
        assert!(field(&items[0], tag::OPERATION).is_none(), "{what}");
    }
}

// ---------------------------------------------------------------------------
// Encrypt and Decrypt

fn gcm(tag_length: Option<i32>) -> Item {
    let mut params = vec![
        Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, enums::ALGORITHM_AES),
        Item::enumeration(tag::BLOCK_CIPHER_MODE, enums::MODE_GCM),
    ];
    if let Some(t) = tag_length {
        params.push(Item::integer(tag::TAG_LENGTH, t));
    }
    Item::structure(tag::CRYPTOGRAPHIC_PARAMETERS, params)
}

fn bytes_of(items: &[Item], wanted: Tag) -> Option<Vec<u8>> {
    match field(items, wanted) {
        Some(Value::ByteString(b)) => Some(b.to_vec()),
        None => None,
        other => panic!("{wanted} is not bytes: {other:?}"),
    }
}

/// One Encrypt (or Decrypt) of `data` under `uid`, with the extra fields.
async fn crypt(
    door: &KmipDoor,
    version: ProtocolVersion,
    op: u32,
    uid: &str,
    fields: Vec<Item>,
) -> Vec<Item> {
    let mut payload = vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)];
    payload.extend(fields);
    let (_, items) = batch_items(
        &door
            .answer(&openbao(), &request(version, vec![(op, payload)]))
            .await,
    );
    items.into_iter().next().unwrap()
}

#[tokio::test]
async fn encrypt_then_decrypt_round_trips_in_every_version_with_the_tag_apart_when_asked() {
    let door = door().await;
    let iv = [7u8; 12];
    for version in [
        ProtocolVersion::V1_2,
        ProtocolVersion::V1_4,
        ProtocolVersion::V2_0,
    ] {
        let sealed = crypt(
            &door,
            version,
            operation::ENCRYPT,
            "unseal",
            vec![
                gcm(Some(16)),
                Item::bytes(tag::DATA, b"root key"),
                Item::bytes(tag::IV_COUNTER_NONCE, &iv),
            ],
        )
        .await;
        let answer = payload(&sealed);
        let data = bytes_of(&answer, tag::DATA).unwrap();
        let tag = bytes_of(&answer, tag::AUTHENTICATED_ENCRYPTION_TAG);
        assert_eq!(
            bytes_of(&answer, tag::IV_COUNTER_NONCE),
            None,
            "{version}: the client's IV is not echoed"
        );
        assert!(
            !data.windows(8).any(|w| w == b"root key"),
            "{version}: plaintext in the ciphertext"
        );
        if version >= ProtocolVersion::V1_4 {
            assert_eq!(tag.as_ref().map(Vec::len), Some(16), "{version}");
        } else {
            assert_eq!(tag, None, "{version}: 1.2 has no tag field, so Data holds it all");
        }
        let mut fields = vec![
            gcm(None),
            Item::bytes(tag::DATA, &data),
            Item::bytes(tag::IV_COUNTER_NONCE, &iv),
        ];
        if let Some(tag) = &tag {
            fields.push(Item::bytes(tag::AUTHENTICATED_ENCRYPTION_TAG, tag));
        }
        let opened = crypt(&door, version, operation::DECRYPT, "unseal", fields).await;
        assert_eq!(
            bytes_of(&payload(&opened), tag::DATA).unwrap(),
            b"root key",
            "{version}"
        );

        // A client that keeps Data and tag together, as OpenBao does before
        // 1.4, may send them as one.
        let whole: Vec<u8> = data.iter().chain(tag.iter().flatten()).copied().collect();
        let opened = crypt(
            &door,
            version,
            operation::DECRYPT,
            "unseal",
            vec![
                Item::bytes(tag::DATA, &whole),
                Item::bytes(tag::IV_COUNTER_NONCE, &iv),
            ],
        )
        .await;
        assert_eq!(
            bytes_of(&payload(&opened), tag::DATA).unwrap(),
            b"root key",
            "{version}"
        );
    }
}

#[tokio::test]
async fn an_encrypt_without_an_iv_gets_one_and_every_tampering_reads_the_same() {
    let door = door().await;
    let aad = Item::bytes(tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, b"bao-seal");
    let sealed = crypt(
        &door,
        ProtocolVersion::V1_4,
        operation::ENCRYPT,
        "unseal",
        vec![Item::bytes(tag::DATA, b"keyring"), aad.clone()],
    )
    .await;
    let answer = payload(&sealed);
    let iv = bytes_of(&answer, tag::IV_COUNTER_NONCE).expect("the door says which IV it made");
    assert_eq!(iv.len(), 12);
    let data = bytes_of(&answer, tag::DATA).unwrap();

    let decrypt = |data: Vec<u8>, iv: Vec<u8>, aad: Item, uid: &'static str| {
        let door = &door;
        async move {
            crypt(
                door,
                ProtocolVersion::V1_4,
                operation::DECRYPT,
                uid,
                vec![
                    Item::bytes(tag::DATA, &data),
                    Item::bytes(tag::IV_COUNTER_NONCE, &iv),
                    aad,
                ],
            )
            .await
        }
    };
    let opened = decrypt(data.clone(), iv.clone(), aad.clone(), "unseal").await;
    assert_eq!(bytes_of(&payload(&opened), tag::DATA).unwrap(), b"keyring");

    let mut flipped = data.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    let mut other_iv = iv.clone();
    other_iv[0] ^= 1;
    let other_aad = Item::bytes(tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, b"other");
    let mut messages = Vec::new();
    for (what, item) in [
        (
            "a flipped byte",
            decrypt(flipped, iv.clone(), aad.clone(), "unseal").await,
        ),
        (
            "a cut ciphertext",
            decrypt(data[..data.len() - 1].to_vec(), iv.clone(), aad.clone(), "unseal").await,
        ),
        (
            "another IV",
            decrypt(data.clone(), other_iv, aad.clone(), "unseal").await,
        ),
        (
            "other additional data",
            decrypt(data.clone(), iv.clone(), other_aad, "unseal").await,
        ),
    ] {
        let (reason, message) = reason(&item);
        assert_eq!(reason, ResultReason::CRYPTOGRAPHIC_FAILURE.0, "{what}: {message}");
        assert!(payload_absent(&item), "{what}");
        messages.push(message);
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "every failure reads the same: {messages:?}");
}

#[tokio::test]
async fn encrypt_and_decrypt_refuse_what_the_key_does_not_offer_naming_it() {
    let door = door().await;
    let data = Item::bytes(tag::DATA, b"x");
    let rsa = Item::structure(
        tag::CRYPTOGRAPHIC_PARAMETERS,
        vec![Item::enumeration(
            tag::CRYPTOGRAPHIC_ALGORITHM,
            enums::ALGORITHM_RSA,
        )],
    );
    let cbc = Item::structure(
        tag::CRYPTOGRAPHIC_PARAMETERS,
        vec![Item::enumeration(tag::BLOCK_CIPHER_MODE, enums::MODE_CBC)],
    );
    for (what, op, uid, fields, expected, says) in [
        (
            "RSA",
            operation::ENCRYPT,
            "unseal",
            vec![rsa, data.clone()],
            ResultReason::INVALID_FIELD,
            "Cryptographic Algorithm",
        ),
        (
            "CBC",
            operation::ENCRYPT,
            "unseal",
            vec![cbc, data.clone()],
            ResultReason::INVALID_FIELD,
            "Block Cipher Mode",
        ),
        (
            "a tag of 4 bytes",
            operation::ENCRYPT,
            "unseal",
            vec![gcm(Some(4)), data.clone()],
            ResultReason::INVALID_FIELD,
            "Tag Length",
        ),
        (
            "no data",
            operation::ENCRYPT,
            "unseal",
            vec![],
            ResultReason::MISSING_DATA,
            "Data",
        ),
        (
            "no IV to decrypt",
            operation::DECRYPT,
            "unseal",
            vec![data.clone()],
            ResultReason::MISSING_DATA,
            "IV",
        ),
        (
            "streaming",
            operation::ENCRYPT,
            "unseal",
            vec![data.clone(), Item::boolean(tag::INIT_INDICATOR, true)],
            ResultReason::FEATURE_NOT_SUPPORTED,
            "streaming",
        ),
        (
            "an unknown key",
            operation::ENCRYPT,
            "nope",
            vec![data.clone()],
            ResultReason::PERMISSION_DENIED,
            "nope",
        ),
        (
            "another's key",
            operation::ENCRYPT,
            "secret",
            vec![data.clone()],
            ResultReason::PERMISSION_DENIED,
            "secret",
        ),
        (
            "a key this client may only seal with",
            operation::DECRYPT,
            "sealonly",
            vec![data.clone(), Item::bytes(tag::IV_COUNTER_NONCE, &[1; 12])],
            ResultReason::PERMISSION_DENIED,
            "sealonly",
        ),
    ] {
        let item = crypt(&door, ProtocolVersion::V1_4, op, uid, fields).await;
        let (reason, message) = reason(&item);
        assert_eq!(reason, expected.0, "{what}: {message}");
        assert!(message.contains(says), "{what}: {message}");
    }
}

#[tokio::test]
async fn a_response_over_the_maximum_response_size_is_refused_as_too_large() {
    let door = door().await;
    let mut message = Item::decode(&request(
        ProtocolVersion::V1_4,
        vec![(
            operation::ENCRYPT,
            vec![
                Item::text(tag::UNIQUE_IDENTIFIER, "unseal"),
                Item::bytes(tag::DATA, &[0u8; 4096]),
            ],
        )],
    ))
    .unwrap();
    let Value::Structure(fields) = &mut message.value else {
        panic!()
    };
    let Value::Structure(header) = &mut fields[0].value else {
        panic!()
    };
    header.push(Item::integer(tag::MAXIMUM_RESPONSE_SIZE, 1024));
    let (_, items) = batch_items(&door.answer(&openbao(), &message.encode().unwrap()).await);
    let (reason, message) = reason(&items[0]);
    assert_eq!(reason, ResultReason::RESPONSE_TOO_LARGE.0, "{message}");
    assert!(message.contains("Maximum Response Size of 1024"), "{message}");
    assert!(payload_absent(&items[0]));
}
