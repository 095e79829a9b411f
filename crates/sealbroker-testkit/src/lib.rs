//! What sealbroker's tests would otherwise write again and again, in one
//! dev-only crate. Nothing here ships: every crate takes it as a
//! dev-dependency only (the end-to-end crate, which is nothing but tests,
//! takes it as a plain one). It depends on `sealbroker-core` and on no
//! backend or server crate, so any of them can use it.
//!
//! Everything it starts listens on 127.0.0.1 and stops when its handle is
//! dropped; everything it fails on panics with a message that says what to
//! do, since its callers are tests.
//!
//! - [`audit`]: the keyed `[audit]` table a Hardened broker requires.
//! - [`port`]: a free loopback port for a peer that binds its own socket.
//! - [`pki`]: a throwaway CA that issues server and client certificates,
//!   as PEM files or as a rustls server config.
//! - [`https_stub`]: the scaffolding of an HTTPS stand-in for a cloud API
//!   (listener, TLS, HTTP/1.1 framing, stop on drop); the stand-in brings
//!   only its wire protocol, as a handler.
//! - [`silent`]: a hung service that accepts TCP connections and never
//!   answers, for the timeout tests.
//! - [`openbao`]: a real `bao server` (dev or raft), its CLI, and the
//!   init/unseal steps, killed on drop.
//! - [`pykmip`]: a real PyKMIP server over mutual TLS, stopped with SIGINT.
//! - [`leak`]: the assertion that a log or an error holds no secret, which
//!   names the secret that leaked without printing it.
//! - [`memory`]: a backend key in memory (real AES-256-GCM) and a backend
//!   kind for it, with the knobs tests need: a pause per call, a
//!   peak-concurrency gauge, failures on demand.

pub mod audit;
pub mod https_stub;
pub mod leak;
pub mod memory;
pub mod openbao;
pub mod pki;
pub mod port;
pub mod pykmip;
pub mod silent;

pub use audit::{audit_log, audit_toml};
pub use leak::assert_no_secret;
pub use port::free_port;
