//! The AWS KMS backend against a real moto server, driven through the real SDK.

mod common;

use common::*;
use sealbroker_backend_awskms::{AwsKmsKey, KeyConfig, KmsClient, METADATA_KEY_ARN};
use sealbroker_core::{Backend, BackendErrorKind, Mechanism};

const DEK: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// Creates a symmetric key and returns its ARN.
async fn create_key(client: &KmsClient) -> String {
    let out = client
        .sdk()
        .create_key()
        .description("sealbroker test")
        .send()
        .await
        .expect("CreateKey on moto");
    out.key_metadata.unwrap().arn.unwrap()
}

fn key(client: &KmsClient, key_id: &str) -> AwsKmsKey {
    AwsKmsKey::new(
        client,
        &KeyConfig {
            key_id: key_id.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn round_trip_records_the_key_arn_and_passes_health() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let arn = create_key(&client).await;
    let key = key(&client, &arn);

    let sealed = key.encrypt(DEK, b"vault/unseal").await.unwrap();
    assert_eq!(sealed.mechanism, Mechanism::ServiceDefined);
    assert_eq!(sealed.metadata.get(METADATA_KEY_ARN), Some(&arn));
    assert!(!sealed.ciphertext.windows(DEK.len()).any(|w| w == DEK));
    let opened = key.decrypt(&sealed, b"vault/unseal").await.unwrap();
    assert_eq!(opened.expose(), DEK);

    // Empty AAD sends no encryption context, and still round-trips.
    let sealed = key.encrypt(DEK, b"").await.unwrap();
    assert_eq!(key.decrypt(&sealed, b"").await.unwrap().expose(), DEK);

    key.health().await.unwrap();
}

#[tokio::test]
async fn unwrap_rejects_a_different_aad_as_not_authentic() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let key = key(&client, &create_key(&client).await);

    let sealed = key.encrypt(DEK, b"tenant-a").await.unwrap();
    for wrong in [&b"tenant-b"[..], b"", b"tenant-a\0"] {
        let err = key.decrypt(&sealed, wrong).await.err().unwrap();
        assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
        assert!(err.message.contains("Decrypt"), "{err}");
    }

    // A tampered ciphertext is not authentic either.
    let mut tampered = sealed.clone();
    let last = tampered.ciphertext.len() - 1;
    tampered.ciphertext[last] ^= 1;
    let err = key.decrypt(&tampered, b"tenant-a").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
}

#[tokio::test]
async fn blobs_sealed_under_the_old_alias_target_still_open_after_update_alias() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let first = create_key(&client).await;
    let second = create_key(&client).await;
    client
        .sdk()
        .create_alias()
        .alias_name("alias/sealbroker-rotating")
        .target_key_id(&first)
        .send()
        .await
        .unwrap();
    let key = key(&client, "alias/sealbroker-rotating");

    let old = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(old.metadata[METADATA_KEY_ARN], first);

    client
        .sdk()
        .update_alias()
        .alias_name("alias/sealbroker-rotating")
        .target_key_id(&second)
        .send()
        .await
        .unwrap();
    let new = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(new.metadata[METADATA_KEY_ARN], second);

    assert_eq!(key.decrypt(&old, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&new, b"aad").await.unwrap().expose(), DEK);
    // The identity names the alias, so the broker's key id stays stable across re-pointing.
    assert_eq!(key.key_identity(), "awskms:eu-west-1:alias/sealbroker-rotating");
}

#[tokio::test]
async fn kms_managed_rotation_keeps_old_blobs_open() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let arn = create_key(&client).await;
    let key = key(&client, &arn);
    let before = key.encrypt(DEK, b"aad").await.unwrap();

    client
        .sdk()
        .enable_key_rotation()
        .key_id(&arn)
        .send()
        .await
        .unwrap();
    client
        .sdk()
        .rotate_key_on_demand()
        .key_id(&arn)
        .send()
        .await
        .unwrap();
    let rotations = client
        .sdk()
        .list_key_rotations()
        .key_id(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(rotations.rotations().len(), 1);

    let after = key.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(
        after.metadata[METADATA_KEY_ARN], arn,
        "rotation keeps the key ARN"
    );
    assert_eq!(key.decrypt(&before, b"aad").await.unwrap().expose(), DEK);
    assert_eq!(key.decrypt(&after, b"aad").await.unwrap().expose(), DEK);
}

