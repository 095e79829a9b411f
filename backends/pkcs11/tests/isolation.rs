//! `isolation = "process"`: the module runs in a helper process, and a
//! helper that dies or hangs fails the calls in flight, not the caller.
//!
//! Tests start this crate's `sealbroker-pkcs11-helper` binary (the broker
//! re-executes itself instead), or stand-ins that crash or never answer.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealbroker_backend_pkcs11::supervisor::{HelperSettings, set_helper_command};
use sealbroker_backend_pkcs11::{
    BackendConfig, Dispatch, Engine, HelperClient, HelperCommand, Isolation, KeyConfig, MechanismName,
    OaepHash, PinSource, Pkcs11Key, TokenSelector,
};
use sealbroker_core::{Backend, BackendErrorKind};

mod common;

use common::{MODULE, Token};

const TOKEN: &str = "sb-iso";
const HELPER: &str = env!("CARGO_BIN_EXE_sealbroker-pkcs11-helper");

fn token() -> Token {
    common::token(TOKEN)
}

fn config(token: &Token) -> BackendConfig {
    set_helper_command(HelperCommand {
        program: HELPER.into(),
        args: vec![],
    });
    BackendConfig {
        lib: MODULE.into(),
        token_label: Some(TOKEN.into()),
        slot: None,
        pin: None,
        pin_file: Some(token.path.join("pin")),
        max_sessions: 4,
        dispatch: Dispatch::Pool,
        isolation: Some(Isolation::Process),
        helper_env: vec!["SOFTHSM2_CONF".into()],
        helper_uid: None,
        helper_gid: None,
        timeout_secs: 30,
    }
}

fn aes_key(label: &str) -> KeyConfig {
    KeyConfig {
        key_label: Some(label.into()),
        key_id: None,
        mechanism: MechanismName::AesGcm,
        rsa_oaep_hash: OaepHash::Sha256,
        algorithm: None,
    }
}

