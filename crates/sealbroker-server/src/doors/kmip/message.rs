//! KMIP request and response messages, server side, as pure functions: a
//! decoded request [`Item`] in, a typed [`Request`] out; results in, the
//! response [`Item`] out. No I/O and no broker here, so every shape is unit
//! tested item by item.
//!
//! KMIP 1.x and 2.0 differ, for the operations the door serves, only in how
//! attributes travel (1.x: `Attribute {Attribute Name, Attribute Value}`;
//! 2.0: the attribute's own tag inside `Attributes`); requests are read in
//! both shapes whatever version they name, and responses are written in the
//! shape of the request's version.

use sealbroker_core::OaepHash;
use sealbroker_ttlv::{Item, ProtocolVersion, ResultReason, Tag, Value, enums, tag};
use zeroize::Zeroizing;

/// The versions the door speaks, most preferred first.
pub const SUPPORTED: [ProtocolVersion; 4] = ProtocolVersion::SUPPORTED;

/// Why a request, or one batch item of it, failed: a KMIP Result Reason and
/// a message for the client. The message never holds key material or
/// anything the caller did not send or may not see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: ResultReason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: ResultReason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Refusal::new(ResultReason::INVALID_MESSAGE, message)
    }
}

/// What the header says to do when a batch item fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Answer every item (Continue).
    Continue,
    /// Stop at the failed item and leave the rest out (Stop, the default).
    Stop,
    /// Stop, and mark the items done before it Operation Undone (Undo).
    Undo,
}

/// One batch item of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchItem {
    /// The operation code; unknown codes are kept, to be refused by name.
    pub operation: u32,
    /// The Unique Batch Item ID, echoed in the response.
    pub id: Option<Vec<u8>>,
    pub payload: Vec<Item>,
}

/// A request message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub version: ProtocolVersion,
    pub on_error: OnError,
    /// The header's Maximum Response Size: a larger response is refused
    /// with Response Too Large.
    pub max_response_size: Option<usize>,
    pub items: Vec<BatchItem>,
}

/// A request that could not be read as a whole: answered with one failed
/// batch item and no operation, in `version` when the header said one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest {
    pub version: Option<ProtocolVersion>,
    pub refusal: Refusal,
}

fn find(items: &[Item], wanted: Tag) -> Option<&Item> {
    items.iter().find(|i| i.tag == wanted)
}

/// Reads a request message. Every field the door relies on is checked here,
/// with a message that names it.
pub fn parse_request(message: &Item) -> Result<Request, BadRequest> {
    let bad = |version, message: String| BadRequest {
        version,
        refusal: Refusal::invalid(message),
    };
    let (tag::REQUEST_MESSAGE, Value::Structure(fields)) = (message.tag, &message.value) else {
        return Err(bad(
            None,
            format!("expected a Request Message structure, got tag {}", message.tag),
        ));
    };
    let Some(header) = find(fields, tag::REQUEST_HEADER).and_then(Item::items) else {
        return Err(bad(
            None,
            "the Request Message has no Request Header structure".into(),
        ));
    };
    let Some(version) = find(header, tag::PROTOCOL_VERSION).and_then(ProtocolVersion::from_item) else {
        return Err(bad(
            None,
            "the Request Header has no Protocol Version with integer major and minor numbers".into(),
        ));
    };
    let batch_count = match find(header, tag::BATCH_COUNT).map(|i| &i.value) {
        Some(Value::Integer(n)) => *n,
        _ => {
            return Err(bad(
                Some(version),
                "the Request Header has no integer Batch Count".into(),
            ));
        }
    };
    let on_error = match find(header, tag::BATCH_ERROR_CONTINUATION_OPTION).map(|i| &i.value) {
        None => OnError::Stop,
        Some(Value::Enumeration(enums::BATCH_ERROR_CONTINUE)) => OnError::Continue,
        Some(Value::Enumeration(enums::BATCH_ERROR_STOP)) => OnError::Stop,
        Some(Value::Enumeration(enums::BATCH_ERROR_UNDO)) => OnError::Undo,
        Some(_) => {
            return Err(bad(
                Some(version),
                "Batch Error Continuation Option must be Continue, Stop or Undo".into(),
            ));
        }
    };
    let max_response_size = match find(header, tag::MAXIMUM_RESPONSE_SIZE).map(|i| &i.value) {
        None => None,
        Some(Value::Integer(n)) if *n > 0 => Some(*n as usize),
        Some(_) => {
            return Err(bad(
                Some(version),
                "Maximum Response Size must be a positive Integer".into(),
            ));
        }
    };
    let mut items = Vec::new();
    for (index, item) in fields.iter().filter(|i| i.tag == tag::BATCH_ITEM).enumerate() {
        let Some(item_fields) = item.items() else {
            return Err(bad(
                Some(version),
                format!("Batch Item {index} is not a structure"),
            ));
        };
        let operation = match find(item_fields, tag::OPERATION).map(|i| &i.value) {
            Some(Value::Enumeration(code)) => *code,
            _ => {
                return Err(bad(
                    Some(version),
                    format!("Batch Item {index} has no Operation enumeration"),
                ));
            }
        };
        let id = match find(item_fields, tag::UNIQUE_BATCH_ITEM_ID).map(|i| &i.value) {
            None => None,
            Some(Value::ByteString(id)) => Some(id.to_vec()),
            Some(_) => {
                return Err(bad(
                    Some(version),
                    format!("Batch Item {index}: Unique Batch Item ID must be a Byte String"),
                ));
            }
        };
        let payload = match find(item_fields, tag::REQUEST_PAYLOAD).map(|i| &i.value) {
            Some(Value::Structure(payload)) => payload.clone(),
            None => Vec::new(),
            Some(_) => {
                return Err(bad(
                    Some(version),
                    format!("Batch Item {index}: Request Payload must be a structure"),
                ));
            }
        };
        items.push(BatchItem {
            operation,
            id,
            payload,
        });
    }
    if items.is_empty() || usize::try_from(batch_count).ok() != Some(items.len()) {
        return Err(bad(
            Some(version),
            format!(
                "Batch Count is {batch_count} but the message holds {} Batch Items",
                items.len()
            ),
        ));
    }
    Ok(Request {
        version,
        on_error,
        max_response_size,
        items,
    })
}

