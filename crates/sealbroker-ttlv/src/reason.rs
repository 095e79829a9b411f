//! Result Reasons (KMIP 1.4 section 9.1.3.2.29, KMIP 2.0 section 11.46).

use std::fmt;

/// A KMIP Result Reason, named when we know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultReason(pub u32);

impl ResultReason {
    pub const ITEM_NOT_FOUND: Self = ResultReason(0x01);
    pub const RESPONSE_TOO_LARGE: Self = ResultReason(0x02);
    pub const AUTHENTICATION_NOT_SUCCESSFUL: Self = ResultReason(0x03);
    pub const INVALID_MESSAGE: Self = ResultReason(0x04);
    pub const OPERATION_NOT_SUPPORTED: Self = ResultReason(0x05);
    pub const MISSING_DATA: Self = ResultReason(0x06);
    pub const INVALID_FIELD: Self = ResultReason(0x07);
    pub const FEATURE_NOT_SUPPORTED: Self = ResultReason(0x08);
    pub const CRYPTOGRAPHIC_FAILURE: Self = ResultReason(0x0A);
    pub const ILLEGAL_OPERATION: Self = ResultReason(0x0B);
    pub const PERMISSION_DENIED: Self = ResultReason(0x0C);
    pub const NOT_EXTRACTABLE: Self = ResultReason(0x17);
    pub const OBJECT_DESTROYED: Self = ResultReason(0x36);
    pub const OBJECT_NOT_FOUND: Self = ResultReason(0x37);
    pub const NOT_AUTHORISED: Self = ResultReason(0x39);
    pub const SERVER_LIMIT_EXCEEDED: Self = ResultReason(0x3A);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = ResultReason(0x3F);
    pub const WRONG_KEY_LIFECYCLE_STATE: Self = ResultReason(0x43);
    pub const PROTECTION_STORAGE_UNAVAILABLE: Self = ResultReason(0x44);
    pub const GENERAL_FAILURE: Self = ResultReason(0x100);

    /// The spec's name for the reason, e.g. "Item Not Found".
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x01 => "Item Not Found",
            0x02 => "Response Too Large",
            0x03 => "Authentication Not Successful",
            0x04 => "Invalid Message",
            0x05 => "Operation Not Supported",
            0x06 => "Missing Data",
            0x07 => "Invalid Field",
            0x08 => "Feature Not Supported",
            0x09 => "Operation Canceled By Requester",
            0x0A => "Cryptographic Failure",
            0x0B => "Illegal Operation",
            0x0C => "Permission Denied",
            0x0D => "Object Archived",
            0x0E => "Index Out of Bounds",
            0x0F => "Application Namespace Not Supported",
            0x10 => "Key Format Type Not Supported",
            0x11 => "Key Compression Type Not Supported",
            0x12 => "Encoding Option Error",
            0x13 => "Key Value Not Present",
            0x14 => "Attestation Required",
            0x15 => "Attestation Failed",
            0x16 => "Sensitive",
            0x17 => "Not Extractable",
            0x18 => "Object Already Exists",
            0x19 => "Invalid Ticket",
            0x1A => "Usage Limit Exceeded",
            0x1B => "Numeric Range",
            0x1C => "Invalid Data Type",
            0x1D => "Read Only Attribute",
            0x1E => "Multi Valued Attribute",
            0x1F => "Unsupported Attribute",
            0x20 => "Attribute Instance Not Found",
            0x21 => "Attribute Not Found",
            0x22 => "Attribute Read Only",
            0x23 => "Attribute Single Valued",
            0x24 => "Bad Cryptographic Parameters",
            0x25 => "Bad Password",
            0x26 => "Codec Error",
            0x28 => "Illegal Object Type",
            0x29 => "Incompatible Cryptographic Usage Mask",
            0x2A => "Internal Server Error",
            0x2B => "Invalid Asynchronous Correlation Value",
            0x2C => "Invalid Attribute",
            0x2D => "Invalid Attribute Value",
            0x2E => "Invalid Correlation Value",
            0x2F => "Invalid CSR",
            0x30 => "Invalid Object Type",
            0x32 => "Key Wrap Type Not Supported",
            0x34 => "Missing Initialization Vector",
            0x35 => "Non Unique Name Attribute",
            0x36 => "Object Destroyed",
            0x37 => "Object Not Found",
            0x39 => "Not Authorised",
            0x3A => "Server Limit Exceeded",
            0x3B => "Unknown Enumeration",
            0x3C => "Unknown Message Extension",
            0x3D => "Unknown Tag",
            0x3E => "Unsupported Cryptographic Parameters",
            0x3F => "Unsupported Protocol Version",
            0x40 => "Wrapping Object Archived",
            0x41 => "Wrapping Object Destroyed",
            0x42 => "Wrapping Object Not Found",
            0x43 => "Wrong Key Lifecycle State",
            0x44 => "Protection Storage Unavailable",
            0x45 => "PKCS#11 Codec Error",
            0x46 => "PKCS#11 Invalid Function",
            0x47 => "PKCS#11 Invalid Interface",
            0x100 => "General Failure",
            _ => return None,
        })
    }
}

impl fmt::Display for ResultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "result reason 0x{:X}", self.0),
        }
    }
}