/// A key whose helper is `program args`, for stand-ins that misbehave.
fn key_with_helper(
    token: &Token,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> (Pkcs11Key, Arc<HelperClient>) {
    let client = Arc::new(HelperClient::new(HelperSettings {
        backend: "backends.hsm".into(),
        command: HelperCommand {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        },
        lib: MODULE.into(),
        token: TokenSelector::Label(TOKEN.into()),
        pin: PinSource::File(token.path.join("pin")),
        max_sessions: 2,
        env: vec!["SOFTHSM2_CONF".into()],
        uid: None,
        gid: None,
        timeout,
    }));
    let key = Pkcs11Key::with_engine(Engine::Process(client.clone()), &aes_key("aes-1")).unwrap();
    (key, client)
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_and_rsa_round_trip_through_the_helper() {
    let token = token();
    let config = config(&token);
    let engine = config.engine("backends.hsm").unwrap();
    assert!(matches!(engine, Engine::Process(_)));
    let aes = Pkcs11Key::with_engine(engine.clone(), &aes_key("aes-1")).unwrap();
    let sealed = aes.encrypt(&[3; 32], b"aad").await.unwrap();
    assert_eq!(sealed.ciphertext.len(), 48);
    assert_eq!(aes.decrypt(&sealed, b"aad").await.unwrap().expose(), &[3; 32]);
    let wrong = aes.decrypt(&sealed, b"other").await.err().unwrap();
    assert_eq!(wrong.kind, BackendErrorKind::NotAuthentic, "{wrong}");

    // Rotation creates the next version in the helper, too.
    let v2 = aes.create_version(2).await.unwrap();
    let sealed = v2.backend.encrypt(&[4; 32], b"v2").await.unwrap();
    assert_eq!(
        v2.backend.decrypt(&sealed, b"v2").await.unwrap().expose(),
        &[4; 32]
    );

    let missing = Pkcs11Key::with_engine(engine, &aes_key("no-such-key")).unwrap();
    let err = missing.encrypt(&[0; 32], b"").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("no-such-key"), "{err}");
    assert_eq!(aes.helper_restarts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_oaep_through_the_helper() {
    let token = token();
    let config = config(&token);
    let rsa = KeyConfig {
        key_label: Some("rsa-1".into()),
        key_id: None,
        mechanism: MechanismName::RsaPkcsOaep,
        rsa_oaep_hash: OaepHash::Sha1,
        algorithm: None,
    };
    sealbroker_backend_pkcs11::generate_key(&config, &rsa)
        .await
        .unwrap();
    let key = Pkcs11Key::with_engine(config.engine("backends.hsm").unwrap(), &rsa).unwrap();
    let sealed = key.encrypt(&[7; 32], b"").await.unwrap();
    assert_eq!(sealed.ciphertext.len(), 384);
    assert_eq!(key.decrypt(&sealed, b"").await.unwrap().expose(), &[7; 32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_share_one_helper() {
    let token = token();
    let key = Arc::new(
        Pkcs11Key::with_engine(config(&token).engine("backends.hsm").unwrap(), &aes_key("aes-1")).unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let sealed = key.encrypt(&[i; 32], &[i]).await?;
            let opened = key.decrypt(&sealed, &[i]).await?;
            assert_eq!(opened.expose(), &[i; 32]);
            Ok::<_, sealbroker_core::BackendError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_helper_fails_calls_and_restarts_counted() {
    let token = token();
    let (key, client) = key_with_helper(&token, HELPER, &[], Duration::from_secs(30));
    let sealed = key.encrypt(&[1; 32], b"a").await.unwrap();
    let first = client.helper_pid().await.expect("a helper runs after a call");
    let killed = Command::new("kill")
        .arg("-KILL")
        .arg(first.to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    // The supervisor notices the death; the next call starts a new helper.
    wait_until(
        "the supervisor sees the helper gone",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move { client.helper_pid().await.is_none() }
        },
    )
    .await;
    assert_eq!(key.decrypt(&sealed, b"a").await.unwrap().expose(), &[1; 32]);
    let second = client.helper_pid().await.expect("a new helper runs");
    assert_ne!(first, second, "a new helper process serves the call");
    assert_eq!(key.helper_restarts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_that_dies_fails_with_unavailable_naming_the_backend() {
    let token = token();
    // A stand-in that dies on SIGSEGV as soon as it starts.
    let (key, client) = key_with_helper(
        &token,
        "/bin/sh",
        &["-c", "kill -SEGV $$"],
        Duration::from_secs(30),
    );
    let err = key.encrypt(&[1; 32], b"").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("backends.hsm"), "names the backend: {err}");
    assert!(
        err.message.contains("signal 11 (SIGSEGV)"),
        "says how it died: {err}"
    );
    // Each later call starts a replacement, after a growing backoff.
    let start = Instant::now();
    for _ in 0..3 {
        let err = key.encrypt(&[1; 32], b"").await.err().unwrap();
        assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    }
    assert_eq!(client.restarts(), 3);
    assert!(
        start.elapsed() >= Duration::from_millis(600), // 100 + 200 + 400 ms, less scheduling slack
        "restarts back off: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_helper_times_out_and_is_killed() {
    let token = token();
    // Reads the requests and never answers.
    let (key, client) = key_with_helper(
        &token,
        "/bin/sh",
        &["-c", "exec cat >/dev/null"],
        Duration::from_secs(1),
    );
    let started = Instant::now();
    let (a, b) = tokio::join!(key.encrypt(&[1; 32], b""), key.encrypt(&[2; 32], b""));
    for err in [a.err().unwrap(), b.err().unwrap()] {
        assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
        assert!(err.message.contains("backends.hsm"), "{err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    wait_until("the hung helper is gone", Duration::from_secs(10), || {
        let client = client.clone();
        async move { client.helper_pid().await.is_none() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helper_gets_only_the_listed_environment() {
    let token = token();
    let out = token.path.join("helper-env");
    // SAFETY: no other thread of this test reads the environment now.
    unsafe { std::env::set_var("SEALBROKER_TEST_CANARY", "must-not-reach-the-helper") };
    let script = format!("env > {}", out.display());
    let (key, _client) = key_with_helper(&token, "/bin/sh", &["-c", &script], Duration::from_secs(5));
    let err = key.encrypt(&[1; 32], b"").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(
        env.contains("SOFTHSM2_CONF="),
        "the listed variable passes: {env}"
    );
    assert!(
        !env.contains("SEALBROKER_TEST_CANARY"),
        "nothing else does: {env}"
    );
    assert!(!env.contains("HOME="), "nothing else does: {env}");
}

#[test]
fn isolation_settings_are_checked_with_their_field() {
    let token = token();
    let mut bad = config(&token);
    bad.isolation = Some(Isolation::InProcess);
    bad.helper_uid = Some(1000);
    let err = bad.engine("backends.hsm").err().unwrap();
    assert_eq!(err.path, "helper_uid");
    assert!(err.to_string().contains("isolation = \"process\""), "{err}");

    for dispatch in [Dispatch::Inline, Dispatch::Direct] {
        let mut bad = config(&token);
        bad.dispatch = dispatch;
        let err = bad.engine("backends.hsm").err().unwrap();
        assert_eq!(err.path, "dispatch", "{dispatch:?}");
    }

    let mut bad = config(&token);
    bad.helper_env = vec!["SOFTHSM2_CONF".into(), "A=B".into()];
    let err = bad.engine("backends.hsm").err().unwrap();
    assert_eq!(err.path, "helper_env[1]");

    let mut bad = config(&token);
    bad.timeout_secs = 0;
    assert_eq!(bad.engine("backends.hsm").err().unwrap().path, "timeout_secs");

    let table: toml::Table =
        toml::from_str("lib = \"/x.so\"\ntoken_label = \"t\"\npin = \"1\"\nisolation = \"separate\"\n")
            .unwrap();
    let err = sealbroker_core::parse_table::<BackendConfig>(&table, "backends.hsm")
        .err()
        .unwrap();
    assert_eq!(err.path, "backends.hsm.isolation", "{err}");
    assert!(err.to_string().contains("in-process"), "lists the choices: {err}");

    let table: toml::Table = toml::from_str("lib = \"/x.so\"\ntoken_label = \"t\"\npin = \"1\"\n").unwrap();
    let default = sealbroker_core::parse_table::<BackendConfig>(&table, "backends.hsm").unwrap();
    assert_eq!(default.isolation(), Isolation::Process);
}