/// The outcome of one batch item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success(Vec<Item>),
    Failed(Refusal),
    /// Succeeded, then undone because a later item failed under Undo.
    Undone,
}

/// One batch item of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseItem {
    /// `None` only when the request could not be read as a whole.
    pub operation: Option<u32>,
    pub id: Option<Vec<u8>>,
    pub outcome: Outcome,
}

/// The response message: header (version, time stamp, batch count) and items.
pub fn response(version: ProtocolVersion, time_stamp: i64, items: &[ResponseItem]) -> Item {
    let mut fields = vec![Item::structure(
        tag::RESPONSE_HEADER,
        vec![
            version.item(),
            Item::new(tag::TIME_STAMP, Value::DateTime(time_stamp)),
            Item::integer(tag::BATCH_COUNT, items.len() as i32),
        ],
    )];
    for item in items {
        let mut batch = Vec::new();
        if let Some(operation) = item.operation {
            batch.push(Item::enumeration(tag::OPERATION, operation));
        }
        if let Some(id) = &item.id {
            batch.push(Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, id));
        }
        match &item.outcome {
            Outcome::Success(payload) => {
                batch.push(Item::enumeration(tag::RESULT_STATUS, enums::RESULT_SUCCESS));
                batch.push(Item::structure(tag::RESPONSE_PAYLOAD, payload.clone()));
            }
            Outcome::Failed(refusal) => {
                batch.push(Item::enumeration(tag::RESULT_STATUS, enums::RESULT_FAILED));
                batch.push(Item::enumeration(tag::RESULT_REASON, refusal.reason.0));
                batch.push(Item::text(tag::RESULT_MESSAGE, refusal.message.clone()));
            }
            Outcome::Undone => {
                batch.push(Item::enumeration(tag::RESULT_STATUS, enums::RESULT_UNDONE));
            }
        }
        fields.push(Item::structure(tag::BATCH_ITEM, batch));
    }
    Item::structure(tag::RESPONSE_MESSAGE, fields)
}

// ---------------------------------------------------------------------------
// Discover Versions and Query

