//! `sealbroker-bench`: a load generator and side-by-side benchmarks for
//! sealbroker. It starts everything it measures (the daemon, `bao server
//! -dev`, a SoftHSM2 token) on 127.0.0.1 in a private temporary directory,
//! and stops and removes it all on exit, on error and on Ctrl-C.
//!
//! Comparisons run both sides in alternating short rounds, so the ratio
//! holds on a shared, noisy machine. See docs/performance.md.

mod floor;
mod load;
mod peers;
mod report;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};

use crate::load::{Limit, RoundPlan};
use crate::peers::Error;
use crate::report::{Machine, Report};
use crate::scenarios::Ctx;

const EXAMPLES: &str = "\
Examples:
  # The full run recorded in docs/performance.md (run C):
  cargo build --release -p sealbroker -p sealbroker-bench
  bash tests/peers/install.sh /tmp/peers.env && source /tmp/peers.env
  target/release/sealbroker-bench --sealbroker-bin target/release/sealbroker

  # CI: every scenario for about a second each; fails only if an operation fails
  sealbroker-bench --smoke --sealbroker-bin target/release/sealbroker

  # Only the HSM comparison, 8 rounds of 20000 operations per side
  sealbroker-bench --scenarios hsm --rounds 8 --round-ops 20000

Scenarios:
  transit  transit encrypt+decrypt of 32 B: sealbroker's transit door (software key)
           vs OpenBao 2.7.2 `bao server -dev` transit (target >= 3x, 5x at 16
           callers) and vs a bare hyper 200 OK (target >= 0.8x); plain HTTP/1.1
           keep-alive, same reqwest client
  hsm      Wrap+Unwrap (AES-GCM, RSA-OAEP-3072) and Sign (RSA-2048, P-256) on
           SoftHSM2 through the gRPC unix socket vs p11-kit remoting (target
           >= 1.0x) and a direct cryptoki loop (target >= 0.9x), same thread
           count, once per --hsm-dispatch setting of the broker
  grpc     native gRPC Wrap/Unwrap (one RPC per op), software key, unix socket.
           Closed loop (capacity), then open loop at --grpc-rate; target
           p50 < 100 us and p99 < 1 ms, judged at 1 caller and in the open loop;
           each row also against a no-op tonic server (>= 0.8x RPC/s at 1
           caller, open-loop p50 <= 1.2x)
  startup  spawn -> SERVING gRPC health, and idle VmRSS; targets < 100 ms, < 30 MB
  unseal   real OpenBao 2.7.2 (raft) restart -> unsealed, median of --unseal-runs,
           through the KMS plugin (sidecar), stock seal \"transit\" to sealbroker, and
           stock seal \"transit\" to a second OpenBao; target plugin <= 1.0x the last

Output: a Markdown table on stdout; a full run (not --smoke) also writes
bench/results/<UTC date>.json, .md and .svg (or into --out-dir).
Exit status: 0, or 1 if any operation or scenario failed (missed targets do not fail).";

/// Where the broker's PKCS#11 calls run: in its process with the pkcs11
/// backend's `dispatch` (`direct`, `inline`, `pool`), or in the helper
/// process (`process`: `isolation = "process"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dispatch {
    Direct,
    Inline,
    Pool,
    Process,
}

