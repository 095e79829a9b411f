//! The load generator: N callers for a fixed time or a fixed total count,
//! timing every operation. Closed loop: each caller issues its next
//! operation as soon as the last one ends ([`run_async`], [`run_blocking`]).
//! Open loop: the callers together start operations at a fixed rate,
//! whatever the answers do ([`run_paced`]). Async callers run as tokio tasks;
//! blocking callers (a direct PKCS#11 loop) run one OS thread each.
//!
//! Two sides of a comparison are run in alternating short rounds
//! (A B B A A B ...), so a neighbour that loads the shared machine for a
//! while slows both sides about equally and the ratio holds.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// When a round stops.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// Callers stop starting operations after this long.
    Time(Duration),
    /// Callers stop once this many operations were started in total.
    Count(u64),
}

impl Limit {
    fn gate(self) -> Gate {
        match self {
            Limit::Time(duration) => Gate::Until(Instant::now() + duration),
            Limit::Count(total) => Gate::Count(Arc::new(AtomicU64::new(0)), total),
        }
    }
}

/// Shared stop condition of one round.
#[derive(Clone)]
enum Gate {
    Until(Instant),
    Count(Arc<AtomicU64>, u64),
}

impl Gate {
    fn admit(&self) -> bool {
        match self {
            Gate::Until(deadline) => Instant::now() < *deadline,
            Gate::Count(started, total) => started.fetch_add(1, Ordering::Relaxed) < *total,
        }
    }
}

/// One caller issuing async operations (an HTTP or gRPC client).
pub trait AsyncCaller: Send + 'static {
    /// One operation. An `Err` is counted as an error and the caller goes on.
    fn call(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// One caller issuing blocking operations on its own thread.
pub trait BlockingCaller: Send + 'static {
    fn call(&mut self) -> Result<(), String>;
}

/// Raw results of one or more rounds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Latency of every successful operation, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Open loop: operations that started after their slot because their
    /// caller was still busy (the offered rate was beyond what was served).
    pub late: u64,
    /// Wall time the callers were running.
    pub elapsed: Duration,
}

impl Samples {
    fn record(&mut self, started: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => self.latencies_ns.push(started.elapsed().as_nanos() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Adds another round's results.
    pub fn merge(&mut self, other: Samples) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
        self.late += other.late;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
    }

    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            0.0
        } else {
            self.latencies_ns.len() as f64 / secs
        }
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.latencies_ns.clone();
        sorted.sort_unstable();
        let micros = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index] as f64 / 1000.0
        };
        Summary {
            ops: sorted.len() as u64,
            errors: self.errors,
            seconds: self.elapsed.as_secs_f64(),
            ops_per_sec: self.ops_per_sec(),
            p50_us: micros(0.50),
            p90_us: micros(0.90),
            p99_us: micros(0.99),
            max_us: micros(1.0),
            late: self.late,
            first_error: self.first_error.clone(),
        }
    }
}

/// What the reports show for one measured series.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Successful operations.
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Open loop only: operations that started behind schedule.
    #[serde(skip_serializing_if = "is_zero")]
    pub late: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Runs every caller concurrently until `limit`; hands the callers back so
/// their connections can serve the next round.
pub async fn run_async<C: AsyncCaller>(callers: Vec<C>, limit: Limit) -> (Vec<C>, Samples) {
    let gate = limit.gate();
    let started = Instant::now();
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while gate.admit() {
                    let t0 = Instant::now();
                    let result = caller.call().await;
                    samples.record(t0, result);
                }
                (caller, samples)
            })
        })
        .collect();
    gather(tasks, started).await
}

/// Waits for every caller task; merges their samples.
async fn gather<C>(tasks: Vec<tokio::task::JoinHandle<(C, Samples)>>, started: Instant) -> (Vec<C>, Samples) {
    let mut callers = Vec::with_capacity(tasks.len());
    let mut total = Samples::default();
    for task in tasks {
        match task.await {
            Ok((caller, samples)) => {
                callers.push(caller);
                total.merge(samples);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert(format!("caller task failed: {e}"));
            }
        }
    }
    total.elapsed = started.elapsed();
    (callers, total)
}

