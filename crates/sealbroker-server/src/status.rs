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

/// A gRPC status carrying the error's message (which never holds secrets).
pub fn to_status(error: &Error) -> tonic::Status {
    tonic::Status::new(grpc_code(error.code()), error.to_string())
}
