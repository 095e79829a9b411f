//! Scenario 1: transit encrypt+decrypt of 32 bytes, sealbroker's
//! transit-compatible door (software key) against the real OpenBao transit
//! engine (`bao server -dev`). Both are plain HTTP/1.1 on loopback, driven by
//! the same reqwest client settings (keep-alive, one connection per caller).
//!
//! Then the same door against its floor: a bare hyper HTTP/1.1 server that
//! reads each request and answers a fixed 200 (crate::floor), driven by the
//! same callers. Its ratio is the share of plain HTTP the door keeps.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::{ComparisonRow, Ctx, KEY, PAYLOAD, loadavg};
use crate::load::{AsyncCaller, AsyncSide, compare};
use crate::peers::{BaoDev, Error, FloorServer};

/// Goal: the broker serves at least this many times OpenBao's ops/s; at
/// 16 callers, [`TARGET_RATIO_16`].
pub const TARGET_RATIO: f64 = 3.0;
pub const TARGET_RATIO_16: f64 = 5.0;
/// Goal: the door keeps at least this share of the bare-hyper floor's ops/s.
pub const TARGET_RATIO_FLOOR: f64 = 0.8;

/// The HTTP client both sides use.
pub fn http_client() -> Result<reqwest::Client, Error> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .tcp_nodelay(true)
        .no_proxy()
        .build()?)
}

/// One caller: encrypt, then decrypt the answer, then check the plaintext.
pub struct TransitCaller {
    http: reqwest::Client,
    encrypt_url: String,
    decrypt_url: String,
    token: String,
    encrypt_body: String,
    plaintext_b64: String,
}

impl TransitCaller {
    pub fn new(http: reqwest::Client, base: &str, mount: &str, token: &str) -> Self {
        let plaintext_b64 = STANDARD.encode(PAYLOAD);
        TransitCaller {
            http,
            encrypt_url: format!("{base}/v1/{mount}/encrypt/{KEY}"),
            decrypt_url: format!("{base}/v1/{mount}/decrypt/{KEY}"),
            token: token.into(),
            encrypt_body: serde_json::json!({ "plaintext": plaintext_b64 }).to_string(),
            plaintext_b64,
        }
    }

    async fn post(&self, url: &str, body: String) -> Result<Value, String> {
        let response = self
            .http
            .post(url)
            .header("X-Vault-Token", &self.token)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| format!("POST {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "POST {url}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("POST {url}: bad JSON: {e}"))
    }
}

impl AsyncCaller for TransitCaller {
    async fn call(&mut self) -> Result<(), String> {
        let sealed = self.post(&self.encrypt_url, self.encrypt_body.clone()).await?;
        let ciphertext = sealed["data"]["ciphertext"]
            .as_str()
            .ok_or("encrypt answered without data.ciphertext")?;
        let body = serde_json::json!({ "ciphertext": ciphertext }).to_string();
        let opened = self.post(&self.decrypt_url, body).await?;
        if opened["data"]["plaintext"].as_str() != Some(self.plaintext_b64.as_str()) {
            return Err("decrypt returned a different plaintext".into());
        }
        Ok(())
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<ComparisonRow>, Error> {
    let dir = ctx.dir.join("transit");
    let broker_token = "bench-transit-token-5f2c9e";
    let (broker, broker_url) = ctx.start_transit_broker(&dir, broker_token).await?;
    let bao_bin = ctx.bao_bin()?;
    let bao_dir = dir.join("bao");
    std::fs::create_dir_all(&bao_dir)?;
    let bao = BaoDev::start(bao_bin, &bao_dir, KEY, &http_client()?).await?;
    let floor = FloorServer::start(&dir.join("floor")).await?;

    let mut rows = Vec::new();
    for &concurrency in &ctx.transit_concurrency {
        let side = |base: &str, token: &str| -> Result<AsyncSide<TransitCaller>, Error> {
            let http = http_client()?;
            Ok(AsyncSide(
                (0..concurrency)
                    .map(|_| TransitCaller::new(http.clone(), base, "transit", token))
                    .collect(),
            ))
        };
        let peers = [
            ("OpenBao transit", bao.addr.as_str(), bao.root_token.as_str()),
            ("bare hyper, 200 OK (floor)", floor.http.as_str(), "floor"),
        ];
        for (peer, base, token) in peers {
            let (mut a, mut b) = (side(&broker_url, broker_token)?, side(base, token)?);
            let target = match (base == floor.http, concurrency) {
                (true, _) => TARGET_RATIO_FLOOR,
                (false, 16) => TARGET_RATIO_16,
                (false, _) => TARGET_RATIO,
            };
            let before = loadavg();
            let compared = compare(&mut a, &mut b, ctx.plan).await;
            let row = ComparisonRow::new(
                concurrency,
                ("sealbroker transit", peer),
                compared,
                target,
                before,
            );
            eprintln!(
                "transit  c={concurrency:<3} sealbroker {:>9.0} ops/s  {peer} {:>9.0} ops/s  ratio {:.2}x",
                row.a.ops_per_sec, row.b.ops_per_sec, row.ratio
            );
            rows.push(row);
        }
    }
    drop(broker);
    drop(bao);
    drop(floor);
    Ok(rows)
}
