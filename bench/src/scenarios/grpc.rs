//! Scenario 3: native gRPC Wrap and Unwrap (in turn, one RPC per operation)
//! with the software backend over the unix socket, at several numbers of
//! callers. Judged on latency, not on a ratio.
//!
//! Two kinds of load. Closed loop: N callers always have a call in flight,
//! so by Little's law latency is N / throughput; this measures capacity.
//! Open loop: N callers together offer a fixed rate below capacity, up to N
//! calls in flight; this measures what a caller waits at a given load, and
//! is what the latency target is judged on (with the closed loop at 1 in
//! flight, which is the same thing at the highest rate one caller can reach).
//!
//! Each open-loop round is paired with a round of the same pacer driving
//! callers that do nothing: the floor. It is what the machine charges for
//! waking an idle caller thread, which on a shared VM can dwarf the RPC.
//!
//! Every row also runs the same callers against the no-op floor server (a
//! bare tonic server with the same service, crate::floor) in alternate
//! rounds: the closed loop compares RPC/s (target: the broker keeps 0.8× of
//! it at 1 caller), the open loop p50 (target: at most 1.2× the floor's).
//!
//! Every row also reads the broker's own latency histogram
//! (`sealbroker_operation_duration_seconds`, from request decoded to answer
//! ready) before and after, so the time spent inside the broker is told
//! apart from transport and scheduling.

use serde::Serialize;

use super::{Ctx, GrpcOp, loadavg};
use crate::load::{AsyncCaller, Limit, Samples, Summary, run_async, run_paced};
use crate::peers::{Error, FloorServer};

/// Goals for one RPC.
pub const TARGET_P50_US: f64 = 100.0;
pub const TARGET_P99_US: f64 = 1000.0;
/// Goals against the no-op tonic server: closed loop at 1 caller, RPC/s at
/// least this share; open loop, p50 at most this multiple.
pub const TARGET_NOOP_RPS_SHARE: f64 = 0.8;
pub const TARGET_NOOP_P50_MULTIPLE: f64 = 1.2;

/// How the load was offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// Every caller issues its next call when the last one ends.
    Closed,
    /// The callers together start `offered_rps` calls per second.
    Open,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrpcRow {
    pub load: Load,
    /// Callers: the most calls that can be in flight at once.
    pub in_flight: usize,
    /// Open loop: the offered rate, RPC/s over all callers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rps: Option<f64>,
    pub rpc: Summary,
    /// Open loop: the same pacer and callers that do nothing, in alternate rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<Summary>,
    /// The same callers against the no-op tonic server, in alternate rounds.
    pub noop: Summary,
    /// Closed loop: broker RPC/s over the no-op server's; open loop: broker
    /// p50 over the no-op server's.
    pub vs_noop: f64,
    /// Whether `vs_noop` meets its target (judged rows only).
    pub vs_noop_met: bool,
    pub target_p50_us: f64,
    pub target_p99_us: f64,
    /// The broker's own view of the same calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_broker: Option<InBroker>,
    /// Whether the latency target applies: open loop, or one caller.
    pub judged: bool,
    pub met: bool,
    pub loadavg_before: f64,
    pub loadavg_after: f64,
}

