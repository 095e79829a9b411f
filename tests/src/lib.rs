//! Harness for end-to-end tests: runs the real `sealbroker` binary against
//! real peers, on 127.0.0.1 and private temporary directories, and stops
//! everything it starts.
//!
//! The binary is `$SEALBROKER_BIN`, or `target/debug/sealbroker` (built by
//! `cargo build --workspace` in tests/run.sh before the tests run).

pub mod moto;
pub mod openbao;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use sealbroker_server::net::client::{self, ClientTls, Target};
use tonic::transport::Channel;

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Path of the binary under test.
/// Where a daemon logging to `log` prints its stdout: beside it, named so
/// the secret sweep collects it too.
fn stdout_of(log: &Path) -> PathBuf {
    log.with_extension("stdout.log")
}

pub fn sealbroker_bin() -> PathBuf {
    let path = std::env::var_os("SEALBROKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/sealbroker"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// The whole-run secret sweep: tests/run.sh sets `$SEALBROKER_SWEEP_DIR`,
/// every daemon and OpenBao log (and audit trail) is copied there when its
/// process stops, and every secret a test hands a peer is listed in
/// `secrets.txt` there; after the run, tests/sweep-secrets.sh greps all of
/// it. Without the variable both do nothing.
pub mod sweep {
    use std::fs;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn dir() -> Option<PathBuf> {
        let dir = PathBuf::from(std::env::var_os("SEALBROKER_SWEEP_DIR")?);
        fs::create_dir_all(&dir).ok()?;
        Some(dir)
    }

    /// Lists `secret` (a PIN, a token, a plaintext) for the final grep.
    pub fn secret(secret: &str) {
        if let Some(dir) = dir()
            && let Ok(mut file) = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("secrets.txt"))
        {
            let _ = writeln!(file, "{secret}");
        }
    }

    /// Copies `log`, plus the audit trails and logs beside it, into the sweep.
    pub fn keep(log: &Path) {
        static COPIES: AtomicU32 = AtomicU32::new(0);
        let Some(dir) = dir() else { return };
        // `bao server -dev` prints its own root token at start by design.
        let by_design = |p: &Path| p.file_name().is_some_and(|n| n == "bao-dev.log");
        let mut files = vec![log.to_owned()];
        if let Some(Ok(entries)) = log.parent().map(fs::read_dir) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                p != log && (name.ends_with(".log") || name.ends_with(".jsonl") || name.contains("audit"))
            }));
        }
        for file in files.iter().filter(|f| f.is_file() && !by_design(f)) {
            let n = COPIES.fetch_add(1, Ordering::Relaxed);
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("log");
            let _ = fs::copy(file, dir.join(format!("{}-{n}-{name}", std::process::id())));
        }
    }
}

pub use sealbroker_testkit::{assert_no_secret, audit_log, audit_toml, free_port};

/// Builds tests/pkcs11-crashy into `dir`: a PKCS#11 module that forwards to
/// SoftHSM2 and segfaults in C_Encrypt while the file named by
/// `$SEALBROKER_CRASH_TRIGGER` exists. Returns the module's path.
pub fn crashy_module(dir: &Path) -> PathBuf {
    let source = repo_root().join("tests/pkcs11-crashy/crashy_pkcs11.c");
    let module = dir.join("libcrashy_pkcs11.so");
    let out = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&module)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("no C compiler (`cc`); Rust needs one as its linker, so install build-essential");
    assert!(
        out.status.success(),
        "compiling {} failed: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    module
}

/// A SoftHSM2 token in its own directory, made by softhsm/make-token.sh.
pub struct SoftHsmToken {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
}

impl SoftHsmToken {
    pub fn create(dir: &Path, label: &str, key_label: &str, pin: &str) -> SoftHsmToken {
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "SoftHSM2 is not installed; run tests/run.sh, which installs the test peers"
        );
        let out = Command::new("bash")
            .arg(repo_root().join("softhsm/make-token.sh"))
            .args([dir.as_os_str(), label.as_ref(), key_label.as_ref()])
            .env("PIN", pin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-token.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sweep::secret(pin);
        SoftHsmToken {
            dir: dir.to_owned(),
            conf: dir.join("softhsm2.conf"),
            label: label.into(),
            pin: pin.into(),
        }
    }

