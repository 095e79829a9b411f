//! One logged-in, pooled, self-healing connection to one token.
//!
//! PKCS#11 login state belongs to the application, not the session: closing
//! the last session logs every session out. So the pool keeps one "anchor"
//! session open for its whole life and hands out up to `max_sessions` working
//! sessions, one operation at a time each. Where a device call runs, and
//! what a hung device may hold, is [`Dispatch`]'s choice. When the token says
//! a session or the device is gone, the pool drops what it holds,
//! re-initializes as needed, logs in again and retries the operation once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use sealbroker_core::{BackendError, BackendErrorKind};
use secrecy::SecretString;
use tokio::sync::Semaphore;

/// How long to wait before trying a PIN again after the token rejected it,
/// so a wrong PIN cannot lock the token by repetition.
const PIN_RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// How often a missing token may trigger a module re-initialization.
const REINIT_BACKOFF: Duration = Duration::from_secs(2);

/// Which token to use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenSelector {
    Label(String),
    Slot(u64),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(label) => write!(f, "token {label:?}"),
            TokenSelector::Slot(slot) => write!(f, "slot {slot}"),
        }
    }
}

/// Where a device call runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dispatch {
    /// On tokio's blocking pool (`spawn_blocking`). Each call costs two
    /// thread hand-offs, but a caller's timeout fires even if the device
    /// never answers. The default: right for network HSMs.
    #[default]
    Pool,
    /// On the calling worker thread, after tokio hands that thread's other
    /// work to another thread (`block_in_place`). No hand-off on the request
    /// path, so short calls to a local HSM (SoftHSM, a PCIe card) finish
    /// several times sooner; but a call that hangs holds its request until
    /// the device answers. Falls back to `Pool` on a single-threaded runtime.
    Inline,
    /// On the calling worker thread as it is, with nothing handed over: the
    /// fastest for calls of microseconds. A call holds its worker (and the
    /// one task tokio may have queued behind it there) until the device
    /// answers, so at most one fewer call than the runtime has workers runs
    /// this way at once, across every pool in the process; the calls beyond
    /// that run as `Inline`. A hung device therefore never takes the last
    /// worker: health, metrics and other keys keep answering. Falls back to
    /// `Pool` on a single-threaded runtime.
    Direct,
}

/// How many `Direct` calls run on runtime workers right now (process-wide).
static DIRECT_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A claim on one of the `workers - 1` places for a `Direct` call; given
/// back on drop, also if the call panics.
struct DirectPlace;

impl DirectPlace {
    fn claim(workers: usize) -> Option<DirectPlace> {
        let limit = workers.saturating_sub(1);
        DIRECT_IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| DirectPlace)
    }
}

impl Drop for DirectPlace {
    fn drop(&mut self) {
        DIRECT_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the user PIN comes from. Read at every login, so a rotated PIN file
/// takes effect without a restart.
#[derive(Clone)]
pub enum PinSource {
    Inline(SecretString),
    File(PathBuf),
}

impl PinSource {
    fn read(&self) -> Result<SecretString, BackendError> {
        match self {
            PinSource::Inline(pin) => Ok(pin.clone()),
            PinSource::File(path) => {
                let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    BackendError::new(
                        BackendErrorKind::PermissionDenied,
                        format!("cannot read pin_file {}: {e}", path.display()),
                    )
                })?);
                Ok(SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned()))
            }
        }
    }
}

/// What a failed call says about the pool's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Damage {
    /// The operation failed; the session and token are fine.
    None,
    /// The session (or the login) is gone: reopen sessions and log in again.
    Session,
    /// The device or the module is gone: re-initialize the module too.
    Device,
}

pub(crate) fn damage_of(error: &CkError) -> Damage {
    match error {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::SessionCount => Damage::Session,
            RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SlotIdInvalid
            | RvError::CryptokiNotInitialized => Damage::Device,
            _ => Damage::None,
        },
        _ => Damage::None,
    }
}

/// A short description of a cryptoki error: the function and the CKR code.
pub(crate) fn describe(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

/// Loaded modules, one per library path, initialized once with OS locking.
fn module(lib: &Path) -> Result<Pkcs11, BackendError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = modules.get(lib) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(lib).map_err(|e| {
        BackendError::unavailable(format!("cannot load PKCS#11 module {}: {e}", lib.display()))
    })?;
    initialize(&ctx, lib)?;
    modules.insert(lib.to_owned(), ctx.clone());
    Ok(ctx)
}

fn initialize(ctx: &Pkcs11, lib: &Path) -> Result<(), BackendError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(BackendError::unavailable(format!(
            "C_Initialize of {} failed: {}",
            lib.display(),
            describe(&e)
        ))),
    }
}

struct PoolState {
    /// Bumped whenever sessions are dropped; sessions and cached object
    /// handles from an older generation are not reused.
    generation: u64,
    slot: Option<Slot>,
    anchor: Option<Session>,
    idle: Vec<Session>,
    pin_rejected_at: Option<Instant>,
    reinitialized_at: Option<Instant>,
}

struct PoolInner {
    lib: PathBuf,
    token: TokenSelector,
    pin: PinSource,
    state: Mutex<PoolState>,
}

