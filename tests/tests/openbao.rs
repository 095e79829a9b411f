//! The proof that matters most: the real OpenBao 2.7.2, with raft storage,
//! initialised, restarted and auto-unsealed through sealbroker.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealbroker_e2e::openbao::{BaoConfig, OpenBao};
use sealbroker_e2e::*;

const PIN: &str = "bao-e2e-pin-2291";
const SECRET: &str = "kv-secret-value-hunter2";

/// A hardened sealbroker config with one SoftHSM key `unseal` and an
/// audit trail (`audit.jsonl` in `dir`); with a unix socket when `socket` is
/// given (daemon), without (plugin in-process).
fn broker_config(dir: &Path, token: &SoftHsmToken, socket: Option<&Path>) -> PathBuf {
    let server = socket
        .map(|s| format!("[server]\nunix_socket = \"{}\"\n", s.display()))
        .unwrap_or_default();
    let text = format!(
        "profile = \"hardened\"\n{server}\n[audit]\nfile = \"{}\"\nseal_key = \"unseal\"\n\
         checkpoint_file = \"{}\"\n{}\n\
         [keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{}",
        dir.join("audit.jsonl").display(),
        dir.join("audit-checkpoint/audit.checkpoint").display(),
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

/// The audit trail's lines as (door, caller, operation, outcome).
fn audit_lines(path: &Path) -> Vec<(String, String, String, String)> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |name: &str| v[name].as_str().unwrap().to_owned();
            (
                field("door"),
                field("caller"),
                field("operation"),
                field("outcome"),
            )
        })
        .collect()
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
    bao.stop();

    // The plugin's broker is the daemon's: the file's [audit] trail records
    // every seal call, as door kms-plugin, with OpenBao's uid as the caller.
    let audit = dir.path().join("audit.jsonl");
    let lines = audit_lines(&audit);
    let caller = format!("unix:uid={},", current_uid());
    assert!(!lines.is_empty(), "no audit line for OpenBao's seal calls");
    assert!(
        lines.iter().all(|(door, who, _, outcome)| door == "kms-plugin"
            && who.starts_with(&caller)
            && outcome == "ok"),
        "{lines:#?}"
    );
    for operation in ["wrap", "unwrap"] {
        assert!(
            lines.iter().any(|(_, _, op, _)| op == operation),
            "no {operation}: {lines:#?}"
        );
    }
    // Two OpenBao runs appended to one hash chain.
    let verify = run_cli(
        &["audit", "verify", "--config", broker.to_str().unwrap()],
        b"",
        &env,
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The plugin's ACL holds against OpenBao itself: a key granted to another
/// uid refuses OpenBao's init, and the refusal is audited as door kms-plugin.
#[test]
fn plugin_acl_refuses_openbao_when_its_uid_is_not_granted() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let audit = dir.path().join("audit.jsonl");
    let broker = dir.path().join("plugin.toml");
    fs::write(
        &broker,
        format!(
            "profile = \"hardened\"\n[audit]\nfile = \"{}\"\nseal_key = \"unseal\"\ncheckpoint_file = \"{}\"\n{}\n\
             [keys.unseal]\nbackend = \"hsm\"\n\
             key_label = \"unseal-key\"\nallow = {{ wrap = [\"uid:4242\"], unwrap = [\"uid:4242\"] }}\n",
            audit.display(),
            dir.path().join("audit-checkpoint/audit.checkpoint").display(),
            token.backend_toml("hsm"),
        ),
    )
    .unwrap();
    let config = BaoConfig::write(
        dir.path(),
        &plugin_seal(&format!("config_file = \"{}\"", broker.display())),
    );
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];
    let bao = OpenBao::start(&config, &env, "bao.log");
    let out = bao.cli(
        &["operator", "init", "-recovery-shares=1", "-recovery-threshold=1"],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "init succeeded: {text}");
    assert!(text.contains("PermissionDenied"), "{text}");
    let status = bao.cli(&["status", "-format=json"], None);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    // OpenBao records the barrier before it wraps the root key, so it may
    // count itself initialised; it can never unseal.
    assert_eq!(status["sealed"], true, "{status}");
    bao.stop();

    let lines = audit_lines(&audit);
    let caller = format!("unix:uid={},", current_uid());
    assert!(!lines.is_empty(), "no audit line for the refused wrap");
    assert!(
        lines.iter().all(|(door, who, op, outcome)| door == "kms-plugin"
            && who.starts_with(&caller)
            && op == "wrap"
            && outcome == "PermissionDenied"),
        "{lines:#?}"
    );
}

