//! Scenario 5: how long the real OpenBao 2.7.2 (raft storage) takes from
//! process start to unsealed, through three seals:
//!
//! - the sealbroker KMS plugin in sidecar mode (`seal "sealbroker"` with
//!   `endpoint` to the daemon's unix socket);
//! - stock `seal "transit"` to sealbroker's transit-compatible door;
//! - stock `seal "transit"` to a second OpenBao's transit engine (`bao
//!   server -dev`): the seeds' Hardened lane, the one to beat.
//!
//! One broker (Development profile, software key) serves both sealbroker
//! lanes, so the key costs the same everywhere and the lanes differ only in
//! their door. Each lane's OpenBao is initialised once (untimed), then
//! restarted `--unseal-runs` times; a run is spawn → `GET
//! /v1/sys/seal-status` answering `"sealed": false`, polled every
//! millisecond. Lanes take turns run by run, so a busy spell hits all three.
//! The servers run the Go `bao` itself, not PyPI's Python launcher in
//! front of it ([`peers::real_bao`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Ctx, KEY, loadavg, median};
use crate::peers::{self, BaoDev, Error, Supervised};

/// Goal: the plugin lane unseals at most this multiple of the seeds' transit lane.
pub const TARGET_RATIO: f64 = 1.0;

#[derive(Debug, Clone, Serialize)]
pub struct UnsealRow {
    pub lane: String,
    /// Spawn → unsealed, each restart, ms.
    pub runs_ms: Vec<f64>,
    pub median_ms: f64,
    /// Median over the seeds' lane's median (the last row's is 1).
    pub ratio_to_seeds_lane: f64,
    /// Only the plugin lane is judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    pub loadavg_after: f64,
}

/// One OpenBao server of a lane: its config and how to run it.
struct Lane {
    name: &'static str,
    dir: PathBuf,
    port: u16,
    process: Option<Supervised>,
    runs: Vec<f64>,
}

impl Lane {
    fn new(name: &'static str, dir: PathBuf, plugin: &str, seal: &str) -> Result<Lane, Error> {
        std::fs::create_dir_all(dir.join("raft"))?;
        let (port, cluster_port) = (peers::free_port()?, peers::free_port()?);
        let text = format!(
            r#"storage "raft" {{
  path    = "{raft}"
  node_id = "node1"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
{plugin}
{seal}
"#,
            raft = dir.join("raft").display(),
        );
        std::fs::write(dir.join("bao.hcl"), text)?;
        Ok(Lane {
            name,
            dir,
            port,
            process: None,
            runs: Vec::new(),
        })
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self, bao_bin: &Path, run: usize) -> Result<(), Error> {
        let mut command = Command::new(bao_bin);
        command
            .arg("server")
            .arg(format!("-config={}", self.dir.join("bao.hcl").display()))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .current_dir(&self.dir);
        self.process = Some(Supervised::spawn(
            "bao server",
            command,
            &self.dir.join(format!("bao-{run}.log")),
            Duration::from_secs(20),
        )?);
        Ok(())
    }

    /// Polls seal-status every millisecond until `sealed` is `want`
    /// (`None`: until it answers at all, initialised or not).
    async fn wait(&mut self, http: &reqwest::Client, want: Option<bool>) -> Result<(), Error> {
        let url = format!("{}/v1/sys/seal-status", self.addr());
        let what = format!("OpenBao ({}) did not reach sealed = {want:?}", self.name);
        let answered = || async {
            let Ok(answer) = http.get(&url).send().await else {
                return false;
            };
            let Ok(body) = answer.bytes().await else {
                return false;
            };
            let Ok(status) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return false;
            };
            want.is_none_or(|sealed| status["sealed"].as_bool() == Some(sealed))
        };
        self.process
            .as_mut()
            .ok_or("OpenBao was not started")?
            .wait_until(&what, Duration::from_secs(60), Duration::from_millis(1), answered)
            .await
    }

    /// Starts the server for the first time and initialises it (untimed).
    async fn init(&mut self, bao_bin: &Path, http: &reqwest::Client) -> Result<(), Error> {
        self.spawn(bao_bin, 0)?;
        self.wait(http, None).await?;
        let out = Command::new(bao_bin)
            .args(["operator", "init", "-format=json"])
            .arg(format!("-address={}", self.addr()))
            .env("HOME", &self.dir)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "bao operator init ({}) failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        // The answer holds the root token and recovery keys: a benchmark
        // has no use for them, so they are dropped unread.
        drop(out);
        self.wait(http, Some(false)).await
    }

    /// Stops the server, starts it again and times spawn → unsealed.
    async fn restart(&mut self, bao_bin: &Path, http: &reqwest::Client, run: usize) -> Result<(), Error> {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
        let started = Instant::now();
        self.spawn(bao_bin, run)?;
        self.wait(http, Some(false)).await?;
        self.runs.push(started.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }
}

