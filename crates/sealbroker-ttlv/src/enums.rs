//! Enumeration and mask values either side sends or reads.

pub const OBJECT_TYPE_SYMMETRIC_KEY: u32 = 0x02;
pub const OBJECT_TYPE_PUBLIC_KEY: u32 = 0x03;
pub const OBJECT_TYPE_PRIVATE_KEY: u32 = 0x04;
pub const ALGORITHM_AES: u32 = 0x03;
pub const ALGORITHM_RSA: u32 = 0x04;
pub const MODE_CBC: u32 = 0x01;
pub const MODE_GCM: u32 = 0x09;
pub const PADDING_NONE: u32 = 0x01;
pub const PADDING_OAEP: u32 = 0x02;
pub const PADDING_PKCS5: u32 = 0x03;
pub const PADDING_PKCS1_V1_5: u32 = 0x08;
pub const PADDING_PSS: u32 = 0x0A;
pub const NAME_TYPE_UNINTERPRETED_TEXT: u32 = 0x01;
pub const RESULT_SUCCESS: u32 = 0x00;
pub const RESULT_FAILED: u32 = 0x01;
pub const RESULT_PENDING: u32 = 0x02;
pub const RESULT_UNDONE: u32 = 0x03;
/// Hashing Algorithm (KMIP 1.4 section 9.1.3.2.16).
pub const HASH_SHA_1: u32 = 0x04;
pub const HASH_SHA_224: u32 = 0x05;
pub const HASH_SHA_256: u32 = 0x06;
pub const HASH_SHA_384: u32 = 0x07;
pub const HASH_SHA_512: u32 = 0x08;
/// Mask Generator (KMIP 1.4).
pub const MASK_GENERATOR_MGF1: u32 = 0x01;
/// Link Type (KMIP 1.4 section 9.1.3.2.20).
pub const LINK_PUBLIC_KEY: u32 = 0x0102;
pub const LINK_PRIVATE_KEY: u32 = 0x0103;
pub const USAGE_SIGN: i32 = 0x01;
pub const USAGE_VERIFY: i32 = 0x02;
pub const USAGE_ENCRYPT: i32 = 0x04;
pub const USAGE_DECRYPT: i32 = 0x08;
/// Key states (KMIP 1.4 section 3.22).
pub const STATE_PRE_ACTIVE: u32 = 0x01;
pub const STATE_ACTIVE: u32 = 0x02;
/// Query Function (KMIP 1.4 section 9.1.3.2.24).
pub const QUERY_OPERATIONS: u32 = 0x01;
pub const QUERY_OBJECTS: u32 = 0x02;
pub const QUERY_SERVER_INFORMATION: u32 = 0x03;
/// Batch Error Continuation Option.
pub const BATCH_ERROR_CONTINUE: u32 = 0x01;
pub const BATCH_ERROR_STOP: u32 = 0x02;
pub const BATCH_ERROR_UNDO: u32 = 0x03;

/// Key Format Type (KMIP 1.4 section 9.1.3.2.3).
pub const KEY_FORMAT_RAW: u32 = 0x01;
pub const KEY_FORMAT_PKCS_1: u32 = 0x03;
pub const KEY_FORMAT_PKCS_8: u32 = 0x04;
pub const KEY_FORMAT_X_509: u32 = 0x05;
