//! Fault injection (issue #9): the real daemon, real SoftHSM2 tokens and the
//! real OpenBao 2.7.2, with the broker killed, tokens pulled under load, a
//! backend that never answers, 10,000 operations under random faults that
//! end with one ring member removed, a
//! broker that accepts OpenBao's plugin and never answers, and OpenBao
//! killed under its plugin.
//!
//! The random test prints its seed; `SEALBROKER_FAULT_SEED=<seed>` replays
//! the same fault schedule.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealbroker_e2e::openbao::{BaoConfig, OpenBao};
use sealbroker_e2e::*;
use sealbroker_proto::sealbroker::v1::*;
use tonic::Code;

const PIN: &str = "faults-e2e-pin-6613";
const SECRET: &str = "kv-secret-survives-faults";

// ---------------------------------------------------------------- helpers

/// A small seeded PRNG (splitmix64): reproducible fault schedules without
/// another dependency.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// `SEALBROKER_FAULT_SEED`, or one from the clock; printed either way.
fn fault_seed(test: &str) -> u64 {
    let seed = std::env::var("SEALBROKER_FAULT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (replay with SEALBROKER_FAULT_SEED={seed})");
    seed
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    proc_stat_field(pid, 3).is_some_and(|state| state != "Z" && state != "X")
}

/// The process answering on `daemon`'s socket, per the kernel (its pid and
/// start time, so a restarted broker that reused the pid would not pass).
async fn serving_process(daemon: &Daemon) -> (u32, u64) {
    let pid = daemon.serving_pid().await;
    assert_eq!(
        pid,
        daemon.pid(),
        "the socket is served by the process the test started"
    );
    let born = process_start_ticks(pid).unwrap_or_else(|| panic!("no /proc entry for pid {pid}"));
    (pid, born)
}

/// The directory SoftHSM keeps `token`'s objects in (rename it to pull the token).
fn token_dir(token: &SoftHsmToken) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(token.dir.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "expected one token in {}", token.dir.display());
    dirs.into_iter().next().unwrap()
}

/// A token directory that can be pulled out of SoftHSM's view and put back.
///
/// Put back means as it was, like re-inserting the same card: SoftHSM may
/// write into its object files through handles it still holds while the
/// directory is away, and has been seen to leave `token.object` empty,
/// which destroys the token. So the object files are read when the token is
/// first found, and any that are missing or empty on restore are rewritten
/// (atomically, by rename) from that copy.
struct Pullable {
    home: PathBuf,
    away: PathBuf,
    pulled: bool,
    objects: Vec<(std::ffi::OsString, Vec<u8>)>,
}

impl Pullable {
    fn new(home: PathBuf, away: PathBuf) -> Pullable {
        let objects = fs::read_dir(&home)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "object"))
            .map(|path| (path.file_name().unwrap().to_owned(), fs::read(&path).unwrap()))
            .collect();
        Pullable {
            home,
            away,
            pulled: false,
            objects,
        }
    }
    fn pull(&mut self) {
        if !self.pulled {
            fs::rename(&self.home, &self.away).unwrap();
            self.pulled = true;
        }
    }
    fn restore(&mut self) {
        if self.pulled {
            fs::rename(&self.away, &self.home).unwrap();
            self.pulled = false;
            for (name, bytes) in &self.objects {
                let path = self.home.join(name);
                // SoftHSM rewrites token.object as it works, so only a lost
                // or emptied file is damage.
                if fs::metadata(&path).map_or(true, |m| m.len() == 0) {
                    let fresh = self.home.join("repair.tmp");
                    fs::write(&fresh, bytes).unwrap();
                    fs::rename(&fresh, &path).unwrap();
                    eprintln!(
                        "SoftHSM had emptied {} while the token was away; put it back",
                        path.display()
                    );
                }
            }
        }
    }
}

impl Drop for Pullable {
    fn drop(&mut self) {
        if self.pulled {
            let _ = fs::rename(&self.away, &self.home);
        }
    }
}

fn wrap_request(key: &str, plaintext: &[u8], aad: &[u8]) -> WrapRequest {
    WrapRequest {
        key_name: key.into(),
        plaintext: plaintext.to_vec(),
        aad: aad.to_vec(),
    }
}

fn unwrap_request(key: &str, blob: &[u8], aad: &[u8]) -> UnwrapRequest {
    UnwrapRequest {
        blob: blob.to_vec(),
        aad: aad.to_vec(),
        key_name: key.into(),
    }
}

