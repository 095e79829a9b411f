//! The PKCS#11 backend against a real SoftHSM2 token.
//!
//! Each test process (nextest runs one test per process) makes its own
//! token with `softhsm/make-token.sh` and points SOFTHSM2_CONF at it before
//! the module is loaded.

use std::sync::Arc;

use sealbroker_backend_pkcs11::{
    BackendConfig, Dispatch, Isolation, KeyConfig, MechanismName, OaepHash, Pkcs11Key, generate_key,
};
use sealbroker_core::{Backend, BackendErrorKind};
use sealbroker_testkit::assert_no_secret;
use secrecy::SecretString;

mod common;

use common::{MODULE, PIN, Token};

const TOKEN: &str = "sb-test";

fn token() -> Token {
    common::token(TOKEN)
}

fn backend(token: &Token, max_sessions: usize) -> BackendConfig {
    BackendConfig {
        lib: MODULE.into(),
        token_label: Some(TOKEN.into()),
        slot: None,
        pin: None,
        pin_file: Some(token.path.join("pin")),
        max_sessions,
        dispatch: Dispatch::Pool,
        isolation: Some(Isolation::InProcess),
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

fn key(config: &BackendConfig, key: &KeyConfig) -> Pkcs11Key {
    Pkcs11Key::new(config.pool().unwrap(), key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_gcm_round_trip_binds_aad() {
    let token = token();
    let key = key(&backend(&token, 4), &aes_key("aes-1"));
    let sealed = key
        .encrypt(b"0123456789abcdef0123456789abcdef", b"aad-1")
        .await
        .unwrap();
    assert_eq!(sealed.iv.len(), 12);
    assert_eq!(sealed.ciphertext.len(), 32 + 16);
    let opened = key.decrypt(&sealed, b"aad-1").await.unwrap();
    assert_eq!(opened.expose(), b"0123456789abcdef0123456789abcdef");

    let wrong_aad = key.decrypt(&sealed, b"aad-2").await.err().unwrap();
    assert_eq!(wrong_aad.kind, BackendErrorKind::NotAuthentic, "{wrong_aad}");
    let mut tampered = sealed.clone();
    tampered.ciphertext[3] ^= 1;
    let err = key.decrypt(&tampered, b"aad-1").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::NotAuthentic, "{err}");
    // A failed decrypt must not poison the pool.
    assert_eq!(key.decrypt(&sealed, b"aad-1").await.unwrap().expose().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_oaep_keygen_and_round_trip() {
    let token = token();
    let config = backend(&token, 2);
    let rsa = KeyConfig {
        key_label: Some("rsa-1".into()),
        key_id: Some("0x0a0b".into()),
        mechanism: MechanismName::RsaPkcsOaep,
        rsa_oaep_hash: OaepHash::Sha1, // SoftHSM 2.6 supports OAEP with SHA-1 only
        algorithm: None,
    };
    let created = generate_key(&config, &rsa).await.unwrap();
    assert!(created.contains("RSA-3072"), "{created}");
    let again = generate_key(&config, &rsa).await.err().unwrap();
    assert!(again.message.contains("already exists"), "{again}");

    let key = key(&config, &rsa);
    let sealed = key.encrypt(&[7u8; 32], b"ignored by OAEP").await.unwrap();
    assert_eq!(sealed.oaep_hash, "sha1");
    assert_eq!(key.decrypt(&sealed, b"").await.unwrap().expose(), &[7u8; 32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oaep_hash_the_token_lacks_is_a_clear_error() {
    let token = token();
    let config = backend(&token, 2);
    let mut rsa = KeyConfig {
        key_label: Some("rsa-2".into()),
        key_id: None,
        mechanism: MechanismName::RsaPkcsOaep,
        rsa_oaep_hash: OaepHash::Sha1,
        algorithm: None,
    };
    generate_key(&config, &rsa).await.unwrap();
    rsa.rsa_oaep_hash = OaepHash::Sha256;
    let err = key(&config, &rsa).encrypt(&[1; 32], b"").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::InvalidInput, "{err}");
    assert!(err.message.contains("rsa_oaep_hash"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_label_is_key_not_found() {
    let token = token();
    let key = key(&backend(&token, 2), &aes_key("no-such-key"));
    let err = key.encrypt(&[0; 32], b"").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::KeyNotFound, "{err}");
    assert!(err.message.contains("no-such-key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_unavailable() {
    let token = token();
    let mut config = backend(&token, 2);
    config.token_label = Some("not-there".into());
    let err = key(&config, &aes_key("aes-1"))
        .encrypt(&[0; 32], b"")
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("not-there"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_permission_denied_and_never_logged() {
    let token = token();
    std::fs::write(token.path.join("wrong-pin"), "9999-wrong\n").unwrap();
    let mut config = backend(&token, 2);
    config.pin_file = Some(token.path.join("wrong-pin"));
    let key = key(&config, &aes_key("aes-1"));
    let err = key.encrypt(&[0; 32], b"").await.err().unwrap();
    assert_eq!(err.kind, BackendErrorKind::PermissionDenied, "{err}");
    assert_no_secret(&err.message, &[("the wrong PIN", "9999")], "the error message");
    // The pool backs off instead of hammering the token with a bad PIN.
    let again = key.encrypt(&[0; 32], b"").await.err().unwrap();
    assert!(again.message.contains("not retrying yet"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_pin_works_too() {
    let token = token();
    let mut config = backend(&token, 2);
    config.pin_file = None;
    config.pin = Some(SecretString::from(PIN.to_owned()));
    key(&config, &aes_key("aes-1")).health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_round_trips_share_a_small_pool() {
    let token = token();
    let key = Arc::new(key(&backend(&token, 4), &aes_key("aes-1")));
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let secret = [i; 32];
            let aad = [b'a', i];
            let sealed = key.encrypt(&secret, &aad).await?;
            let opened = key.decrypt(&sealed, &aad).await?;
            assert_eq!(opened.expose(), &secret);
            Ok::<_, sealbroker_core::BackendError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

/// Closes every session this process has on the token, behind the pool's
/// back, through a second handle on the same module.
fn close_all_sessions_underneath() {
    let ctx = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    // SAFETY: plain FFI call on a loaded, initialized module with a valid slot id.
    let rv = unsafe {
        let raw = cryptoki_sys::Pkcs11::new(MODULE).unwrap();
        raw.C_CloseAllSessions(slot.id() as cryptoki_sys::CK_SLOT_ID)
    };
    assert_eq!(rv, cryptoki_sys::CKR_OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_recovers_when_sessions_are_closed_underneath_it() {
    let token = token();
    let key = key(&backend(&token, 4), &aes_key("aes-1"));
    let before = key.encrypt(&[5; 32], b"x").await.unwrap();

    assert_eq!(key.pool().unwrap().resets(), 0);

    close_all_sessions_underneath();
    // Every session and the login are gone; the next calls must heal.
    let opened = key.decrypt(&before, b"x").await.unwrap();
    assert_eq!(opened.expose(), &[5; 32]);
    assert_eq!(
        key.pool().unwrap().resets(),
        1,
        "the pool should have noticed the lost sessions"
    );

    close_all_sessions_underneath();
    let after = key.encrypt(&[6; 32], b"y").await.unwrap();
    assert_eq!(key.decrypt(&after, b"y").await.unwrap().expose(), &[6; 32]);
    assert_eq!(key.pool().unwrap().resets(), 2);
}

/// The thread a pooled call ran on, and whether it was the caller's.
async fn ran_on_caller_thread(pool: &sealbroker_backend_pkcs11::TokenPool) -> bool {
    let caller = std::thread::current().id();
    let ran_on = pool
        .run(|_session, _generation| Ok(std::thread::current().id()))
        .await
        .unwrap_or_else(|_| panic!("the pooled call failed"));
    ran_on == caller
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_inline_runs_on_the_caller_and_pool_does_not() {
    let token = token();
    let mut config = backend(&token, 4);
    assert!(!ran_on_caller_thread(&config.pool().unwrap()).await);
    config.dispatch = Dispatch::Inline;
    let pool = config.pool().unwrap();
    assert_eq!(pool.dispatch(), Dispatch::Inline);
    assert!(ran_on_caller_thread(&pool).await);
}

#[tokio::test(flavor = "current_thread")]
async fn dispatch_inline_falls_back_to_the_pool_on_a_single_threaded_runtime() {
    let token = token();
    let mut config = backend(&token, 2);
    config.dispatch = Dispatch::Inline;
    // block_in_place would panic here; the pool must not.
    assert!(!ran_on_caller_thread(&config.pool().unwrap()).await);
    let key = key(&config, &aes_key("aes-1"));
    let sealed = key.encrypt(&[9; 32], b"z").await.unwrap();
    assert_eq!(key.decrypt(&sealed, b"z").await.unwrap().expose(), &[9; 32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_direct_runs_on_the_caller() {
    let token = token();
    let mut config = backend(&token, 4);
    config.dispatch = Dispatch::Direct;
    let pool = config.pool().unwrap();
    assert_eq!(pool.dispatch(), Dispatch::Direct);
    assert!(ran_on_caller_thread(&pool).await);
    let key = key(&config, &aes_key("aes-1"));
    let sealed = key.encrypt(&[3; 32], b"d").await.unwrap();
    assert_eq!(key.decrypt(&sealed, b"d").await.unwrap().expose(), &[3; 32]);
}

/// A door that stays shut until opened, counting who waits at it: a device
/// call that hangs until the test says otherwise.
#[derive(Default)]
struct Door {
    state: std::sync::Mutex<(bool, usize)>,
    changed: std::sync::Condvar,
}

impl Door {
    fn wait(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        while !state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }

    /// Blocks the calling (non-runtime) thread until `n` calls wait, or
    /// 10 s pass (a hang); says which.
    fn until_waiting(&self, n: usize) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, std::time::Duration::from_secs(10), |state| state.1 < n)
            .unwrap();
        state.1 >= n
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }
}

/// `direct` holds its worker for as long as the device does. With every
/// worker's worth of calls hung, the runtime must still have a worker to
/// run other tasks (health, metrics, other keys), and every held call must
/// complete once the device answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_direct_never_takes_the_last_worker() {
    let token = token();
    let mut config = backend(&token, 8);
    config.dispatch = Dispatch::Direct;
    let pool = config.pool().unwrap();
    let door = Arc::new(Door::default());
    let hung = 3;
    let calls: Vec<_> = (0..hung)
        .map(|i| {
            let (pool, door) = (pool.clone(), door.clone());
            tokio::spawn(async move {
                pool.run(move |_session, _generation| {
                    door.wait();
                    Ok(i)
                })
                .await
                .unwrap_or_else(|_| panic!("held call {i} failed"))
            })
        })
        .collect();
    // Every call is in the device at once: none waits for a worker.
    let waiting = door.clone();
    let all_in = tokio::task::spawn_blocking(move || waiting.until_waiting(hung))
        .await
        .unwrap();
    if !all_in {
        door.open();
        panic!("a hung direct call kept the others from reaching the device");
    }
    // A task spawned now still runs, and so does a timer.
    let other = tokio::spawn(async { tokio::time::sleep(std::time::Duration::from_millis(1)).await });
    tokio::time::timeout(std::time::Duration::from_secs(10), other)
        .await
        .expect("a hung direct call took the runtime's last worker")
        .unwrap();
    door.open();
    let mut done = Vec::new();
    for call in calls {
        done.push(call.await.unwrap());
    }
    assert_eq!(done, (0..hung).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_inline_shares_a_small_pool_and_heals() {
    let token = token();
    let mut config = backend(&token, 2);
    config.dispatch = Dispatch::Inline;
    let key = Arc::new(key(&config, &aes_key("aes-1")));
    let mut tasks = Vec::new();
    for i in 0..32u8 {
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
    let before = key.encrypt(&[7; 32], b"x").await.unwrap();
    close_all_sessions_underneath();
    assert_eq!(key.decrypt(&before, b"x").await.unwrap().expose(), &[7; 32]);
    assert_eq!(key.pool().unwrap().resets(), 1);
}

/// Issue 15: two replicas may stage the same version, and a replica that
/// never saw the rotation derives it by label. Both must land on one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_created_once_and_derived_by_label() {
    let token = token();
    let config = backend(&token, 4);
    let base = key(&config, &aes_key("aes-1"));
    let derived = base.derive_version(2).expect("PKCS#11 versions derive by label");
    assert_eq!(derived.settings["key_label"], "aes-1-v2");
    // Derived before it exists: nothing on the token answers for it.
    let absent = derived.backend.encrypt(&[7u8; 32], b"aad").await.err().unwrap();
    assert_eq!(absent.kind, BackendErrorKind::KeyNotFound, "{absent}");

    let first = base.create_version(2).await.unwrap();
    let again = key(&config, &aes_key("aes-1-v2"))
        .create_version(2)
        .await
        .unwrap();
    assert_eq!(first.backend.key_identity(), again.backend.key_identity());
    assert_eq!(first.backend.key_identity(), derived.backend.key_identity());
    // One key, not two: the label still selects exactly one object, and
    // what one replica sealed the other opens.
    let sealed = first.backend.encrypt(&[7u8; 32], b"aad").await.unwrap();
    assert_eq!(
        again.backend.decrypt(&sealed, b"aad").await.unwrap().expose(),
        [7u8; 32]
    );
    assert_eq!(
        derived.backend.decrypt(&sealed, b"aad").await.unwrap().expose(),
        [7u8; 32]
    );
}
