//! The results of a run, as JSON, as Markdown tables, and as an SVG chart of
//! latencies (docs/performance.md embeds all three kinds).

use std::fmt::Write;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::peers::Error;
use crate::scenarios::ComparisonRow;
use crate::scenarios::grpc::{GrpcRow, Load};
use crate::scenarios::startup::StartupRow;
use crate::scenarios::unseal::UnsealRow;

/// Where and how a run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadavg_at_start: f64,
    /// How late a thread wakes from a 200 µs sleep, in µs (p50, p99, max):
    /// the cost of every hand-off to an idle thread on this machine.
    pub wake_late_us: (f64, f64, f64),
}

/// Sleeps 200 µs `n` times and returns how late the thread woke (p50, p99, max, in µs).
fn wake_lateness(n: usize) -> (f64, f64, f64) {
    let asked = std::time::Duration::from_micros(200);
    let mut late: Vec<f64> = (0..n.max(1))
        .map(|_| {
            let t0 = std::time::Instant::now();
            std::thread::sleep(asked);
            t0.elapsed().saturating_sub(asked).as_secs_f64() * 1e6
        })
        .collect();
    late.sort_by(f64::total_cmp);
    let at = |q: f64| late[((late.len() as f64 * q) as usize).min(late.len() - 1)];
    (at(0.5), at(0.99), late[late.len() - 1])
}