impl Dispatch {
    fn as_str(self) -> &'static str {
        match self {
            Dispatch::Direct => "direct",
            Dispatch::Inline => "inline",
            Dispatch::Pool => "pool",
            Dispatch::Process => "process",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Transit,
    Hsm,
    Grpc,
    Startup,
    Unseal,
}

/// Load generator and side-by-side benchmarks for the sealbroker daemon.
///
/// Drives N concurrent callers for a fixed time (or count) per round and
/// reports ops/s, p50/p90/p99/max latency and errors for each scenario.
#[derive(Debug, Parser)]
#[command(name = "sealbroker-bench", version, after_long_help = EXAMPLES, after_help = "See --help for examples and the scenarios.")]
struct Cli {
    /// Tiny run for CI: concurrency 1-4, ~1-2 s per scenario; writes no files
    /// unless --out-dir is given.
    #[arg(long)]
    smoke: bool,

    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "transit,hsm,grpc,startup,unseal"
    )]
    scenarios: Vec<Scenario>,

    /// The sealbroker daemon to measure [default: $CARGO_TARGET_DIR/release/sealbroker,
    /// else target/release/sealbroker in the repository].
    #[arg(long, env = "SEALBROKER_BIN", value_name = "PATH")]
    sealbroker_bin: Option<PathBuf>,

    /// OpenBao's `bao` [default: `bao` on PATH, else the peers venv of tests/peers/install.sh].
    #[arg(long, env = "BAO_BIN", value_name = "PATH")]
    bao_bin: Option<PathBuf>,

    /// The SoftHSM2 PKCS#11 module.
    #[arg(long, value_name = "PATH", default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    softhsm_module: PathBuf,

    /// Concurrent HTTP callers for the transit comparison.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64", value_name = "N,..")]
    transit_concurrency: Vec<usize>,

    /// Threads (direct loop) and concurrent gRPC callers (broker) for the HSM comparison.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16", value_name = "N,..")]
    hsm_threads: Vec<usize>,

    /// PKCS#11 `dispatch` settings to run the HSM comparison with, one broker
    /// each; `process` is `isolation = "process"` (the helper process).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,inline,pool,process",
        value_name = "MODE,.."
    )]
    hsm_dispatch: Vec<Dispatch>,

    /// Token mechanisms for the HSM comparison.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "aes-gcm,rsa-oaep,sign-rsa2048,sign-p256",
        value_name = "MECH,.."
    )]
    hsm_mechanisms: Vec<scenarios::hsm::HsmMechanism>,

    /// What the broker is compared with in the HSM comparison: `direct`
    /// (the module in the bench process) and `p11-kit` (`p11-kit server` +
    /// `p11-kit-client.so`, PKCS#11 over a unix socket).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "p11-kit,direct",
        value_name = "PEER,.."
    )]
    hsm_peers: Vec<scenarios::hsm::HsmPeer>,

    /// p11-kit's command (Debian `p11-kit`), for `--hsm-peers p11-kit`.
    #[arg(long, value_name = "PATH", default_value = "p11-kit")]
    p11_kit_bin: PathBuf,

    /// p11-kit's client module (Debian `p11-kit-modules`).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
    )]
    p11_kit_client: PathBuf,

    /// Callers (the most calls in flight) for the native gRPC latency scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64", value_name = "N,..")]
    grpc_concurrency: Vec<usize>,

    /// Open-loop rate for the gRPC scenario: the callers together start this
    /// many RPCs per second, after the closed-loop runs. 0 skips it.
    #[arg(long, default_value_t = 200.0, value_name = "RPC/S")]
    grpc_rate: f64,

    /// Measured rounds per side and level (sides alternate A B, B A, ...).
    #[arg(long, default_value_t = 4)]
    rounds: usize,

    /// Length of one round per side.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    round_secs: f64,

    /// Stop each round after this many operations instead of after --round-secs.
    #[arg(long, value_name = "N")]
    round_ops: Option<u64>,

    /// Untimed warm-up per side and level.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    warmup_secs: f64,

    /// gRPC connections (HTTP/2 over the unix socket) the callers share.
    #[arg(long, default_value_t = 1, value_name = "N")]
    grpc_connections: usize,

    /// Timed daemon starts per config in the startup scenario (after one untimed start).
    #[arg(long, default_value_t = 10, value_name = "N")]
    startup_runs: usize,

    /// Timed OpenBao restarts per seal lane in the unseal scenario (after an untimed init).
    #[arg(long, default_value_t = 5, value_name = "N")]
    unseal_runs: usize,

    /// Idle time before reading the daemon's RSS.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    idle_secs: f64,

    /// Give every broker config an `[audit] file`, to measure the audit trail's cost.
    #[arg(long)]
    audit: bool,

    /// Where result files go [default: bench/results for a full run; none for --smoke].
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,

    /// Keep the temporary directory (configs, daemon and bao logs) and print its path.
    #[arg(long)]
    keep_temp: bool,

    /// Internal: serve the protocol floors (gRPC on this unix socket) and nothing else.
    #[arg(long, hide = true, value_name = "SOCKET")]
    serve_floor: Option<PathBuf>,

    /// Internal: the floor's HTTP port, with --serve-floor.
    #[arg(long, hide = true, default_value_t = 0)]
    floor_http_port: u16,
}