/// Runs one call; panics if it does not answer within `bound` (a hang).
async fn bounded<T>(
    bound: Duration,
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> (Result<T, tonic::Status>, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(bound, call).await {
        Ok(result) => (result.map(tonic::Response::into_inner), started.elapsed()),
        Err(_) => panic!("{what} hung: no answer within {bound:?}"),
    }
}

// ------------------------------------------- 1. broker killed under OpenBao

/// A hardened daemon config: one SoftHSM key `unseal`, on a unix socket.
fn hsm_daemon_config(dir: &Path, token: &SoftHsmToken, limits: &str) -> PathBuf {
    let text = format!(
        "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n{limits}\n{}\n\
         [keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{}\n\
         [audit]\nstdout = true\n",
        dir.join("sb.sock").display(),
        token.backend_toml("hsm"),
        allow_test_callers()
    );
    let path = dir.join("sealbroker.toml");
    fs::write(&path, text).unwrap();
    path
}

/// A broker on `config`, and an OpenBao auto-unsealed through it for the
/// first time, holding [`SECRET`], then stopped. Returns the still-running
/// broker, OpenBao's config and its root token.
async fn first_life(dir: &Path, token: &SoftHsmToken, config: &Path) -> (Daemon, BaoConfig, String) {
    let daemon = Daemon::serve(config, Some(token), &dir.join("daemon-1.log")).await;
    let bao_config = BaoConfig::write(
        dir,
        &format!(
            "seal \"sealbroker\" {{\n  endpoint = \"unix://{}\"\n  key_name = \"unseal\"\n}}",
            dir.join("sb.sock").display()
        ),
    );
    let bao = OpenBao::start(&bao_config, &[], "bao-1.log");
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    bao.stop();
    (daemon, bao_config, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkilled_while_openbao_starts_keeps_it_sealed_then_it_unseals_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let config = hsm_daemon_config(dir.path(), &token, "");
    let socket = dir.path().join("sb.sock");
    let (daemon, bao_config, root) = first_life(dir.path(), &token, &config).await;

    // OpenBao starts again; the broker gets SIGKILL as OpenBao's process is
    // launched (the harness creates the log just before the spawn), so it
    // dies while OpenBao is starting, before any unseal could complete.
    // SIGKILL leaves its socket file behind.
    let pid = daemon.pid();
    let bao_log = dir.path().join("bao-2.log");
    let killer = std::thread::spawn(move || {
        wait_until("OpenBao's launch", Duration::from_secs(30), || bao_log.exists());
        signal(pid, "KILL");
    });
    let mut bao = OpenBao::start(&bao_config, &[], "bao-2.log");
    killer.join().unwrap();
    wait_until("the broker to die", Duration::from_secs(10), || !alive(pid));
    drop(daemon);
    assert!(
        socket.exists(),
        "precondition: SIGKILL leaves a stale socket file"
    );

    // OpenBao stays sealed, keeps running and says why.
    wait_until(
        "OpenBao to report the broker unavailable",
        Duration::from_secs(30),
        || bao.logs().contains("sealbroker: Unavailable"),
    );
    assert_eq!(bao.sealed(), Some(true), "OpenBao unsealed without its broker");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(bao.sealed(), Some(true), "OpenBao unsealed without its broker");
    assert!(bao.exited().is_none(), "OpenBao exited:\n{}", bao.logs());

    // The broker comes back on the same socket path (replacing the stale
    // file); OpenBao's next retry unseals, and the secret is intact.
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("daemon-2.log")).await;
    let took = bao.wait_unsealed(Duration::from_secs(30));
    eprintln!("MEASURED unseal after the SIGKILLed broker came back: {took:?}");
    assert_eq!(bao.read_secret(&root), SECRET);
    // And it can still write: the seal works in both directions.
    bao.must(&["kv", "put", "kv/after", "v=1"], Some(&root));
    assert!(alive(daemon.pid()));
    bao.stop();
    let leftovers = reap_plugins(dir.path(), Duration::from_secs(3));
    if !leftovers.is_empty() {
        eprintln!("killed KMS plugin(s) {leftovers:?} that outlived OpenBao");
    }
}

// ------------------------------------------- 2. token pulled under load

/// One call of the load in test 2: phase when it started and ended (0 =
/// token present, 1 = pulled, 2 = put back), and its outcome.
struct LoadCall {
    start_phase: usize,
    end_phase: usize,
    result: Result<(), tonic::Status>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn softhsm_token_pulled_under_load_fails_unavailable_then_heals_without_restart() {
    const TIMEOUT_SECS: u64 = 2;
    // Every call must answer within the configured bound plus slack.
    let bound = Duration::from_secs(TIMEOUT_SECS + 4);
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "pulled", "unseal-key", PIN);
    let config = hsm_daemon_config(
        dir.path(),
        &token,
        &format!("[limits]\nrequest_timeout_secs = {TIMEOUT_SECS}\n"),
    );
    // The default session pool and isolation: no max_sessions = 1.
    let mut pulled = Pullable::new(token_dir(&token), dir.path().join("token-away"));
    let daemon = Daemon::serve(&config, Some(&token), &dir.path().join("daemon.log")).await;
    let (pid, born) = serving_process(&daemon).await;
    let client = daemon.unix_client().await;

    // Blobs sealed before the fault.
    let mut c = client.clone();
    let mut before = Vec::new();
    for i in 0..4u8 {
        let plaintext = vec![i; 40];
        let wrapped = c.wrap(wrap_request("unseal", &plaintext, b"pre")).await.unwrap();
        before.push((plaintext, wrapped.into_inner().blob));
    }
    let before = Arc::new(before);

    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    // Milliseconds since t0 of the latest failure, and successes that
    // started after the token came back.
    let last_failure = Arc::new(AtomicUsize::new(0));
    let healed_ok = Arc::new(AtomicUsize::new(0));
    // Calls that succeeded with the token present, and failed while it was away.
    let present_ok = Arc::new(AtomicUsize::new(0));
    let pulled_failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8usize {
        let (mut c, phase, stop, before) = (client.clone(), phase.clone(), stop.clone(), before.clone());
        let (last_failure, healed_ok) = (last_failure.clone(), healed_ok.clone());
        let (present_ok, pulled_failed) = (present_ok.clone(), pulled_failed.clone());
        workers.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let start_phase = phase.load(Ordering::SeqCst);
                let result = if i.is_multiple_of(2) {
                    // Unwrap a blob sealed before the fault.
                    let (plain, blob) = &before[i % before.len()];
                    let request = unwrap_request("unseal", blob, b"pre");
                    let (r, _) = bounded(bound, "unwrap", c.unwrap(request)).await;
                    r.map(|u| assert_eq!(&u.plaintext, plain, "an unwrap returned the wrong plaintext"))
                } else {
                    // Wrap, then unwrap what was just sealed.
                    let plaintext = format!("worker {w} call {i}").into_bytes();
                    let request = wrap_request("unseal", &plaintext, b"load");
                    match bounded(bound, "wrap", c.wrap(request)).await.0 {
                        Ok(wrapped) => {
                            let request = unwrap_request("unseal", &wrapped.blob, b"load");
                            let (opened, _) = bounded(bound, "unwrap", c.unwrap(request)).await;
                            opened.map(|u| assert_eq!(u.plaintext, plaintext))
                        }
                        Err(e) => Err(e),
                    }
                };
                if result.is_err() {
                    last_failure.fetch_max(t0.elapsed().as_millis() as usize, Ordering::SeqCst);
                    if start_phase == 1 {
                        pulled_failed.fetch_add(1, Ordering::SeqCst);
                    }
                } else if start_phase == 2 {
                    healed_ok.fetch_add(1, Ordering::SeqCst);
                } else if start_phase == 0 {
                    present_ok.fetch_add(1, Ordering::SeqCst);
                }
                calls.push(LoadCall {
                    start_phase,
                    end_phase: phase.load(Ordering::SeqCst),
                    result,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            calls
        }));
    }

    // Load with the token present until calls succeed, then pull it until
    // calls have failed for it (and for at least a second), then put it back.
    wait_until_async(
        "calls to succeed with the token present",
        Duration::from_secs(20),
        || present_ok.load(Ordering::SeqCst) >= 16,
    )
    .await;
    pulled.pull();
    let pulled_at = Instant::now();
    phase.store(1, Ordering::SeqCst);
    wait_until_async(
        "calls to fail with the token away",
        Duration::from_secs(20),
        || pulled_failed.load(Ordering::SeqCst) >= 8 && pulled_at.elapsed() >= Duration::from_secs(1),
    )
    .await;
    pulled.restore();
    phase.store(2, Ordering::SeqCst);
    let restored_at = t0.elapsed();
    // Keep the load on until the pool has healed: calls succeed and none
    // has failed for a second. Bounded.
    let heal_limit = Duration::from_secs(15);
    let healed_after = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = t0.elapsed();
        let quiet = now.as_millis() as usize >= last_failure.load(Ordering::SeqCst) + 1000;
        if quiet && healed_ok.load(Ordering::SeqCst) > 0 {
            break Duration::from_millis(last_failure.load(Ordering::SeqCst) as u64)
                .saturating_sub(restored_at);
        }
        if now > restored_at + heal_limit {
            stop.store(true, Ordering::SeqCst);
            panic!(
                "calls still fail {heal_limit:?} after the token came back:\n{}",
                daemon.logs()
            );
        }
    };
    stop.store(true, Ordering::SeqCst);
    let mut calls = Vec::new();
    for worker in workers {
        calls.extend(worker.await.unwrap());
    }

    let ok_before = calls
        .iter()
        .filter(|c| c.end_phase == 0 && c.result.is_ok())
        .count();
    let (mut failed, mut timed_out) = (0, 0);
    for call in &calls {
        if let Err(status) = &call.result {
            failed += 1;
            assert!(
                call.start_phase > 0 || call.end_phase > 0,
                "a call failed before the token was pulled: {status:?}"
            );
            // A pulled token fails a call at once (UNAVAILABLE), or, when the
            // module blocks on the vanished directory, at the request
            // timeout (DEADLINE_EXCEEDED, the helper is then replaced). Both
            // fail closed and name the backend; nothing else may happen.
            assert!(
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{status:?}"
            );
            if status.code() == Code::DeadlineExceeded {
                timed_out += 1;
            }
            assert!(
                status.message().contains("backend \"hsm\"") && status.message().contains("key \"unseal\""),
                "the error should name the backend and key: {status:?}"
            );
        }
    }
    eprintln!(
        "{} calls: {ok_before} ok before the pull, {failed} failed ({timed_out} of them at the timeout, the rest \
         UNAVAILABLE); healed {healed_after:?} after the token came back",
        calls.len()
    );
    assert!(ok_before > 0, "no load ran before the fault");
    assert!(
        failed > 0,
        "pulling the token made no call fail: the fault was not observed"
    );

    // Healed without a restart: the same process serves every call again.
    assert!(alive(pid), "the daemon died");
    let mut c = client.clone();
    for (plaintext, blob) in before.iter() {
        let (opened, _) = bounded(bound, "unwrap", c.unwrap(unwrap_request("unseal", blob, b"pre"))).await;
        assert_eq!(
            &opened.expect("pre-fault blob after healing").plaintext,
            plaintext
        );
    }
    for i in 0..20u8 {
        let (wrapped, _) = bounded(bound, "wrap", c.wrap(wrap_request("unseal", &[i], b""))).await;
        let blob = wrapped.expect("wrap after healing").blob;
        let (opened, _) = bounded(bound, "unwrap", c.unwrap(unwrap_request("unseal", &blob, b""))).await;
        assert_eq!(opened.expect("unwrap after healing").plaintext, [i]);
    }
    assert_eq!(
        serving_process(&daemon).await,
        (pid, born),
        "the process that served before the fault serves after it"
    );
}

