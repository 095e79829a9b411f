//! Combining concurrent operations into one `batch_input` request.
//!
//! Under load the upstream round trip dominates, so operations that arrive
//! within `batch_window_ms` of the first one (up to `batch_max` of them) go
//! out as one request. A worker task per key and direction collects them;
//! each batch is then sent by its own task, so a slow batch does not hold up
//! the next one, and a caller that gives up does not cancel anyone else.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealbroker_core::BackendError;
use tokio::sync::{mpsc, oneshot};

/// Batching limits, from `batch_max` and `batch_window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most operations per request; 1 disables batching.
    pub max_items: usize,
    /// How long the first operation waits for company.
    pub window: Duration,
}

type Results<O> = Vec<Result<O, BackendError>>;
type Exec<I, O> = Arc<dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Results<O>> + Send>> + Send + Sync>;

struct Job<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, BackendError>>,
}

/// Collects items and runs them through `exec` in batches. `exec` answers
/// one result per item, in order.
pub(crate) struct Batcher<I, O> {
    settings: BatchSettings,
    exec: Exec<I, O>,
    queue: Mutex<Option<mpsc::UnboundedSender<Job<I, O>>>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    pub(crate) fn new<F>(settings: BatchSettings, exec: F) -> Self
    where
        F: Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Results<O>> + Send>> + Send + Sync + 'static,
    {
        Batcher {
            settings,
            exec: Arc::new(exec),
            queue: Mutex::new(None),
        }
    }

    /// Runs `item` in the next batch.
    pub(crate) async fn submit(&self, item: I) -> Result<O, BackendError> {
        let (reply, answer) = oneshot::channel();
        self.sender()
            .send(Job { item, reply })
            .map_err(|_| BackendError::unavailable("the transit batch worker has stopped"))?;
        answer
            .await
            .map_err(|_| BackendError::unavailable("the transit batch worker dropped the operation"))?
    }

    /// The worker's queue, starting the worker on first use (and again if its
    /// runtime went away).
    fn sender(&self) -> mpsc::UnboundedSender<Job<I, O>> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = queue.as_ref().filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(collect(receiver, self.settings, self.exec.clone()));
        *queue = Some(sender.clone());
        sender
    }
}

/// Ends when every sender is gone, i.e. when the key is dropped.
async fn collect<I: Send + 'static, O: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<Job<I, O>>,
    settings: BatchSettings,
    exec: Exec<I, O>,
) {
    while let Some(first) = receiver.recv().await {
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + settings.window;
        while jobs.len() < settings.max_items {
            // Take what is already queued without waiting, then wait out the window.
            match receiver.try_recv() {
                Ok(job) => {
                    jobs.push(job);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let exec = exec.clone();
        tokio::spawn(async move {
            let (items, replies): (Vec<I>, Vec<_>) = jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
            let count = items.len();
            tracing::trace!(items = count, "sending a transit batch");
            let results = exec(items).await;
            if results.len() != count {
                let error = BackendError::internal(format!(
                    "transit batch returned {} results for {count} operations",
                    results.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_items_share_batches_and_keep_their_results() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let batcher = Arc::new(Batcher::new(
            BatchSettings {
                max_items: 8,
                window: Duration::from_millis(20),
            },
            move |items: Vec<u32>| {
                counted.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move { items.into_iter().map(|i| Ok(i * 2)).collect() })
            },
        ));
        let tasks: Vec<_> = (0..32u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await.unwrap()) })
            })
            .collect();
        for task in tasks {
            let (i, doubled) = task.await.unwrap();
            assert_eq!(doubled, i * 2);
        }
        let calls = calls.load(Ordering::SeqCst);
        assert!(
            (4..32).contains(&calls),
            "{calls} calls for 32 items in batches of 8"
        );
    }

    #[tokio::test]
    async fn a_wrong_result_count_fails_every_item_of_the_batch() {
        let batcher = Batcher::new(
            BatchSettings {
                max_items: 4,
                window: Duration::from_millis(1),
            },
            |_items: Vec<u32>| Box::pin(async { Vec::<Result<u32, BackendError>>::new() }),
        );
        let e = batcher.submit(1).await.unwrap_err();
        assert!(e.message.contains("0 results for 1"), "{}", e.message);
    }
}
