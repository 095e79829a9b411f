//! The broker's side of process isolation: one helper process per backend
//! ([`crate::helper`]) holds the PKCS#11 module, and [`HelperClient`] starts
//! it, talks to it over a socketpair ([`crate::wire`]) and restarts it.
//!
//! A module that crashes kills only the helper: the calls in flight fail
//! with `UNAVAILABLE` naming the backend, and the next call starts a new
//! helper after a backoff that doubles while helpers keep dying before they
//! answer anything. A call unanswered within `timeout_secs` counts as a hung
//! module: the helper is killed, which fails the calls in flight the same
//! way. The helper gets a cleared environment (only the variables listed in
//! `helper_env`) and, optionally, its own uid and gid.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sealbroker_core::BackendError;
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use zeroize::Zeroizing;

use crate::wire::{self, KeySpec, PinSpec, Request, Response, TokenSpec};
use crate::{Call, PinSource, TokenSelector};

/// Where a backend's PKCS#11 module runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In a supervised helper process: a module crash or hang fails the
    /// calls in flight, not the broker.
    #[default]
    Process,
    /// In the broker's process: no IPC, but a module crash kills the broker.
    InProcess,
}

/// How a helper is started: a program and its arguments.
#[derive(Debug, Clone)]
pub struct HelperCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

static HELPER_COMMAND: OnceLock<HelperCommand> = OnceLock::new();

/// Sets how helpers are started, once, before any backend opens. Without it
/// the broker re-executes itself as `<current executable> pkcs11-helper`.
pub fn set_helper_command(command: HelperCommand) {
    let _ = HELPER_COMMAND.set(command);
}

pub(crate) fn helper_command() -> HelperCommand {
    HELPER_COMMAND.get().cloned().unwrap_or_else(|| HelperCommand {
        // /proc/self/exe still runs the same build after a package upgrade
        // replaced the file on disk.
        program: PathBuf::from("/proc/self/exe"),
        args: vec!["pkcs11-helper".to_owned()],
    })
}

/// First wait before restarting a helper that died; doubles for each helper
/// in a row that died before answering a call, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything a backend's helper needs, from its config.
pub struct HelperSettings {
    /// The backend's config path (`backends.NAME`), for messages.
    pub backend: String,
    pub command: HelperCommand,
    pub lib: PathBuf,
    pub token: TokenSelector,
    pub pin: PinSource,
    pub max_sessions: usize,
    /// Names of the environment variables the helper inherits.
    pub env: Vec<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub timeout: Duration,
}

type Answer = Result<Zeroizing<Vec<u8>>, BackendError>;

/// Calls waiting for an answer from one helper, and whether it is gone.
#[derive(Default)]
struct Pending {
    /// Why the helper is gone, and when it went; no call registers after.
    closed: Option<(String, Instant)>,
    waiters: HashMap<u64, oneshot::Sender<Answer>>,
}

/// State shared by one connection's tasks and its callers.
struct Shared {
    pending: Mutex<Pending>,
    /// Asks the reader to kill the helper (a call went unanswered).
    kill: Notify,
    /// Set once the helper answered a call: it came up, so its death does
    /// not lengthen the backoff.
    answered: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed(&self) -> Option<(String, Instant)> {
        self.lock().closed.clone()
    }

    /// Marks the connection closed and fails every call in flight.
    fn close(&self, why: String, backend: &str) {
        let waiters = {
            let mut pending = self.lock();
            if pending.closed.is_none() {
                pending.closed = Some((why.clone(), Instant::now()));
            }
            std::mem::take(&mut pending.waiters)
        };
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(BackendError::unavailable(format!(
                "PKCS#11 helper of {backend}: {why}"
            ))));
        }
    }
}

/// One running helper.
struct Connection {
    pid: u32,
    outbox: mpsc::UnboundedSender<Zeroizing<Vec<u8>>>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Supervision {
    current: Option<Arc<Connection>>,
    /// Helpers in a row that died before answering.
    crash_streak: u32,
    /// When the last helper died, while a restart is due.
    died_at: Option<Instant>,
}

/// The broker's handle on one backend's helper process.
pub struct HelperClient {
    settings: HelperSettings,
    state: tokio::sync::Mutex<Supervision>,
    restarts: AtomicU64,
}

impl HelperClient {
    /// A client that starts its helper on the first call.
    pub fn new(settings: HelperSettings) -> Self {
        HelperClient {
            settings,
            state: tokio::sync::Mutex::new(Supervision::default()),
            restarts: AtomicU64::new(0),
        }
    }

    /// How many helpers were started to replace one that died.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The pid of the running helper, if one runs. For tests.
    pub async fn helper_pid(&self) -> Option<u32> {
        let state = self.state.lock().await;
        state
            .current
            .as_ref()
            .filter(|c| c.shared.closed().is_none())
            .map(|c| c.pid)
    }