    /// A `[backends.NAME]` table for this token.
    pub fn backend_toml(&self, name: &str) -> String {
        format!(
            "[backends.{name}]\ntype = \"pkcs11\"\nlib = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{}\"\npin_file = \"{}\"\n",
            self.label,
            self.dir.join("pin").display()
        )
    }
}

/// Test certificates: a CA, a server cert for localhost/127.0.0.1, a client
/// cert from the CA, and a client cert from an unrelated CA.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
    /// From the right CA, but expired in 2021.
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
    /// From the right CA, named `dns:stranger.test`: a caller no test grants.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        use sealbroker_testkit::pki::{Leaf, TestCa};
        fs::create_dir_all(dir).unwrap();
        let ca = TestCa::new("sealbroker test CA");
        let rogue_ca = TestCa::new("rogue CA");
        // The clients are named `dns:openbao.test` for the brokers' ACLs.
        let client = Leaf::client("openbao.test").names(&["openbao.test"]);
        let server = ca
            .issue(&Leaf::server(&["localhost", "127.0.0.1"]))
            .write(dir, "server");
        let good = ca.issue(&client).write(dir, "client");
        let rogue = rogue_ca.issue(&client).write(dir, "rogue");
        let expired = ca.issue(&client.clone().expired()).write(dir, "expired");
        let stranger = ca
            .issue(&Leaf::client("stranger.test").names(&["stranger.test"]))
            .write(dir, "stranger");
        Pki {
            ca: ca.write(&dir.join("ca.pem")),
            server_cert: server.cert,
            server_key: server.key,
            client_cert: good.cert,
            client_key: good.key,
            rogue_cert: rogue.cert,
            rogue_key: rogue.key,
            expired_cert: expired.cert,
            expired_key: expired.key,
            stranger_cert: stranger.cert,
            stranger_key: stranger.key,
        }
    }

    /// A `[server.tcp]` table with mutual TLS.
    pub fn tcp_toml(&self, port: u16) -> String {
        format!(
            "[server.tcp]\nlisten = \"127.0.0.1:{port}\"\n[server.tcp.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            self.server_cert.display(),
            self.server_key.display(),
            self.ca.display()
        )
    }

    pub fn client_target(&self, port: u16) -> Target {
        Target::Tcp {
            address: format!("127.0.0.1:{port}"),
            tls: Some(ClientTls {
                ca_file: self.ca.clone(),
                cert_file: self.client_cert.clone(),
                key_file: self.client_key.clone(),
                server_name: Some("localhost".into()),
            }),
        }
    }
}

/// A running `sealbroker serve`. Killed on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    pub socket: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
}

impl Daemon {
    /// Starts `sealbroker ARGS` with `envs`, stderr to `log`, and waits until
    /// the given socket and/or TCP port accept connections.
    pub async fn start(
        args: &[&str],
        envs: &[(&str, &Path)],
        log: &Path,
        socket: Option<PathBuf>,
        tcp: Option<SocketAddr>,
    ) -> Daemon {
        Daemon::start_under(&[], args, envs, log, socket, tcp).await
    }

