//! Scenario 4: cold start to serving and idle memory, for a software-key
//! config and a SoftHSM config.
//!
//! Cold start is spawn → the first SERVING answer of gRPC health on the unix
//! socket (polled every millisecond with a fresh connection), and spawn →
//! the first successful Wrap. Idle RSS is VmRSS from /proc after one Wrap and
//! an Unwrap and then `--idle-secs` without calls.

use std::time::{Duration, Instant};

use sealbroker_proto::sealbroker::v1::{UnwrapRequest, WrapRequest};
use serde::Serialize;

use super::{AAD, Ctx, KEY, PAYLOAD, median};
use crate::peers::{self, Broker, Error, SoftHsmToken};

pub const TARGET_START_MS: f64 = 100.0;
pub const TARGET_RSS_MB: f64 = 30.0;

#[derive(Debug, Clone, Serialize)]
pub struct StartupRow {
    pub config: String,
    pub runs: usize,
    /// Spawn → SERVING health, each run (ms).
    pub ready_ms: Vec<f64>,
    pub ready_median_ms: f64,
    pub ready_max_ms: f64,
    /// Spawn → first successful Wrap, median (ms).
    pub first_wrap_median_ms: f64,
    /// SIGTERM → exit, median (ms).
    pub stop_median_ms: f64,
    pub rss_after_start_mb: f64,
    pub rss_idle_mb: f64,
    pub hwm_idle_mb: f64,
    pub idle_secs: f64,
    pub target_start_ms: f64,
    pub target_rss_mb: f64,
    pub met: bool,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts and stops the broker `runs` times (plus one untimed start that
/// warms the page cache); measures memory on the first timed run.
async fn measure(
    ctx: &Ctx,
    name: &str,
    config: &std::path::Path,
    socket: &std::path::Path,
    envs: &[(&str, &std::path::Path)],
) -> Result<StartupRow, Error> {
    let log = config.with_file_name("sealbroker.log");
    let (mut ready, mut first_wrap, mut stops) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss_start, mut rss_idle, mut hwm_idle) = (0, 0, 0);
    for run in 0..=ctx.startup_runs {
        let spawned = Instant::now();
        let mut broker = Broker::start(&ctx.sealbroker_bin, config, socket, envs, &log).await?;
        let mut client = broker.client().await?;
        let wrap = WrapRequest {
            key_name: KEY.into(),
            plaintext: PAYLOAD.to_vec(),
            aad: AAD.to_vec(),
        };
        let blob = client
            .wrap(wrap)
            .await
            .map_err(|s| format!("{name}: first Wrap: {s}"))?;
        let wrapped_after = spawned.elapsed();
        let unwrap = UnwrapRequest {
            blob: blob.into_inner().blob,
            aad: AAD.to_vec(),
            key_name: String::new(),
        };
        client
            .unwrap(unwrap)
            .await
            .map_err(|s| format!("{name}: first Unwrap: {s}"))?;
        drop(client);
        if run == 1 {
            let pid = broker.process.pid();
            rss_start = peers::memory_kb(pid)?.0;
            tokio::time::sleep(ctx.idle).await;
            broker.process.check_alive()?;
            (rss_idle, hwm_idle) = peers::memory_kb(pid)?;
        }
        let stopped = broker.process.stop();
        if run > 0 {
            ready.push(millis(broker.ready_after));
            first_wrap.push(millis(wrapped_after));
            stops.push(stopped.map_or(f64::NAN, millis));
        }
    }
    let mb = |kb: u64| kb as f64 / 1024.0;
    let ready_median_ms = median(&ready);
    Ok(StartupRow {
        config: name.into(),
        runs: ctx.startup_runs,
        ready_max_ms: ready.iter().copied().fold(0.0, f64::max),
        ready_median_ms,
        ready_ms: ready,
        first_wrap_median_ms: median(&first_wrap),
        stop_median_ms: median(&stops),
        rss_after_start_mb: mb(rss_start),
        rss_idle_mb: mb(rss_idle),
        hwm_idle_mb: mb(hwm_idle),
        idle_secs: ctx.idle.as_secs_f64(),
        target_start_ms: TARGET_START_MS,
        target_rss_mb: TARGET_RSS_MB,
        met: ready_median_ms < TARGET_START_MS && mb(rss_idle) < TARGET_RSS_MB,
    })
}

pub async fn run(ctx: &Ctx) -> Result<Vec<StartupRow>, Error> {
    let mut rows = Vec::new();

    let dir = ctx.dir.join("startup-software");
    let config = ctx.software_config(&dir, "")?;
    rows.push(
        measure(
            ctx,
            "software key (development)",
            &config,
            &dir.join("sb.sock"),
            &[],
        )
        .await?,
    );

    let token = SoftHsmToken::create_or_reuse(&ctx.make_token_script, &ctx.softhsm_module, &ctx.hsm_dir)?;
    let dir = ctx.dir.join("startup-hsm");
    let config = ctx.hsm_config(&dir, &token, 8, "pool")?;
    rows.push(
        measure(
            ctx,
            "SoftHSM key (hardened)",
            &config,
            &dir.join("sb.sock"),
            &[("SOFTHSM2_CONF", &token.conf)],
        )
        .await?,
    );
    for row in &rows {
        eprintln!(
            "startup  {:<28} ready {:>6.1} ms (max {:.1})  first Wrap {:>6.1} ms  idle RSS {:>5.1} MB",
            row.config, row.ready_median_ms, row.ready_max_ms, row.first_wrap_median_ms, row.rss_idle_mb
        );
    }
    Ok(rows)
}