    /// The module, token and PIN source the helper serves.
    pub fn origin(&self) -> (PathBuf, TokenSelector, PinSource) {
        (
            self.settings.lib.clone(),
            self.settings.token.clone(),
            self.settings.pin.clone(),
        )
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> BackendError {
        BackendError::unavailable(format!("PKCS#11 helper of {}: {what}", self.settings.backend))
    }

    /// Runs one device call on `key` in the helper.
    pub async fn call(&self, key: KeySpec, call: Call) -> Answer {
        let connection = self.connection().await?;
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let request = match call {
            Call::Encrypt { iv, aad, plaintext } => Request::Encrypt {
                id,
                key,
                iv,
                aad,
                plaintext,
            },
            Call::Decrypt { iv, aad, ciphertext } => Request::Decrypt {
                id,
                key,
                iv,
                aad,
                ciphertext,
            },
            Call::Sign { scheme, data } => Request::Sign {
                id,
                key,
                scheme: crate::signing::scheme_code(scheme),
                data,
            },
            Call::Verify {
                scheme,
                data,
                signature,
            } => Request::Verify {
                id,
                key,
                scheme: crate::signing::scheme_code(scheme),
                data,
                signature,
            },
            Call::PublicKey => Request::PublicKey { id, key },
        };
        self.round_trip(&connection, id, request).await
    }

    /// Creates a key in the helper (`use_existing`: for rotation).
    pub async fn create_key(&self, key: KeySpec, use_existing: bool) -> Result<String, BackendError> {
        let connection = self.connection().await?;
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let described = self
            .round_trip(
                &connection,
                id,
                Request::CreateKey {
                    id,
                    key,
                    use_existing,
                },
            )
            .await?;
        Ok(String::from_utf8_lossy(&described).into_owned())
    }

    async fn round_trip(&self, connection: &Connection, id: u64, request: Request) -> Answer {
        let frame = wire::frame(&request.encode()).map_err(|e| self.unavailable(e))?;
        drop(request);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = connection.shared.lock();
            if let Some((why, _)) = &pending.closed {
                return Err(self.unavailable(why));
            }
            pending.waiters.insert(id, tx);
        }
        // The writer task sends whole frames, so a caller that gives up
        // mid-call cannot leave half a frame on the socket.
        if connection.outbox.send(frame).is_err() {
            // The writer stopped because the helper is going away; the
            // reader fails this call with how it ended.
            connection.shared.kill.notify_one();
        }
        match tokio::time::timeout(self.settings.timeout, rx).await {
            Ok(Ok(answer)) => {
                if answer.is_ok() {
                    connection.shared.answered.store(true, Ordering::Relaxed);
                }
                answer
            }
            Ok(Err(_)) => Err(self.unavailable("the helper went away")),
            Err(_) => {
                tracing::warn!(
                    backend = %self.settings.backend, pid = connection.pid,
                    timeout_secs = self.settings.timeout.as_secs(),
                    "PKCS#11 call unanswered; killing the helper"
                );
                connection.shared.kill.notify_one();
                Err(self.unavailable(format!(
                    "no answer within {} s (timeout_secs); the helper (pid {}) was killed and restarts",
                    self.settings.timeout.as_secs(),
                    connection.pid
                )))
            }
        }
    }