    /// Like [`start`](Self::start), with the daemon run by `prefix` (such as
    /// `prlimit --fsize=N --`).
    pub async fn start_under(
        prefix: &[&str],
        args: &[&str],
        envs: &[(&str, &Path)],
        log: &Path,
        socket: Option<PathBuf>,
        tcp: Option<SocketAddr>,
    ) -> Daemon {
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(sealbroker_bin());
                command
            }
            None => Command::new(sealbroker_bin()),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(stdout_of(log)).unwrap())
            .stderr(fs::File::create(log).unwrap());
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        let mut daemon = Daemon {
            child: Some(child),
            log: log.to_owned(),
            socket,
            tcp,
        };
        daemon.wait_ready().await;
        daemon
    }

    /// `serve --dev` with its data in `dir/data`, on a free loopback port;
    /// ready once the socket and the port accept connections.
    pub async fn dev(dir: &Path) -> Daemon {
        let data = dir.join("data");
        let port = free_port();
        let args = [
            "serve",
            "--dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ];
        let (socket, tcp) = (
            Some(data.join("sealbroker.sock")),
            Some(([127, 0, 0, 1], port).into()),
        );
        Daemon::start(&args, &[], &dir.join("log"), socket, tcp).await
    }

    /// `serve --config FILE` with SoftHSM's config in the environment when given.
    pub async fn serve(config: &Path, softhsm: Option<&SoftHsmToken>, log: &Path) -> Daemon {
        Daemon::serve_under(&[], config, softhsm, log).await
    }

    /// [`serve`](Self::serve) run by `prefix` (see [`start_under`](Self::start_under)).
    pub async fn serve_under(
        prefix: &[&str],
        config: &Path,
        softhsm: Option<&SoftHsmToken>,
        log: &Path,
    ) -> Daemon {
        let text = fs::read_to_string(config).unwrap();
        let socket = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("unix_socket = "))
            .map(|v| PathBuf::from(v.trim_matches('"')));
        let tcp = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen = "))
            .map(|v| v.trim_matches('"').parse().unwrap());
        let envs: Vec<(&str, &Path)> = softhsm
            .map(|t| ("SOFTHSM2_CONF", t.conf.as_path()))
            .into_iter()
            .collect();
        Daemon::start_under(
            prefix,
            &["serve", "--config", config.to_str().unwrap()],
            &envs,
            log,
            socket,
            tcp,
        )
        .await
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sealbroker exited early with {status}:\n{}", self.logs());
            }
            let socket_ok = self
                .socket
                .as_ref()
                .is_none_or(|p| std::os::unix::net::UnixStream::connect(p).is_ok());
            let tcp_ok = self.tcp.is_none_or(|a| std::net::TcpStream::connect(a).is_ok());
            if socket_ok && tcp_ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sealbroker did not become ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the daemon printed on stdout (audit lines under `stdout = true`).
    pub fn stdout(&self) -> String {
        fs::read_to_string(stdout_of(&self.log)).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The pid of the process that answers on the daemon's unix socket, as
    /// the kernel reports it (SO_PEERCRED), so a test can check that the
    /// process it started still serves, not just that its own handle says so.
    pub async fn serving_pid(&self) -> u32 {
        let socket = self.socket.as_ref().expect("daemon has no socket");
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
        let pid = stream
            .peer_cred()
            .unwrap()
            .pid()
            .expect("the kernel reports the peer's pid");
        u32::try_from(pid).unwrap()
    }

    /// Every version the daemon knows, from a deep Status: (version, role,
    /// usable), oldest first.
    pub async fn version_roles(&self) -> Vec<(u32, String, bool)> {
        let status = self
            .unix_client()
            .await
            .status(sealbroker_proto::sealbroker::v1::StatusRequest { deep: true })
            .await
            .unwrap()
            .into_inner();
        status
            .versions
            .into_iter()
            .map(|v| (v.version, v.role, v.usable))
            .collect()
    }

    /// Waits until a deep Status reports `expected` (a deep probe of a
    /// version runs at most once a second, so a fresh change can take that
    /// long to show).
    pub async fn wait_version_roles(&self, expected: &[(u32, String, bool)]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let roles = self.version_roles().await;
            if roles == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "versions {roles:?}, waited for {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGHUP: the daemon reloads its config.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP {} failed", self.pid());
    }

    /// Waits until the daemon's log holds `needle` `count` times, e.g. the
    /// `count`th "config reloaded": each reload logs exactly one outcome.
    pub async fn logged(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {count}th {needle:?} in the log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How the daemon ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// A client on the unix socket.
    pub async fn unix_client(&self) -> SealServiceClient<Channel> {
        client::connect(&Target::Unix(self.socket.clone().expect("daemon has no socket")))
            .await
            .unwrap()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let _keep = KeepOnExit(&self.log);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sealbroker did not exit within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            sweep::keep(&self.log);
        }
    }
}

/// Hands a log to the sweep when dropped, whichever way the caller returns.
struct KeepOnExit<'a>(&'a Path);

impl Drop for KeepOnExit<'_> {
    fn drop(&mut self) {
        sweep::keep(self.0);
    }
}