/// The versions to answer a Discover Versions with: the client's that the
/// door speaks, in the client's order; every supported one when the client
/// listed none.
pub fn discover_versions(payload: &[Item]) -> Result<Vec<Item>, Refusal> {
    let mut offered = Vec::new();
    for item in payload.iter().filter(|i| i.tag == tag::PROTOCOL_VERSION) {
        let version = ProtocolVersion::from_item(item)
            .ok_or_else(|| Refusal::invalid("a Protocol Version lacks an integer major or minor number"))?;
        offered.push(version);
    }
    let answer: Vec<ProtocolVersion> = if offered.is_empty() {
        SUPPORTED.to_vec()
    } else {
        offered.into_iter().filter(|v| SUPPORTED.contains(v)).collect()
    };
    Ok(answer.into_iter().map(ProtocolVersion::item).collect())
}

/// What the door tells a Query.
pub struct ServerFacts<'a> {
    pub operations: &'a [u32],
    pub vendor: &'a str,
    pub server_information: &'a str,
}

/// Answers Query Operations, Query Objects and Query Server Information;
/// other query functions are ignored, as the spec allows.
pub fn query(payload: &[Item], facts: &ServerFacts<'_>) -> Result<Vec<Item>, Refusal> {
    let mut functions = Vec::new();
    for item in payload.iter().filter(|i| i.tag == tag::QUERY_FUNCTION) {
        match item.value {
            Value::Enumeration(f) => functions.push(f),
            _ => return Err(Refusal::invalid("Query Function must be an Enumeration")),
        }
    }
    let mut answer = Vec::new();
    if functions.contains(&enums::QUERY_OPERATIONS) {
        answer.extend(
            facts
                .operations
                .iter()
                .map(|&op| Item::enumeration(tag::OPERATION, op)),
        );
    }
    if functions.contains(&enums::QUERY_OBJECTS) {
        answer.extend(
            [
                enums::OBJECT_TYPE_SYMMETRIC_KEY,
                enums::OBJECT_TYPE_PUBLIC_KEY,
                enums::OBJECT_TYPE_PRIVATE_KEY,
            ]
            .map(|t| Item::enumeration(tag::OBJECT_TYPE, t)),
        );
    }
    if functions.contains(&enums::QUERY_SERVER_INFORMATION) {
        answer.push(Item::text(tag::VENDOR_IDENTIFICATION, facts.vendor));
        answer.push(Item::structure(
            tag::SERVER_INFORMATION,
            vec![Item::text(tag::VENDOR_IDENTIFICATION, facts.server_information)],
        ));
    }
    Ok(answer)
}

// ---------------------------------------------------------------------------
// Attributes

/// The attributes the door reports for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAttributes {
    pub unique_identifier: String,
    pub name: String,
    pub object_type: u32,
    pub algorithm: u32,
    pub length: i32,
    /// Cryptographic Usage Mask: what the door lets a client do with it.
    pub usage: i32,
    pub state: u32,
    /// The other half of a key pair: (Link Type, its Unique Identifier).
    pub link: Option<(u32, String)>,
}

/// One attribute: its 1.x name, its 2.0 tag, and its value.
struct Attribute {
    name: &'static str,
    tag: Tag,
    value: Value,
}

fn name_value(name: &str) -> Value {
    Value::Structure(vec![
        Item::text(tag::NAME_VALUE, name),
        Item::enumeration(tag::NAME_TYPE, enums::NAME_TYPE_UNINTERPRETED_TEXT),
    ])
}

impl KeyAttributes {
    fn all(&self) -> Vec<Attribute> {
        let mut all = vec![
            Attribute {
                name: "Unique Identifier",
                tag: tag::UNIQUE_IDENTIFIER,
                value: Value::TextString(self.unique_identifier.clone()),
            },
            Attribute {
                name: "Name",
                tag: tag::NAME,
                value: name_value(&self.name),
            },
            Attribute {
                name: "Object Type",
                tag: tag::OBJECT_TYPE,
                value: Value::Enumeration(self.object_type),
            },
            Attribute {
                name: "Cryptographic Algorithm",
                tag: tag::CRYPTOGRAPHIC_ALGORITHM,
                value: Value::Enumeration(self.algorithm),
            },
            Attribute {
                name: "Cryptographic Length",
                tag: tag::CRYPTOGRAPHIC_LENGTH,
                value: Value::Integer(self.length),
            },
            Attribute {
                name: "Cryptographic Usage Mask",
                tag: tag::CRYPTOGRAPHIC_USAGE_MASK,
                value: Value::Integer(self.usage),
            },
            Attribute {
                name: "State",
                tag: tag::STATE,
                value: Value::Enumeration(self.state),
            },
        ];
        if let Some((link_type, linked)) = &self.link {
            all.push(Attribute {
                name: "Link",
                tag: tag::LINK,
                value: Value::Structure(vec![
                    Item::enumeration(tag::LINK_TYPE, *link_type),
                    Item::text(tag::LINKED_OBJECT_IDENTIFIER, linked.clone()),
                ]),
            });
        }
        all
    }