/// Open loop: the callers together start `rate` operations per second on a
/// fixed schedule until `limit`, at most one each at a time. A pacer thread
/// emits one ticket per slot into a queue the callers share (a plain thread,
/// because `thread::sleep` wakes within tens of µs where tokio's timer has
/// 1 ms ticks).
///
/// Latency counts from when the ticket was emitted. A ticket that finds
/// every caller busy waits in the queue, and that wait counts: a slow server
/// is not flattered by the load backing off (coordinated omission). Such
/// tickets are counted as `late`.
pub async fn run_paced<C: AsyncCaller>(callers: Vec<C>, limit: Limit, rate: f64) -> (Vec<C>, Samples) {
    let n = callers.len() as u64;
    let rate = if rate.is_finite() && rate > 0.0 { rate } else { 1.0 };
    let (tickets, queue) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    // Tickets emitted and not yet served.
    let outstanding = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let pacer = std::thread::spawn({
        let (outstanding, late) = (outstanding.clone(), late.clone());
        move || {
            let gate = limit.gate();
            for k in 0u64.. {
                let slot = started + Duration::from_secs_f64(k as f64 / rate);
                if let Some(wait) = slot.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if !gate.admit() {
                    break;
                }
                if outstanding.fetch_add(1, Ordering::Relaxed) >= n {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                if tickets.send(Instant::now()).is_err() {
                    break;
                }
            }
            // Dropping `tickets` lets the callers finish the queue and stop.
        }
    });
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            let (queue, outstanding) = (queue.clone(), outstanding.clone());
            tokio::spawn(async move {
                let mut samples = Samples::default();
                loop {
                    let ticket = queue.lock().await.recv().await;
                    let Some(emitted) = ticket else { break };
                    let result = caller.call().await;
                    samples.record(emitted, result);
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                }
                (caller, samples)
            })
        })
        .collect();
    let (callers, mut total) = gather(tasks, started).await;
    if pacer.join().is_err() {
        total.errors += 1;
        total
            .first_error
            .get_or_insert("the pacer thread panicked".into());
    }
    total.late = late.load(Ordering::Relaxed);
    (callers, total)
}

/// Like [`run_async`], one OS thread per caller.
pub async fn run_blocking<C: BlockingCaller>(callers: Vec<C>, limit: Limit) -> (Vec<C>, Samples) {
    let run = move || {
        let gate = limit.gate();
        let started = Instant::now();
        let threads: Vec<_> = callers
            .into_iter()
            .map(|mut caller| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let mut samples = Samples::default();
                    while gate.admit() {
                        let t0 = Instant::now();
                        let result = caller.call();
                        samples.record(t0, result);
                    }
                    (caller, samples)
                })
            })
            .collect();
        let mut callers = Vec::with_capacity(threads.len());
        let mut total = Samples::default();
        for thread in threads {
            match thread.join() {
                Ok((caller, samples)) => {
                    callers.push(caller);
                    total.merge(samples);
                }
                Err(_) => {
                    total.errors += 1;
                    total.first_error.get_or_insert("caller thread panicked".into());
                }
            }
        }
        total.elapsed = started.elapsed();
        (callers, total)
    };
    tokio::task::spawn_blocking(run)
        .await
        .expect("the blocking load runner does not panic")
}

/// A set of callers that can run one round at a time: one side of a comparison.
pub trait Side {
    fn round(&mut self, limit: Limit) -> impl Future<Output = Samples>;
}

/// Async callers, kept between rounds.
pub struct AsyncSide<C>(pub Vec<C>);

impl<C: AsyncCaller> Side for AsyncSide<C> {
    async fn round(&mut self, limit: Limit) -> Samples {
        let (callers, samples) = run_async(std::mem::take(&mut self.0), limit).await;
        self.0 = callers;
        samples
    }
}

/// Blocking callers, kept between rounds.
pub struct BlockingSide<C>(pub Vec<C>);

impl<C: BlockingCaller> Side for BlockingSide<C> {
    async fn round(&mut self, limit: Limit) -> Samples {
        let (callers, samples) = run_blocking(std::mem::take(&mut self.0), limit).await;
        self.0 = callers;
        samples
    }
}

/// How a comparison is run.
#[derive(Debug, Clone, Copy)]
pub struct RoundPlan {
    /// Untimed warm-up per side (connections, caches, JIT-like lazy init).
    pub warmup: Duration,
    pub rounds: usize,
    pub per_round: Limit,
}

