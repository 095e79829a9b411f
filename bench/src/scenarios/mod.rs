//! The four scenarios of docs/performance.md, and what they share: the run
//! settings, broker configs, and the gRPC callers.

pub mod grpc;
pub mod hsm;
pub mod startup;
pub mod transit;
pub mod unseal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use sealbroker_proto::sealbroker::v1::{SignRequest, UnwrapRequest, WrapRequest};
use serde::Serialize;
use tonic::transport::Channel;

use crate::load::{AsyncCaller, Compared, Limit, RoundPlan, Summary};
use crate::peers::{self, Error};

/// The payload of every operation: a 32-byte data key.
pub const PAYLOAD: [u8; 32] = *b"0123456789abcdef0123456789abcdef";
/// The AAD of every gRPC operation.
pub const AAD: &[u8] = b"sealbroker-bench";
/// The key name every scenario configures.
pub const KEY: &str = "bench";
/// The RSA-OAEP key of the HSM config.
pub const RSA_KEY: &str = "bench-rsa";
/// The signing keys of the HSM config: RSA-2048 and ECDSA P-256.
pub const SIGN_RSA_KEY: &str = "bench-sign-rsa";
pub const SIGN_EC_KEY: &str = "bench-sign-ec";
/// What the signing scenarios sign: a SHA-256 digest (of "sealbroker-bench").
pub const DIGEST: [u8; 32] = [
    0x70, 0xa2, 0x0d, 0x65, 0x7e, 0xfb, 0xd8, 0xe1, 0x25, 0x09, 0xb4, 0x90, 0xf7, 0xb7, 0x83, 0x5c, 0xec,
    0x18, 0xdb, 0xc0, 0x00, 0xe3, 0x5e, 0x2d, 0x8a, 0x22, 0xf2, 0xf4, 0x84, 0x80, 0x17, 0x7e,
];

/// Settings shared by every scenario.
pub struct Ctx {
    pub sealbroker_bin: PathBuf,
    pub bao_bin: Option<PathBuf>,
    pub softhsm_module: PathBuf,
    pub make_token_script: PathBuf,
    /// The run's private temporary directory.
    pub dir: PathBuf,
    /// Where the SoftHSM token goes; this process's SOFTHSM2_CONF points into it.
    pub hsm_dir: PathBuf,
    pub plan: RoundPlan,
    pub transit_concurrency: Vec<usize>,
    pub hsm_threads: Vec<usize>,
    pub grpc_concurrency: Vec<usize>,
    /// Open-loop rate for the gRPC scenario, RPC/s; `None`: closed loop only.
    pub grpc_rate: Option<f64>,
    pub grpc_connections: usize,
    /// The PKCS#11 `dispatch` settings the HSM comparison runs the broker with.
    pub hsm_dispatch: Vec<&'static str>,
    /// The token mechanisms the HSM comparison runs.
    pub hsm_mechanisms: Vec<hsm::HsmMechanism>,
    /// What the broker is compared with in the HSM comparison.
    pub hsm_peers: Vec<hsm::HsmPeer>,
    /// `p11-kit`, its client module, and the socket its server listens on.
    pub p11kit_bin: PathBuf,
    pub p11kit_client: PathBuf,
    pub p11kit_socket: PathBuf,
    pub startup_runs: usize,
    /// Timed OpenBao restarts per seal lane in the unseal scenario.
    pub unseal_runs: usize,
    pub idle: Duration,
    pub audit: bool,
}

impl Ctx {
    /// An `[audit]` table when `--audit` is on: a keyed chain under
    /// `seal_key` where one is given (the Hardened configs).
    fn audit_toml(&self, dir: &Path, seal_key: Option<&str>) -> String {
        match (self.audit, seal_key) {
            (true, Some(key)) => format!(
                "[audit]\nfile = \"{}\"\nseal_key = \"{key}\"\ncheckpoint_file = \"{}\"\n",
                dir.join("audit.jsonl").display(),
                dir.join("audit-checkpoint").join("audit.checkpoint").display()
            ),
            (true, None) => format!("[audit]\nfile = \"{}\"\n", dir.join("audit.jsonl").display()),
            // Hardened requires a trail: without --audit, one that costs
            // what a log collector reading stdout costs (the bench's log file).
            (false, Some(_)) => "[audit]\nstdout = true\n".to_owned(),
            (false, None) => String::new(),
        }
    }