#[tokio::test]
async fn create_version_rotates_on_demand_through_an_alias() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let arn = create_key(&client).await;
    client
        .sdk()
        .create_alias()
        .alias_name("alias/unseal")
        .target_key_id(&arn)
        .send()
        .await
        .unwrap();
    let key = key(&client, "alias/unseal");
    let before = key.encrypt(DEK, b"aad").await.unwrap();

    let created = key.create_version(2).await.unwrap();
    assert!(created.settings.is_empty(), "{:?}", created.settings);
    let rotations = client
        .sdk()
        .list_key_rotations()
        .key_id(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        rotations.rotations().len(),
        1,
        "one on-demand rotation of the aliased key"
    );

    let after = created.backend.encrypt(DEK, b"aad").await.unwrap();
    assert_eq!(after.metadata[METADATA_KEY_ARN], arn);
    assert_eq!(
        created.backend.decrypt(&before, b"aad").await.unwrap().expose(),
        DEK
    );
    assert_eq!(key.decrypt(&after, b"aad").await.unwrap().expose(), DEK);

    let missing = self::key(&client, "alias/nothing-here");
    let err = missing.create_version(2).await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
}

#[tokio::test]
async fn a_blob_naming_another_key_is_refused_before_any_call() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let a = key(&client, &create_key(&client).await);
    let b_arn = create_key(&client).await;
    let b = key(&client, &b_arn);

    let sealed = a.encrypt(DEK, b"aad").await.unwrap();
    let err = b.decrypt(&sealed, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");

    // Relabelling the blob as sealed by B does not help: KMS knows better.
    let mut relabelled = sealed.clone();
    relabelled.metadata.insert(METADATA_KEY_ARN.into(), b_arn);
    let err = b.decrypt(&relabelled, b"aad").await.err().unwrap();
    assert!(
        matches!(
            err.kind,
            BackendErrorKind::NotAuthentic | BackendErrorKind::PermissionDenied
        ),
        "{err}"
    );
}

#[tokio::test]
async fn disabled_and_deleted_keys_fail_health_naming_the_state() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let arn = create_key(&client).await;
    let key = key(&client, &arn);
    // moto 5.2.5 answers 500 to DisableKey/EnableKey/ScheduleKeyDeletion given an ARN.
    let id = arn.rsplit('/').next().unwrap();

    client.sdk().disable_key().key_id(id).send().await.unwrap();
    let err = key.health().await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    eprintln!("{err}");
    assert!(err.message.contains("Disabled"), "{err}");
    assert!(err.message.contains(&arn), "{err}");

    client.sdk().enable_key().key_id(id).send().await.unwrap();
    key.health().await.unwrap();

    client
        .sdk()
        .schedule_key_deletion()
        .key_id(id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let err = key.health().await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("PendingDeletion"), "{err}");
}

#[tokio::test]
async fn unknown_key_is_key_not_found_naming_it() {
    let moto = Moto::start();
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let key = key(&client, "alias/does-not-exist");
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("alias/does-not-exist"), "{err}");
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

#[tokio::test]
async fn server_down_is_unavailable_after_bounded_retries() {
    let creds = credentials();
    let moto = Moto::start();
    let client = client(&moto.endpoint(), &creds).await;
    let key = key(&client, &create_key(&client).await);
    let sealed = key.encrypt(DEK, b"aad").await.unwrap();
    drop(moto);

    let started = std::time::Instant::now();
    let err = key.decrypt(&sealed, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("gave up after 2 retries"), "{err}");
    assert!(err.message.contains("127.0.0.1"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
}

#[tokio::test]
async fn rejected_credentials_are_permission_denied_naming_the_access_key_not_the_secret() {
    // moto authenticates every request after the first one (CreateKey).
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    let creds = credentials();
    let client = client(&moto.endpoint(), &creds).await;
    let key = key(&client, &create_key(&client).await);

    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("AKIAMOTO…"), "{err}");
    assert_no_secret(
        &err.message,
        &[("the whole access key id", ACCESS_KEY_ID)],
        "the error message",
    );
    assert!(err.message.contains(&creds.file.display().to_string()), "{err}");
    assert!(
        !err.message.contains("gave up"),
        "auth failures are not retried: {err}"
    );
    assert_no_secret(&format!("{err:?}"), SECRETS, "the error's Debug output");
    assert_no_secret(&err.to_string(), SECRETS, "the error message");
}

#[tokio::test]
async fn missing_credentials_are_permission_denied_naming_the_source() {
    let moto = Moto::start();
    let creds = credentials();
    std::fs::write(
        &creds.file,
        "[other]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = x\n",
    )
    .unwrap();
    let client = client(&moto.endpoint(), &creds).await;
    let key = key(&client, "alias/whatever");
    let err = key.encrypt(DEK, b"aad").await.err().unwrap();
    eprintln!("{err}");
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert!(err.message.contains("credentials file"), "{err}");
}
