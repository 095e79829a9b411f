//! Typed errors. Each one knows its [`Code`]; front doors map a `Code` to a
//! gRPC status or an HTTP status in exactly one place each.

use std::fmt;

/// The category of a failure, independent of any wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The named key (or key version) does not exist.
    NotFound,
    /// The request itself is malformed: bad blob, oversize payload, bad field.
    InvalidArgument,
    /// The request is well formed but cannot apply: wrong AAD, blob under another key.
    FailedPrecondition,
    /// The caller may not do this.
    PermissionDenied,
    /// A backend cannot be reached right now; retrying later may work.
    Unavailable,
    /// The operation did not finish within its time bound.
    DeadlineExceeded,
    /// A limit (in-flight, quota) was hit.
    ResourceExhausted,
    /// A bug or an unexpected backend answer.
    Internal,
}

/// Why a blob could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("not a sealbroker blob (protobuf decoding failed: {0})")]
    Decode(String),
    #[error("unsupported blob format {0} (this broker reads format 1)")]
    UnsupportedFormat(u32),
    #[error("field `{field}` is invalid: {reason}")]
    Field { field: &'static str, reason: String },
}

/// Every error the core can report. Messages name what was wrong and never
/// contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown key {0:?}")]
    UnknownKey(String),

    #[error("plaintext is {size} bytes; the limit is {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },

    #[error("malformed blob: {0}")]
    MalformedBlob(#[from] BlobError),

    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    #[error("the blob was sealed under key {blob_key:?}, not {requested:?}")]
    WrongKey { blob_key: String, requested: String },

    #[error(
        "the blob was sealed under key id {key_id} which key {key:?} does not hold \
         (sealed by another broker, or under a key that was since replaced)"
    )]
    UnknownKeyVersion { key: String, key_id: String },

    #[error(
        "the blob does not authenticate: the AAD differs from the one given at wrap time, \
         or the blob was altered"
    )]
    NotAuthentic,

    #[error("key {key:?} version {version} is retired (minimum decryption version is {min})")]
    VersionRetired { key: String, version: u32, min: u32 },

    #[error("{operation} on key {key:?} is not permitted for {caller}")]
    PermissionDenied {
        operation: &'static str,
        key: String,
        caller: String,
    },

    #[error("backend {backend:?} for key {key:?}: {source}")]
    Backend {
        backend: String,
        key: String,
        source: BackendError,
    },

    #[error("{0}")]
    Precondition(String),

    #[error("the operation was not completed because it could not be audited: {0}")]
    AuditUnavailable(String),

    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The protocol-independent category of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::UnknownKey(_) | Error::UnknownKeyVersion { .. } => Code::NotFound,
            Error::PayloadTooLarge { .. } | Error::MalformedBlob(_) | Error::InvalidArgument { .. } => {
                Code::InvalidArgument
            }
            Error::WrongKey { .. }
            | Error::NotAuthentic
            | Error::VersionRetired { .. }
            | Error::Precondition(_) => Code::FailedPrecondition,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::AuditUnavailable(_) => Code::Unavailable,
            Error::Backend { source, .. } => source.kind.code(),
            Error::Internal(_) => Code::Internal,
        }
    }
}

/// What kind of failure a backend reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The device or service is unreachable or not ready; retry later.
    Unavailable,
    /// The ciphertext did not authenticate under this key.
    NotAuthentic,
    /// The backend key does not exist (or is not usable for this operation).
    KeyNotFound,
    /// The backend refused our credentials or the operation.
    PermissionDenied,
    /// The backend rejected the input as malformed.
    InvalidInput,
    /// The backend did not answer in time.
    Timeout,
    /// The backend is rate limiting us and retries were exhausted.
    Throttled,
    /// Anything else.
    Internal,
}

impl BackendErrorKind {
    pub fn code(self) -> Code {
        match self {
            BackendErrorKind::Unavailable => Code::Unavailable,
            BackendErrorKind::NotAuthentic => Code::FailedPrecondition,
            BackendErrorKind::KeyNotFound => Code::NotFound,
            BackendErrorKind::PermissionDenied => Code::PermissionDenied,
            BackendErrorKind::InvalidInput => Code::InvalidArgument,
            BackendErrorKind::Timeout => Code::DeadlineExceeded,
            BackendErrorKind::Throttled => Code::Unavailable,
            BackendErrorKind::Internal => Code::Internal,
        }
    }
}

/// A failure inside a backend. The message is for operators: it names the
/// device, token or service call, never secret material.
#[derive(Debug, Clone)]
pub struct BackendError {
    pub kind: BackendErrorKind,
    pub message: String,
}

impl BackendError {
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Unavailable, message)
    }
    pub fn not_authentic(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::NotAuthentic, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Internal, message)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BackendErrorKind::Unavailable => "unavailable",
            BackendErrorKind::NotAuthentic => "ciphertext does not authenticate",
            BackendErrorKind::KeyNotFound => "key not found",
            BackendErrorKind::PermissionDenied => "permission denied",
            BackendErrorKind::InvalidInput => "invalid input",
            BackendErrorKind::Timeout => "timed out",
            BackendErrorKind::Throttled => "throttled",
            BackendErrorKind::Internal => "internal error",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for BackendError {}