    /// The running helper, or a new one once the backoff after the last
    /// one's death has passed.
    async fn connection(&self) -> Result<Arc<Connection>, BackendError> {
        let mut state = self.state.lock().await;
        if let Some(current) = &state.current {
            match current.shared.closed() {
                None => return Ok(current.clone()),
                Some((_, died_at)) => {
                    state.crash_streak = if current.shared.answered.load(Ordering::Relaxed) {
                        0
                    } else {
                        state.crash_streak.saturating_add(1)
                    };
                    state.died_at = Some(died_at);
                    state.current = None;
                }
            }
        }
        let replacing = state.died_at.is_some();
        if let Some(died_at) = state.died_at {
            let backoff = FIRST_BACKOFF
                .saturating_mul(1u32 << state.crash_streak.min(10))
                .min(MAX_BACKOFF);
            tokio::time::sleep_until(tokio::time::Instant::from_std(died_at + backoff)).await;
        }
        match self.spawn() {
            Ok(connection) => {
                if replacing {
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        backend = %self.settings.backend, pid = connection.pid,
                        restarts = self.restarts(), "restarted the PKCS#11 helper"
                    );
                }
                state.died_at = None;
                state.current = Some(connection.clone());
                Ok(connection)
            }
            Err(e) => {
                state.crash_streak = state.crash_streak.saturating_add(1);
                state.died_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn spawn(&self) -> Result<Arc<Connection>, BackendError> {
        let settings = &self.settings;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| self.unavailable(format!("socketpair failed: {e}")))?;
        let mut command = tokio::process::Command::new(&settings.command.program);
        command.args(&settings.command.args).env_clear();
        for name in &settings.env {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(uid) = settings.uid {
            command.uid(uid);
        }
        if let Some(gid) = settings.gid {
            command.gid(gid);
        }
        let mut child = command.spawn().map_err(|e| {
            self.unavailable(format!(
                "cannot start {}: {e}",
                settings.command.program.display()
            ))
        })?;
        // Closes our copy of the helper's end, so its death reads as EOF.
        drop(command);
        let pid = child.id().unwrap_or(0);
        ours.set_nonblocking(true)
            .map_err(|e| self.unavailable(format!("socket setup failed: {e}")))?;
        let stream = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| self.unavailable(format!("socket setup failed: {e}")))?;
        let (mut read, mut write) = stream.into_split();

        let hello = Request::Hello {
            lib: settings.lib.to_string_lossy().into_owned(),
            token: match &settings.token {
                TokenSelector::Label(label) => TokenSpec::Label(label.clone()),
                TokenSelector::Slot(slot) => TokenSpec::Slot(*slot),
            },
            pin: match &settings.pin {
                PinSource::Inline(pin) => {
                    PinSpec::Inline(Zeroizing::new(pin.expose_secret().as_bytes().to_vec()))
                }
                PinSource::File(path) => PinSpec::File(path.to_string_lossy().into_owned()),
            },
            max_sessions: u32::try_from(settings.max_sessions).unwrap_or(u32::MAX),
        };
        let hello = wire::frame(&hello.encode()).map_err(|e| self.unavailable(e))?;
        let (outbox, mut frames) = mpsc::unbounded_channel::<Zeroizing<Vec<u8>>>();
        let _ = outbox.send(hello);

        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            kill: Notify::new(),
            answered: AtomicBool::new(false),
        });
        let backend = settings.backend.clone();

        // Writer: whole frames, in order; ends when the client drops the
        // connection, which closes the helper's input and so the helper.
        let writer_shared = shared.clone();
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if write.write_all(&frame).await.is_err() {
                    writer_shared.kill.notify_one();
                    break;
                }
            }
        });

        // Reader: hands answers to their callers; when the helper dies (or
        // must be killed) fails every call in flight and reaps it.
        let reader_shared = shared.clone();
        tokio::spawn(async move {
            let why = tokio::select! {
                why = read_answers(&mut read, &reader_shared) => why,
                () = reader_shared.kill.notified() => {
                    let _ = child.start_kill();
                    "the helper hung or its connection broke; it was killed".to_owned()
                }
            };
            // Name how it ended when it ended on its own (a crash).
            let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(Ok(status)) => Some(status),
                _ => {
                    let _ = child.start_kill();
                    child.wait().await.ok()
                }
            };
            let ended = match status {
                Some(status) => match status.signal() {
                    Some(signal) => format!("killed by signal {signal}{}", signal_name(signal)),
                    None => format!("exited with {status}"),
                },
                None => "ended".to_owned(),
            };
            let why = format!("{why}; the helper (pid {pid}) {ended}; it restarts on the next call");
            tracing::warn!(backend = %backend, pid, reason = %why, "PKCS#11 helper died");
            reader_shared.close(why, &backend);
        });

        Ok(Arc::new(Connection {
            pid,
            outbox,
            shared,
            next_id: AtomicU64::new(1),
        }))
    }
}

/// Reads answers until the helper's end closes; says why it stopped.
async fn read_answers(read: &mut tokio::net::unix::OwnedReadHalf, shared: &Shared) -> String {
    loop {
        let mut header = [0u8; 4];
        if let Err(e) = read.read_exact(&mut header).await {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "the helper closed its connection".to_owned(),
                _ => format!("reading from the helper failed: {e}"),
            };
        }
        let len = match wire::body_len(header) {
            Ok(len) => len,
            Err(e) => return format!("the helper broke the protocol: {e}"),
        };
        let mut body = Zeroizing::new(vec![0u8; len]);
        if let Err(e) = read.read_exact(&mut body).await {
            return format!("the helper's answer was cut short: {e}");
        }
        let response = match Response::decode(&body) {
            Ok(response) => response,
            Err(e) => return format!("the helper broke the protocol: {e}"),
        };
        let waiter = shared.lock().waiters.remove(&response.id());
        if let Some(waiter) = waiter {
            let answer = match response {
                Response::Ok { data, .. } => Ok(data),
                Response::Err { error, .. } => Err(error),
            };
            let _ = waiter.send(answer);
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        6 => " (SIGABRT)",
        7 => " (SIGBUS)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}
