//! `max_in_flight`: a bound on concurrent operations per configured backend,
//! like Vault's `max_parallel` for HSMs. It is a layer around each backend
//! key, shared by every key (and every rotated version) of one
//! `[backends.NAME]`, so the backends themselves know nothing of it.
//!
//! A call that finds the backend full waits for a slot, at most
//! `queue_timeout`; then it fails as `Unavailable`, naming the backend and
//! its limit, instead of hanging.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sealbroker_core::{Backend, BackendError, BackendErrorKind, NewVersion, Sealed, SecretBytes};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one configured backend.
#[derive(Clone)]
pub struct InFlightSlots {
    backend: Arc<str>,
    max: usize,
    queue_timeout: Duration,
    permits: Arc<Semaphore>,
}

impl InFlightSlots {
    pub fn new(backend: &str, max: usize, queue_timeout: Duration) -> Self {
        InFlightSlots {
            backend: backend.into(),
            max,
            queue_timeout,
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// Puts `inner` behind these slots.
    pub fn wrap(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(InFlightLimit {
            inner,
            slots: self.clone(),
        })
    }

    async fn acquire(&self) -> Result<OwnedSemaphorePermit, BackendError> {
        match tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(BackendError::internal("the in-flight limiter was closed")),
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Unavailable,
                format!(
                    "backend {:?} is busy: all max_in_flight = {} slots stayed taken for {} ms",
                    self.backend,
                    self.max,
                    self.queue_timeout.as_millis()
                ),
            )),
        }
    }

    /// Operations running on this backend now.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// One backend key behind its backend's [`InFlightSlots`].
struct InFlightLimit {
    inner: Arc<dyn Backend>,
    slots: InFlightSlots,
}

#[async_trait]
impl Backend for InFlightLimit {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn key_identity(&self) -> String {
        self.inner.key_identity()
    }

    fn throttling_retries(&self) -> u64 {
        self.inner.throttling_retries()
    }

    fn helper_restarts(&self) -> u64 {
        self.inner.helper_restarts()
    }

    async fn encrypt(&self, secret: &[u8], aad: &[u8]) -> Result<Sealed, BackendError> {
        let _slot = self.slots.acquire().await?;
        self.inner.encrypt(secret, aad).await
    }

    async fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretBytes, BackendError> {
        let _slot = self.slots.acquire().await?;
        self.inner.decrypt(sealed, aad).await
    }

    async fn create_version(&self, version: u32) -> Result<NewVersion, BackendError> {
        let created = {
            let _slot = self.slots.acquire().await?;
            self.inner.create_version(version).await?
        };
        Ok(NewVersion {
            backend: self.slots.wrap(created.backend),
            settings: created.settings,
        })
    }

    async fn health(&self) -> Result<(), BackendError> {
        let _slot = self.slots.acquire().await?;
        self.inner.health().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use sealbroker_testkit::memory::{Knobs, MemoryKey};

    use super::*;

    /// A key that takes 20 ms a call and reports 7 throttling retries.
    fn slow() -> (Arc<Knobs>, Arc<MemoryKey>) {
        let knobs = Arc::new(Knobs::default());
        knobs.delay_ms.store(20, Ordering::SeqCst);
        knobs.throttling_retries.store(7, Ordering::SeqCst);
        (knobs.clone(), Arc::new(MemoryKey::new("slow", knobs)))
    }

    #[tokio::test]
    async fn concurrent_calls_never_exceed_max_in_flight_and_all_finish() {
        let (knobs, inner) = slow();
        let slots = InFlightSlots::new("hsm", 2, Duration::from_secs(10));
        // Two keys on one backend share its slots.
        let a = slots.wrap(inner.clone());
        let b = slots.wrap(inner.clone());
        let calls = (0..12).map(|i| {
            let key = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { key.encrypt(&[i as u8; 32], b"").await })
        });
        for call in calls.collect::<Vec<_>>() {
            call.await.unwrap().unwrap();
        }
        assert_eq!(knobs.concurrency.peak(), 2);
        assert_eq!(knobs.concurrency.calls(), 12);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(a.throttling_retries(), 7, "counters pass through");
    }

    #[tokio::test]
    async fn a_full_backend_is_unavailable_after_the_queue_timeout_naming_the_limit() {
        let slots = InFlightSlots::new("hsm", 1, Duration::from_millis(50));
        let key = slots.wrap(slow().1);
        let held = slots.permits.clone().acquire_owned().await.unwrap();
        let err = key.encrypt(&[1; 32], b"").await.err().unwrap();
        assert_eq!(err.kind, BackendErrorKind::Unavailable);
        assert!(err.message.contains("\"hsm\""), "{err}");
        assert!(err.message.contains("max_in_flight = 1"), "{err}");
        drop(held);
        key.encrypt(&[1; 32], b"").await.unwrap();
    }
}