/// A bounded pool of logged-in sessions on one token. Cheap to clone.
#[derive(Clone)]
pub struct TokenPool {
    inner: Arc<PoolInner>,
    permits: Arc<Semaphore>,
    dispatch: Dispatch,
}

/// A session checked out of the pool, with the generation it belongs to.
pub(crate) struct Lease {
    pub session: Session,
    pub generation: u64,
}

impl TokenPool {
    pub fn new(lib: PathBuf, token: TokenSelector, pin: PinSource, max_sessions: usize) -> Self {
        TokenPool {
            inner: Arc::new(PoolInner {
                lib,
                token,
                pin,
                state: Mutex::new(PoolState {
                    generation: 0,
                    slot: None,
                    anchor: None,
                    idle: Vec::new(),
                    pin_rejected_at: None,
                    reinitialized_at: None,
                }),
            }),
            permits: Arc::new(Semaphore::new(max_sessions.max(1))),
            dispatch: Dispatch::Pool,
        }
    }

    /// Sets where device calls run.
    pub fn with_dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    pub fn dispatch(&self) -> Dispatch {
        self.dispatch
    }

    /// The module, token and PIN source this pool serves.
    pub fn origin(&self) -> (PathBuf, TokenSelector, PinSource) {
        (
            self.inner.lib.clone(),
            self.inner.token.clone(),
            self.inner.pin.clone(),
        )
    }

    /// How many times the pool has dropped its sessions to recover from a
    /// lost session or device. For metrics and tests.
    pub fn resets(&self) -> u64 {
        self.inner.lock().generation
    }

    pub fn describe(&self) -> String {
        format!("{} in {}", self.inner.token, self.inner.lib.display())
    }

    /// Runs `op` on a pooled session on the calling thread, with the same
    /// reset-and-retry as [`TokenPool::run`] but no concurrency bound: for
    /// the helper process, whose worker threads are the bound.
    pub(crate) fn run_on_this_thread<T>(
        &self,
        op: &dyn Fn(&Session, u64) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        self.inner.run_blocking(op)
    }

    /// Runs `op` on a pooled session, where [`Dispatch`] says. `op` receives
    /// the session and the pool generation (for handle caches). A session- or
    /// device-level failure resets the pool and retries `op` once.
    pub async fn run<T, F>(&self, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: Fn(&Session, u64) -> Result<T, OpError> + Send + 'static,
    {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OpError::Backend(BackendError::unavailable("session pool closed")))?;
        let runtime = tokio::runtime::Handle::current();
        if self.dispatch != Dispatch::Pool
            && runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            if self.dispatch == Dispatch::Direct
                && let Some(_place) = DirectPlace::claim(runtime.metrics().num_workers())
            {
                return self.inner.run_blocking(&op);
            }
            return tokio::task::block_in_place(|| self.inner.run_blocking(&op));
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.run_blocking(&op))
            .await
            .map_err(|e| OpError::Backend(BackendError::internal(format!("PKCS#11 worker failed: {e}"))))?
    }
}