impl Machine {
    /// Reads the machine, and times `wake_samples` short sleeps.
    pub fn probe(wake_samples: usize) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']))
                })
                .unwrap_or("unknown")
                .to_owned(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            loadavg_at_start: crate::scenarios::loadavg(),
            wake_late_us: wake_lateness(wake_samples),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    pub command: String,
    pub smoke: bool,
    pub sealbroker_bin: String,
    pub machine: Machine,
    /// How each side-by-side level was run.
    pub plan: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transit: Vec<ComparisonRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hsm: Vec<ComparisonRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grpc: Vec<GrpcRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub startup: Vec<StartupRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unseal: Vec<UnsealRow>,
    /// Scenarios that failed outright, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// Comparisons a peer cannot make, with why (not errors).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Report {
    /// Operations that failed, over every scenario, plus scenarios that failed.
    pub fn error_count(&self) -> u64 {
        self.transit
            .iter()
            .chain(&self.hsm)
            .map(ComparisonRow::errors)
            .sum::<u64>()
            + self
                .grpc
                .iter()
                .map(|r| r.rpc.errors + r.noop.errors)
                .sum::<u64>()
            + self.failures.len() as u64
    }

    /// The first error message of any scenario, to show why a run failed.
    pub fn first_errors(&self) -> Vec<String> {
        let mut errors = self.failures.clone();
        for row in self.transit.iter().chain(&self.hsm) {
            for (name, summary) in [(&row.a_name, &row.a), (&row.b_name, &row.b)] {
                if let Some(e) = &summary.first_error {
                    errors.push(format!(
                        "{name} at {}: {e} ({} errors)",
                        row.concurrency, summary.errors
                    ));
                }
            }
        }
        for row in &self.grpc {
            for (name, summary) in [("gRPC", &row.rpc), ("no-op gRPC floor", &row.noop)] {
                if let Some(e) = &summary.first_error {
                    errors.push(format!(
                        "{name} at {} in flight: {e} ({} errors)",
                        row.in_flight, summary.errors
                    ));
                }
            }
        }
        errors
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Run {} on {} CPU(s) ({}), Linux {}, load average {:.2} at start.  ",
            self.started, m.cpus, m.cpu_model, m.kernel, m.loadavg_at_start
        );
        let _ = writeln!(
            md,
            "A 200 µs sleep woke late by {:.0} µs (p50), {:.0} µs (p99), {:.0} µs (max).  ",
            m.wake_late_us.0, m.wake_late_us.1, m.wake_late_us.2
        );
        let _ = writeln!(md, "Command: `{}`  ", self.command);
        let _ = writeln!(md, "Side-by-side levels: {}.\n", self.plan);
        if !self.transit.is_empty() {
            md.push_str("### 1. Transit encrypt+decrypt of 32 B: sealbroker vs OpenBao 2.7.2 and a bare hyper server\n\n");
            md.push_str(
                "One operation is an encrypt and a decrypt (two HTTP requests). The floor is a bare hyper \
                 HTTP/1.1 server that reads each request and answers a fixed 200 with a transit-shaped body.\n\n",
            );
            comparison_table(&mut md, &self.transit, "callers");
        }
        if !self.hsm.is_empty() {
            md.push_str("### 2. SoftHSM2: broker gRPC vs p11-kit remoting and direct cryptoki\n\n");
            md.push_str(
                "AES-GCM and RSA-OAEP: one operation is a Wrap and an Unwrap of a 32-byte DEK (broker), \
                 or an encrypt and decrypt of it on the token (p11-kit and direct, one session per thread). \
                 Sign: one signature of a SHA-256 digest (broker Sign with `prehashed`; `C_Sign`). \
                 p11-kit remoting is `p11-kit server` plus `p11-kit-client.so` over a unix socket.\n\n",
            );
            comparison_table(&mut md, &self.hsm, "threads");
        }
        if !self.grpc.is_empty() {
            md.push_str("### 3. Native gRPC, software key, unix socket (one RPC per operation)\n\n");
            md.push_str(
                "Closed loop: every caller always has a call in flight, so latency is callers / \
                 throughput (capacity). Open loop: the callers together start a fixed number of \
                 RPCs per second; latency counts from each call's slot, so a backlog shows.\n\n",
            );
            md.push_str(
                "The floor is the same pacer driving callers that do nothing, in alternate rounds: \
                 what the machine charges to wake an idle caller.\n\n",
            );
            md.push_str(
                "In the broker: the same calls in the broker's own histogram (request decoded to answer \
                 ready; buckets 50 µs × 2^k, so the percentiles are bucket bounds).\n\n",
            );
            md.push_str(
                "No-op tonic: the same callers against a bare tonic server with the same service whose \
                 Wrap and Unwrap do nothing, in alternate rounds. Closed loop: RPC/s and the broker's share \
                 of it (target ≥ 0.8× at 1 caller). Open loop: p50 and the broker's p50 over it (target ≤ 1.2×).\n\n",
            );
            md.push_str("| load | callers | offered RPC/s | RPC/s | p50 µs | p90 µs | p99 µs | max µs | late | errors | no-op tonic RPC/s, p50 µs | vs no-op | floor p50 / p99 µs | in the broker: p50 / p99 ≤ µs (≤ 100 µs) | target p50 < 100 µs, p99 < 1 ms |\n");
            md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n");
            for row in &self.grpc {
                let s = &row.rpc;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {:.0}, {:.1} | {} | {} | {} | {} |",
                    match row.load {
                        Load::Closed => "closed",
                        Load::Open => "open",
                    },
                    row.in_flight,
                    row.offered_rps.map_or("max".to_owned(), |r| format!("{r:.0}")),
                    s.ops_per_sec,
                    s.p50_us,
                    s.p90_us,
                    s.p99_us,
                    s.max_us,
                    s.late,
                    s.errors,
                    row.noop.ops_per_sec,
                    row.noop.p50_us,
                    match (row.load, row.judged) {
                        (Load::Closed, true) =>
                            format!("**{:.2}×** RPC/s, {}", row.vs_noop, verdict(row.vs_noop_met)),
                        (Load::Closed, false) => format!("{:.2}× RPC/s", row.vs_noop),
                        (Load::Open, _) =>
                            format!("**{:.2}×** p50, {}", row.vs_noop, verdict(row.vs_noop_met)),
                    },
                    row.floor
                        .as_ref()
                        .map_or(String::new(), |f| format!("{:.1} / {:.1}", f.p50_us, f.p99_us)),
                    row.in_broker.as_ref().map_or(String::new(), |b| format!(
                        "{:.0} / {:.0} ({:.1} %)",
                        b.p50_at_most_us,
                        b.p99_at_most_us,
                        b.share_within_100us * 100.0
                    )),
                    if row.judged {
                        verdict(row.met)
                    } else {
                        "capacity, not judged"
                    }
                );
            }
            md.push('\n');
        }
        if !self.startup.is_empty() {
            md.push_str("### 4. Cold start and idle memory\n\n");
            md.push_str(
                "| config | runs | spawn → SERVING median (max) | spawn → first Wrap | SIGTERM → exit | RSS after start | RSS idle | peak RSS | target < 100 ms, < 30 MB |\n",
            );
            md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
            for row in &self.startup {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} ms ({:.1}) | {:.1} ms | {:.1} ms | {:.1} MB | {:.1} MB ({:.1} s) | {:.1} MB | {} |",
                    row.config,
                    row.runs,
                    row.ready_median_ms,
                    row.ready_max_ms,
                    row.first_wrap_median_ms,
                    row.stop_median_ms,
                    row.rss_after_start_mb,
                    row.rss_idle_mb,
                    row.idle_secs,
                    row.hwm_idle_mb,
                    verdict(row.met)
                );
            }
            md.push('\n');
        }
        if !self.unseal.is_empty() {
            md.push_str("### 5. OpenBao 2.7.2 restart → unsealed, by seal\n\n");
            md.push_str(
                "Raft storage, initialised once; each run is spawn → `sys/seal-status` answering \
                 `sealed: false` (polled every ms). The lanes take turns run by run. One broker \
                 (software key) serves both sealbroker lanes.\n\n",
            );
            md.push_str("| seal | runs (ms) | median ms | vs the seeds' lane | target ≤ 1.0× |\n");
            md.push_str("|---|---|---:|---:|---|\n");
            for row in &self.unseal {
                let runs: Vec<String> = row.runs_ms.iter().map(|r| format!("{r:.0}")).collect();
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} | {:.2}× | {} |",
                    row.lane,
                    runs.join(", "),
                    row.median_ms,
                    row.ratio_to_seeds_lane,
                    row.met.map_or("", verdict)
                );
            }
            md.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(md, "**Not compared:** {note}\n");
        }
        for failure in &self.failures {
            let _ = writeln!(md, "**Failed:** {failure}\n");
        }
        md
    }

    /// Writes `<stem>.json`, `<stem>.md` and `<stem>.svg` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<Vec<std::path::PathBuf>, Error> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        let md = dir.join(format!("{stem}.md"));
        std::fs::write(&md, self.markdown())?;
        let svg = dir.join(format!("{stem}.svg"));
        self.chart(&svg)?;
        Ok(vec![json, md, svg])
    }

    /// p50 and p99 latency against concurrency, one panel per load scenario.
    pub fn chart(&self, path: &Path) -> Result<(), Error> {
        let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 3));
        let grpc = |load: Load| -> Vec<_> {
            self.grpc
                .iter()
                .filter(|r| r.load == load)
                .map(|r| (r.in_flight, r.rpc.p50_us, r.rpc.p99_us))
                .collect()
        };
        latency_panel(
            &panels[0],
            "1. transit encrypt+decrypt",
            "callers",
            &comparison_series(&self.transit),
            &[],
        )?;
        latency_panel(
            &panels[1],
            "2. SoftHSM wrap+unwrap",
            "threads",
            &comparison_series(&self.hsm),
            &[],
        )?;
        let rate = self.grpc.iter().find_map(|r| r.offered_rps).unwrap_or(0.0);
        let floor: Vec<_> = self
            .grpc
            .iter()
            .filter_map(|r| r.floor.as_ref().map(|f| (r.in_flight, f.p50_us, f.p99_us)))
            .collect();
        latency_panel(
            &panels[2],
            "3. native gRPC, software key (per RPC)",
            "callers",
            &[
                ("closed loop".into(), BLUE, grpc(Load::Closed)),
                (format!("open loop, {rate:.0} RPC/s"), GREEN, grpc(Load::Open)),
                ("open-loop floor (no-op)".into(), RGBColor(120, 120, 120), floor),
            ],
            &[(100.0, "p50 target"), (1000.0, "p99 target")],
        )?;
        root.present()?;
        Ok(())
    }
}

