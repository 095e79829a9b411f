//! The transit backend's tests against the real OpenBao 2.7.2 `bao` on
//! 127.0.0.1 (the kit's spawner): `bao server -dev` (in-memory), or a raft
//! server that survives a restart. Every server is stopped on drop.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use sealbroker_backend_transit::{BackendConfig, KeyConfig, TransitClient, TransitKey};
use sealbroker_testkit::free_port;
use sealbroker_testkit::openbao::{BaoLaunch, BaoServer, raft_hcl};

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

/// A `bao server` that can be stopped and started again on the same
/// port and data, with the tokens it was set up with.
pub struct Bao {
    server: Option<BaoServer>,
    launch: BaoLaunch,
    pub addr: String,
    pub port: u16,
    /// Root token (dev: chosen; raft: from `operator init`).
    pub root: String,
    /// Unseal key of a raft server.
    pub unseal_key: Option<String>,
    pub dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().unwrap();
        let mut launch = BaoLaunch::dev(dir.path(), port, root);
        if let Some(extra) = &extra_config {
            launch = launch.config_file(extra);
        }
        let mut bao = Bao::new(dir, launch, root);
        bao.start();
        bao
    }

    /// A raft-backed server, initialized (one unseal key) and unsealed.
    pub fn raft() -> Bao {
        let dir = tempfile::tempdir().unwrap();
        let (port, cluster_port) = (free_port(), free_port());
        let config = dir.path().join("bao.hcl");
        fs::write(&config, raft_hcl(dir.path(), port, cluster_port)).unwrap();
        let launch = BaoLaunch::config(dir.path(), port, &config);
        let mut bao = Bao::new(dir, launch, "");
        bao.start();
        let init = bao.server().init_shamir();
        bao.unseal_key = Some(init.unseal_key);
        bao.root = init.root_token;
        bao.unseal();
        bao
    }

    fn new(dir: tempfile::TempDir, launch: BaoLaunch, root: &str) -> Bao {
        Bao {
            server: None,
            addr: format!("http://127.0.0.1:{}", launch.port()),
            port: launch.port(),
            launch,
            root: root.to_owned(),
            unseal_key: None,
            dir,
            starts: 0,
        }
    }

    fn server(&self) -> &BaoServer {
        self.server.as_ref().expect("bao server is stopped")
    }

    /// Starts the server process (again, after [`stop`](Self::stop)) and
    /// waits for its API.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "already running");
        self.starts += 1;
        self.server = Some(BaoServer::start(&self.launch, &self.log_path()));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("bao-{}.log", self.starts))
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Unseals a raft server and waits until it is active.
    pub fn unseal(&self) {
        let key = self
            .unseal_key
            .as_deref()
            .expect("only raft servers are unsealed");
        self.server().unseal(key);
        self.server().wait_active(&self.root, Duration::from_secs(60));
    }

    /// Runs the `bao` CLI against this server.
    pub fn cli(&self, args: &[&str], token: Option<&str>) -> Output {
        self.server().cli(args, token)
    }

    /// Runs the CLI as root, asserting success; returns stdout.
    pub fn must(&self, args: &[&str]) -> String {
        self.server().must(args, Some(&self.root))
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

    /// Stops the server (SIGTERM, then SIGKILL); [`start`](Self::start)
    /// brings it back.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
    }
}

/// A `TransitKey` for `key` through `config`.
pub fn transit_key(config: &BackendConfig, key: &str) -> (TransitClient, Arc<TransitKey>) {
    let client = config.client().unwrap();
    let key = TransitKey::new(
        client.clone(),
        &KeyConfig {
            key_name: key.to_owned(),
            ..Default::default()
        },
    )
    .unwrap();
    (client, Arc::new(key))
}