impl Cli {
    /// Tiny settings for --smoke.
    fn apply_smoke(&mut self) {
        self.transit_concurrency = vec![1, 4];
        self.hsm_threads = vec![1, 2];
        self.grpc_concurrency = vec![1, 4];
        if self.grpc_rate > 0.0 {
            self.grpc_rate = 200.0;
        }
        self.rounds = 2;
        self.round_secs = 0.15;
        self.round_ops = None;
        self.warmup_secs = 0.05;
        self.startup_runs = 1;
        self.unseal_runs = 1;
        self.idle_secs = 0.5;
    }
}

/// The repository root (bench/..).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn default_sealbroker_bin() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| PathBuf::from(dir).join("release/sealbroker"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| repo_root().join("target/release/sealbroker"))
}

/// `bao` on PATH, else in the peers venv.
fn find_bao() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("bao"));
    let venvs = [
        std::env::var_os("SEALBROKER_PEERS_VENV").map(PathBuf::from),
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/sealbroker-peers/venv")),
    ];
    on_path
        .chain(venvs.into_iter().flatten().map(|venv| venv.join("bin/bao")))
        .find(|p| p.is_file())
}

/// UTC date and time from the Unix epoch (days-to-civil, Howard Hinnant).
fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}-{month:02}-{day:02}");
    let time = format!(
        "{date}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    (date, time)
}

