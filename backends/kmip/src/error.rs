//! How KMIP failures become [`BackendError`]s: one place, so every path
//! (transport, server result, malformed answer) names the endpoint, the
//! operation and the key, and maps to the same kinds.
//!
//! A Decrypt the server refuses is the exception: whatever the Result Reason
//! (Cryptographic Failure, Invalid Message, General Failure, ...), it becomes
//! the one error of [`refused_decrypt`], unless the reason says the object is
//! not there. A server that reports a bad CBC padding differently from other
//! failures (PyKMIP answers General Failure) would otherwise hand callers a
//! padding oracle on `AES_CBC_PAD` keys.

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

    /// Whether the failure hints that the key itself changed (gone,
    /// destroyed, refused, in another state), so a cached lookup of it
    /// should be dropped and done again.
    pub fn says_key_changed(&self) -> bool {
        matches!(
            self.reason(),
            Some(
                ResultReason::ITEM_NOT_FOUND
                    | ResultReason::OBJECT_NOT_FOUND
                    | ResultReason::OBJECT_DESTROYED
                    | ResultReason::PERMISSION_DENIED
                    | ResultReason::WRONG_KEY_LIFECYCLE_STATE
            )
        )
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
            CallError::Failed(failure) if operation == Operation::Decrypt && !object_not_found(&failure) => {
                refused_decrypt(&failure, subject, endpoint)
            }
            CallError::Failed(failure) => {
                let kind = failure_kind(&failure);
                let hint = match failure.reason {
                    Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL) => {
                        "; the server did not accept our client certificate (KMIP servers require the \
                         clientAuth extended key usage, and an identity they know)"
                    }
                    _ => "",
                };
                BackendError::new(
                    kind,
                    format!(
                        "KMIP {operation}{} on {endpoint} failed: {failure}{hint}",
                        of_subject(subject)
                    ),
                )
            }
        }
    }
}

fn of_subject(subject: &str) -> String {
    if subject.is_empty() {
        String::new()
    } else {
        format!(" of {subject}")
    }
}

/// Reasons that say the key object is not on the server: they depend on the
/// key, never on the ciphertext, so they may stay distinct on Decrypt.
fn object_not_found(failure: &Failure) -> bool {
    matches!(
        failure.reason,
        Some(ResultReason::ITEM_NOT_FOUND | ResultReason::OBJECT_NOT_FOUND)
    )
}

/// The one error of every other refused Decrypt. It names the key and the
/// server (the same for every ciphertext) but not the server's reason or
/// message, which only the broker's log gets.
fn refused_decrypt(failure: &Failure, subject: &str, endpoint: &str) -> BackendError {
    tracing::info!(
        %endpoint,
        key = subject,
        result = %failure,
        "KMIP server refused a Decrypt; the caller sees the same error whatever the reason"
    );
    BackendError::not_authentic(format!(
        "KMIP server {endpoint} refused to decrypt with {}: the ciphertext, IV, tag or AAD does not match \
         this key, or the server would not use the key (every refusal reads the same, so none can act as \
         a padding oracle; the broker's log has the server's reason)",
        if subject.is_empty() { "this key" } else { subject }
    ))
}