/// One series per distinct A side, then one per distinct B side (from the
/// rows of the first A side it was compared with), in order of appearance:
/// p50 and p99 at each concurrency level.
fn comparison_series(rows: &[ComparisonRow]) -> Vec<Series> {
    const A_COLORS: [RGBColor; 4] = [BLUE, GREEN, MAGENTA, CYAN];
    const B_COLORS: [RGBColor; 2] = [RED, RGBColor(230, 140, 0)];
    let mut a_names: Vec<&str> = Vec::new();
    let mut b_sides: Vec<(&str, &str)> = Vec::new();
    for row in rows {
        if !a_names.contains(&row.a_name.as_str()) {
            a_names.push(&row.a_name);
        }
        if !b_sides.iter().any(|(b, _)| *b == row.b_name) {
            b_sides.push((&row.b_name, &row.a_name));
        }
    }
    let a = a_names.iter().enumerate().map(|(i, name)| {
        let points = rows
            .iter()
            .filter(|r| r.a_name == *name)
            .map(|r| (r.concurrency, r.a.p50_us, r.a.p99_us))
            .collect();
        ((*name).to_owned(), A_COLORS[i % A_COLORS.len()], points)
    });
    let b = b_sides.iter().enumerate().map(|(i, (name, with))| {
        let points = rows
            .iter()
            .filter(|r| r.b_name == *name && r.a_name == *with)
            .map(|r| (r.concurrency, r.b.p50_us, r.b.p99_us))
            .collect();
        ((*name).to_owned(), B_COLORS[i % B_COLORS.len()], points)
    });
    a.chain(b).collect()
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn comparison_table(md: &mut String, rows: &[ComparisonRow], unit: &str) {
    let _ = writeln!(
        md,
        "| {unit} | side | ops/s | p50 µs | p90 µs | p99 µs | max µs | errors | ratio (rounds) | target |"
    );
    md.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---|---|\n");
    for row in rows {
        let rounds: Vec<String> = row.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
        for (first, name, s) in [(true, &row.a_name, &row.a), (false, &row.b_name, &row.b)] {
            let (ratio, target) = if first {
                (
                    format!("**{:.2}×** ({})", row.ratio, rounds.join(", ")),
                    format!("≥ {}× {}", row.target_ratio, verdict(row.met)),
                )
            } else {
                (String::new(), String::new())
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} |",
                if first {
                    row.concurrency.to_string()
                } else {
                    String::new()
                },
                name,
                s.ops_per_sec,
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.max_us,
                s.errors,
                ratio,
                target
            );
        }
    }
    md.push('\n');
}