    /// Whether this key matches one Locate filter attribute (1.x `Attribute`
    /// or a 2.0 tagged attribute). An attribute the door does not report
    /// matches nothing: no sealbroker key has it.
    fn matches(&self, filter: &Filter) -> bool {
        let all = self.all();
        let found = match filter {
            Filter::Named(name, _) => all.iter().find(|a| a.name == name.as_str()),
            Filter::Tagged(tag, _) => all.iter().find(|a| a.tag == *tag),
        };
        let wanted = match filter {
            Filter::Named(_, value) | Filter::Tagged(_, value) => value,
        };
        match (found, wanted) {
            // A Name filter matches on the Name Value; the Name Type may differ.
            (Some(a), Value::Structure(fields)) if a.tag == tag::NAME => {
                find(fields, tag::NAME_VALUE).map(|i| &i.value) == Some(&Value::TextString(self.name.clone()))
            }
            (Some(a), wanted) => &a.value == wanted,
            (None, _) => false,
        }
    }
}

/// Which attributes a Get Attributes asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    Tag(Tag),
}

/// A Get Attributes request: whose, and which (none: all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetAttributes {
    pub unique_identifier: String,
    pub selectors: Vec<Selector>,
}

/// Reads the Unique Identifier every per-object request carries. The door
/// does not keep ID Placeholders across batch items, so it is required.
pub fn unique_identifier(payload: &[Item]) -> Result<String, Refusal> {
    match find(payload, tag::UNIQUE_IDENTIFIER).map(|i| &i.value) {
        Some(Value::TextString(id)) => Ok(id.clone()),
        Some(_) => Err(Refusal::invalid("Unique Identifier must be a Text String")),
        None => Err(Refusal::new(
            ResultReason::MISSING_DATA,
            "Unique Identifier is required (this server keeps no ID Placeholder)",
        )),
    }
}

pub fn parse_get_attributes(payload: &[Item]) -> Result<GetAttributes, Refusal> {
    let unique_identifier = unique_identifier(payload)?;
    let mut selectors = Vec::new();
    for item in payload {
        match (item.tag, &item.value) {
            (t, Value::TextString(name)) if t == tag::ATTRIBUTE_NAME => {
                selectors.push(Selector::Name(name.clone()))
            }
            // KMIP 2.0: an Attribute Reference is the attribute's tag...
            (t, Value::Enumeration(value)) if t == tag::ATTRIBUTE_REFERENCE => {
                selectors.push(Selector::Tag(Tag::new(*value)))
            }
            // ...or a vendor attribute by name.
            (t, Value::Structure(fields)) if t == tag::ATTRIBUTE_REFERENCE => {
                match find(fields, tag::ATTRIBUTE_NAME).map(|i| &i.value) {
                    Some(Value::TextString(name)) => selectors.push(Selector::Name(name.clone())),
                    _ => return Err(Refusal::invalid("Attribute Reference has no Attribute Name")),
                }
            }
            (t, _) if t == tag::ATTRIBUTE_NAME || t == tag::ATTRIBUTE_REFERENCE => {
                return Err(Refusal::invalid("Attribute Name must be a Text String"));
            }
            _ => {}
        }
    }
    Ok(GetAttributes {
        unique_identifier,
        selectors,
    })
}

/// The Get Attributes response payload, in `version`'s shape. Selected
/// attributes the key does not have are left out, as the spec says.
pub fn get_attributes_response(
    version: ProtocolVersion,
    key: &KeyAttributes,
    selectors: &[Selector],
) -> Vec<Item> {
    let wanted = |a: &Attribute| {
        selectors.is_empty()
            || selectors.iter().any(|s| match s {
                Selector::Name(name) => a.name == name.as_str(),
                Selector::Tag(tag) => a.tag == *tag,
            })
    };
    let attributes: Vec<Attribute> = key.all().into_iter().filter(wanted).collect();
    let mut payload = vec![Item::text(tag::UNIQUE_IDENTIFIER, key.unique_identifier.clone())];
    if version.attributes_are_tagged() {
        payload.push(Item::structure(
            tag::ATTRIBUTES,
            attributes
                .into_iter()
                .map(|a| Item::new(a.tag, a.value))
                .collect(),
        ));
    } else {
        payload.extend(attributes.into_iter().map(|a| {
            Item::structure(
                tag::ATTRIBUTE,
                vec![
                    Item::text(tag::ATTRIBUTE_NAME, a.name),
                    Item::new(tag::ATTRIBUTE_VALUE, a.value),
                ],
            )
        }));
    }
    payload
}

