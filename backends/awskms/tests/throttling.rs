//! Throttling, against a scripted stand-in for the KMS JSON protocol (moto
//! never throttles): bounded, jittered retries that honour `Retry-After`,
//! then `Throttled`.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use sealbroker_backend_awskms::{AwsKmsKey, KeyConfig, KmsClient, METADATA_KEY_ARN};
use sealbroker_core::{Backend, BackendErrorKind};

const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// The sealing key `ARN` on `client`.
fn arn_key(client: &KmsClient) -> AwsKmsKey {
    AwsKmsKey::new(
        client,
        &KeyConfig {
            key_id: ARN.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn throttled(retry_after: Option<&str>) -> Reply {
    Reply {
        status: 400,
        headers: retry_after
            .map(|s| ("Retry-After", s.to_owned()))
            .into_iter()
            .collect(),
        body: r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into(),
    }
}

fn encrypted() -> Reply {
    Reply {
        status: 200,
        headers: vec![],
        body: format!(
            r#"{{"CiphertextBlob":"AAECAw==","KeyId":"{ARN}","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}}"#
        ),
    }
}

#[tokio::test]
async fn throttling_is_retried_then_succeeds() {
    let (endpoint, count) = scripted_kms(vec![throttled(None), throttled(None), encrypted()]).await;
    let creds = credentials();
    let client = client(&endpoint, &creds).await;
    let key = arn_key(&client);
    assert_eq!(key.throttling_retries(), 0);
    let sealed = key.encrypt(&[7; 32], b"aad").await.unwrap();
    assert_eq!(sealed.metadata[METADATA_KEY_ARN], ARN);
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert_eq!(key.throttling_retries(), 2, "two throttled answers were retried");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (endpoint, count) = scripted_kms(vec![throttled(Some("1")), encrypted()]).await;
    let creds = credentials();
    let mut config = backend_config(&endpoint, &creds);
    config.retry.max_backoff_ms = 5_000;
    let client = sealbroker_backend_awskms::connect(&config).await.unwrap();
    let key = arn_key(&client);
    let started = Instant::now();
    key.encrypt(&[7; 32], b"aad").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        started.elapsed()
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn persistent_throttling_ends_as_throttled_after_bounded_retries() {
    let (endpoint, count) = scripted_kms(vec![throttled(Some("0"))]).await;
    let creds = credentials();
    let client = client(&endpoint, &creds).await;
    let key = arn_key(&client);
    let err = key.encrypt(&[7; 32], b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Throttled, "{err}");
    assert_eq!(err.kind.code(), sealbroker_core::Code::Unavailable);
    assert!(err.message.contains("ThrottlingException"), "{err}");
    assert!(err.message.contains("gave up after 2 retries"), "{err}");
    // One attempt plus max_retries (2) retries.
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

#[tokio::test]
async fn server_errors_are_retried_as_unavailable() {
    let reply = || Reply {
        status: 500,
        headers: vec![],
        body: r#"{"__type":"KMSInternalException","message":"internal"}"#.into(),
    };
    let (endpoint, count) = scripted_kms(vec![reply(), encrypted()]).await;
    let creds = credentials();
    let client = client(&endpoint, &creds).await;
    let key = arn_key(&client);
    key.encrypt(&[7; 32], b"aad").await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);

    let (endpoint, _) = scripted_kms(vec![reply()]).await;
    let client = common::client(&endpoint, &creds).await;
    let key = arn_key(&client);
    let err = key.encrypt(&[7; 32], b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn disabled_key_on_encrypt_is_a_clear_key_error() {
    // moto does not refuse Encrypt on a disabled key; real KMS answers this.
    let (endpoint, count) = scripted_kms(vec![Reply {
        status: 400,
        headers: vec![],
        body: format!(r#"{{"__type":"DisabledException","message":"{ARN} is disabled."}}"#),
    }])
    .await;
    let creds = credentials();
    let client = client(&endpoint, &creds).await;
    let key = arn_key(&client);
    let err = key.encrypt(&[7; 32], b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("disabled"), "{err}");
    assert!(err.message.contains(ARN), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn access_denied_is_permission_denied_naming_the_identity() {
    let (endpoint, _) = scripted_kms(vec![Reply {
        status: 400,
        headers: vec![],
        body: r#"{"__type":"AccessDeniedException","message":"User: arn:aws:iam::111122223333:user/broker is not authorized to perform: kms:Encrypt"}"#.into(),
    }])
    .await;
    let creds = credentials();
    let client = client(&endpoint, &creds).await;
    let key = arn_key(&client);
    let err = key.encrypt(&[7; 32], b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("kms:Encrypt"), "{err}");
    assert!(err.message.contains("AKIAMOTO…"), "{err}");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

/// A service that accepts the connection and never answers: each attempt
/// ends at `timeout_ms` as `Timeout`, naming the setting, and the call ends
/// within its bounded retries instead of hanging.
#[tokio::test]
async fn a_service_that_never_answers_times_out_at_timeout_ms() {
    let hung = sealbroker_testkit::silent::SilentListener::bind().await;
    let creds = credentials();
    let mut config = backend_config(&format!("http://{}", hung.addr()), &creds);
    config.timeout_ms = 400;
    config.retry.max_backoff_ms = 50;
    let client = sealbroker_backend_awskms::connect(&config).await.unwrap();
    let key = arn_key(&client);
    let started = Instant::now();
    let err = key.encrypt(&[7; 32], b"aad").await.err().unwrap();
    let took = started.elapsed();
    eprintln!("{err} after {took:?}");
    assert_eq!(err.kind, BackendErrorKind::Timeout, "{err}");
    assert!(err.message.contains("timeout_ms = 400"), "{err}");
    assert!(hung.accepted() >= 1, "the call reached the hung service");
    // At most three attempts of 400 ms and two short backoffs, with slack.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(3 * 450 + 1_500),
        "ended after {took:?}, not at timeout_ms"
    );
}
