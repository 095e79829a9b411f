//! How KMIP failures become [`BackendError`]s: one place, so every path
//! (transport, server result, malformed answer) names the endpoint, the
//! operation and the key, and maps to the same kinds.

use sealbroker_core::{BackendError, BackendErrorKind};

use crate::protocol::{Failure, Operation, ResponseError, ResultReason};

/// The failure of one pooled KMIP call, before it is given a context.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Already classified: unreachable server, TLS refusal, timeout, or a
    /// request we would not send.
    Backend(BackendError),
    /// The server answered the operation with a failure.
    Failed(Failure),
    /// The server's answer is not the KMIP response we expect.
    Malformed(String),
    /// An established connection broke. `before_response` when no byte of the
    /// answer had arrived, so an idempotent request may be sent again.
    Connection { error: String, before_response: bool },
}

impl From<ResponseError> for CallError {
    fn from(error: ResponseError) -> Self {
        match error {
            ResponseError::Failed(failure) => CallError::Failed(failure),
            ResponseError::Malformed(what) => CallError::Malformed(what),
        }
    }
}

impl CallError {
    /// The failure's Result Reason, when the server gave one.
    pub fn reason(&self) -> Option<ResultReason> {
        match self {
            CallError::Failed(failure) => failure.reason,
            _ => None,
        }
    }

    /// Names what failed. `subject` describes the key ("key id \"7\"").
    pub fn into_backend(self, operation: Operation, subject: &str, endpoint: &str) -> BackendError {
        match self {
            CallError::Backend(error) => error,
            CallError::Connection { error, .. } => BackendError::unavailable(format!(
                "lost the connection to KMIP server {endpoint} during {operation}: {error}"
            )),
            CallError::Malformed(what) => BackendError::internal(format!(
                "KMIP server {endpoint} sent a malformed {operation} response: {what}"
            )),
            CallError::Failed(failure) => {
                let kind = failure_kind(&failure, operation);
                let hint = match failure.reason {
                    Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL) => {
                        "; the server did not accept our client certificate (KMIP servers require the \
                         clientAuth extended key usage, and an identity they know)"
                    }
                    Some(ResultReason::CRYPTOGRAPHIC_FAILURE | ResultReason::INVALID_MESSAGE)
                        if operation == Operation::Decrypt =>
                    {
                        "; the ciphertext, IV, tag or AAD does not match this key"
                    }
                    _ => "",
                };
                let subject = if subject.is_empty() {
                    String::new()
                } else {
                    format!(" of {subject}")
                };
                BackendError::new(
                    kind,
                    format!("KMIP {operation}{subject} on {endpoint} failed: {failure}{hint}"),
                )
            }
        }
    }
}

