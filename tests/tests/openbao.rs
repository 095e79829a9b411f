//! The proof that matters most: the real OpenBao 2.7.2, with raft storage,
//! initialised, restarted and auto-unsealed through sealbroker.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealbroker_e2e::openbao::{BaoConfig, OpenBao};
use sealbroker_e2e::*;

const PIN: &str = "bao-e2e-pin-2291";
const SECRET: &str = "kv-secret-value-hunter2";

/// A hardened sealbroker config with one SoftHSM key `unseal`; with a unix
/// socket when `socket` is given (daemon), without (plugin in-process).
fn broker_config(dir: &Path, token: &SoftHsmToken, socket: Option<&Path>) -> PathBuf {
    let server = socket
        .map(|s| format!("[server]\nunix_socket = \"{}\"\n", s.display()))
        .unwrap_or_default();
    let text = format!(
        "profile = \"hardened\"\n{server}\n{}\n[keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{}",
        token.backend_toml("hsm"),
        allow_test_callers()
    );
    let path = dir.join(if socket.is_some() {
        "daemon.toml"
    } else {
        "plugin.toml"
    });
    fs::write(&path, text).unwrap();
    path
}

fn plugin_seal(option: &str) -> String {
    format!("seal \"sealbroker\" {{\n  {option}\n  key_name = \"unseal\"\n}}")
}

#[test]
fn plugin_in_process_on_softhsm_inits_restarts_and_auto_unseals() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let broker = broker_config(dir.path(), &token, None);
    let config = BaoConfig::write(
        dir.path(),
        &plugin_seal(&format!("config_file = \"{}\"", broker.display())),
    );
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];

    let bao = OpenBao::start(&config, &env, "bao-1.log");
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    let status: serde_json::Value =
        serde_json::from_str(&bao.must(&["status", "-format=json"], None)).unwrap();
    assert_eq!(status["type"], "sealbroker", "{status}");
    bao.stop();

    let bao = OpenBao::start(&config, &env, "bao-2.log");
    let took = bao.wait_unsealed(Duration::from_secs(30));
    eprintln!("MEASURED plugin in-process (SoftHSM) unseal after restart: {took:?}");
    assert_eq!(bao.read_secret(&root), SECRET);
    let logs = bao.logs();
    assert!(logs.contains("unsealed with stored key"), "{logs}");
    assert!(!logs.contains(PIN), "the HSM PIN reached OpenBao's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_endpoint_mode_keeps_hsm_credentials_in_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let socket = dir.path().join("sb.sock");
    let daemon_config = broker_config(dir.path(), &token, Some(&socket));
    let daemon = Daemon::serve(&daemon_config, Some(&token), &dir.path().join("daemon.log")).await;
    let config = BaoConfig::write(
        dir.path(),
        &plugin_seal(&format!("endpoint = \"unix://{}\"", socket.display())),
    );

    // OpenBao gets no SoftHSM config, PIN or token directory: only the socket.
    let bao = OpenBao::start(&config, &[], "bao-1.log");
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    bao.stop();

    let bao = OpenBao::start(&config, &[], "bao-2.log");
    let took = bao.wait_unsealed(Duration::from_secs(30));
    eprintln!("MEASURED plugin endpoint mode (daemon, SoftHSM) unseal after restart: {took:?}");
    assert_eq!(bao.read_secret(&root), SECRET);
    // The daemon saw the plugin's calls, identified by its unix credentials.
    let logs = daemon.logs();
    assert!(
        !logs.contains(PIN) && !logs.contains(SECRET),
        "secret material in the daemon log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_keeps_openbao_sealed_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let socket = dir.path().join("sb.sock");
    let daemon_config = broker_config(dir.path(), &token, Some(&socket));
    let daemon = Daemon::serve(&daemon_config, Some(&token), &dir.path().join("daemon-1.log")).await;
    let config = BaoConfig::write(
        dir.path(),
        &plugin_seal(&format!("endpoint = \"unix://{}\"", socket.display())),
    );
    let bao = OpenBao::start(&config, &[], "bao-1.log");
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    bao.stop();
    assert!(daemon.terminate().success());

    // The broker is down: OpenBao starts, but stays sealed and says why.
    let bao = OpenBao::start(&config, &[], "bao-2.log");
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(bao.sealed(), Some(true), "OpenBao unsealed without its broker");
    let logs = bao.logs();
    assert!(
        logs.contains("sealbroker: Unavailable"),
        "no clear error in OpenBao's log:\n{logs}"
    );

    // The broker returns: OpenBao's retry unseals it, and nothing is lost.
    let _daemon = Daemon::serve(&daemon_config, Some(&token), &dir.path().join("daemon-2.log")).await;
    let took = bao.wait_unsealed(Duration::from_secs(30));
    eprintln!("MEASURED unseal after the broker came back: {took:?}");
    assert_eq!(bao.read_secret(&root), SECRET);
}

#[test]
fn seal_migration_from_shamir_to_sealbroker() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let broker = broker_config(dir.path(), &token, None);
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];
    let config = BaoConfig::write(dir.path(), "");

    let bao = OpenBao::start(&config, &env, "bao-shamir.log");
    let (unseal_key, root) = bao.init_shamir();
    bao.must(&["operator", "unseal", &unseal_key], None);
    bao.wait_unsealed(Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    bao.stop();

    config.set_seal(&plugin_seal(&format!("config_file = \"{}\"", broker.display())));
    let bao = OpenBao::start(&config, &env, "bao-migrate.log");
    assert_eq!(bao.sealed(), Some(true));
    bao.must(&["operator", "unseal", "-migrate", &unseal_key], None);
    bao.wait_unsealed(Duration::from_secs(30));
    assert_eq!(bao.read_secret(&root), SECRET);
    bao.stop();

    let bao = OpenBao::start(&config, &env, "bao-after.log");
    bao.wait_unsealed(Duration::from_secs(30));
    assert_eq!(bao.read_secret(&root), SECRET);
    let status: serde_json::Value =
        serde_json::from_str(&bao.must(&["status", "-format=json"], None)).unwrap();
    assert_eq!(status["type"], "sealbroker", "{status}");
}