/// `--serve-floor`: the child process of [`peers::FloorServer`].
fn serve_floor(socket: &Path, http_port: u16) -> ExitCode {
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::from)
        .and_then(|runtime| runtime.block_on(floor::serve(socket, http_port)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealbroker-bench: floor server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(socket) = &cli.serve_floor {
        return serve_floor(socket, cli.floor_http_port);
    }
    if cli.smoke {
        cli.apply_smoke();
    }
    let temp = match tempfile::Builder::new().prefix("sealbroker-bench-").tempdir() {
        Ok(temp) => temp,
        Err(e) => {
            eprintln!("sealbroker-bench: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hsm_dir = temp.path().join("hsm");
    // SoftHSM reads SOFTHSM2_CONF at C_Initialize; the direct loop runs in
    // this process, so point it at the private token before any thread exists.
    // SAFETY: no other thread has been started yet (the runtime is built below).
    unsafe { std::env::set_var("SOFTHSM2_CONF", hsm_dir.join("softhsm2.conf")) };
    // p11-kit's client module reads where its server listens the same way.
    let p11kit_socket = peers::P11KitServer::socket(temp.path());
    // SAFETY: as above.
    unsafe {
        std::env::set_var(
            "P11_KIT_SERVER_ADDRESS",
            format!("unix:path={}", p11kit_socket.display()),
        )
    };
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sealbroker-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            outcome = run(&cli, temp.path(), hsm_dir, p11kit_socket) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted (SIGINT); stopped everything started".into()),
            _ = sigterm.recv() => Err("terminated (SIGTERM); stopped everything started".into()),
        }
    });
    // Blocking load threads may still hold PKCS#11 sessions after an interrupt.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if cli.keep_temp {
        eprintln!("sealbroker-bench: kept {}", temp.keep().display());
    }
    match outcome {
        Ok(report) if report.error_count() == 0 => ExitCode::SUCCESS,
        Ok(report) => {
            eprintln!("sealbroker-bench: {} error(s):", report.error_count());
            for error in report.first_errors() {
                eprintln!("  {error}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sealbroker-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli, temp: &Path, hsm_dir: PathBuf, p11kit_socket: PathBuf) -> Result<Report, Error> {
    let sealbroker_bin = cli.sealbroker_bin.clone().unwrap_or_else(default_sealbroker_bin);
    if !sealbroker_bin.is_file() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p sealbroker`, or pass --sealbroker-bin",
            sealbroker_bin.display()
        )
        .into());
    }
    let per_round = match cli.round_ops {
        Some(n) => Limit::Count(n),
        None => Limit::Time(Duration::from_secs_f64(cli.round_secs)),
    };
    let ctx = Ctx {
        sealbroker_bin: sealbroker_bin.clone(),
        bao_bin: cli.bao_bin.clone().or_else(find_bao),
        softhsm_module: cli.softhsm_module.clone(),
        make_token_script: repo_root().join("softhsm/make-token.sh"),
        dir: temp.to_owned(),
        hsm_dir,
        plan: RoundPlan {
            warmup: Duration::from_secs_f64(cli.warmup_secs),
            rounds: cli.rounds.max(1),
            per_round,
        },
        transit_concurrency: cli.transit_concurrency.clone(),
        hsm_threads: cli.hsm_threads.clone(),
        grpc_concurrency: cli.grpc_concurrency.clone(),
        grpc_rate: (cli.grpc_rate > 0.0).then_some(cli.grpc_rate),
        grpc_connections: cli.grpc_connections,
        hsm_dispatch: cli.hsm_dispatch.iter().map(|d| d.as_str()).collect(),
        hsm_mechanisms: cli.hsm_mechanisms.clone(),
        hsm_peers: cli.hsm_peers.clone(),
        p11kit_bin: cli.p11_kit_bin.clone(),
        p11kit_client: cli.p11_kit_client.clone(),
        p11kit_socket,
        startup_runs: cli.startup_runs.max(1),
        unseal_runs: cli.unseal_runs.max(1),
        idle: Duration::from_secs_f64(cli.idle_secs),
        audit: cli.audit,
    };
    let (date, started) = utc_now();
    let wake_samples = if cli.smoke { 200 } else { 2000 };
    let mut report = Report {
        started,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        smoke: cli.smoke,
        sealbroker_bin: sealbroker_bin.display().to_string(),
        machine: tokio::task::spawn_blocking(move || Machine::probe(wake_samples)).await?,
        plan: format!(
            "{} warm-up, then {} rounds of {} per side, alternating{}",
            scenarios::describe_limit(Limit::Time(ctx.plan.warmup)),
            ctx.plan.rounds,
            scenarios::describe_limit(per_round),
            if cli.audit {
                "; audit trail on"
            } else {
                "; no audit file"
            }
        ),
        transit: Vec::new(),
        hsm: Vec::new(),
        grpc: Vec::new(),
        startup: Vec::new(),
        unseal: Vec::new(),
        failures: Vec::new(),
        notes: Vec::new(),
    };
    let wants = |s: Scenario| cli.scenarios.contains(&s);
    // A failing scenario is reported and the others still run.
    if wants(Scenario::Transit) {
        match scenarios::transit::run(&ctx).await {
            Ok(rows) => report.transit = rows,
            Err(e) => report.failures.push(fail("transit", e)),
        }
    }
    if wants(Scenario::Hsm) {
        match scenarios::hsm::run(&ctx).await {
            Ok((rows, notes)) => {
                report.hsm = rows;
                report.notes.extend(notes);
            }
            Err(e) => report.failures.push(fail("hsm", e)),
        }
    }
    if wants(Scenario::Grpc) {
        match scenarios::grpc::run(&ctx).await {
            Ok(rows) => report.grpc = rows,
            Err(e) => report.failures.push(fail("grpc", e)),
        }
    }
    if wants(Scenario::Startup) {
        match scenarios::startup::run(&ctx).await {
            Ok(rows) => report.startup = rows,
            Err(e) => report.failures.push(fail("startup", e)),
        }
    }
    if wants(Scenario::Unseal) {
        match scenarios::unseal::run(&ctx).await {
            Ok(rows) => report.unseal = rows,
            Err(e) => report.failures.push(fail("unseal", e)),
        }
    }
    println!("{}", report.markdown());
    let out_dir = match (&cli.out_dir, cli.smoke) {
        (Some(dir), _) => Some(dir.clone()),
        (None, false) => Some(repo_root().join("bench/results")),
        (None, true) => None,
    };
    if let Some(dir) = out_dir {
        for path in report.write(&dir, &date)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(report)
}

fn fail(name: &str, e: Error) -> String {
    eprintln!("{name}: FAILED: {e}");
    format!("{name}: {e}")
}