/// The failure of one pooled operation.
pub enum OpError {
    /// A device call failed; the pool decides whether to reset and retry.
    Device(CkError, &'static str),
    /// A failure already classified for the caller.
    Backend(BackendError),
}

impl PoolInner {
    fn run_blocking<T>(&self, op: &dyn Fn(&Session, u64) -> Result<T, OpError>) -> Result<T, OpError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lease = self.checkout().map_err(OpError::Backend)?;
            match op(&lease.session, lease.generation) {
                Ok(value) => {
                    self.checkin(lease);
                    return Ok(value);
                }
                Err(OpError::Device(error, what)) => {
                    let damage = damage_of(&error);
                    if damage == Damage::None {
                        self.checkin(lease);
                        return Err(OpError::Device(error, what));
                    }
                    tracing::warn!(
                        token = %self.token, %error, operation = what, attempt,
                        "PKCS#11 session lost; resetting the pool"
                    );
                    self.reset(lease.generation, damage);
                    drop(lease);
                    if attempt >= 2 {
                        return Err(OpError::Backend(BackendError::unavailable(format!(
                            "{} on {}: {}",
                            what,
                            self.token,
                            describe(&error)
                        ))));
                    }
                }
                Err(other) => {
                    self.checkin(lease);
                    return Err(other);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self) -> Result<Lease, BackendError> {
        let mut state = self.lock();
        if state.anchor.is_none() {
            self.connect(&mut state)?;
        }
        let generation = state.generation;
        if let Some(session) = state.idle.pop() {
            return Ok(Lease { session, generation });
        }
        let slot = state
            .slot
            .ok_or_else(|| BackendError::internal("pool has no slot"))?;
        drop(state);
        let ctx = module(&self.lib)?;
        match ctx.open_ro_session(slot) {
            Ok(session) => Ok(Lease { session, generation }),
            Err(e) => {
                let damage = damage_of(&e);
                if damage != Damage::None {
                    self.reset(generation, damage);
                }
                Err(BackendError::unavailable(format!(
                    "C_OpenSession on {}: {}",
                    self.token,
                    describe(&e)
                )))
            }
        }
    }

    fn checkin(&self, lease: Lease) {
        let mut state = self.lock();
        if lease.generation == state.generation && state.anchor.is_some() {
            state.idle.push(lease.session);
        }
    }

    /// Finds the slot, opens the anchor session and logs in.
    fn connect(&self, state: &mut PoolState) -> Result<(), BackendError> {
        if let Some(at) = state.pin_rejected_at
            && at.elapsed() < PIN_RETRY_BACKOFF
        {
            return Err(BackendError::new(
                BackendErrorKind::PermissionDenied,
                format!(
                    "{} rejected the PIN less than {}s ago; not retrying yet so the token is not locked",
                    self.token,
                    PIN_RETRY_BACKOFF.as_secs()
                ),
            ));
        }
        let ctx = module(&self.lib)?;
        let slot = match find_slot(&ctx, &self.token) {
            Ok(slot) => slot,
            // Modules list tokens at C_Initialize: a token that was away may
            // be back, but only a re-initialization shows it. Rate-limited,
            // because it also resets every other pool on this module.
            Err(e)
                if state
                    .reinitialized_at
                    .is_none_or(|at| at.elapsed() >= REINIT_BACKOFF) =>
            {
                state.reinitialized_at = Some(Instant::now());
                tracing::info!(token = %self.token, error = %e, "token not found; re-initializing the PKCS#11 module");
                let _ = ctx.clone().finalize();
                initialize(&ctx, &self.lib)?;
                find_slot(&ctx, &self.token)?
            }
            Err(e) => return Err(e),
        };
        let anchor = ctx.open_ro_session(slot).map_err(|e| {
            BackendError::unavailable(format!("C_OpenSession on {}: {}", self.token, describe(&e)))
        })?;
        let pin = self.pin.read()?;
        match anchor.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired),
                _,
            )) => {
                state.pin_rejected_at = Some(Instant::now());
                return Err(BackendError::new(
                    BackendErrorKind::PermissionDenied,
                    format!("{} rejected the user PIN ({rv:?})", self.token),
                ));
            }
            Err(e) => {
                return Err(BackendError::unavailable(format!(
                    "C_Login on {}: {}",
                    self.token,
                    describe(&e)
                )));
            }
        }
        state.pin_rejected_at = None;
        state.slot = Some(slot);
        state.anchor = Some(anchor);
        tracing::debug!(token = %self.token, slot = slot.id(), "logged in to PKCS#11 token");
        Ok(())
    }

    /// Drops every session of `generation` (if it is still current); on device
    /// damage also re-initializes the module.
    fn reset(&self, generation: u64, damage: Damage) {
        let mut state = self.lock();
        if state.generation != generation {
            return; // another caller already reset this generation
        }
        state.generation += 1;
        state.idle.clear();
        state.anchor = None;
        state.slot = None;
        let recently = state
            .reinitialized_at
            .is_some_and(|at| at.elapsed() < REINIT_BACKOFF);
        if damage == Damage::Device
            && !recently
            && let Ok(ctx) = module(&self.lib)
        {
            state.reinitialized_at = Some(Instant::now());
            // Other pools on this module see CKR_CRYPTOKI_NOT_INITIALIZED
            // once and reset the same way.
            let _ = ctx.clone().finalize();
            if let Err(e) = initialize(&ctx, &self.lib) {
                tracing::warn!(lib = %self.lib.display(), error = %e, "re-initializing PKCS#11 module failed");
            }
        }
    }
}

fn find_slot(ctx: &Pkcs11, token: &TokenSelector) -> Result<Slot, BackendError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| BackendError::unavailable(format!("C_GetSlotList failed: {}", describe(&e))))?;
    match token {
        TokenSelector::Slot(id) => slots
            .into_iter()
            .find(|s| s.id() == *id)
            .ok_or_else(|| BackendError::unavailable(format!("slot {id} has no initialized token"))),
        TokenSelector::Label(label) => {
            let mut found = Vec::new();
            for slot in slots {
                if let Ok(info) = ctx.get_token_info(slot)
                    && info.label().trim_end() == label
                {
                    found.push(slot);
                }
            }
            match found.as_slice() {
                [slot] => Ok(*slot),
                [] => Err(BackendError::unavailable(format!(
                    "no token labelled {label:?} is present"
                ))),
                _ => Err(BackendError::internal(format!(
                    "{} tokens are labelled {label:?}; select one by slot",
                    found.len()
                ))),
            }
        }
    }
}

/// Opens a read-write session on the token and logs in, outside any pool
/// (for key generation).
pub(crate) fn open_rw_logged_in(
    lib: &Path,
    token: &TokenSelector,
    pin: &PinSource,
) -> Result<Session, BackendError> {
    let ctx = module(lib)?;
    let slot = find_slot(&ctx, token)?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| BackendError::unavailable(format!("C_OpenSession on {token}: {}", describe(&e))))?;
    match session.login(UserType::User, Some(&pin.read()?)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(e) => Err(BackendError::new(
            BackendErrorKind::PermissionDenied,
            format!("C_Login on {token}: {}", describe(&e)),
        )),
    }
}