    /// A Development-profile config with the software key `bench`, the unix
    /// socket `dir/sb.sock`, and `extra_server` appended to `[server]`.
    pub fn software_config(&self, dir: &Path, extra_server: &str) -> Result<PathBuf, Error> {
        std::fs::create_dir_all(dir)?;
        let text = format!(
            r#"profile = "development"
[server]
unix_socket = "{socket}"
{extra_server}
{audit}
[backends.soft]
type = "software"

[keys.{KEY}]
backend = "soft"
key_file = "{key_file}"
generate = true
allow = {{ any = ["uid:{uid}", "token:bench"] }}
"#,
            socket = dir.join("sb.sock").display(),
            audit = self.audit_toml(dir, None),
            key_file = dir.join("bench.key").display(),
            uid = peers::current_uid()?,
        );
        let path = dir.join("sealbroker.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A Hardened-profile config with the SoftHSM key `bench`.
    pub fn hsm_config(
        &self,
        dir: &Path,
        token: &peers::SoftHsmToken,
        max_sessions: usize,
        dispatch: &str,
    ) -> Result<PathBuf, Error> {
        std::fs::create_dir_all(dir)?;
        let text = format!(
            r#"profile = "hardened"
[server]
unix_socket = "{socket}"
{audit}
[backends.hsm]
type = "pkcs11"
lib = "{lib}"
token_label = "{label}"
pin_file = "{pin_file}"
max_sessions = {max_sessions}
{placement}

[keys.{KEY}]
backend = "hsm"
key_label = "{key_label}"
mechanism = "AES_GCM"
allow = {{ any = ["uid:{uid}"] }}

[keys.{RSA_KEY}]
backend = "hsm"
key_label = "{rsa_label}"
mechanism = "RSA_PKCS_OAEP"
rsa_oaep_hash = "sha1"
allow = {{ any = ["uid:{uid}"] }}

[keys.{SIGN_RSA_KEY}]
backend = "hsm"
key_label = "{sign_rsa_label}"
algorithm = "rsa-2048"
allow = {{ sign = ["uid:{uid}"] }}

[keys.{SIGN_EC_KEY}]
backend = "hsm"
key_label = "{sign_ec_label}"
algorithm = "ecdsa-p256"
allow = {{ sign = ["uid:{uid}"] }}
"#,
            socket = dir.join("sb.sock").display(),
            audit = self.audit_toml(dir, Some(KEY)),
            lib = token.module.display(),
            label = token.label,
            pin_file = token.dir.join("pin").display(),
            key_label = token.key_label,
            rsa_label = token.rsa_label,
            sign_rsa_label = token.sign_rsa_label,
            sign_ec_label = token.sign_ec_label,
            uid = peers::current_uid()?,
            placement = match dispatch {
                "process" => "isolation = \"process\"".to_owned(),
                in_process => format!("isolation = \"in-process\"\ndispatch = \"{in_process}\""),
            },
        );
        let path = dir.join("sealbroker.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// OpenBao's `bao`, or why there is none.
    pub fn bao_bin(&self) -> Result<&Path, Error> {
        self.bao_bin.as_deref().ok_or_else(|| {
            "OpenBao's `bao` was not found: run `bash tests/peers/install.sh /tmp/peers.env && source /tmp/peers.env`, or pass --bao-bin".into()
        })
    }

    /// A Development-profile broker in `dir` whose plaintext transit door
    /// on 127.0.0.1 serves the key `bench` to `token`; with its base URL.
    pub async fn start_transit_broker(
        &self,
        dir: &Path,
        token: &str,
    ) -> Result<(peers::Broker, String), Error> {
        std::fs::create_dir_all(dir)?;
        let token_file = dir.join("transit-token");
        peers::write_private(&token_file, &format!("{token}\n"))?;
        let port = peers::free_port()?;
        let transit = format!(
            "[server.transit]\nlisten = \"127.0.0.1:{port}\"\nplaintext = true\n\
             [[server.transit.tokens]]\nidentity = \"bench\"\ntoken_file = \"{}\"\nkeys = [\"{KEY}\"]\n",
            token_file.display()
        );
        let config = self.software_config(dir, &transit)?;
        let broker = self.start_broker(dir, &config, &[]).await?;
        Ok((broker, format!("http://127.0.0.1:{port}")))
    }

    /// Starts the broker on `config` with its socket `dir/sb.sock` and its
    /// log `dir/sealbroker.log` (the layout the config writers above use).
    pub async fn start_broker(
        &self,
        dir: &Path,
        config: &Path,
        envs: &[(&str, &Path)],
    ) -> Result<peers::Broker, Error> {
        let socket = dir.join("sb.sock");
        peers::Broker::start(
            &self.sealbroker_bin,
            config,
            &socket,
            envs,
            &dir.join("sealbroker.log"),
        )
        .await
    }

    /// `n` gRPC callers spread over `grpc_connections` channels to the
    /// server on `socket` (the broker's, or the no-op floor's).
    pub async fn grpc_callers(
        &self,
        socket: &Path,
        n: usize,
        mode: GrpcOp,
    ) -> Result<Vec<GrpcCaller>, Error> {
        let mut channels = Vec::new();
        for _ in 0..self.grpc_connections.clamp(1, n.max(1)) {
            channels.push(peers::unix_channel(socket).await?);
        }
        Ok((0..n)
            .map(|i| GrpcCaller {
                client: SealServiceClient::new(channels[i % channels.len()].clone()),
                mode,
                key: KEY,
                blob: None,
            })
            .collect())
    }
}

/// What one gRPC operation is.
#[derive(Debug, Clone, Copy)]
pub enum GrpcOp {
    /// Wrap then Unwrap (one operation = two RPCs).
    WrapThenUnwrap,
    /// Wrap and Unwrap in turn (one operation = one RPC).
    Alternate,
    /// Sign [`DIGEST`] (prehashed) with this scheme (one operation = one RPC).
    Sign(&'static str),
}

/// A caller on the native gRPC API.
pub struct GrpcCaller {
    client: SealServiceClient<Channel>,
    mode: GrpcOp,
    /// The key to Wrap with.
    key: &'static str,
    /// Alternate mode: the blob of the last Wrap, to Unwrap next.
    blob: Option<Vec<u8>>,
}

impl GrpcCaller {
    /// The same caller, wrapping with `key`.
    pub fn with_key(self, key: &'static str) -> Self {
        GrpcCaller { key, ..self }
    }

    async fn wrap(&mut self) -> Result<Vec<u8>, String> {
        let request = WrapRequest {
            key_name: self.key.into(),
            plaintext: PAYLOAD.to_vec(),
            aad: AAD.to_vec(),
        };
        let answer = self
            .client
            .wrap(request)
            .await
            .map_err(|s| format!("Wrap: {s}"))?;
        Ok(answer.into_inner().blob)
    }

    async fn unwrap(&mut self, blob: Vec<u8>) -> Result<(), String> {
        let request = UnwrapRequest {
            blob,
            aad: AAD.to_vec(),
            key_name: String::new(),
        };
        let answer = self
            .client
            .unwrap(request)
            .await
            .map_err(|s| format!("Unwrap: {s}"))?;
        if answer.get_ref().plaintext != PAYLOAD {
            return Err("Unwrap returned a different plaintext".into());
        }
        Ok(())
    }
}

impl AsyncCaller for GrpcCaller {
    async fn call(&mut self) -> Result<(), String> {
        match self.mode {
            GrpcOp::Sign(scheme) => {
                let request = SignRequest {
                    key_name: self.key.into(),
                    key_version: 0,
                    data: DIGEST.to_vec(),
                    prehashed: true,
                    scheme: scheme.into(),
                };
                let answer = self
                    .client
                    .sign(request)
                    .await
                    .map_err(|s| format!("Sign: {s}"))?;
                if answer.get_ref().signature.is_empty() {
                    return Err("Sign answered an empty signature".into());
                }
                Ok(())
            }
            GrpcOp::WrapThenUnwrap => {
                let blob = self.wrap().await?;
                self.unwrap(blob).await
            }
            GrpcOp::Alternate => match self.blob.take() {
                Some(blob) => self.unwrap(blob).await,
                None => {
                    self.blob = Some(self.wrap().await?);
                    Ok(())
                }
            },
        }
    }
}

/// One concurrency level of a side-by-side scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonRow {
    pub concurrency: usize,
    pub a_name: String,
    pub b_name: String,
    pub a: Summary,
    pub b: Summary,
    /// ops/s of A over ops/s of B over all rounds.
    pub ratio: f64,
    /// The same ratio, round by round.
    pub round_ratios: Vec<f64>,
    /// The goal for `ratio`: at least this.
    pub target_ratio: f64,
    pub met: bool,
    pub loadavg_before: f64,
    pub loadavg_after: f64,
}

impl ComparisonRow {
    pub fn new(
        concurrency: usize,
        names: (&str, &str),
        compared: Compared,
        target: f64,
        loadavg_before: f64,
    ) -> Self {
        let (a, b) = (compared.a.summary(), compared.b.summary());
        let ratio = if b.ops_per_sec > 0.0 {
            a.ops_per_sec / b.ops_per_sec
        } else {
            0.0
        };
        ComparisonRow {
            concurrency,
            a_name: names.0.into(),
            b_name: names.1.into(),
            a,
            b,
            ratio,
            round_ratios: compared.round_ratios,
            target_ratio: target,
            met: ratio >= target,
            loadavg_before,
            loadavg_after: loadavg(),
        }
    }

    pub fn errors(&self) -> u64 {
        self.a.errors + self.b.errors
    }
}

/// The middle value (the upper of the two middle ones for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The 1-minute load average, to tell a busy machine in the figures.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The plan's per-round limit, as the reports describe it.
pub fn describe_limit(limit: Limit) -> String {
    match limit {
        Limit::Time(d) => format!("{:.2} s", d.as_secs_f64()),
        Limit::Count(n) => format!("{n} ops"),
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_is_the_middle_value_and_the_upper_of_two() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(&[]), 0.0);
    }
}