impl GrpcRow {
    fn new(
        load: Load,
        in_flight: usize,
        offered_rps: Option<f64>,
        (total, noop): (Samples, Samples),
        before: f64,
    ) -> Self {
        let (rpc, noop) = (total.summary(), noop.summary());
        let vs_noop = match load {
            Load::Closed if noop.ops_per_sec > 0.0 => rpc.ops_per_sec / noop.ops_per_sec,
            Load::Open if noop.p50_us > 0.0 => rpc.p50_us / noop.p50_us,
            _ => 0.0,
        };
        let vs_noop_met = match load {
            Load::Closed => vs_noop >= TARGET_NOOP_RPS_SHARE,
            Load::Open => vs_noop > 0.0 && vs_noop <= TARGET_NOOP_P50_MULTIPLE,
        };
        let judged = load == Load::Open || in_flight == 1;
        eprintln!(
            "grpc     {:<6} n={in_flight:<3} {:>9.0} RPC/s  p50 {:>7.1} us  p99 {:>7.1} us  no-op {:>9.0} RPC/s  p50 {:>7.1} us{}",
            format!("{load:?}").to_lowercase(),
            rpc.ops_per_sec,
            rpc.p50_us,
            rpc.p99_us,
            noop.ops_per_sec,
            noop.p50_us,
            if rpc.late > 0 {
                format!("  ({} late)", rpc.late)
            } else {
                String::new()
            }
        );
        GrpcRow {
            load,
            in_flight,
            offered_rps,
            floor: None,
            in_broker: None,
            judged,
            met: rpc.p50_us < TARGET_P50_US && rpc.p99_us < TARGET_P99_US,
            rpc,
            noop,
            vs_noop,
            vs_noop_met,
            target_p50_us: TARGET_P50_US,
            target_p99_us: TARGET_P99_US,
            loadavg_before: before,
            loadavg_after: loadavg(),
        }
    }
}

/// A caller that does nothing: times only the wake-up of an idle caller.
struct Nothing;

impl AsyncCaller for Nothing {
    async fn call(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// What the broker's histogram says of one row's calls. Its buckets are
/// 50 µs × 2^k, so percentiles are bucket bounds ("at most").
#[derive(Debug, Clone, Serialize)]
pub struct InBroker {
    pub calls: f64,
    /// Share of calls done within 100 µs, and within 800 µs.
    pub share_within_100us: f64,
    pub share_within_800us: f64,
    /// The smallest bucket bound that holds 50 % and 99 % of the calls.
    pub p50_at_most_us: f64,
    pub p99_at_most_us: f64,
}

/// The gRPC door's latency histogram, summed over keys, operations and
/// outcomes: (bucket bound in seconds, cumulative count).
async fn histogram(http: &reqwest::Client, port: u16) -> Result<Vec<(f64, f64)>, Error> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("sealbroker_operation_duration_seconds_bucket{") else {
            continue;
        };
        if !rest.contains("door=\"grpc\"") {
            continue;
        }
        let le = rest
            .split("le=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .map(|v| {
                if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap_or(f64::NAN)
                }
            });
        let count = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        let (Some(le), Some(count)) = (le, count) else {
            return Err(format!("cannot read the metrics line {line:?}").into());
        };
        match buckets.iter_mut().find(|(bound, _)| *bound == le) {
            Some(bucket) => bucket.1 += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(buckets)
}

/// The calls between two readings of [`histogram`].
fn in_broker(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<InBroker> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, n)| *n);
            (*le, n - was)
        })
        .collect();
    let calls = delta.last()?.1;
    if calls <= 0.0 {
        return None;
    }
    let share = |bound: f64| {
        delta
            .iter()
            .rfind(|(le, _)| *le <= bound + 1e-12)
            .map_or(0.0, |(_, n)| n / calls)
    };
    let at_most = |q: f64| {
        delta
            .iter()
            .find(|(_, n)| n / calls >= q)
            .map_or(f64::INFINITY, |(le, _)| le * 1e6)
    };
    Some(InBroker {
        calls,
        share_within_100us: share(0.000_1),
        share_within_800us: share(0.000_8),
        p50_at_most_us: at_most(0.5),
        p99_at_most_us: at_most(0.99),
    })
}