// ------------------------------------------- 3. a backend that never answers

/// Accepts TCP connections on 127.0.0.1 and never sends a byte. Holds every
/// connection open until dropped.
struct SilentServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    async fn start() -> SilentServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        SilentServer { port, accepted, task }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_that_accepts_and_never_answers_times_out_in_bound_while_other_keys_work() {
    const TIMEOUT_SECS: u64 = 2;
    let slack = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let silent = SilentServer::start().await;
    let pki = Pki::create(&dir.path().join("pki"));
    let token_file = dir.path().join("transit-token");
    fs::write(&token_file, "s.never-used\n").unwrap();
    fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // transit's own timeout (30 s) is above the broker's bound, so the
    // broker's `request_timeout_secs` must cut it; kmip's own (1 s) is
    // below it and must fire first.
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{sock}\"\n\
         [limits]\nrequest_timeout_secs = {TIMEOUT_SECS}\n\
         [backends.silent-transit]\ntype = \"transit\"\naddress = \"http://127.0.0.1:{port}\"\n\
         token_file = \"{token}\"\ntimeout_secs = 30\ndisable_renewal = true\n\
         [backends.silent-kmip]\ntype = \"kmip\"\nendpoint = \"127.0.0.1:{port}\"\n\
         client_cert = \"{cert}\"\nclient_key = \"{key}\"\nca_cert = \"{ca}\"\ntimeout_secs = 1\n\
         [backends.soft]\ntype = \"software\"\n\
         [keys.via-transit]\nbackend = \"silent-transit\"\nkey_name = \"k\"\n{allow}\
         [keys.via-kmip]\nbackend = \"silent-kmip\"\nkms_key_id = \"1\"\n{allow}\
         [keys.soft]\nbackend = \"soft\"\nkey_file = \"{soft}\"\ngenerate = true\n{allow}",
        sock = dir.path().join("sb.sock").display(),
        port = silent.port,
        token = token_file.display(),
        cert = pki.client_cert.display(),
        key = pki.client_key.display(),
        ca = pki.ca.display(),
        soft = dir.path().join("soft.key").display(),
        allow = allow_test_callers(),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    let daemon = Daemon::serve(&config, None, &dir.path().join("daemon.log")).await;
    let client = daemon.unix_client().await;
    let bound = Duration::from_secs(TIMEOUT_SECS) + slack;

