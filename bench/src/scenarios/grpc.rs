//! Scenario 3: native gRPC Wrap and Unwrap (in turn, one RPC per operation)
//! with the software backend over the unix socket, at several numbers of
//! calls in flight. Judged on latency, not on a ratio.

use serde::Serialize;

use super::{Ctx, GrpcOp, loadavg};
use crate::load::{Limit, Samples, Summary, run_async};
use crate::peers::{Broker, Error};

/// Goals for one RPC.
pub const TARGET_P50_US: f64 = 100.0;
pub const TARGET_P99_US: f64 = 1000.0;

#[derive(Debug, Clone, Serialize)]
pub struct GrpcRow {
    pub in_flight: usize,
    pub rpc: Summary,
    pub target_p50_us: f64,
    pub target_p99_us: f64,
    pub met: bool,
    pub loadavg_before: f64,
    pub loadavg_after: f64,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<GrpcRow>, Error> {
    let dir = ctx.dir.join("grpc");
    let config = ctx.software_config(&dir, "")?;
    let broker = Broker::start(
        &ctx.sealbroker_bin,
        &config,
        &dir.join("sb.sock"),
        &[],
        &dir.join("sealbroker.log"),
    )
    .await?;
    let mut rows = Vec::new();
    for &in_flight in &ctx.grpc_concurrency {
        let mut callers = ctx.grpc_callers(&broker, in_flight, GrpcOp::Alternate).await?;
        let before = loadavg();
        if !ctx.plan.warmup.is_zero() {
            callers = run_async(callers, Limit::Time(ctx.plan.warmup)).await.0;
        }
        let mut total = Samples::default();
        for _ in 0..ctx.plan.rounds {
            let (back, samples) = run_async(callers, ctx.plan.per_round).await;
            callers = back;
            total.merge(samples);
        }
        let rpc = total.summary();
        eprintln!(
            "grpc     n={in_flight:<3} {:>9.0} RPC/s  p50 {:>7.1} us  p99 {:>7.1} us",
            rpc.ops_per_sec, rpc.p50_us, rpc.p99_us
        );
        rows.push(GrpcRow {
            in_flight,
            met: rpc.p50_us < TARGET_P50_US && rpc.p99_us < TARGET_P99_US,
            rpc,
            target_p50_us: TARGET_P50_US,
            target_p99_us: TARGET_P99_US,
            loadavg_before: before,
            loadavg_after: loadavg(),
        });
    }
    drop(broker);
    Ok(rows)
}