/// The kind of a failure the server reported.
fn failure_kind(failure: &Failure, operation: Operation) -> BackendErrorKind {
    let Some(reason) = failure.reason else {
        return BackendErrorKind::Internal;
    };
    match reason {
        ResultReason::ITEM_NOT_FOUND
        | ResultReason::OBJECT_NOT_FOUND
        | ResultReason::OBJECT_DESTROYED
        | ResultReason::WRONG_KEY_LIFECYCLE_STATE => BackendErrorKind::KeyNotFound,
        ResultReason::PERMISSION_DENIED
        | ResultReason::AUTHENTICATION_NOT_SUCCESSFUL
        | ResultReason::NOT_AUTHORISED => BackendErrorKind::PermissionDenied,
        ResultReason::CRYPTOGRAPHIC_FAILURE | ResultReason::INVALID_MESSAGE
            if operation == Operation::Decrypt =>
        {
            BackendErrorKind::NotAuthentic
        }
        ResultReason::SERVER_LIMIT_EXCEEDED => BackendErrorKind::Throttled,
        ResultReason::PROTECTION_STORAGE_UNAVAILABLE => BackendErrorKind::Unavailable,
        _ => BackendErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(reason: u32, message: &str) -> CallError {
        CallError::Failed(Failure {
            status: 1,
            reason: Some(ResultReason(reason)),
            message: Some(message.into()),
        })
    }

    fn kind(reason: u32, operation: Operation) -> BackendErrorKind {
        failed(reason, "")
            .into_backend(operation, "key id \"1\"", "kms:5696")
            .kind
    }

    #[test]
    fn result_reasons_map_to_typed_kinds() {
        use BackendErrorKind::*;
        assert_eq!(kind(0x01, Operation::GetAttributes), KeyNotFound);
        assert_eq!(kind(0x37, Operation::Encrypt), KeyNotFound);
        assert_eq!(kind(0x36, Operation::Encrypt), KeyNotFound);
        assert_eq!(kind(0x43, Operation::Encrypt), KeyNotFound);
        assert_eq!(kind(0x0C, Operation::Encrypt), PermissionDenied);
        assert_eq!(kind(0x03, Operation::Locate), PermissionDenied);
        assert_eq!(kind(0x39, Operation::Decrypt), PermissionDenied);
        assert_eq!(kind(0x0A, Operation::Decrypt), NotAuthentic);
        assert_eq!(kind(0x04, Operation::Decrypt), NotAuthentic);
        assert_eq!(kind(0x3A, Operation::Encrypt), Throttled);
        assert_eq!(kind(0x44, Operation::Encrypt), Unavailable);
    }

    #[test]
    fn cryptographic_failure_outside_decrypt_is_internal() {
        assert_eq!(kind(0x0A, Operation::Encrypt), BackendErrorKind::Internal);
        assert_eq!(kind(0x04, Operation::Locate), BackendErrorKind::Internal);
        assert_eq!(kind(0x100, Operation::Decrypt), BackendErrorKind::Internal);
        assert_eq!(kind(0x999, Operation::Decrypt), BackendErrorKind::Internal);
    }

    #[test]
    fn messages_name_operation_key_endpoint_reason_and_server_text() {
        let err = failed(0x01, "Could not locate object: 99").into_backend(
            Operation::GetAttributes,
            "key id \"99\"",
            "kms.example:5696",
        );
        assert_eq!(
            err.message,
            "KMIP GetAttributes of key id \"99\" on kms.example:5696 failed: \
             Item Not Found (Could not locate object: 99)"
        );
        let other = failed(0x07, "bad field").into_backend(Operation::Encrypt, "key id \"1\"", "kms:1");
        assert_eq!(other.kind, BackendErrorKind::Internal);
        assert!(
            other.message.contains("Invalid Field (bad field)"),
            "{}",
            other.message
        );
    }

    #[test]
    fn refused_client_certificate_says_so() {
        let err = failed(0x03, "Error verifying the client certificate.").into_backend(
            Operation::Locate,
            "",
            "kms:5696",
        );
        assert_eq!(err.kind, BackendErrorKind::PermissionDenied);
        assert!(
            err.message
                .starts_with("KMIP Locate on kms:5696 failed: Authentication"),
            "{}",
            err.message
        );
        assert!(err.message.contains("clientAuth"), "{}", err.message);
    }

    #[test]
    fn failure_without_reason_is_internal() {
        let err = CallError::Failed(Failure {
            status: 3,
            reason: None,
            message: None,
        })
        .into_backend(Operation::Encrypt, "key id \"1\"", "kms:1");
        assert_eq!(err.kind, BackendErrorKind::Internal);
        assert!(
            err.message.contains("result status 3 without a reason"),
            "{}",
            err.message
        );
    }

    #[test]
    fn broken_connections_are_unavailable_and_garbage_is_internal() {
        let lost = CallError::Connection {
            error: "connection reset".into(),
            before_response: false,
        }
        .into_backend(Operation::Decrypt, "", "kms:1");
        assert_eq!(lost.kind, BackendErrorKind::Unavailable);
        assert!(
            lost.message.contains("kms:1") && lost.message.contains("Decrypt"),
            "{}",
            lost.message
        );
        let garbage =
            CallError::Malformed("Batch Count is 2".into()).into_backend(Operation::Encrypt, "", "kms:1");
        assert_eq!(garbage.kind, BackendErrorKind::Internal);
        assert!(
            garbage
                .message
                .contains("malformed Encrypt response: Batch Count is 2")
        );
    }
}