    // Two rounds: a silent backend must not wedge anything for later calls.
    for round in 0..2 {
        let pending = Arc::new(AtomicUsize::new(0));
        let mut silent_calls = Vec::new();
        for i in 0..8 {
            let key = if i % 2 == 0 { "via-transit" } else { "via-kmip" };
            let (mut c, pending) = (client.clone(), pending.clone());
            pending.fetch_add(1, Ordering::SeqCst);
            silent_calls.push(tokio::spawn(async move {
                let (result, took) =
                    bounded(bound, key, c.wrap(wrap_request(key, b"never sealed", b""))).await;
                pending.fetch_sub(1, Ordering::SeqCst);
                (key, result, took)
            }));
        }
        // Meanwhile the software key keeps working.
        let mut c = client.clone();
        let (mut soft_ok, mut soft_ok_while_pending) = (0, 0);
        while pending.load(Ordering::SeqCst) > 0 {
            let plaintext = format!("soft {round} {soft_ok}").into_bytes();
            let (wrapped, _) =
                bounded(bound, "soft wrap", c.wrap(wrap_request("soft", &plaintext, b"s"))).await;
            let blob = wrapped
                .expect("the software key failed while another backend hung")
                .blob;
            let (opened, _) = bounded(
                bound,
                "soft unwrap",
                c.unwrap(unwrap_request("soft", &blob, b"s")),
            )
            .await;
            assert_eq!(opened.unwrap().plaintext, plaintext);
            soft_ok += 1;
            if pending.load(Ordering::SeqCst) > 0 {
                soft_ok_while_pending += 1;
            }
        }
        for call in silent_calls {
            let (key, result, took) = call.await.unwrap();
            let status = result.expect_err("a wrap through a silent backend succeeded");
            eprintln!("round {round}: {key} answered after {took:?}: {status:?}");
            assert_eq!(status.code(), Code::DeadlineExceeded, "{key}: {status:?}");
            let want = if key == "via-transit" {
                format!("did not finish within {TIMEOUT_SECS}s")
            } else {
                "did not finish within 1s".to_owned()
            };
            assert!(
                status.message().contains(&want) && status.message().contains(&format!("key \"{key}\"")),
                "{key}: {status:?} should say it timed out ({want})"
            );
            assert!(took <= bound, "{key} answered after {took:?}, beyond {bound:?}");
        }
        eprintln!(
            "round {round}: {soft_ok} software round trips, {soft_ok_while_pending} while silent calls hung"
        );
        assert!(
            soft_ok_while_pending > 0,
            "no software round trip completed while the silent calls were pending"
        );
    }
    assert!(
        silent.accepted.load(Ordering::SeqCst) >= 2,
        "the backends never connected to the silent server"
    );
}

// ------------------------------------------- 4. 10,000 operations, random faults

const TOTAL_OPS: usize = 10_000;

#[derive(Clone)]
struct Sealed {
    key: &'static str,
    plaintext: Vec<u8>,
    aad: Vec<u8>,
    blob: Vec<u8>,
    /// Ring members that could not seal the DEK (a degraded wrap).
    missing: Vec<String>,
}

/// A failed call: operation, key, code, message, and whether the broker
/// was restarted while it ran.
/// What failed, on which key, how, whether a broker restart was under way,
/// and when.
type Failure = (&'static str, &'static str, Code, String, bool, Instant);