/// The plugin binary in `dir` (OpenBao runs only what its plugin directory
/// holds, pinned by sha256), and the `plugin "kms"` block naming it.
fn install_plugin(sealbroker_bin: &Path, dir: &Path) -> Result<String, Error> {
    std::fs::create_dir_all(dir)?;
    let target = dir.join("sealbroker");
    std::fs::copy(sealbroker_bin, &target)?;
    let out = Command::new("sha256sum").arg(&target).output()?;
    let sha = String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .ok_or("sha256sum printed nothing")?
        .to_owned();
    Ok(format!(
        "plugin_directory = \"{}\"\nplugin \"kms\" \"sealbroker\" {{\n  command   = \"sealbroker\"\n  args      = [\"kms-plugin\"]\n  sha256sum = \"{sha}\"\n}}",
        dir.display()
    ))
}

fn transit_seal(address: &str, token: &str) -> String {
    format!(
        "seal \"transit\" {{\n  address         = \"{address}\"\n  token           = \"{token}\"\n  key_name        = \"{KEY}\"\n  mount_path      = \"transit/\"\n  disable_renewal = \"true\"\n}}"
    )
}

pub async fn run(ctx: &Ctx) -> Result<Vec<UnsealRow>, Error> {
    let bao_bin = &peers::real_bao(ctx.bao_bin()?);
    let dir = ctx.dir.join("unseal");
    let http = super::transit::http_client()?;

    // One broker for both sealbroker lanes: its unix socket (the plugin in
    // sidecar mode) and its plaintext transit door.
    let broker_token = "bench-unseal-token-7d41a0";
    let (broker, transit_url) = ctx
        .start_transit_broker(&dir.join("broker"), broker_token)
        .await?;

    let seeds_dir = dir.join("seeds-transit");
    std::fs::create_dir_all(&seeds_dir)?;
    let seeds = BaoDev::start(bao_bin, &seeds_dir, KEY, &http).await?;

    let plugin = install_plugin(&ctx.sealbroker_bin, &dir.join("plugins"))?;
    let mut lanes = vec![
        Lane::new(
            "sealbroker KMS plugin, sidecar mode",
            dir.join("plugin"),
            &plugin,
            &format!(
                "seal \"sealbroker\" {{\n  endpoint = \"unix://{}\"\n  key_name = \"{KEY}\"\n}}",
                broker.socket.display()
            ),
        )?,
        Lane::new(
            "stock seal \"transit\" to sealbroker's transit door",
            dir.join("transit-sealbroker"),
            "",
            &transit_seal(&transit_url, broker_token),
        )?,
        Lane::new(
            "stock seal \"transit\" to a second OpenBao (the seeds' lane)",
            dir.join("transit-openbao"),
            "",
            &transit_seal(&seeds.addr, &seeds.root_token),
        )?,
    ];
    for lane in &mut lanes {
        lane.init(bao_bin, &http).await?;
    }
    for run in 1..=ctx.unseal_runs {
        for lane in &mut lanes {
            lane.restart(bao_bin, &http, run).await?;
        }
    }
    // The OpenBao servers stop first, while their seals still answer.
    let runs: Vec<(&'static str, Vec<f64>)> = lanes.into_iter().map(|lane| (lane.name, lane.runs)).collect();
    let seeds_median = median(&runs[2].1);
    let rows = runs
        .into_iter()
        .enumerate()
        .map(|(i, (lane, runs_ms))| {
            let median_ms = median(&runs_ms);
            let ratio = if seeds_median > 0.0 {
                median_ms / seeds_median
            } else {
                0.0
            };
            eprintln!(
                "unseal   {lane:<60} median {median_ms:>8.1} ms  ({ratio:.2}x the seeds' lane)  runs {:?}",
                runs_ms.iter().map(|r| r.round()).collect::<Vec<_>>()
            );
            UnsealRow {
                lane: lane.into(),
                runs_ms,
                median_ms,
                ratio_to_seeds_lane: ratio,
                met: (i == 0).then_some(ratio <= TARGET_RATIO),
                loadavg_after: loadavg(),
            }
        })
        .collect();
    drop(seeds);
    drop(broker);
    Ok(rows)
}