/// The Get Attribute List response payload: 1.x names, 2.0 references.
pub fn get_attribute_list_response(version: ProtocolVersion, key: &KeyAttributes) -> Vec<Item> {
    let mut payload = vec![Item::text(tag::UNIQUE_IDENTIFIER, key.unique_identifier.clone())];
    for a in key.all() {
        payload.push(if version.attributes_are_tagged() {
            Item::enumeration(tag::ATTRIBUTE_REFERENCE, a.tag.value())
        } else {
            Item::text(tag::ATTRIBUTE_NAME, a.name)
        });
    }
    payload
}

// ---------------------------------------------------------------------------
// Encrypt and Decrypt

/// An Encrypt or Decrypt request. Over KMIP every sealbroker key is an
/// AES-GCM key: the ciphertext a client holds (Data, followed by the
/// Authenticated Encryption Tag when it asked for one) is a sealbroker
/// blob, bound to the IV and the additional data it was made with.
pub struct Crypt {
    pub unique_identifier: String,
    /// The plaintext (Encrypt) or the ciphertext (Decrypt).
    pub data: Zeroizing<Vec<u8>>,
    pub iv: Option<Vec<u8>>,
    pub aad: Vec<u8>,
    /// Decrypt only: the Authenticated Encryption Tag.
    pub tag: Option<Vec<u8>>,
    /// The Tag Length the Cryptographic Parameters asked for, in bytes.
    pub tag_length: Option<usize>,
}

/// The length of the IV the door makes when an Encrypt brings none: GCM's
/// 96 bits.
pub const GCM_IV_LEN: usize = 12;

fn optional_bytes<'a>(payload: &'a [Item], wanted: Tag, what: &str) -> Result<Option<&'a [u8]>, Refusal> {
    match find(payload, wanted).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::ByteString(bytes)) => Ok(Some(bytes.as_slice())),
        Some(_) => Err(Refusal::invalid(format!("{what} must be a Byte String"))),
    }
}

/// Reads Cryptographic Parameters, refusing any that is not AES-GCM: the
/// door offers that one cipher, so a client asking another learns so
/// instead of getting a ciphertext it did not expect. Returns the Tag Length.
fn gcm_parameters(payload: &[Item], unique_identifier: &str) -> Result<Option<usize>, Refusal> {
    let Some(params) = find(payload, tag::CRYPTOGRAPHIC_PARAMETERS) else {
        return Ok(None);
    };
    let fields = params
        .items()
        .ok_or_else(|| Refusal::invalid("Cryptographic Parameters must be a structure"))?;
    let not_gcm = |what: String| {
        Refusal::new(
            ResultReason::INVALID_FIELD,
            format!(
                "{what}: key {unique_identifier:?} is an AES-GCM key over KMIP; ask for Cryptographic Algorithm AES and Block Cipher Mode GCM, or leave them out"
            ),
        )
    };
    match find(fields, tag::CRYPTOGRAPHIC_ALGORITHM).map(|i| &i.value) {
        None | Some(Value::Enumeration(enums::ALGORITHM_AES)) => {}
        Some(Value::Enumeration(other)) => {
            return Err(not_gcm(format!(
                "Cryptographic Algorithm 0x{other:02X} is not offered"
            )));
        }
        Some(_) => return Err(Refusal::invalid("Cryptographic Algorithm must be an Enumeration")),
    }
    match find(fields, tag::BLOCK_CIPHER_MODE).map(|i| &i.value) {
        None | Some(Value::Enumeration(enums::MODE_GCM)) => {}
        Some(Value::Enumeration(other)) => {
            return Err(not_gcm(format!("Block Cipher Mode 0x{other:02X} is not offered")));
        }
        Some(_) => return Err(Refusal::invalid("Block Cipher Mode must be an Enumeration")),
    }
    match find(fields, tag::PADDING_METHOD).map(|i| &i.value) {
        None | Some(Value::Enumeration(enums::PADDING_NONE)) => {}
        Some(Value::Enumeration(other)) => {
            return Err(not_gcm(format!(
                "Padding Method 0x{other:02X} does not apply to GCM"
            )));
        }
        Some(_) => return Err(Refusal::invalid("Padding Method must be an Enumeration")),
    }
    if find(fields, tag::HASHING_ALGORITHM).is_some() {
        return Err(not_gcm("Hashing Algorithm does not apply to GCM".into()));
    }
    match find(fields, tag::TAG_LENGTH).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::Integer(n)) if (12..=16).contains(n) => Ok(Some(*n as usize)),
        Some(_) => Err(Refusal::new(
            ResultReason::INVALID_FIELD,
            "Tag Length must be an Integer from 12 to 16 (bytes)",
        )),
    }
}