/// A config the in-process plugin cannot honour stops OpenBao at start-up
/// with the field named: a listener table, or an ACL that OpenBao's unix
/// credentials can never satisfy.
#[test]
fn plugin_refuses_a_config_it_cannot_honour_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];
    let refusals = [
        (
            "[server.kms_v2]\nsocket = \"/tmp/never.sock\"\nkey_name = \"unseal\"\n",
            "allow = { any = [\"uid:0\"] }\n".to_owned(),
            "config field `server.kms_v2`: is a listener the KMS plugin cannot serve",
        ),
        (
            "",
            "allow = { wrap = [\"dns:openbao.test\"], unwrap = [\"*\"] }\n".to_owned(),
            "config field `keys.unseal.allow.wrap`: grants wrap to no principal OpenBao can present",
        ),
    ];
    for (i, (server, allow, expected)) in refusals.iter().enumerate() {
        let broker = dir.path().join(format!("plugin-{i}.toml"));
        fs::write(
            &broker,
            format!(
                "profile = \"hardened\"\n{server}{}\n[keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{allow}",
                token.backend_toml("hsm"),
            ),
        )
        .unwrap();
        let sub = dir.path().join(format!("bao-{i}"));
        fs::create_dir_all(&sub).unwrap();
        let config = BaoConfig::write(
            &sub,
            &plugin_seal(&format!("config_file = \"{}\"", broker.display())),
        );
        let mut command = std::process::Command::new(sealbroker_e2e::openbao::bao_bin());
        command.args(["server", "-config"]).arg(&config.path).env_clear();
        for (name, value) in env {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success(), "OpenBao started on refusal {i}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(expected), "refusal {i}: {text}");
    }
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
    // Its unseal attempt fails, naming the broker as unavailable; waits for
    // that attempt, not for a guessed time.
    let bao = OpenBao::start(&config, &[], "bao-2.log");
    wait_until_async(
        "OpenBao's unseal attempt to fail with the broker unavailable",
        Duration::from_secs(30),
        || bao.logs().contains("sealbroker: Unavailable"),
    )
    .await;
    assert_eq!(bao.sealed(), Some(true), "OpenBao unsealed without its broker");

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
    unseal_migrate(&bao, &unseal_key);
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

/// `bao operator unseal -migrate KEY`, asserting that the unseal took.
///
/// OpenBao answers an unseal with its seal status, which it reads through
/// the configured (new) seal. During a Shamir → auto-seal migration on raft
/// the barrier config in storage still says `shamir` until the node turns
/// active and migrates, so that read can lose the race and the request fails
/// with 500 `barrier seal type of "shamir" does not match loaded type of
/// "sealbroker"` after the server has already logged `vault is unsealed`.
/// That one answer, and only when the log shows the unseal, is accepted; the
/// caller asserts the migration's outcome (unsealed, the secret reads back,
/// and a restart auto-unseals through sealbroker).
fn unseal_migrate(bao: &OpenBao, key: &str) {
    let out = bao.cli(&["operator", "unseal", "-migrate", key], None);
    if out.status.success() {
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = bao.logs();
    assert!(
        stderr.contains(r#"barrier seal type of "shamir" does not match loaded type of "sealbroker""#)
            && logs.contains("core: unsealing using migration seal")
            && logs.contains("core: vault is unsealed"),
        "bao operator unseal -migrate failed: {stderr}\n--- server log ---\n{logs}"
    );
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
            "profile = \"hardened\"\n{}\n[keys.unseal]\n{}\n{}",
            tokens.backends_toml(),
            tokens.members_toml(),
            audit_toml(dir.path(), "unseal"),
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