/// The kind of a failure the server reported (for a Decrypt, only when the
/// object is not found; see [`refused_decrypt`]).
fn failure_kind(failure: &Failure) -> BackendErrorKind {
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
        assert_eq!(kind(0x39, Operation::Encrypt), PermissionDenied);
        assert_eq!(kind(0x3A, Operation::Encrypt), Throttled);
        assert_eq!(kind(0x44, Operation::Encrypt), Unavailable);
    }

    #[test]
    fn cryptographic_failure_outside_decrypt_is_internal() {
        assert_eq!(kind(0x0A, Operation::Encrypt), BackendErrorKind::Internal);
        assert_eq!(kind(0x04, Operation::Locate), BackendErrorKind::Internal);
        assert_eq!(kind(0x100, Operation::Encrypt), BackendErrorKind::Internal);
    }

    /// Every Result Reason KMIP 1.x and 2.0 define (0x01 to 0x47), General
    /// Failure, and values no version defines.
    fn every_reason() -> impl Iterator<Item = u32> {
        (0x01..=0x47).chain([0x48, 0x100, 0x999, u32::MAX])
    }

    /// What a refused Decrypt of key id "1" on kms:5696 becomes.
    fn refused(failure: Failure) -> BackendError {
        CallError::Failed(failure).into_backend(Operation::Decrypt, "key id \"1\"", "kms:5696")
    }

    #[test]
    fn every_refused_decrypt_is_one_error_whatever_the_reason_or_message() {
        let padding = refused(Failure {
            status: 1,
            reason: Some(ResultReason(0x100)),
            message: Some("Operation failed. See the server logs for more information.".into()),
        });
        assert_eq!(padding.kind, BackendErrorKind::NotAuthentic);
        assert_eq!(padding.kind.code(), sealbroker_core::Code::FailedPrecondition);
        let mut seen = 0;
        for reason in every_reason().filter(|r| ![0x01, 0x37].contains(r)) {
            for message in [
                None,
                Some(""),
                Some("Invalid padding bytes."),
                Some("tag mismatch"),
            ] {
                for status in [1, 3] {
                    let failure = Failure {
                        status,
                        reason: Some(ResultReason(reason)),
                        message: message.map(String::from),
                    };
                    let err = refused(failure.clone());
                    assert_eq!(
                        (err.kind, &err.message),
                        (padding.kind, &padding.message),
                        "{failure}"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 500, "{seen}");
        for status in [1, 2, 3] {
            let err = refused(Failure {
                status,
                reason: None,
                message: Some("Decryption failed".into()),
            });
            assert_eq!((err.kind, &err.message), (padding.kind, &padding.message));
        }
        // The message says what to check, and nothing the server said.
        assert!(padding.message.contains("key id \"1\"") && padding.message.contains("kms:5696"));
        for leak in ["General Failure", "Operation failed", "server logs"] {
            assert!(!padding.message.contains(leak), "{leak}: {}", padding.message);
        }
    }

    /// A backend whose Decrypt fails with the error a refusal maps to.
    struct Refusing(BackendError);

    #[async_trait::async_trait]
    impl sealbroker_core::Backend for Refusing {
        fn kind(&self) -> &'static str {
            "kmip"
        }
        fn key_identity(&self) -> String {
            "kmip:kms:5696:id=1:AES_CBC_PAD".into()
        }
        async fn encrypt(&self, _: &[u8], _: &[u8]) -> Result<sealbroker_core::Sealed, BackendError> {
            Ok(sealbroker_core::Sealed {
                mechanism: sealbroker_core::Mechanism::AesCbcPad,
                iv: vec![7; 16],
                ciphertext: vec![9; 48],
                ..Default::default()
            })
        }
        async fn decrypt(
            &self,
            _: &sealbroker_core::Sealed,
            _: &[u8],
        ) -> Result<sealbroker_core::SecretBytes, BackendError> {
            Err(self.0.clone())
        }
    }

    /// What a caller of the key ring sees when the server refuses with `reason`.
    async fn caller_sees(reason: Option<u32>) -> (sealbroker_core::Code, String) {
        use sealbroker_core::{KeyRing, KeyVersion, LogicalKey};
        let error = refused(Failure {
            status: 1,
            reason: reason.map(ResultReason),
            message: Some(format!("reason {reason:?}")),
        });
        let backend = std::sync::Arc::new(Refusing(error));
        let ring = KeyRing::new([LogicalKey::single("k", KeyVersion::new("k", 1, "kmip", backend))]);
        let wrapped = ring.wrap("k", b"secret", b"aad").await.unwrap();
        let Err(err) = ring.unwrap(Some("k"), &wrapped.blob, b"aad").await else {
            panic!("a refused Decrypt opened the blob");
        };
        (err.code(), err.to_string())
    }

    #[tokio::test]
    async fn callers_see_one_core_error_and_status_for_every_refused_decrypt() {
        let padding = caller_sees(Some(0x100)).await;
        assert_eq!(
            padding.0,
            sealbroker_core::Code::FailedPrecondition,
            "{}",
            padding.1
        );
        for reason in every_reason()
            .filter(|r| ![0x01, 0x37].contains(r))
            .map(Some)
            .chain([None])
        {
            assert_eq!(caller_sees(reason).await, padding, "{reason:?}");
        }
        let missing = caller_sees(Some(0x01)).await;
        assert_eq!(missing.0, sealbroker_core::Code::NotFound, "{}", missing.1);
    }

    #[test]
    fn object_not_found_and_transport_errors_stay_distinct_on_decrypt() {
        for reason in [0x01, 0x37] {
            let err = refused(Failure {
                status: 1,
                reason: Some(ResultReason(reason)),
                message: Some("Could not locate object: 1".into()),
            });
            assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
            assert!(err.message.contains("Could not locate object: 1"), "{err}");
        }
        let lost = CallError::Connection {
            error: "connection reset".into(),
            before_response: false,
        }
        .into_backend(Operation::Decrypt, "key id \"1\"", "kms:5696");
        assert_eq!(lost.kind, BackendErrorKind::Unavailable);
        let late = CallError::Backend(BackendError::new(BackendErrorKind::Timeout, "no answer in 10s"))
            .into_backend(Operation::Decrypt, "key id \"1\"", "kms:5696");
        assert_eq!(late.kind, BackendErrorKind::Timeout);
        let garbage = CallError::Malformed("no Data".into()).into_backend(Operation::Decrypt, "", "kms:1");
        assert_eq!(garbage.kind, BackendErrorKind::Internal);
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