/// Reads an Encrypt (`decrypt` false) or Decrypt request payload.
pub fn parse_crypt(payload: &[Item], decrypt: bool) -> Result<Crypt, Refusal> {
    let unique_identifier = unique_identifier(payload)?;
    if [tag::CORRELATION_VALUE, tag::INIT_INDICATOR, tag::FINAL_INDICATOR]
        .iter()
        .any(|t| find(payload, *t).is_some())
    {
        return Err(Refusal::new(
            ResultReason::FEATURE_NOT_SUPPORTED,
            "streaming (Correlation Value, Init Indicator, Final Indicator) is not supported; send the data in one request",
        ));
    }
    let tag_length = gcm_parameters(payload, &unique_identifier)?;
    let data = match optional_bytes(payload, tag::DATA, "Data")? {
        Some(data) => Zeroizing::new(data.to_vec()),
        None => return Err(Refusal::new(ResultReason::MISSING_DATA, "Data is required")),
    };
    let iv = optional_bytes(payload, tag::IV_COUNTER_NONCE, "IV/Counter/Nonce")?.map(<[u8]>::to_vec);
    if decrypt && iv.is_none() {
        return Err(Refusal::new(
            ResultReason::MISSING_DATA,
            "IV/Counter/Nonce is required to decrypt: send the one Encrypt used or returned",
        ));
    }
    if iv.as_ref().is_some_and(Vec::is_empty) {
        return Err(Refusal::invalid("IV/Counter/Nonce is empty"));
    }
    let aad = optional_bytes(
        payload,
        tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA,
        "Authenticated Encryption Additional Data",
    )?
    .map(<[u8]>::to_vec)
    .unwrap_or_default();
    let tag = if decrypt {
        optional_bytes(
            payload,
            tag::AUTHENTICATED_ENCRYPTION_TAG,
            "Authenticated Encryption Tag",
        )?
        .map(<[u8]>::to_vec)
    } else {
        None
    };
    Ok(Crypt {
        unique_identifier,
        data,
        iv,
        aad,
        tag,
        tag_length,
    })
}