/// Both sides of a comparison, and the ratio of their throughputs per round.
pub struct Compared {
    pub a: Samples,
    pub b: Samples,
    /// ops/s of A over ops/s of B, for each round pair.
    pub round_ratios: Vec<f64>,
}

/// Runs `a` and `b` alternately: A B, B A, A B, ... so that neither side
/// always runs first or last.
pub async fn compare(a: &mut impl Side, b: &mut impl Side, plan: RoundPlan) -> Compared {
    if !plan.warmup.is_zero() {
        a.round(Limit::Time(plan.warmup)).await;
        b.round(Limit::Time(plan.warmup)).await;
    }
    let mut result = Compared {
        a: Samples::default(),
        b: Samples::default(),
        round_ratios: Vec::new(),
    };
    for round in 0..plan.rounds {
        let (sa, sb) = if round % 2 == 0 {
            let sa = a.round(plan.per_round).await;
            (sa, b.round(plan.per_round).await)
        } else {
            let sb = b.round(plan.per_round).await;
            (a.round(plan.per_round).await, sb)
        };
        let ratio = if sb.ops_per_sec() > 0.0 {
            sa.ops_per_sec() / sb.ops_per_sec()
        } else {
            0.0
        };
        result.round_ratios.push(ratio);
        result.a.merge(sa);
        result.b.merge(sb);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleeper(u64);

    impl AsyncCaller for Sleeper {
        async fn call(&mut self) -> Result<(), String> {
            self.0 += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            if self.0.is_multiple_of(10) {
                Err(format!("tenth call {}", self.0))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn count_limit_runs_exactly_that_many_operations() {
        let (callers, samples) = run_async((0..4).map(|_| Sleeper(0)).collect(), Limit::Count(40)).await;
        assert_eq!(callers.len(), 4);
        assert_eq!(samples.latencies_ns.len() as u64 + samples.errors, 40);
        assert!(samples.errors >= 1, "every caller's tenth call fails");
        assert!(samples.first_error.unwrap().starts_with("tenth call"));
    }

    /// Takes 4 ms per call, whatever the load.
    struct Slow;

    impl AsyncCaller for Slow {
        async fn call(&mut self) -> Result<(), String> {
            tokio::time::sleep(Duration::from_millis(4)).await;
            Ok(())
        }
    }

    /// Answers at once.
    struct Instant0;

    impl AsyncCaller for Instant0 {
        async fn call(&mut self) -> Result<(), String> {
            tokio::task::yield_now().await;
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paced_load_never_runs_ahead_of_its_rate() {
        // 100 operations at 1000/s: the pacer releases the last one no sooner
        // than 99 ms after the first, however fast the callers answer.
        let (callers, samples) = run_paced(vec![Instant0, Instant0], Limit::Count(100), 1000.0).await;
        assert_eq!(callers.len(), 2);
        assert_eq!(samples.latencies_ns.len(), 100);
        assert_eq!(samples.errors, 0);
        assert!(
            samples.elapsed >= Duration::from_millis(99),
            "{:?}",
            samples.elapsed
        );
    }

    #[tokio::test]
    async fn paced_load_charges_missed_slots_to_the_server() {
        // One caller at 1000/s against a 4 ms server: it falls behind at once,
        // and the latencies must grow with the backlog, not stay at 4 ms.
        let (_, samples) = run_paced(vec![Slow], Limit::Count(50), 1000.0).await;
        assert_eq!(samples.latencies_ns.len(), 50);
        assert!(samples.late >= 45, "{} late", samples.late);
        let summary = samples.summary();
        assert!(
            summary.p50_us > 50_000.0,
            "p50 {} µs hides the backlog",
            summary.p50_us
        );
        assert!(
            summary.max_us > 120_000.0,
            "max {} µs hides the backlog",
            summary.max_us
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples = Samples {
            latencies_ns: (1..=100).map(|i| i * 1000).collect(),
            elapsed: Duration::from_secs(2),
            ..Samples::default()
        };
        let s = samples.summary();
        assert_eq!(
            (s.p50_us, s.p90_us, s.p99_us, s.max_us),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(s.ops_per_sec, 50.0);
    }
}