/// Starts the broker again and waits until `client`'s shared channel has
/// reconnected (until then it may still report the refused connections of
/// the outage).
async fn restart_broker(
    config: &Path,
    token: &SoftHsmToken,
    log: &Path,
    client: &sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient<
        tonic::transport::Channel,
    >,
) -> Daemon {
    let daemon = Daemon::serve(config, Some(token), log).await;
    let mut probe = client.clone();
    let back = Instant::now();
    while probe.status(StatusRequest { deep: false }).await.is_err() {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the client never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon
}

#[derive(Default)]
struct Tally {
    wraps_ok: usize,
    degraded: usize,
    unwraps_ok: usize,
    failures: Vec<Failure>,
    violations: Vec<String>,
}

/// Panics if the broker has died: under faults it must not, whatever the
/// PKCS#11 module does (a module crash kills only its helper process).
fn assert_broker_alive(daemon: &mut Daemon) {
    if let Some(status) = daemon.exit_status() {
        panic!("the broker died under faults ({status}):\n{}", daemon.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_operations_under_random_faults_lose_and_corrupt_nothing() {
    const TIMEOUT_SECS: u64 = 3;
    const KEYS: [&str; 3] = ["ring", "solo", "soft"];
    let bound = Duration::from_secs(TIMEOUT_SECS + 5);
    let seed = fault_seed("ten_thousand_operations_under_random_faults");
    let dir = tempfile::tempdir().unwrap();
    let tokens = TwoTokens::create(dir.path(), PIN);
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{sock}\"\n\
         [limits]\nrequest_timeout_secs = {TIMEOUT_SECS}\nhealth_cache_secs = 1\n{backends}\
         [backends.soft]\ntype = \"software\"\n\
         [keys.ring]\n{members}\
         [keys.solo]\nbackend = \"a\"\nkey_label = \"key-a\"\n{allow}\
         [keys.soft]\nbackend = \"soft\"\nkey_file = \"{soft}\"\ngenerate = true\n{allow}",
        sock = dir.path().join("sb.sock").display(),
        backends = tokens.backends_toml(),
        members = tokens.members_toml(),
        soft = dir.path().join("soft.key").display(),
        allow = allow_test_callers(),
    );
    let config = dir.path().join("sealbroker.toml");
    fs::write(&config, text).unwrap();
    // The default session pool and isolation: no max_sessions = 1.
    // Found before any load: SoftHSM rewrites token.object while it works.
    let mut a = Pullable::new(tokens.token_dir("tok-a"), dir.path().join("away-a"));
    let mut b = Pullable::new(tokens.token_dir("tok-b"), dir.path().join("away-b"));
    let mut daemon = Daemon::serve(&config, Some(&tokens.a), &dir.path().join("daemon-0.log")).await;
    let client = daemon.unix_client().await;

    let ops = Arc::new(AtomicUsize::new(0));
    // Odd while the broker is being restarted.
    let epoch = Arc::new(AtomicUsize::new(0));
    let sealed: Arc<Mutex<Vec<Sealed>>> = Arc::default();
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..16u64 {
        let (mut c, ops, epoch, sealed) = (client.clone(), ops.clone(), epoch.clone(), sealed.clone());
        let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0xA076_1D64_78BD_642F));
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while ops.fetch_add(1, Ordering::SeqCst) < TOTAL_OPS {
                let existing = {
                    let sealed = sealed.lock().unwrap();
                    (!sealed.is_empty() && rng.below(2) == 0)
                        .then(|| sealed[rng.below(sealed.len() as u64) as usize].clone())
                };
                let before = epoch.load(Ordering::SeqCst);
                let failure = match existing {
                    Some(s) => {
                        let request = unwrap_request(s.key, &s.blob, &s.aad);
                        match bounded(bound, "unwrap", c.unwrap(request)).await.0 {
                            Ok(opened) if opened.plaintext == s.plaintext => {
                                tally.unwraps_ok += 1;
                                None
                            }
                            Ok(_) => {
                                tally
                                    .violations
                                    .push(format!("{}: unwrap returned other bytes", s.key));
                                None
                            }
                            Err(e) => Some(("unwrap", s.key, e)),
                        }
                    }
                    None => {
                        let key = KEYS[rng.below(3) as usize];
                        let len = 1 + rng.below(300) as usize;
                        let plaintext = rng.bytes(len);
                        let aad_len = rng.below(24) as usize;
                        let aad = rng.bytes(aad_len);
                        let request = wrap_request(key, &plaintext, &aad);
                        match bounded(bound, "wrap", c.wrap(request)).await.0 {
                            Ok(wrapped) => {
                                tally.wraps_ok += 1;
                                if !wrapped.missing_backends.is_empty() {
                                    tally.degraded += 1;
                                    if key != "ring" || wrapped.missing_backends.len() != 1 {
                                        tally.violations.push(format!(
                                            "{key}: impossible degraded wrap {:?}",
                                            wrapped.missing_backends
                                        ));
                                    }
                                }
                                sealed.lock().unwrap().push(Sealed {
                                    key,
                                    plaintext,
                                    aad,
                                    blob: wrapped.blob,
                                    missing: wrapped.missing_backends,
                                });
                                None
                            }
                            Err(e) => Some(("wrap", key, e)),
                        }
                    }
                };
                if let Some((op, key, e)) = failure {
                    let restarted = before % 2 == 1 || epoch.load(Ordering::SeqCst) != before;
                    tally.failures.push((
                        op,
                        key,
                        e.code(),
                        e.message().to_owned(),
                        restarted,
                        Instant::now(),
                    ));
                    // A caller's back-off before its next try.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        }));
    }

    // The fault injector: a seeded schedule of token pulls, restores, blips
    // (pull and put straight back) and broker restarts (SIGKILL), one step
    // every 50-250 ops and at least 120 ms apart, until the workers finish.
    let mut rng = Rng(seed);
    let mut faults = Vec::new();
    // Coverage: the schedule is random, so the steps every run must see are
    // forced late in the run if chance has not brought them.
    let mut restarts = 0;
    let mut pulls = 0;
    let mut ring_pulls = 0;
    let mut next_at = 100;
    let mut last = Instant::now();
    while ops.load(Ordering::SeqCst) < TOTAL_OPS {
        // Paces the injector; no step waits on it for anything to happen.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_broker_alive(&mut daemon);
        if ops.load(Ordering::SeqCst) < next_at || last.elapsed() < Duration::from_millis(120) {
            continue;
        }
        let done = ops.load(Ordering::SeqCst);
        let roll = match rng.below(13) {
            _ if restarts == 0 && done > 6000 => 9,
            _ if ring_pulls == 0 && done > 5000 => 4,
            roll => roll,
        };
        let step = match roll {
            0..=2 if a.pulled => {
                a.restore();
                "restore tok-a".to_owned()
            }
            0..=2 => {
                a.pull();
                pulls += 1;
                "pull tok-a".to_owned()
            }
            3..=5 if b.pulled => {
                b.restore();
                "restore tok-b (ring member)".to_owned()
            }
            3..=5 => {
                b.pull();
                pulls += 1;
                ring_pulls += 1;
                "pull tok-b (ring member)".to_owned()
            }
            6..=8 if !a.pulled => {
                a.pull();
                pulls += 1;
                tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
                a.restore();
                "blip tok-a".to_owned()
            }
            9 if restarts < 2 && ops.load(Ordering::SeqCst) > 1000 => {
                let pid = daemon.pid();
                assert_broker_alive(&mut daemon);
                epoch.fetch_add(1, Ordering::SeqCst);
                signal(pid, "KILL");
                let gone = Instant::now();
                while alive(pid) {
                    assert!(
                        gone.elapsed() < Duration::from_secs(10),
                        "SIGKILLed broker {pid} still runs"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                restarts += 1;
                let log = dir.path().join(format!("daemon-{restarts}.log"));
                daemon = restart_broker(&config, &tokens.a, &log, &client).await;
                epoch.fetch_add(1, Ordering::SeqCst);
                format!("SIGKILL the broker (pid {pid}) and start it again")
            }
            _ => {
                a.restore();
                b.restore();
                "restore both".to_owned()
            }
        };
        faults.push(format!(
            "{:>6} ms @ op {:>5}: {step}",
            started.elapsed().as_millis(),
            ops.load(Ordering::SeqCst)
        ));
        next_at = ops.load(Ordering::SeqCst) + 50 + rng.below(200) as usize;
        last = Instant::now();
    }
    a.restore();
    b.restore();
    assert_broker_alive(&mut daemon);
    let mut tally = Tally::default();
    for worker in workers {
        let t = worker.await.unwrap();
        tally.wraps_ok += t.wraps_ok;
        tally.degraded += t.degraded;
        tally.unwraps_ok += t.unwraps_ok;
        tally.failures.extend(t.failures);
        tally.violations.extend(t.violations);
    }
    let load_took = started.elapsed();
    eprintln!("{} fault steps:\n{}", faults.len(), faults.join("\n"));
    let mut codes = std::collections::BTreeMap::new();
    for (_, _, code, message, restarted, _) in &tally.failures {
        codes
            .entry((format!("{code:?}"), *restarted))
            .or_insert_with(|| message.clone());
    }
    eprintln!(
        "{TOTAL_OPS} operations in {load_took:?}: {} wraps ok ({} degraded), {} unwraps ok, {} failed; \
         (code, during a broker restart) -> an example message: {codes:#?}",
        tally.wraps_ok,
        tally.degraded,
        tally.unwraps_ok,
        tally.failures.len()
    );
    assert_broker_alive(&mut daemon);
    // Module crashes SoftHSM had under the pulls: each cost its helper, not the broker.
    let helper_restarts: usize = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("daemon-"))
        .map(|e| {
            fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches("restarted the PKCS#11 helper")
                .count()
        })
        .sum();
    eprintln!(
        "coverage: {restarts} SIGKILL restarts of the broker, {pulls} token pulls ({ring_pulls} of a ring member), \
         {} degraded wraps, {helper_restarts} PKCS#11 helper restarts, 0 broker deaths",
        tally.degraded
    );
    assert!(restarts >= 1, "no SIGKILL restart was injected");
    assert!(pulls >= 5, "only {pulls} token pulls were injected");
    assert!(
        tally.degraded >= 1,
        "no wrap went degraded: the ring member pulls were not observed"
    );
    assert!(tally.violations.is_empty(), "{:#?}", tally.violations);
    // A fault may only ever read as "retry later": never as a bad blob, a
    // wrong AAD or an internal error. The software key shares nothing with
    // the tokens, so only a broker restart may fail it.
    let unexpected: Vec<&Failure> = tally
        .failures
        .iter()
        .filter(|(_, key, code, _, restarted, _)| {
            let retry_later = matches!(code, Code::Unavailable | Code::DeadlineExceeded)
                // tonic's own reports of a connection the killed broker dropped.
                || (*restarted && matches!(code, Code::Unknown | Code::Cancelled));
            !retry_later || (*key == "soft" && !restarted)
        })
        .take(10)
        .collect();
    assert!(unexpected.is_empty(), "faults surfaced wrongly: {unexpected:#?}");
    assert!(
        faults.len() >= 10,
        "only {} fault steps were injected",
        faults.len()
    );
    assert!(
        tally.failures.iter().any(|f| !f.4),
        "no operation failed outside restarts: the token faults were not observed"
    );
    assert!(
        tally.wraps_ok >= 1000,
        "too few successful wraps to prove anything"
    );

    // Afterwards, with every token back: every wrap that succeeded opens to
    // the same plaintext, including those sealed by a degraded ring.
    let sealed = Arc::new(std::mem::take(&mut *sealed.lock().unwrap()));
    let verified = Arc::new(AtomicUsize::new(0));
    let mut checkers = Vec::new();
    for w in 0..8 {
        let (mut c, sealed, verified) = (client.clone(), sealed.clone(), verified.clone());
        checkers.push(tokio::spawn(async move {
            let mut problems = Vec::new();
            for s in sealed.iter().skip(w).step_by(8) {
                // The module may still be re-initializing right after the
                // last restore: retry "unavailable" for a bounded while.
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let request = unwrap_request(s.key, &s.blob, &s.aad);
                    match bounded(bound, "verify unwrap", c.unwrap(request)).await.0 {
                        Ok(opened) if opened.plaintext == s.plaintext => {
                            verified.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => problems.push(format!("{}: a blob opened to other bytes", s.key)),
                        Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Err(e) => problems.push(format!("{}: a sealed blob is lost: {e:?}", s.key)),
                    }
                    break;
                }
            }
            problems
        }));
    }
    let mut problems = Vec::new();
    for checker in checkers {
        problems.extend(checker.await.unwrap());
    }
    eprintln!(
        "verified {} of {} blobs in {:?}",
        verified.load(Ordering::SeqCst),
        sealed.len(),
        started.elapsed() - load_took
    );
    assert!(
        problems.is_empty(),
        "{} problems, e.g. {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    assert_eq!(verified.load(Ordering::SeqCst), sealed.len());

    // Last, one ring member is removed (config reload): member b and its
    // backend leave the file. Every ring blob whose DEK member a sealed
    // still opens; one sealed by b alone (a wrap while tok-a was pulled)
    // now fails closed, NOT_FOUND, naming the key id it was sealed under;
    // wraps go on, under a alone, whatever happens to tok-b.
    assert_broker_alive(&mut daemon);
    let text = fs::read_to_string(&config).unwrap();
    let backends = tokens.backends_toml();
    let b_table = &backends[backends.find("[backends.b]").unwrap()..];
    let ring_of_a = format!(
        "policy = \"all\"\nmembers = [{{ backend = \"a\", key_label = \"key-a\" }}]\n{}",
        allow_test_callers()
    );
    let reduced = text
        .replace(b_table, "")
        .replace(&tokens.members_toml(), &ring_of_a);
    assert!(
        !reduced.contains("backends.b") && !reduced.contains("key-b") && reduced.contains(&ring_of_a),
        "{reduced}"
    );
    fs::write(&config, reduced).unwrap();
    daemon.hangup();
    daemon.logged("config reloaded", 1).await;

    let ring = sealed.iter().filter(|s| s.key == "ring").count();
    let sealed_by_b_alone = sealed
        .iter()
        .filter(|s| s.key == "ring" && s.missing.iter().any(|m| m == "a"))
        .count();
    assert!(
        ring > sealed_by_b_alone,
        "no ring blob sealed under member a to check ({ring} ring blobs)"
    );
    let mut c = client.clone();
    let (mut opened, mut closed) = (0, 0);
    for s in sealed.iter() {
        let request = unwrap_request(s.key, &s.blob, &s.aad);
        let result = bounded(bound, "unwrap after the removal", c.unwrap(request))
            .await
            .0;
        if s.key == "ring" && s.missing.iter().any(|m| m == "a") {
            let status = result.expect_err("a blob only member b sealed cannot open without b");
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            assert!(status.message().contains("does not hold"), "{status:?}");
            closed += 1;
        } else {
            let reply =
                result.unwrap_or_else(|e| panic!("a {} blob is lost after the removal: {e:?}", s.key));
            assert_eq!(
                reply.plaintext, s.plaintext,
                "a {} blob opened to other bytes",
                s.key
            );
            opened += 1;
        }
    }
    b.pull();
    for i in 0..50u8 {
        let (wrapped, _) = bounded(
            bound,
            "wrap after the removal",
            c.wrap(wrap_request("ring", &[i], b"after")),
        )
        .await;
        let wrapped = wrapped.unwrap_or_else(|e| panic!("wrap {i} on the reduced ring: {e:?}"));
        assert!(
            wrapped.missing_backends.is_empty(),
            "tok-b is no member any more, so its pull degrades nothing: {:?}",
            wrapped.missing_backends
        );
        let (reply, _) = bounded(
            bound,
            "unwrap after the removal",
            c.unwrap(unwrap_request("ring", &wrapped.blob, b"after")),
        )
        .await;
        assert_eq!(reply.expect("unwrap on the reduced ring").plaintext, [i]);
    }
    b.restore();
    assert_broker_alive(&mut daemon);
    eprintln!(
        "ring member b removed: of {} blobs, {opened} open ({} of them ring blobs, under a alone), {closed} \
         sealed by b alone fail closed (NOT_FOUND); 50 wraps after the removal (tok-b pulled), none degraded",
        sealed.len(),
        ring - sealed_by_b_alone
    );
}

// ------------------------------------------- 5. a broker that never answers OpenBao

/// Accepts connections on a unix socket and never sends a byte: a hung
/// broker. Holds every connection open until dropped.
struct SilentSocket {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentSocket {
    fn bind(path: &Path) -> SilentSocket {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (accepted, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (counter, stopping) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SilentSocket {
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// OpenBao's `sealed` flag from `GET /v1/sys/seal-status`, or `None` when
/// the API does not answer within `timeout` (a wedged server).
fn seal_status(addr: &str, timeout: Duration) -> Option<bool> {
    use std::io::{Read, Write};
    let host = addr.strip_prefix("http://")?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET /v1/sys/seal-status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json.get("sealed")?.as_bool()
}

/// Pids of processes whose command line contains `needle`.
fn pids_running(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Pids of the KMS plugins OpenBao launched from `bao_dir`'s plugin directory.
fn plugins_of(bao_dir: &Path) -> Vec<u32> {
    pids_running(&format!(
        "{} kms-plugin",
        bao_dir.join("plugins/sealbroker").display()
    ))
}

/// Gives the plugins launched from `bao_dir` up to `grace` to exit, then
/// SIGKILLs (by pid) any still running, so no test leaves one behind.
/// Returns those that had to be killed.
fn reap_plugins(bao_dir: &Path, grace: Duration) -> Vec<u32> {
    let deadline = Instant::now() + grace;
    while !plugins_of(bao_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let leftovers = plugins_of(bao_dir);
    for &pid in &leftovers {
        signal(pid, "KILL");
    }
    leftovers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_is_not_wedged_by_a_broker_that_accepts_and_never_answers() {
    // How long a working broker may take to unseal OpenBao after replacing
    // a hung one: a bounded plugin call (a deadline of ~20 s at most, or an
    // HTTP/2 keepalive that drops the dead connection) plus OpenBao's 5 s
    // retry.
    const RECOVERY: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let config = hsm_daemon_config(dir.path(), &token, "");
    let socket = dir.path().join("sb.sock");
    let (daemon, bao_config, root) = first_life(dir.path(), &token, &config).await;
    assert!(daemon.terminate().success());

    // OpenBao starts with no broker and retries every 5 s...
    let bao = OpenBao::start(&bao_config, &[], "bao-2.log");
    wait_until("a failed unseal attempt", Duration::from_secs(30), || {
        bao.logs().contains("sealbroker: Unavailable")
    });
    // ...and its next attempt reaches a broker that accepts and never answers.
    let hung = SilentSocket::bind(&socket);
    wait_until(
        "the plugin to reach the hung broker",
        Duration::from_secs(20),
        || hung.accepted.load(Ordering::SeqCst) > 0,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(seal_status(&bao.addr, Duration::from_secs(2)), Some(false));

    // A working broker takes over the path; the hung one keeps the
    // connections it accepted. OpenBao must not stay stuck on them.
    fs::remove_file(&socket).unwrap();
    let _daemon = Daemon::serve(&config, Some(&token), &dir.path().join("daemon-2.log")).await;
    let back = Instant::now();
    let (mut answered, mut wedged) = (0, 0);
    loop {
        match seal_status(&bao.addr, Duration::from_secs(2)) {
            Some(false) => break,
            Some(true) => answered += 1,
            None => wedged += 1,
        }
        if back.elapsed() > RECOVERY {
            let logs = bao.logs();
            // Do not wait for a wedged OpenBao to shut down: SIGKILL it (by
            // the pid of the server we started on this config).
            for pid in pids_running(&bao_config.path.display().to_string()) {
                signal(pid, "KILL");
            }
            drop(bao);
            reap_plugins(dir.path(), Duration::from_secs(3));
            panic!(
                "OpenBao is still sealed {RECOVERY:?} after a working broker replaced the hung one: its unseal \
                 attempt is stuck on the hung broker's connection (seal-status answered {answered} times, hung \
                 {wedged} times). The plugin's calls to the daemon need a deadline, and a dead connection must \
                 be dropped.\n--- OpenBao log ---\n{logs}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "MEASURED unseal {:?} after a working broker replaced the hung one",
        back.elapsed()
    );
    assert_eq!(bao.read_secret(&root), SECRET);
    bao.stop();
    drop(hung);
    reap_plugins(dir.path(), Duration::from_secs(3));
}

// ------------------------------------------- 6. OpenBao killed under its plugin

#[test]
fn kms_plugin_exits_when_openbao_is_sigkilled() {
    let dir = tempfile::tempdir().unwrap();
    // No broker is needed: the plugin starts (and connects lazily) anyway.
    let bao_config = BaoConfig::write(
        dir.path(),
        &format!(
            "seal \"sealbroker\" {{\n  endpoint = \"unix://{}\"\n  key_name = \"unseal\"\n}}",
            dir.path().join("no-broker.sock").display()
        ),
    );
    let bao = OpenBao::start(&bao_config, &[], "bao.log");
    wait_until(
        "OpenBao to launch its KMS plugin",
        Duration::from_secs(20),
        || !plugins_of(dir.path()).is_empty(),
    );
    let plugins = plugins_of(dir.path());
    let server = pids_running(&bao_config.path.display().to_string());
    assert_eq!(server.len(), 1, "expected one OpenBao server, found {server:?}");
    signal(server[0], "KILL");
    drop(bao);

    // docs/openbao.md: the plugin "exits if OpenBao dies without stopping
    // it". It polls its parent every 500 ms; allow 10 s.
    let leaked = reap_plugins(dir.path(), Duration::from_secs(10));
    assert!(
        leaked.is_empty(),
        "KMS plugin(s) {leaked:?} (of {plugins:?}) outlived a SIGKILLed OpenBao by 10 s (killed now)"
    );
}

// ------------------------------- 6. a PKCS#11 module that crashes on demand

/// A hardened daemon whose key `unseal` is on the crash-on-demand module
/// (tests/pkcs11-crashy) over a token, placed by the TOML lines `placement`.
struct Crashy {
    daemon: Daemon,
    /// While this file exists, C_Encrypt segfaults.
    crash: PathBuf,
    /// While this file exists, C_Encrypt does not return (and appends a
    /// byte to it per call it holds).
    hang: PathBuf,
    /// The daemon's health and metrics listener.
    metrics: std::net::SocketAddr,
}

async fn crashy_daemon(dir: &Path, token: &SoftHsmToken, placement: &str) -> Crashy {
    let module = crashy_module(dir);
    let crash = dir.join("crash-now");
    let hang = dir.join("hang-now");
    let backend = token
        .backend_toml("hsm")
        .replace(SOFTHSM_MODULE, module.to_str().unwrap())
        + placement
        + "\nhelper_env = [\"SOFTHSM2_CONF\", \"SEALBROKER_CRASH_TRIGGER\", \"SEALBROKER_HANG_TRIGGER\"]\n";
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = dir.join("sealbroker.toml");
    fs::write(
        &config,
        format!(
            "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n[server.metrics]\nlisten = \"{metrics}\"\n\
             {backend}\n[keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{}\n[audit]\nstdout = true\n",
            dir.join("sb.sock").display(),
            allow_test_callers()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(
        &["serve", "--config", config.to_str().unwrap()],
        &[
            ("SOFTHSM2_CONF", &token.conf),
            ("SEALBROKER_CRASH_TRIGGER", &crash),
            ("SEALBROKER_HANG_TRIGGER", &hang),
        ],
        &dir.join("daemon.log"),
        Some(dir.join("sb.sock")),
        None,
    )
    .await;
    Crashy {
        daemon,
        crash,
        hang,
        metrics,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_segfault_under_process_isolation_fails_one_wrap_and_the_broker_heals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let token = SoftHsmToken::create(&dir.join("hsm"), "crashy", "unseal-key", PIN);
    let Crashy {
        mut daemon,
        crash: trigger,
        ..
    } = crashy_daemon(dir, &token, "isolation = \"process\"").await;
    let (pid, born) = serving_process(&daemon).await;
    let mut client = daemon.unix_client().await;
    let bound = Duration::from_secs(20);

    let (before, _) = bounded(
        bound,
        "Wrap",
        client.wrap(wrap_request("unseal", b"before", b"a")),
    )
    .await;
    let before = before.expect("Wrap through the helper works");

    fs::write(&trigger, b"").unwrap();
    let (crashed, _) = bounded(
        bound,
        "Wrap",
        client.wrap(wrap_request("unseal", b"during", b"a")),
    )
    .await;
    let status = crashed.expect_err("C_Encrypt segfaulted in the helper");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("\"hsm\""),
        "names the backend: {status:?}"
    );
    assert!(
        status.message().contains("SIGSEGV"),
        "says the module crashed: {status:?}"
    );
    assert!(
        daemon.exit_status().is_none(),
        "the broker survived:\n{}",
        daemon.logs()
    );
    assert!(alive(pid), "broker pid {pid} still runs");

    fs::remove_file(&trigger).unwrap();
    let started = Instant::now();
    let after = loop {
        let (result, _) = bounded(bound, "Wrap", client.wrap(wrap_request("unseal", b"after", b"a"))).await;
        match result {
            Ok(blob) => break blob,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    started.elapsed() < bound,
                    "the helper never came back: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    daemon.logged("restarted the PKCS#11 helper", 1).await;
    for (blob, plaintext) in [(before.blob, &b"before"[..]), (after.blob, &b"after"[..])] {
        let (opened, _) = bounded(
            bound,
            "Unwrap",
            client.unwrap(unwrap_request("unseal", &blob, b"a")),
        )
        .await;
        assert_eq!(opened.expect("Unwrap after the restart").plaintext, plaintext);
    }
    assert!(daemon.exit_status().is_none(), "the broker is still up");
    assert_eq!(
        serving_process(&daemon).await,
        (pid, born),
        "the process that served before the fault serves after it"
    );
    assert_no_secret(&daemon.logs(), &[("the PIN", PIN)], "the daemon log");
    let status = daemon.terminate();
    assert!(status.success(), "clean exit after the crash: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_segfault_in_process_takes_the_broker_down() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let token = SoftHsmToken::create(&dir.join("hsm"), "crashy", "unseal-key", PIN);
    let Crashy {
        mut daemon,
        crash: trigger,
        ..
    } = crashy_daemon(dir, &token, "isolation = \"in-process\"").await;
    let mut client = daemon.unix_client().await;
    let bound = Duration::from_secs(20);
    let (ok, _) = bounded(
        bound,
        "Wrap",
        client.wrap(wrap_request("unseal", b"before", b"a")),
    )
    .await;
    ok.expect("Wrap in process works");

    fs::write(&trigger, b"").unwrap();
    let (crashed, _) = bounded(
        bound,
        "Wrap",
        client.wrap(wrap_request("unseal", b"during", b"a")),
    )
    .await;
    let status = crashed.expect_err("the broker died mid-call");
    // The connection broke under the call (tonic says Unknown or Unavailable).
    assert!(
        matches!(status.code(), Code::Unknown | Code::Unavailable) && status.message().contains("transport"),
        "the connection broke: {status:?}"
    );
    wait_until("the broker to exit", bound, || daemon.exit_status().is_some());
    let exit = daemon.exit_status().unwrap();
    assert_eq!(
        exit.signal(),
        Some(11),
        "the module's SIGSEGV killed the broker: {exit}"
    );
}

/// `dispatch = "direct"` runs device calls on the runtime's workers as they
/// are. A device that stops answering must not take the last of them: with
/// more calls hung than the daemon has workers, health still answers, so do
/// device calls that do not hang, and every held call completes once the
/// device answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_module_under_direct_dispatch_leaves_the_broker_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let token = SoftHsmToken::create(&dir.join("hsm"), "hangs", "unseal-key", PIN);
    // The daemon runs one runtime worker per CPU; hang one more call than that.
    let hung = std::thread::available_parallelism().unwrap().get() + 1;
    let placement = format!(
        "isolation = \"in-process\"\ndispatch = \"direct\"\nmax_sessions = {}",
        hung + 4
    );
    let Crashy {
        daemon,
        hang,
        metrics,
        ..
    } = crashy_daemon(dir, &token, &placement).await;
    let mut client = daemon.unix_client().await;
    let bound = Duration::from_secs(20);
    let (before, _) = bounded(
        bound,
        "Wrap",
        client.wrap(wrap_request("unseal", b"before", b"a")),
    )
    .await;
    let before = before.expect("Wrap before the device hangs");

    fs::write(&hang, b"").unwrap();
    let held: Vec<_> = (0..hung)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let plaintext = format!("held {i}").into_bytes();
                let wrapped = client
                    .wrap(wrap_request("unseal", &plaintext, b"a"))
                    .await
                    .map(tonic::Response::into_inner);
                (plaintext, wrapped)
            })
        })
        .collect();
    wait_until_async("every held Wrap to reach the device", bound, || {
        fs::metadata(&hang).map(|m| m.len() as usize).unwrap_or(0) >= hung
    })
    .await;

    // The broker still answers: health, and a device call that does not hang.
    let livez = tokio::task::spawn_blocking(move || http_get(metrics, "/livez"));
    let (status, _) = tokio::time::timeout(bound, livez)
        .await
        .expect("/livez hung while device calls were held")
        .unwrap();
    assert_eq!(status, 200);
    let (opened, _) = bounded(
        bound,
        "Unwrap",
        client.unwrap(unwrap_request("unseal", &before.blob, b"a")),
    )
    .await;
    assert_eq!(opened.expect("Unwrap while Wraps hang").plaintext, b"before");

    // The device answers again: every held call completes, and its blob opens.
    fs::remove_file(&hang).unwrap();
    for call in held {
        let (plaintext, wrapped) = tokio::time::timeout(bound, call)
            .await
            .expect("a held Wrap did not complete after the device answered")
            .unwrap();
        let wrapped = wrapped.expect("a held Wrap succeeds once the device answers");
        let (opened, _) = bounded(
            bound,
            "Unwrap",
            client.unwrap(unwrap_request("unseal", &wrapped.blob, b"a")),
        )
        .await;
        assert_eq!(opened.expect("the held Wrap's blob opens").plaintext, plaintext);
    }
    let status = daemon.terminate();
    assert!(status.success(), "clean exit after the hang: {status}");
}