/// One round of `callers`: closed loop, or paced at `rate`.
async fn round<C: AsyncCaller>(callers: Vec<C>, limit: Limit, rate: Option<f64>) -> (Vec<C>, Samples) {
    match rate {
        Some(rate) => run_paced(callers, limit, rate).await,
        None => run_async(callers, limit).await,
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<GrpcRow>, Error> {
    let dir = ctx.dir.join("grpc");
    let metrics_port = crate::peers::free_port()?;
    let config = ctx.software_config(
        &dir,
        &format!("[server.metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    )?;
    let http = crate::scenarios::transit::http_client()?;
    let broker = ctx.start_broker(&dir, &config, &[]).await?;
    let floor = FloorServer::start(&dir.join("floor")).await?;
    // Closed loop at each level, then open loop at the rate.
    let loads = ctx.grpc_concurrency.iter().map(|&n| (n, None)).chain(
        ctx.grpc_rate
            .into_iter()
            .flat_map(|rate| ctx.grpc_concurrency.iter().map(move |&n| (n, Some(rate)))),
    );
    let mut rows = Vec::new();
    for (in_flight, rate) in loads.collect::<Vec<_>>() {
        let mut callers = ctx
            .grpc_callers(&broker.socket, in_flight, GrpcOp::Alternate)
            .await?;
        let mut noop = ctx
            .grpc_callers(&floor.socket, in_flight, GrpcOp::Alternate)
            .await?;
        let mut idle: Vec<_> = (0..in_flight).map(|_| Nothing).collect();
        let before = loadavg();
        if !ctx.plan.warmup.is_zero() {
            callers = round(callers, Limit::Time(ctx.plan.warmup), rate).await.0;
            noop = round(noop, Limit::Time(ctx.plan.warmup), rate).await.0;
        }
        let histogram_before = histogram(&http, metrics_port).await?;
        let (mut total, mut noop_total, mut floor_total) =
            (Samples::default(), Samples::default(), Samples::default());
        for turn in 0..ctx.plan.rounds {
            // Open loop: the pacer's floor (callers that do nothing) first.
            if rate.is_some() {
                let (back, samples) = round(idle, ctx.plan.per_round, rate).await;
                idle = back;
                floor_total.merge(samples);
            }
            // A B, B A, ...: neither the broker nor the no-op server always runs first.
            for broker_turn in [turn % 2 == 0, turn % 2 != 0] {
                if broker_turn {
                    let (back, samples) = round(callers, ctx.plan.per_round, rate).await;
                    callers = back;
                    total.merge(samples);
                } else {
                    let (back, samples) = round(noop, ctx.plan.per_round, rate).await;
                    noop = back;
                    noop_total.merge(samples);
                }
            }
        }
        let load = if rate.is_some() { Load::Open } else { Load::Closed };
        let mut row = GrpcRow::new(load, in_flight, rate, (total, noop_total), before);
        if rate.is_some() {
            let floor_summary = floor_total.summary();
            eprintln!(
                "grpc     floor  n={in_flight:<3} {:>9.0} RPC/s  p50 {:>7.1} us  p99 {:>7.1} us",
                floor_summary.ops_per_sec, floor_summary.p50_us, floor_summary.p99_us
            );
            row.floor = Some(floor_summary);
        }
        row.in_broker = in_broker(&histogram_before, &histogram(&http, metrics_port).await?);
        rows.push(row);
    }
    drop(broker);
    drop(floor);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_broker_reads_the_calls_between_two_readings() {
        let before = [
            (0.000_05, 10.0),
            (0.000_1, 10.0),
            (0.000_8, 10.0),
            (f64::INFINITY, 10.0),
        ];
        // 100 new calls: 60 within 50 µs, 30 more within 100 µs, 9 more within
        // 800 µs, 1 slower.
        let after = [
            (0.000_05, 70.0),
            (0.000_1, 100.0),
            (0.000_8, 109.0),
            (f64::INFINITY, 110.0),
        ];
        let b = in_broker(&before, &after).unwrap();
        assert_eq!(b.calls, 100.0);
        assert_eq!(b.share_within_100us, 0.9);
        assert_eq!(b.share_within_800us, 0.99);
        assert_eq!(b.p50_at_most_us, 50.0);
        assert_eq!(b.p99_at_most_us, 800.0);
        assert!(in_broker(&after, &after).is_none(), "no calls, no figures");
    }
}
