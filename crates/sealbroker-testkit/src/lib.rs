//! What sealbroker's tests would otherwise write again and again, in one
//! dev-only crate. Nothing here ships: every crate takes it as a
//! dev-dependency only.
//!
//! - [`memory`]: a backend key in memory (real AES-256-GCM) and a backend
//!   kind for it, with the knobs tests need: a pause per call, a
//!   peak-concurrency gauge, failures on demand.

pub mod memory;
