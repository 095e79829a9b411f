//! The real OpenBao 2.7.2 `bao server` on 127.0.0.1, for the transit
//! backend's tests and the end-to-end tests: a dev server (in memory, a
//! chosen root token) or a server from config files (raft storage, see
//! [`raft_hcl`]), the `bao` CLI against it, and the init and unseal steps.
//!
//! The server runs with a bare environment (PATH, HOME and what the
//! [`BaoLaunch`] adds), so nothing reaches it or its plugins by accident. Its
//! output goes to a log file. It is stopped on drop: SIGTERM, then SIGKILL
//! after [`STOP_GRACE`].

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a SIGTERMed server may take before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// How long the API may take to answer after a start.
const API_WAIT: Duration = Duration::from_secs(30);

/// The `bao` binary: `$SEALBROKER_PEERS_VENV/bin/bao`, else the venv that
/// tests/run.sh installs. Panics with what to run when it is missing.
pub fn bao_bin() -> PathBuf {
    if let Some(venv) = std::env::var_os("SEALBROKER_PEERS_VENV") {
        let bin = PathBuf::from(venv).join("bin/bao");
        if bin.exists() {
            return bin;
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cached = home.join(".cache/sealbroker-peers/venv/bin/bao");
    assert!(
        cached.exists(),
        "OpenBao 2.7.2 (`bao`) is not installed: looked in $SEALBROKER_PEERS_VENV/bin/bao and {}; \
         run tests/run.sh from the repository root, which installs the test peers",
        cached.display()
    );
    cached
}

/// Server HCL for raft storage in `dir/raft` (created here) and a plaintext
/// listener on 127.0.0.1:`port`, cluster traffic on `cluster_port`, mlock
/// off: the base every test server config starts from.
pub fn raft_hcl(dir: &Path, port: u16, cluster_port: u16) -> String {
    raft_node_hcl(dir, "node1", port, cluster_port, &[])
}

/// [`raft_hcl`] for one node of a cluster: raft node id `node_id`, and a
/// `retry_join` to each API port in `join` (the other nodes on 127.0.0.1).
pub fn raft_node_hcl(dir: &Path, node_id: &str, port: u16, cluster_port: u16, join: &[u16]) -> String {
    let raft = dir.join("raft");
    fs::create_dir_all(&raft).unwrap_or_else(|e| panic!("cannot create {}: {e}", raft.display()));
    let joins: String = join
        .iter()
        .map(|port| format!("  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:{port}\"\n  }}\n"))
        .collect();
    format!(
        r#"storage "raft" {{
  path    = "{raft}"
  node_id = "{node_id}"
{joins}}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
"#,
        raft = raft.display()
    )
}

/// How to run one `bao server`; [`BaoServer::start`] runs it, and the same
/// launch runs it again after a stop.
#[derive(Clone, Debug)]
pub struct BaoLaunch {
    /// The `bao` to run; [`bao_bin`] (2.7.2) unless set.
    bin: Option<PathBuf>,
    args: Vec<OsString>,
    port: u16,
    home: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl BaoLaunch {
    /// `bao server -dev` listening on 127.0.0.1:`port` with root token
    /// `root_token`; `home` is its HOME and working directory.
    pub fn dev(home: &Path, port: u16, root_token: &str) -> BaoLaunch {
        BaoLaunch {
            bin: None,
            args: vec![
                "-dev".into(),
                format!("-dev-root-token-id={root_token}").into(),
                format!("-dev-listen-address=127.0.0.1:{port}").into(),
            ],
            port,
            home: home.to_owned(),
            env: Vec::new(),
        }
    }

    /// `bao server -config=CONFIG` (a file, or a directory of them) whose
    /// plaintext API listens on 127.0.0.1:`port`.
    pub fn config(home: &Path, port: u16, config: &Path) -> BaoLaunch {
        BaoLaunch {
            bin: None,
            args: Vec::new(),
            port,
            home: home.to_owned(),
            env: Vec::new(),
        }
        .config_file(config)
    }

    /// One more `-config` (e.g. a second, TLS, listener beside a dev one).
    pub fn config_file(mut self, config: &Path) -> BaoLaunch {
        let mut arg = OsString::from("-config=");
        arg.push(config);
        self.args.push(arg);
        self
    }

    /// Runs another `bao` build (e.g. OpenBao 2.6.2 for upgrade tests).
    pub fn binary(mut self, bin: &Path) -> BaoLaunch {
        self.bin = Some(bin.to_owned());
        self
    }

    /// An environment variable for the server (and so for its plugins).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> BaoLaunch {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The API's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A running `bao server`.
pub struct BaoServer {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    home: PathBuf,
    log: PathBuf,
}

/// What `operator init` with one Shamir key share returned.
pub struct ShamirInit {
    pub unseal_key: String,
    pub root_token: String,
}

/// What `operator init` under an auto-unseal seal returned.
pub struct AutoInit {
    pub recovery_keys: Vec<String>,
    pub root_token: String,
}

impl BaoServer {
    /// Starts `launch` with its output in `log`, and waits until the API
    /// answers (sealed or not). Panics with the log if the server exits or
    /// does not answer within 30 s.
    pub fn start(launch: &BaoLaunch, log: &Path) -> BaoServer {
        let output = fs::File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut command = Command::new(launch.bin.clone().unwrap_or_else(bao_bin));
        command
            .arg("server")
            .args(&launch.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &launch.home)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.home)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("cannot share the log file"))
            .stderr(output);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start bao server: {e}"));
        let mut server = BaoServer {
            child: Some(child),
            addr: format!("http://127.0.0.1:{}", launch.port),
            home: launch.home.clone(),
            log: log.to_owned(),
        };
        server.wait_api();
        server
    }

    fn wait_api(&mut self) {
        let deadline = Instant::now() + API_WAIT;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                panic!("bao server exited with {status}:\n{}", self.logs());
            }
            if self.sealed().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao's API did not come up:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server exited, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the server was stopped");
        child.try_wait().expect("cannot ask the server's status")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's output so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `bao` CLI against this server, as `token` if given.
    pub fn cli(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut command = Command::new(bao_bin());
        command
            .args(args)
            .env_clear()
            .env("BAO_ADDR", &self.addr)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home);
        if let Some(token) = token {
            command.env("BAO_TOKEN", token);
        }
        command.output().expect("cannot run the bao CLI")
    }

    /// Like [`cli`](Self::cli), asserting success; returns stdout. A
    /// failure names the command but not its arguments, which may be unseal
    /// keys or secret values (`operator unseal KEY`, `kv put ... password=`).
    pub fn must(&self, args: &[&str], token: Option<&str>) -> String {
        let out = self.cli(args, token);
        assert!(
            out.status.success(),
            "{} failed: {}{}\n--- server log ---\n{}",
            command_line(args),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).expect("bao printed UTF-8")
    }

    /// `Some(sealed)` once the API answers.
    pub fn sealed(&self) -> Option<bool> {
        let out = self.cli(&["status", "-format=json"], None);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json.get("sealed")?.as_bool()
    }

    /// The active node's API address as this node knows it (`bao status`),
    /// once it knows one: a standby forwards writes only from then on.
    pub fn leader(&self) -> Option<String> {
        let out = self.cli(&["status", "-format=json"], None);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let leader = json.get("leader_address")?.as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }

    /// Waits until the server is unsealed; returns how long that took.
    pub fn wait_unsealed(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        while self.sealed() != Some(false) {
            assert!(
                started.elapsed() < limit,
                "OpenBao still sealed after {limit:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    }

    /// `operator init` with one Shamir key share.
    pub fn init_shamir(&self) -> ShamirInit {
        let json = self.init(&["-key-shares=1", "-key-threshold=1"]);
        ShamirInit {
            unseal_key: field(&json, "/unseal_keys_b64/0"),
            root_token: field(&json, "/root_token"),
        }
    }

    /// `operator init` under an auto-unseal seal, with one recovery share.
    pub fn init_auto(&self) -> AutoInit {
        let json = self.init(&["-recovery-shares=1", "-recovery-threshold=1"]);
        let recovery_keys = json["recovery_keys_b64"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|key| key.as_str().unwrap_or_default().to_owned())
            .collect();
        AutoInit {
            recovery_keys,
            root_token: field(&json, "/root_token"),
        }
    }

    fn init(&self, shares: &[&str]) -> serde_json::Value {
        let mut args = vec!["operator", "init", "-format=json"];
        args.extend_from_slice(shares);
        let out = self.must(&args, None);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("operator init printed no JSON ({e})"))
    }

    /// `operator unseal` with `key`.
    pub fn unseal(&self, key: &str) {
        self.must(&["operator", "unseal", key], None);
    }

    /// Waits until a `root_token` read succeeds, i.e. the server (raft: once
    /// it elected itself leader) is active.
    pub fn wait_active(&self, root_token: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self
            .cli(&["read", "-format=json", "sys/mounts"], Some(root_token))
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "OpenBao did not become active:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`STOP_GRACE`]).
    /// Stopping twice does nothing.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BaoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `bao` and its subcommand words, with every later argument (and any flag
/// value) left out: what a failure may print.
fn command_line(args: &[&str]) -> String {
    let words: Vec<&str> = args
        .iter()
        .take_while(|a| !a.starts_with('-') && !a.contains(['=', '/']))
        .take(2)
        .copied()
        .collect();
    let hidden = args.len() - words.len();
    let mut line = format!("bao {}", words.join(" "));
    if hidden > 0 {
        line.push_str(&format!(" (and {hidden} argument(s), not shown)"));
    }
    line
}

fn field(json: &serde_json::Value, pointer: &str) -> String {
    json.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_else(|| panic!("operator init printed no {pointer}"))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_is_named_without_its_secret_arguments() {
        let key = "a-made-up-unseal-key-0000000000000000000000=";
        let line = command_line(&["operator", "unseal", "-migrate", key]);
        assert_eq!(line, "bao operator unseal (and 2 argument(s), not shown)");
        let line = command_line(&["kv", "put", "kv/app", "password=hunter2-canary"]);
        assert!(!line.contains("hunter2"), "{line}");
        assert_eq!(
            command_line(&["status", "-format=json"]),
            "bao status (and 1 argument(s), not shown)"
        );
        assert_eq!(
            command_line(&["operator", "raft", "list-peers"]),
            "bao operator raft (and 1 argument(s), not shown)"
        );
    }

    #[test]
    fn the_raft_base_names_its_ports_and_makes_the_storage_directory() {
        let dir = tempfile::tempdir().unwrap();
        let hcl = raft_hcl(dir.path(), 8200, 8201);
        assert!(dir.path().join("raft").is_dir());
        assert!(hcl.contains("address         = \"127.0.0.1:8200\""), "{hcl}");
        assert!(hcl.contains("cluster_addr  = \"http://127.0.0.1:8201\""), "{hcl}");
        assert!(!hcl.contains("retry_join"), "{hcl}");
    }

    #[test]
    fn a_cluster_node_joins_the_others_by_api_address() {
        let dir = tempfile::tempdir().unwrap();
        let hcl = raft_node_hcl(dir.path(), "node2", 8210, 8211, &[8200, 8220]);
        assert!(hcl.contains("node_id = \"node2\""), "{hcl}");
        assert_eq!(hcl.matches("retry_join {").count(), 2, "{hcl}");
        assert!(
            hcl.contains("leader_api_addr = \"http://127.0.0.1:8220\""),
            "{hcl}"
        );
    }

    #[test]
    fn a_dev_server_answers_unsealed_and_is_gone_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let launch = BaoLaunch::dev(dir.path(), crate::free_port(), "root-kit");
        let mut server = BaoServer::start(&launch, &dir.path().join("bao.log"));
        server.wait_unsealed(Duration::from_secs(20));
        assert!(
            server
                .must(&["token", "lookup", "-format=json"], Some("root-kit"))
                .contains("root")
        );
        let pid = server.child.as_ref().unwrap().id();
        assert!(server.exited().is_none());
        drop(server);
        // Reaped by the drop: no such process any more.
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .status()
            .unwrap();
        assert!(!alive.success(), "bao server {pid} outlived its handle");
    }

    #[test]
    fn a_launch_adds_config_files_in_order() {
        let dir = Path::new("/nowhere");
        let launch = BaoLaunch::dev(dir, 8200, "root")
            .config_file(Path::new("/a.hcl"))
            .env("X", "1");
        assert_eq!(
            launch.args,
            [
                "-dev",
                "-dev-root-token-id=root",
                "-dev-listen-address=127.0.0.1:8200",
                "-config=/a.hcl"
            ]
            .map(OsString::from)
        );
        assert_eq!(launch.port(), 8200);
    }
}