type Series = (String, RGBColor, Vec<(usize, f64, f64)>);

/// One panel: x is the concurrency level (evenly spaced), y is latency in µs
/// on a log scale; solid lines are p50, thin lines with crosses p99.
fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    series: &[Series],
    targets: &[(f64, &str)],
) -> Result<(), Error> {
    let levels: Vec<usize> = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if levels.is_empty() {
        return Ok(());
    }
    let values = series
        .iter()
        .flat_map(|s| s.2.iter().flat_map(|p| [p.1, p.2]))
        .chain(targets.iter().map(|t| t.0))
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let x_of = |level: usize| levels.iter().position(|l| *l == level).unwrap_or(0) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(
            -0.3f64..(levels.len() as f64 - 0.7),
            ((lo / 1.5)..(hi * 1.5)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_labels(levels.len())
        .x_label_formatter(&|x: &f64| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                levels.get(i as usize).map(|l| l.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(x_label)
        .y_desc("latency (µs, log)")
        .draw()?;
    for &(value, label) in targets {
        chart
            .draw_series(LineSeries::new(
                [(-0.3, value), (levels.len() as f64 - 0.7, value)],
                BLACK.mix(0.4),
            ))?
            .label(label)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.4)));
    }
    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (x_of(p.0), p.1)),
                color.stroke_width(2),
            ))?
            .label(format!("{name} p50"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart
            .draw_series(
                LineSeries::new(points.iter().map(|p| (x_of(p.0), p.2)), color.mix(0.6)).point_size(4),
            )?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}