/// Reads an Encrypt or Decrypt request for an RSA encryption key pair, whose
/// OAEP hash is `hash`: the Data, once the Cryptographic Parameters (all
/// optional) are checked to ask for exactly what the key does: Cryptographic
/// Algorithm RSA, Padding Method OAEP, Hashing Algorithm and Mask Generator
/// Hashing Algorithm the key's hash, Mask Generator MGF1. No IV, additional
/// data, tag or streaming: RSA-OAEP has none of them.
pub fn parse_rsa_crypt(
    payload: &[Item],
    hash: OaepHash,
    unique_identifier: &str,
) -> Result<Zeroizing<Vec<u8>>, Refusal> {
    if [tag::CORRELATION_VALUE, tag::INIT_INDICATOR, tag::FINAL_INDICATOR]
        .iter()
        .any(|t| find(payload, *t).is_some())
    {
        return Err(Refusal::new(
            ResultReason::FEATURE_NOT_SUPPORTED,
            "streaming (Correlation Value, Init Indicator, Final Indicator) is not supported; send the data in one request",
        ));
    }
    let not_oaep = |what: String| {
        Refusal::new(
            ResultReason::INVALID_FIELD,
            format!(
                "{what}: {unique_identifier:?} is an RSA key pair for OAEP with {hash} (and MGF1 with {hash}); ask for that, or leave the Cryptographic Parameters out"
            ),
        )
    };
    for (field, what) in [
        (tag::IV_COUNTER_NONCE, "IV/Counter/Nonce"),
        (
            tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA,
            "Authenticated Encryption Additional Data",
        ),
        (tag::AUTHENTICATED_ENCRYPTION_TAG, "Authenticated Encryption Tag"),
    ] {
        if find(payload, field).is_some() {
            return Err(not_oaep(format!("{what} does not apply to RSA-OAEP")));
        }
    }
    if let Some(params) = find(payload, tag::CRYPTOGRAPHIC_PARAMETERS) {
        let fields = params
            .items()
            .ok_or_else(|| Refusal::invalid("Cryptographic Parameters must be a structure"))?;
        let expect = |field: Tag, name: &str, allowed: u32| -> Result<(), Refusal> {
            match find(fields, field).map(|i| &i.value) {
                None => Ok(()),
                Some(Value::Enumeration(v)) if *v == allowed => Ok(()),
                Some(Value::Enumeration(other)) => {
                    Err(not_oaep(format!("{name} 0x{other:02X} is not offered")))
                }
                Some(_) => Err(Refusal::invalid(format!("{name} must be an Enumeration"))),
            }
        };
        expect(
            tag::CRYPTOGRAPHIC_ALGORITHM,
            "Cryptographic Algorithm",
            enums::ALGORITHM_RSA,
        )?;
        expect(tag::PADDING_METHOD, "Padding Method", enums::PADDING_OAEP)?;
        expect(tag::HASHING_ALGORITHM, "Hashing Algorithm", kmip_hash(hash))?;
        expect(tag::MASK_GENERATOR, "Mask Generator", enums::MASK_GENERATOR_MGF1)?;
        expect(
            tag::MASK_GENERATOR_HASHING_ALGORITHM,
            "Mask Generator Hashing Algorithm",
            kmip_hash(hash),
        )?;
        for (field, name) in [
            (tag::BLOCK_CIPHER_MODE, "Block Cipher Mode"),
            (tag::TAG_LENGTH, "Tag Length"),
        ] {
            if find(fields, field).is_some() {
                return Err(not_oaep(format!("{name} does not apply to RSA-OAEP")));
            }
        }
    }
    match optional_bytes(payload, tag::DATA, "Data")? {
        Some(data) => Ok(Zeroizing::new(data.to_vec())),
        None => Err(Refusal::new(ResultReason::MISSING_DATA, "Data is required")),
    }
}

/// KMIP's Hashing Algorithm for an OAEP hash.
pub fn kmip_hash(hash: OaepHash) -> u32 {
    match hash {
        OaepHash::Sha1 => enums::HASH_SHA_1,
        OaepHash::Sha224 => enums::HASH_SHA_224,
        OaepHash::Sha256 => enums::HASH_SHA_256,
        OaepHash::Sha384 => enums::HASH_SHA_384,
        OaepHash::Sha512 => enums::HASH_SHA_512,
    }
}

/// The additional data the broker seals with: the IV and the client's
/// additional data, each length-prefixed, so a Decrypt with another IV or
/// other additional data fails as it would under AES-GCM.
pub fn sealed_aad(iv: &[u8], aad: &[u8]) -> Vec<u8> {
    const LABEL: &[u8] = b"sealbroker-kmip-gcm\0";
    let mut out = Vec::with_capacity(LABEL.len() + 8 + iv.len() + aad.len());
    out.extend_from_slice(LABEL);
    out.extend_from_slice(&(iv.len() as u32).to_be_bytes());
    out.extend_from_slice(iv);
    out.extend_from_slice(&(aad.len() as u32).to_be_bytes());
    out.extend_from_slice(aad);
    out
}

/// The Encrypt response payload. With a Tag Length asked and KMIP 1.4 or
/// later, the blob's last `tag_length` bytes travel as the Authenticated
/// Encryption Tag; otherwise Data is the whole blob. The IV goes back only
/// when the door made it.
pub fn encrypt_response(
    version: ProtocolVersion,
    unique_identifier: &str,
    blob: &[u8],
    made_iv: Option<&[u8]>,
    tag_length: Option<usize>,
) -> Vec<Item> {
    let split = match tag_length {
        Some(t) if version.has_aead_fields() && blob.len() > t => blob.len() - t,
        _ => blob.len(),
    };
    let mut payload = vec![
        Item::text(tag::UNIQUE_IDENTIFIER, unique_identifier),
        Item::bytes(tag::DATA, &blob[..split]),
    ];
    if let Some(iv) = made_iv {
        payload.push(Item::bytes(tag::IV_COUNTER_NONCE, iv));
    }
    if split < blob.len() {
        payload.push(Item::bytes(tag::AUTHENTICATED_ENCRYPTION_TAG, &blob[split..]));
    }
    payload
}

