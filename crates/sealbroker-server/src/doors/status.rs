//! The one place where core errors become gRPC statuses.

use sealbroker_core::{Code, Error};

/// Maps a protocol-independent [`Code`] to a gRPC code.
pub fn grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::NotFound => tonic::Code::NotFound,
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::Internal => tonic::Code::Internal,
    }
}

/// Maps a protocol-independent [`Code`] to an HTTP status (the transit door).
/// Vault clients read 400 as "fix the request", 403 as "fix the token or
/// policy" and 5xx as "retry later".
pub fn http_status(code: Code) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match code {
        Code::NotFound => StatusCode::NOT_FOUND,
        // Vault answers 400 for ciphertexts that do not authenticate, too.
        Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A gRPC status carrying the error's message (which never holds secrets).
pub fn to_status(error: &Error) -> tonic::Status {
    tonic::Status::new(grpc_code(error.code()), error.to_string())
}