#[test]
fn bad_seal_stanza_stops_openbao_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = BaoConfig::write(
        dir.path(),
        "seal \"sealbroker\" {\n  endpoint = \"unix:///nowhere.sock\"\n  keyname = \"x\"\n}",
    );
    let mut command = std::process::Command::new(sealbroker_e2e::openbao::bao_bin());
    let out = command
        .args(["server", "-config"])
        .arg(&config.path)
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("unknown seal option(s) keyname"), "{text}");
}

#[test]
fn kms_plugin_run_by_hand_explains_itself() {
    let out = run_cli(&["kms-plugin"], b"", &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sealbroker's OpenBao KMS plugin") && stderr.contains("docs/openbao.md"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing may reach stdout, which carries the handshake"
    );
}

#[test]
fn ha_key_unseals_openbao_with_one_member_down() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TwoTokens::create(dir.path(), PIN);
    let broker = dir.path().join("plugin.toml");
    fs::write(
        &broker,
        format!(
            "profile = \"hardened\"\n{}\n[keys.unseal]\n{}\n",
            tokens.backends_toml(),
            tokens.members_toml()
        ),
    )
    .unwrap();
    let config = BaoConfig::write(
        dir.path(),
        &plugin_seal(&format!("config_file = \"{}\"", broker.display())),
    );
    let env = [("SOFTHSM2_CONF", tokens.a.conf.as_path())];

    let bao = OpenBao::start(&config, &env, "bao-1.log");
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    bao.stop();

    // Take token A down; OpenBao must unseal through B.
    fs::rename(tokens.token_dir("tok-a"), dir.path().join("saved-a")).unwrap();
    let bao = OpenBao::start(&config, &env, "bao-2.log");
    let took = bao.wait_unsealed(Duration::from_secs(30));
    eprintln!("MEASURED HA unseal with one member down: {took:?}");
    assert_eq!(bao.read_secret(&root), SECRET);
}