/// The blob a Decrypt names: Data, then the tag when one was sent apart.
pub fn blob_of(crypt: &Crypt) -> Zeroizing<Vec<u8>> {
    let mut blob = Zeroizing::new(Vec::with_capacity(
        crypt.data.len() + crypt.tag.as_ref().map_or(0, Vec::len),
    ));
    blob.extend_from_slice(&crypt.data);
    if let Some(tag) = &crypt.tag {
        blob.extend_from_slice(tag);
    }
    blob
}

/// The Decrypt response payload; the plaintext is zeroed when the response
/// is dropped.
pub fn decrypt_response(unique_identifier: &str, plaintext: Zeroizing<Vec<u8>>) -> Vec<Item> {
    vec![
        Item::text(tag::UNIQUE_IDENTIFIER, unique_identifier),
        Item::new(tag::DATA, Value::ByteString(plaintext)),
    ]
}

// ---------------------------------------------------------------------------
// Locate

/// One Locate filter.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Filter {
    /// KMIP 1.x: `Attribute {Attribute Name, Attribute Value}`.
    Named(String, Value),
    /// KMIP 2.0: the attribute under its own tag inside `Attributes`.
    Tagged(Tag, Value),
}

/// A Locate request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locate {
    filters: Vec<Filter>,
    pub maximum_items: Option<usize>,
    pub offset_items: usize,
}

fn non_negative(item: Option<&Item>, what: &str) -> Result<Option<usize>, Refusal> {
    match item.map(|i| &i.value) {
        None => Ok(None),
        Some(Value::Integer(n)) if *n >= 0 => Ok(Some(*n as usize)),
        Some(_) => Err(Refusal::invalid(format!("{what} must be a non-negative Integer"))),
    }
}

pub fn parse_locate(payload: &[Item]) -> Result<Locate, Refusal> {
    let mut filters = Vec::new();
    for item in payload {
        if item.tag == tag::ATTRIBUTE {
            let fields = item
                .items()
                .ok_or_else(|| Refusal::invalid("Attribute must be a structure"))?;
            let name = match find(fields, tag::ATTRIBUTE_NAME).map(|i| &i.value) {
                Some(Value::TextString(name)) => name.clone(),
                _ => return Err(Refusal::invalid("Attribute has no Attribute Name")),
            };
            let value = find(fields, tag::ATTRIBUTE_VALUE)
                .ok_or_else(|| Refusal::invalid(format!("Attribute {name:?} has no Attribute Value")))?;
            filters.push(Filter::Named(name, value.value.clone()));
        } else if item.tag == tag::ATTRIBUTES {
            let fields = item
                .items()
                .ok_or_else(|| Refusal::invalid("Attributes must be a structure"))?;
            filters.extend(fields.iter().map(|a| Filter::Tagged(a.tag, a.value.clone())));
        }
    }
    Ok(Locate {
        filters,
        maximum_items: non_negative(find(payload, tag::MAXIMUM_ITEMS), "Maximum Items")?,
        offset_items: non_negative(find(payload, tag::OFFSET_ITEMS), "Offset Items")?.unwrap_or(0),
    })
}

impl Locate {
    pub fn matches(&self, key: &KeyAttributes) -> bool {
        self.filters.iter().all(|f| key.matches(f))
    }
}

/// The Locate response payload: Located Items (1.3 and later) and the
/// identifiers after Offset Items, at most Maximum Items of them.
pub fn locate_response(version: ProtocolVersion, locate: &Locate, found: &[String]) -> Vec<Item> {
    let mut payload = Vec::new();
    if version >= ProtocolVersion::V1_3 {
        payload.push(Item::integer(
            tag::LOCATED_ITEMS,
            i32::try_from(found.len()).unwrap_or(i32::MAX),
        ));
    }
    let page = found
        .iter()
        .skip(locate.offset_items)
        .take(locate.maximum_items.unwrap_or(usize::MAX));
    payload.extend(page.map(|id| Item::text(tag::UNIQUE_IDENTIFIER, id.clone())));
    payload
}

#[cfg(test)]
mod tests;
