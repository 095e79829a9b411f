//! Runs the real OpenBao 2.7.2 `bao` on 127.0.0.1 for the transit backend's
//! tests: `bao server -dev` (in-memory), or a raft server that survives a
//! restart. Every server is stopped on drop (SIGTERM, then SIGKILL).

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealbroker_backend_transit::{BackendConfig, KeyConfig, TransitClient, TransitKey};

/// The `bao` binary: `$SEALBROKER_PEERS_VENV/bin/bao`, else the venv that
/// tests/run.sh installs. Panics with a clear message when it is missing.
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A random token id (dev root tokens, tokens with a chosen id).
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Writes `token` to `dir/name` with mode 0600.
pub fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("{token}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

enum Mode {
    Dev,
    Raft { config: PathBuf },
}

/// A running `bao server`.
pub struct Bao {
    child: Option<Child>,
    pub addr: String,
    pub port: u16,
    /// Root token (dev: chosen; raft: from `operator init`).
    pub root: String,
    /// Unseal key of a raft server.
    pub unseal_key: Option<String>,
    pub dir: tempfile::TempDir,
    mode: Mode,
    extra_config: Option<PathBuf>,
    starts: u32,
}

impl Bao {
    /// `bao server -dev` on a free port with a random root token.
    pub fn dev() -> Bao {
        Self::dev_on(free_port(), &random_token("root-"), None)
    }

    /// `bao server -dev` on `port`, optionally with an extra `-config` file
    /// (e.g. a TLS listener).
    pub fn dev_on(port: u16, root: &str, extra_config: Option<PathBuf>) -> Bao {
        let mut bao = Bao {
            child: None,
            addr: format!("http://127.0.0.1:{port}"),
            port,
            root: root.to_owned(),
            unseal_key: None,
            dir: tempfile::tempdir().unwrap(),
            mode: Mode::Dev,
            extra_config,
            starts: 0,
        };
        bao.start();
        bao
    }

    /// A raft-backed server, initialized (one unseal key) and unsealed.
    pub fn raft() -> Bao {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cluster_port = free_port();
        fs::create_dir_all(dir.path().join("raft")).unwrap();
        let config = dir.path().join("bao.hcl");
        fs::write(
            &config,
            format!(
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
disable_mlock = true
"#,
                raft = dir.path().join("raft").display()
            ),
        )
        .unwrap();
        let mut bao = Bao {
            child: None,
            addr: format!("http://127.0.0.1:{port}"),
            port,
            root: String::new(),
            unseal_key: None,
            dir,
            mode: Mode::Raft { config },
            extra_config: None,
            starts: 0,
        };
        bao.start();
        let out = bao.cli_ok(
            &[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ],
            None,
        );
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        bao.unseal_key = Some(json["unseal_keys_b64"][0].as_str().unwrap().to_owned());
        bao.root = json["root_token"].as_str().unwrap().to_owned();
        bao.unseal();
        bao
    }

    /// Starts the server process (again, after [`stop`](Self::stop)) and
    /// waits for its API.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = self.log_path();
        let mut command = Command::new(bao_bin());
        command.arg("server");
        match &self.mode {
            Mode::Dev => {
                command.args([
                    "-dev",
                    &format!("-dev-root-token-id={}", self.root),
                    &format!("-dev-listen-address=127.0.0.1:{}", self.port),
                ]);
                if let Some(extra) = &self.extra_config {
                    command.arg(format!("-config={}", extra.display()));
                }
            }
            Mode::Raft { config } => {
                command.arg(format!("-config={}", config.display()));
            }
        }
        let output = fs::File::create(&log).unwrap();
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        self.child = Some(command.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("bao server exited with {status}:\n{}", self.logs());
            }
            let out = self.cli(&["status", "-format=json"], None);
            if serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|j| j.get("sealed").cloned())
                .is_some()
            {
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

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("bao-{}.log", self.starts))
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Unseals a raft server and waits until it is active.
    pub fn unseal(&self) {
        let key = self.unseal_key.clone().expect("only raft servers are unsealed");
        self.cli_ok(&["operator", "unseal", &key], None);
        let deadline = Instant::now() + Duration::from_secs(60);
        // Active once a root-token read succeeds (raft elects itself leader).
        while !self
            .cli(&["read", "-format=json", "sys/mounts"], Some(&self.root))
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

    /// Runs the `bao` CLI against this server.
    pub fn cli(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut command = Command::new(bao_bin());
        command
            .args(args)
            .env_clear()
            .env("BAO_ADDR", &self.addr)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path());
        if let Some(token) = token {
            command.env("BAO_TOKEN", token);
        }
        command.output().unwrap()
    }

    fn cli_ok(&self, args: &[&str], token: Option<&str>) -> String {
        let out = self.cli(args, token);
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}{}\n--- server log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI as root, asserting success; returns stdout.
    pub fn must(&self, args: &[&str]) -> String {
        self.cli_ok(args, Some(&self.root))
    }

    /// Enables transit at `transit/` (once) and creates `key` with `args`
    /// (e.g. `type=aes256-gcm96`).
    pub fn transit_key(&self, key: &str, args: &[&str]) {
        let mounts = self.must(&["secrets", "list", "-format=json"]);
        if !mounts.contains("\"transit/\"") {
            self.must(&["secrets", "enable", "transit"]);
        }
        let path = format!("transit/keys/{key}");
        let mut command = vec!["write", "-f", path.as_str()];
        command.extend_from_slice(args);
        self.must(&command);
    }

    /// A policy allowing only encrypt/decrypt and reading `key`.
    pub fn key_policy(&self, key: &str) -> String {
        let name = format!("sealbroker-{key}");
        let policy = self.dir.path().join(format!("{name}.hcl"));
        fs::write(
            &policy,
            format!(
                r#"path "transit/encrypt/{key}" {{ capabilities = ["update"] }}
path "transit/decrypt/{key}" {{ capabilities = ["update"] }}
path "transit/keys/{key}" {{ capabilities = ["read"] }}
"#
            ),
        )
        .unwrap();
        self.must(&["policy", "write", &name, policy.to_str().unwrap()]);
        name
    }

    /// A token limited to [`key_policy`](Self::key_policy) (plus `default`),
    /// created with the extra `token create` flags in `flags`.
    pub fn limited_token(&self, key: &str, flags: &[&str]) -> String {
        let policy = self.key_policy(key);
        let policy_flag = format!("-policy={policy}");
        let mut args = vec!["token", "create", "-format=json", policy_flag.as_str()];
        args.extend_from_slice(flags);
        let out = self.must(&args);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        json["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// Writes a token file for `token` in this server's directory.
    pub fn token_file(&self, token: &str) -> PathBuf {
        token_file(self.dir.path(), &random_token("token-"), token)
    }

    /// A backend config for this server, plus `extra` TOML lines.
    pub fn backend_config(&self, token_file: &Path, extra: &str) -> BackendConfig {
        toml::from_str(&format!(
            "address = \"{}\"\ntoken_file = \"{}\"\n{extra}",
            self.addr,
            token_file.display()
        ))
        .unwrap()
    }

    /// SIGTERM, then waits (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `TransitKey` for `key` through `config`.
pub fn transit_key(config: &BackendConfig, key: &str) -> (TransitClient, Arc<TransitKey>) {
    let client = config.client().unwrap();
    let key = TransitKey::new(
        client.clone(),
        &KeyConfig {
            key_name: key.to_owned(),
        },
    )
    .unwrap();
    (client, Arc::new(key))
}