/// Runs `sealbroker ARGS` to completion with `stdin`.
pub fn run_cli(args: &[&str], stdin: &[u8], envs: &[(&str, &Path)]) -> Output {
    use std::io::Write;
    let mut command = Command::new(sealbroker_bin());
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// A channel over TLS with an arbitrary (or no) client certificate, for
/// testing what the server refuses.
pub async fn tls_channel(
    port: u16,
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}

/// Polls `done` every 20 ms for up to `limit`; panics with `what` on expiry.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_until`] for async tests: polls without blocking the runtime's workers.
pub async fn wait_until_async(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Field `field` (numbered from 1, as in proc(5); 3 or later) of
/// /proc/PID/stat, if the process exists. The command name (field 2) may
/// hold spaces and parentheses, so the fields after it are counted from its
/// last ')'.
pub fn proc_stat_field(pid: u32, field: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let index = field.checked_sub(3)?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().nth(index)?.to_owned())
}

/// The pids whose parent is `pid` (field 4 of /proc/PID/stat), e.g. the
/// PKCS#11 helper processes a daemon runs.
pub fn child_pids(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| proc_stat_field(child, 4).and_then(|p| p.parse().ok()) == Some(pid))
        .collect()
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// /proc/PID/stat): with the pid, it names one process, never a later one
/// that reused the pid.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    proc_stat_field(pid, 22)?.parse().ok()
}

/// The Python of the peers venv (hvac, grpcio-tools), made by tests/peers/install.sh.
pub fn peers_python() -> PathBuf {
    let venv = std::env::var_os("SEALBROKER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sealbroker-peers/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing; run tests/run.sh, which installs the test peers",
        python.display()
    );
    python
}

/// Two tokens, `tok-a` (key `key-a`) and `tok-b` (key `key-b`), in one
/// SoftHSM2 directory; token B is reached through its own copy of the
/// module, as a second HSM would be. For HA key rings.
pub struct TwoTokens {
    pub a: SoftHsmToken,
    pub module_b: PathBuf,
}

impl TwoTokens {
    pub fn create(dir: &Path, pin: &str) -> TwoTokens {
        let a = SoftHsmToken::create(&dir.join("hsm"), "tok-a", "key-a", pin);
        SoftHsmToken::create(&dir.join("hsm"), "tok-b", "key-b", pin);
        let module_b = dir.join("libsofthsm2-b.so");
        fs::copy(SOFTHSM_MODULE, &module_b).unwrap();
        TwoTokens { a, module_b }
    }

    /// The token directory of `label` (move it away to take the token down).
    pub fn token_dir(&self, label: &str) -> PathBuf {
        for entry in fs::read_dir(self.a.dir.join("tokens")).unwrap() {
            let dir = entry.unwrap().path();
            let object = fs::read(dir.join("token.object")).unwrap_or_default();
            if object.windows(label.len()).any(|w| w == label.as_bytes()) {
                return dir;
            }
        }
        panic!("no token labelled {label}");
    }

    /// `[backends.a]` and `[backends.b]`.
    pub fn backends_toml(&self) -> String {
        format!(
            "[backends.a]\ntype = \"pkcs11\"\nlib = \"{SOFTHSM_MODULE}\"\ntoken_label = \"tok-a\"\npin_file = \"{pin}\"\n\
             [backends.b]\ntype = \"pkcs11\"\nlib = \"{lib_b}\"\ntoken_label = \"tok-b\"\npin_file = \"{pin}\"\n",
            pin = self.a.dir.join("pin").display(),
            lib_b = self.module_b.display(),
        )
    }

    /// The body of a `[keys.NAME]` table using both tokens.
    pub fn members_toml(&self) -> String {
        format!(
            "policy = \"all\"\nmembers = [{{ backend = \"a\", key_label = \"key-a\" }}, {{ backend = \"b\", key_label = \"key-b\" }}]\n{}",
            allow_test_callers()
        )
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1 (for /metrics, /livez, /readyz).
/// Returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The uid this test runs as (what the broker sees on its unix socket).
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::tempfile().unwrap();
    probe.metadata().unwrap().uid()
}

/// An `allow` line granting everything to this test's uid and to the test
/// PKI's client certificate (`dns:openbao.test`).
pub fn allow_test_callers() -> String {
    format!(
        "allow = {{ any = [\"uid:{}\", \"dns:openbao.test\"] }}\n",
        current_uid()
    )
}
