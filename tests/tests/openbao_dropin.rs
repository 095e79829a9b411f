//! sealbroker as a drop-in for OpenBao's official KMS plugins: OpenBao 2.6.2
//! seals with its built-in `awskms` seal (against moto), then OpenBao 2.7.2
//! runs on the same data with `plugin "kms" "awskms"` pointing at
//! `sealbroker kms-plugin awskms` and the seal stanza untouched. The stock
//! `gcpckms` and `azurekeyvault` stanzas run through the in-repo stand-ins
//! for Cloud KMS and Key Vault (there are no emulators), included from the
//! backends' own tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sealbroker_e2e::openbao::{BaoConfig, BaoLaunch, OpenBao, install_plugin};
use sealbroker_e2e::*;

/// The Cloud KMS stand-in (`start_fake`, `pki`, the OAuth client's values).
#[path = "../../backends/gcpckms/tests/fake_gcp.rs"]
#[allow(dead_code, unused_imports, clippy::all)]
mod fake_gcp;

/// The Key Vault stand-in.
#[path = "../../backends/azurekeyvault/tests/standin/mod.rs"]
mod azure_standin;

const REGION: &str = "eu-west-1";
const ACCESS_KEY: &str = "AKIADROPINTESTKEY001";
/// moto accepts any credentials; this one must never reach a log.
const SECRET_KEY: &str = "dropin-aws-secret-DO-NOT-LEAK-5521";
const SECRET: &str = "kv-secret-written-by-openbao-2.6";

/// OpenBao 2.6.2, whose built-in awskms seal writes the data we must read.
fn bao_2_6() -> PathBuf {
    let path = std::env::var_os("SEALBROKER_BAO_2_6")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sealbroker-peers/venv-openbao-2.6.2/bin/bao")
        });
    assert!(
        path.exists(),
        "OpenBao 2.6.2 is not installed at {}: run tests/peers/install.sh (it sets SEALBROKER_BAO_2_6)",
        path.display()
    );
    path
}

use sealbroker_e2e::moto::Moto;

/// Creates a symmetric key on moto; returns (key id, key ARN).
fn create_key(moto: &Moto) -> (String, String) {
    {
        let script = "import boto3, sys\n\
             kms = boto3.client('kms', endpoint_url=sys.argv[1], region_name=sys.argv[2],\n\
             aws_access_key_id=sys.argv[3], aws_secret_access_key=sys.argv[4])\n\
             meta = kms.create_key(Description='openbao unseal')['KeyMetadata']\n\
             print(meta['KeyId'], meta['Arn'])\n";
        let out = Command::new(peers_python())
            .args(["-c", script, &moto.endpoint(), REGION, ACCESS_KEY, SECRET_KEY])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut words = text.split_whitespace();
        (words.next().unwrap().to_owned(), words.next().unwrap().to_owned())
    }
}

/// The stock `seal "awskms"` stanza, exactly as an OpenBao 2.6 user has it.
fn awskms_stanza(moto: &Moto, key_id: &str) -> String {
    format!(
        "seal \"awskms\" {{\n  region     = \"{REGION}\"\n  access_key = \"{ACCESS_KEY}\"\n  \
         secret_key = \"{SECRET_KEY}\"\n  kms_key_id = \"{key_id}\"\n  endpoint   = \"{}\"\n}}\n",
        moto.endpoint()
    )
}

/// Raft storage and a loopback listener in `dir`, plus `rest`; returns the
/// config path and the API port.
fn write_hcl(dir: &Path, port: u16, cluster_port: u16, rest: &str) -> PathBuf {
    let path = dir.join("bao.hcl");
    let base = BaoConfig::storage_and_listener(dir, port, cluster_port);
    fs::write(&path, format!("{base}{rest}")).unwrap();
    path
}

/// `plugin "kms" "<seal_type>"` pointing at sealbroker in drop-in mode.
fn drop_in_plugin(dir: &Path, seal_type: &str) -> String {
    let plugins = dir.join("plugins");
    let sha = install_plugin(&plugins);
    format!(
        "plugin_directory = \"{}\"\nplugin \"kms\" \"{seal_type}\" {{\n  command   = \"sealbroker\"\n  \
         args      = [\"kms-plugin\", \"{seal_type}\"]\n  sha256sum = \"{sha}\"\n}}\n",
        plugins.display()
    )
}

fn seal_type(bao: &OpenBao) -> serde_json::Value {
    let status: serde_json::Value =
        serde_json::from_str(&bao.must(&["status", "-format=json"], None)).unwrap();
    assert_eq!(status["migration"], false, "{status}");
    status["type"].clone()
}

#[test]
fn openbao_2_6_awskms_data_auto_unseals_on_2_7_through_the_sealbroker_drop_in() {
    sweep::secret(SECRET_KEY);
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let (key_id, _arn) = create_key(&moto);
    let (port, cluster_port) = (free_port(), free_port());
    let stanza = awskms_stanza(&moto, &key_id);

    // 1. OpenBao 2.6.2, built-in awskms seal: init and write a secret.
    let config = write_hcl(dir.path(), port, cluster_port, &stanza);
    let launch = BaoLaunch::config(dir.path(), port, &config).binary(&bao_2_6());
    let bao = OpenBao::start_launch(&launch, &dir.path().join("bao-2.6-init.log"));
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&root, Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    assert_eq!(seal_type(&bao), "awskms");
    let logs = bao.logs();
    assert!(
        !logs.contains("sealbroker"),
        "2.6.2 must seal on its own:\n{logs}"
    );
    bao.stop();

    // 2. OpenBao 2.7.2, same data, same stanza, the plugin is sealbroker.
    let config = write_hcl(
        dir.path(),
        port,
        cluster_port,
        &format!("{}{stanza}", drop_in_plugin(dir.path(), "awskms")),
    );
    let launch = BaoLaunch::config(dir.path(), port, &config);
    let bao = OpenBao::start_launch(&launch, &dir.path().join("bao-2.7-dropin.log"));
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&root, Duration::from_secs(30));
    assert_eq!(bao.read_secret(&root), SECRET);
    assert_eq!(seal_type(&bao), "awskms");
    let logs = bao.logs();
    assert!(logs.contains("unsealed with stored key"), "{logs}");
    assert!(
        logs.contains("kms.sealbroker"),
        "the sealbroker plugin did not run:\n{logs}"
    );
    // The KeyId the plugin reports is the ARN 2.6.2 stored: no re-wrap.
    assert!(!logs.contains("upgrading stored keys"), "{logs}");
    assert!(!logs.contains("upgrading recovery key"), "{logs}");
    assert!(!logs.contains("upgrade seal keys failed"), "{logs}");
    assert!(
        !logs.contains(SECRET_KEY),
        "the AWS secret key reached OpenBao's log"
    );
    bao.stop();

    // 3. The other way: blobs the plugin writes open with the stock seal.
    // OpenBao 2.6.2 also takes KMS plugins, so a fresh cluster initialised
    // through the drop-in on 2.6.2 then restarts on 2.6.2's built-in seal
    // (2.7 data cannot go back to 2.6 at all: its storage changed).
    let fresh = dir.path().join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    let (port, cluster_port) = (free_port(), free_port());
    let config = write_hcl(
        &fresh,
        port,
        cluster_port,
        &format!("{}{stanza}", drop_in_plugin(&fresh, "awskms")),
    );
    let launch = BaoLaunch::config(&fresh, port, &config).binary(&bao_2_6());
    let bao = OpenBao::start_launch(&launch, &fresh.join("bao-2.6-plugin-init.log"));
    let fresh_root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&fresh_root, Duration::from_secs(30));
    bao.write_secret(&fresh_root, "kv-secret-written-through-sealbroker");
    assert_eq!(seal_type(&bao), "awskms");
    let logs = bao.logs();
    assert!(
        logs.contains("kms.sealbroker"),
        "the sealbroker plugin did not run:\n{logs}"
    );
    bao.stop();

    let config = write_hcl(&fresh, port, cluster_port, &stanza);
    let launch = BaoLaunch::config(&fresh, port, &config).binary(&bao_2_6());
    let bao = OpenBao::start_launch(&launch, &fresh.join("bao-2.6-builtin.log"));
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&fresh_root, Duration::from_secs(30));
    assert_eq!(
        bao.read_secret(&fresh_root),
        "kv-secret-written-through-sealbroker"
    );
    let logs = bao.logs();
    assert!(!logs.contains("kms.sealbroker"), "{logs}");
    // The stored blob names the key ARN the stock seal reports: no re-wrap.
    assert!(!logs.contains("upgrading stored keys"), "{logs}");
    assert!(!logs.contains("upgrading recovery key"), "{logs}");
    assert!(!logs.contains("upgrade seal keys failed"), "{logs}");
    bao.stop();
}

const PIN: &str = "dropin-hsm-pin-7730";

/// The stock `seal "pkcs11"` stanza on a SoftHSM token.
fn pkcs11_stanza(token: &SoftHsmToken, key_label: &str, mechanism: &str) -> String {
    format!(
        "seal \"pkcs11\" {{\n  lib         = \"{SOFTHSM_MODULE}\"\n  token_label = \"{}\"\n  \
         pin         = \"{PIN}\"\n  key_label   = \"{key_label}\"\n  mechanism   = \"{mechanism}\"\n}}\n",
        token.label
    )
}

#[test]
fn openbao_2_7_with_a_stock_pkcs11_stanza_inits_restarts_and_auto_unseals_through_the_drop_in() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let (port, cluster_port) = (free_port(), free_port());
    let stanza = pkcs11_stanza(&token, "unseal-key", "CKM_AES_GCM");
    let config = write_hcl(
        dir.path(),
        port,
        cluster_port,
        &format!("{}{stanza}", drop_in_plugin(dir.path(), "pkcs11")),
    );
    let launch = BaoLaunch::config(dir.path(), port, &config).env("SOFTHSM2_CONF", &token.conf);

    let bao = OpenBao::start_launch(&launch, &dir.path().join("bao-init.log"));
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&root, Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    assert_eq!(seal_type(&bao), "pkcs11");
    bao.stop();

    let bao = OpenBao::start_launch(&launch, &dir.path().join("bao-restart.log"));
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&root, Duration::from_secs(30));
    assert_eq!(bao.read_secret(&root), SECRET);
    assert_eq!(seal_type(&bao), "pkcs11");
    let logs = bao.logs();
    assert!(logs.contains("unsealed with stored key"), "{logs}");
    assert!(
        logs.contains("kms.sealbroker"),
        "the sealbroker plugin did not run:\n{logs}"
    );
    assert!(!logs.contains("upgrading stored keys"), "{logs}");
    assert!(!logs.contains("upgrade seal keys failed"), "{logs}");
    assert!(!logs.contains(PIN), "the HSM PIN reached OpenBao's log");
    bao.stop();
}

/// Runs `bao server` (2.7.2) on `config`, which must fail at start-up;
/// returns its output.
fn start_fails(dir: &Path, config: &Path, env: &[(&str, &Path)]) -> String {
    let (status, text) =
        sealbroker_e2e::openbao::bao_server_until_exit(dir, config, env, "a bad seal stanza");
    assert!(!status.success(), "OpenBao started on a bad seal stanza:\n{text}");
    text
}

#[test]
fn stock_stanza_errors_reach_the_operator_in_the_stock_words() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let plugin = drop_in_plugin(dir.path(), "pkcs11");
    let env = [("SOFTHSM2_CONF", token.conf.as_path())];
    let good = pkcs11_stanza(&token, "unseal-key", "CKM_AES_GCM");
    let cases = [
        // A missing required key.
        (
            good.replace(&format!("  pin         = \"{PIN}\"\n"), ""),
            "pin is required",
        ),
        // A bad mechanism.
        (
            pkcs11_stanza(&token, "unseal-key", "AES_CBC"),
            "unsupported mechanism: AES_CBC",
        ),
        (
            pkcs11_stanza(&token, "unseal-key", "CKM_RSA_PKCS"),
            "deprecated mechanism: CKM_RSA_PKCS",
        ),
    ];
    for (stanza, expected) in cases {
        let config = write_hcl(dir.path(), free_port(), free_port(), &format!("{plugin}{stanza}"));
        let output = start_fails(dir.path(), &config, &env);
        assert!(
            output.contains(&format!("Error configuring seal \"pkcs11\": {expected}\n")),
            "expected {expected:?}:\n{output}"
        );
        assert!(!output.contains(PIN), "the PIN reached OpenBao's output");
    }
    // The stock awskms seal has no key id: same words as the stock plugin.
    let config = write_hcl(
        dir.path(),
        free_port(),
        free_port(),
        &format!(
            "{}seal \"awskms\" {{\n  region = \"{REGION}\"\n}}\n",
            drop_in_plugin(dir.path(), "awskms")
        ),
    );
    let output = start_fails(dir.path(), &config, &[]);
    assert!(
        output.contains(
            "Error configuring seal \"awskms\": key id not found in env or config for aws kms wrapper configuration"
        ),
        "{output}"
    );
    // A seal type the drop-in does not stand in for is refused by name.
    let config = write_hcl(
        dir.path(),
        free_port(),
        free_port(),
        &format!(
            "{}seal \"ocikms\" {{\n  key_id = \"k\"\n}}\n",
            drop_in_plugin(dir.path(), "ocikms")
        ),
    );
    let output = start_fails(dir.path(), &config, &[]);
    assert!(
        output.contains("Error configuring seal \"ocikms\": sealbroker kms-plugin: cannot stand in for OpenBao's \"ocikms\" seal"),
        "{output}"
    );
}

/// `sealbroker_endpoint` forwards a stock `seal "pkcs11"` to a sealbroker
/// daemon: OpenBao's config and environment hold no PIN, token or module,
/// the daemon audits every call, and OpenBao still records seal type pkcs11.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_drop_in_keeps_the_hsm_credentials_in_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let socket = dir.path().join("sb.sock");
    let audit = dir.path().join("audit.jsonl");
    let daemon_config = dir.path().join("daemon.toml");
    fs::write(
        &daemon_config,
        format!(
            "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\n[audit]\nfile = \"{}\"\nseal_key = \"unseal\"\n\
             checkpoint_file = \"{}\"\n{}\n[keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{}",
            socket.display(),
            audit.display(),
            dir.path().join("audit-checkpoint/audit.checkpoint").display(),
            token.backend_toml("hsm"),
            allow_test_callers()
        ),
    )
    .unwrap();
    let daemon = Daemon::serve(&daemon_config, Some(&token), &dir.path().join("daemon.log")).await;

    let stanza = format!(
        "seal \"pkcs11\" {{\n  sealbroker_endpoint = \"unix://{}\"\n  sealbroker_key_name = \"unseal\"\n}}\n",
        socket.display()
    );
    let (port, cluster_port) = (free_port(), free_port());
    let config = write_hcl(
        dir.path(),
        port,
        cluster_port,
        &format!("{}{stanza}", drop_in_plugin(dir.path(), "pkcs11")),
    );
    // No SOFTHSM2_CONF: OpenBao and its plugin cannot reach the token.
    let launch = BaoLaunch::config(dir.path(), port, &config);
    let bao = OpenBao::start_launch(&launch, &dir.path().join("bao-init.log"));
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&root, Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    assert_eq!(seal_type(&bao), "pkcs11");
    bao.stop();

    let bao = OpenBao::start_launch(&launch, &dir.path().join("bao-restart.log"));
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&root, Duration::from_secs(30));
    assert_eq!(bao.read_secret(&root), SECRET);
    assert_eq!(seal_type(&bao), "pkcs11");
    assert!(!bao.logs().contains("upgrading stored keys"), "{}", bao.logs());
    bao.stop();

    // Every seal call went through the daemon, and was audited there.
    let trail = fs::read_to_string(&audit).unwrap();
    let operations: Vec<String> = trail
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v["door"] == "grpc")
        .map(|v| v["operation"].as_str().unwrap_or_default().to_owned())
        .collect();
    for operation in ["wrap", "unwrap"] {
        assert!(
            operations.iter().any(|o| o == operation),
            "no {operation} in {trail}"
        );
    }
    assert!(!daemon.logs().contains(PIN));

    // A stanza that still carries a secret is refused, naming the key.
    let config = write_hcl(
        dir.path(),
        free_port(),
        free_port(),
        &format!(
            "{}{}",
            drop_in_plugin(dir.path(), "pkcs11"),
            stanza.replace("}\n", &format!("  pin = \"{PIN}\"\n}}\n"))
        ),
    );
    let output = start_fails(dir.path(), &config, &[]);
    assert!(output.contains("remove pin from seal \"pkcs11\""), "{output}");
    assert!(!output.contains(PIN), "{output}");
}

/// `authorized_user` credentials whose token endpoint is the GCP stand-in.
fn gcp_credentials(dir: &Path, fake: &fake_gcp::FakeKms) -> PathBuf {
    let path = dir.join("gcp-credentials.json");
    let json = serde_json::json!({
        "type": "authorized_user",
        "client_id": fake_gcp::CLIENT_ID,
        "client_secret": fake_gcp::CLIENT_SECRET,
        "refresh_token": fake_gcp::REFRESH_TOKEN,
        "token_uri": format!("{}/token", fake.endpoint),
    });
    fs::write(&path, json.to_string()).unwrap();
    path
}

/// The stock `seal "gcpckms"` stanza for the stand-in's key
/// (`projects/p/locations/global/keyRings/sealbroker/cryptoKeys/unseal`).
fn gcpckms_stanza(credentials: &Path, extra: &str) -> String {
    format!(
        "seal \"gcpckms\" {{\n  project     = \"p\"\n  region      = \"global\"\n  key_ring    = \"sealbroker\"\n  \
         crypto_key  = \"unseal\"\n  credentials = \"{}\"\n{extra}}}\n",
        credentials.display()
    )
}

/// Runs OpenBao 2.7.2 with `plugin "kms" "<seal_type>"` and `stanza`:
/// init, a secret, restart, auto-unseal, the secret intact, no re-wrap.
/// Returns the restarted server (still running) and its root token.
fn init_restart_and_unseal(
    dir: &Path,
    seal_type: &str,
    stanza: &str,
    env: &[(&str, String)],
    secrets: &[&str],
) -> (OpenBao, String) {
    let (port, cluster_port) = (free_port(), free_port());
    let config = write_hcl(
        dir,
        port,
        cluster_port,
        &format!("{}{stanza}", drop_in_plugin(dir, seal_type)),
    );
    let launch = env
        .iter()
        .fold(BaoLaunch::config(dir, port, &config), |launch, (k, v)| {
            launch.env(k, v)
        });
    let bao = OpenBao::start_launch(&launch, &dir.join("bao-init.log"));
    let root = bao.init_auto();
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&root, Duration::from_secs(30));
    bao.write_secret(&root, SECRET);
    assert_eq!(seal_type_of(&bao), seal_type);
    bao.stop();

    let bao = OpenBao::start_launch(&launch, &dir.join("bao-restart.log"));
    bao.wait_unsealed(Duration::from_secs(30));
    bao.wait_active(&root, Duration::from_secs(30));
    assert_eq!(bao.read_secret(&root), SECRET);
    assert_eq!(seal_type_of(&bao), seal_type);
    let logs = bao.logs();
    assert!(logs.contains("unsealed with stored key"), "{logs}");
    assert!(
        logs.contains("kms.sealbroker"),
        "the sealbroker plugin did not run:\n{logs}"
    );
    // The KeyId matches the stored blob's key id: nothing is re-wrapped.
    assert!(!logs.contains("upgrading stored keys"), "{logs}");
    assert!(!logs.contains("upgrade seal keys failed"), "{logs}");
    for secret in secrets {
        assert!(!logs.contains(secret), "a credential reached OpenBao's log");
    }
    (bao, root)
}

fn seal_type_of(bao: &OpenBao) -> String {
    seal_type(bao).as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_2_7_with_a_stock_gcpckms_stanza_inits_restarts_and_auto_unseals_through_the_stand_in() {
    sweep::secret(fake_gcp::REFRESH_TOKEN);
    sweep::secret(fake_gcp::CLIENT_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = fake_gcp::pki(dir.path());
    let fake = fake_gcp::start_fake(tls).await;
    let credentials = gcp_credentials(dir.path(), &fake);
    let env = [
        ("SSL_CERT_FILE", ca.display().to_string()),
        ("SEALBROKER_TEST_GCPCKMS_ENDPOINT", fake.endpoint.clone()),
    ];
    let dir = dir.path().to_owned();
    let stanza = gcpckms_stanza(&credentials, "");
    let requests_before = fake.requests();
    let (bao, _root) = tokio::task::spawn_blocking(move || {
        init_restart_and_unseal(
            &dir,
            "gcpckms",
            &stanza,
            &env,
            &[fake_gcp::REFRESH_TOKEN, fake_gcp::CLIENT_SECRET],
        )
    })
    .await
    .unwrap();
    bao.stop();
    // Every seal call went to the stand-in.
    assert!(fake.requests() > requests_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_2_7_with_a_stock_azurekeyvault_stanza_inits_restarts_and_auto_unseals_through_the_stand_in()
{
    sweep::secret(azure_standin::CLIENT_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = azure_standin::pki(dir.path());
    let fake = azure_standin::start_fake(tls).await;
    let port = fake.vault_url.rsplit(':').next().unwrap().to_owned();
    let stanza = format!(
        "seal \"azurekeyvault\" {{\n  tenant_id     = \"{}\"\n  client_id     = \"{}\"\n  \
         client_secret = \"{}\"\n  vault_name    = \"sealbroker\"\n  key_name      = \"{}\"\n  \
         resource      = \"vault.azure.test:{port}\"\n}}\n",
        azure_standin::TENANT,
        azure_standin::CLIENT_ID,
        azure_standin::CLIENT_SECRET,
        azure_standin::KEY,
    );
    let env = [
        ("SSL_CERT_FILE", ca.display().to_string()),
        ("AZURE_AUTHORITY_HOST", fake.authority.clone()),
        ("SEALBROKER_TEST_AZUREKEYVAULT_ADDRESS", "127.0.0.1".to_owned()),
    ];
    let dir = dir.path().to_owned();
    let (bao, _root) = tokio::task::spawn_blocking(move || {
        init_restart_and_unseal(
            &dir,
            "azurekeyvault",
            &stanza,
            &env,
            &[azure_standin::CLIENT_SECRET],
        )
    })
    .await
    .unwrap();
    bao.stop();
    let log = fake.log();
    let version = fake.version_id(1);
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("/keys/unseal/{version}/unwrapkey"))),
        "the blob was unwrapped with the version it names: {log:?}"
    );
}

#[test]
fn gcpckms_and_azurekeyvault_stanza_errors_reach_the_operator_in_the_stock_words() {
    let dir = tempfile::tempdir().unwrap();
    let stanza =
        gcpckms_stanza(Path::new("/nonexistent.json"), "").replace("  crypto_key  = \"unseal\"\n", "");
    let config = write_hcl(
        dir.path(),
        free_port(),
        free_port(),
        &format!("{}{stanza}", drop_in_plugin(dir.path(), "gcpckms")),
    );
    let output = start_fails(dir.path(), &config, &[]);
    assert!(
        output.contains(
            "Error configuring seal \"gcpckms\": 'crypto_key' not found for GCP CKMS wrapper configuration"
        ),
        "{output}"
    );
    let config = write_hcl(
        dir.path(),
        free_port(),
        free_port(),
        &format!(
            "{}seal \"azurekeyvault\" {{\n  tenant_id = \"t\"\n  key_name = \"k\"\n}}\n",
            drop_in_plugin(dir.path(), "azurekeyvault")
        ),
    );
    let output = start_fails(dir.path(), &config, &[]);
    assert!(
        output.contains("Error configuring seal \"azurekeyvault\": vault name is required"),
        "{output}"
    );
    let config = write_hcl(
        dir.path(),
        free_port(),
        free_port(),
        &format!(
            "{}seal \"azurekeyvault\" {{\n  vault_name = \"v\"\n  key_name = \"k\"\n  key_not_required = \"maybe\"\n}}\n",
            drop_in_plugin(dir.path(), "azurekeyvault")
        ),
    );
    let output = start_fails(dir.path(), &config, &[]);
    assert!(
        output.contains(
            "Error configuring seal \"azurekeyvault\": strconv.ParseBool: parsing \"maybe\": invalid syntax"
        ),
        "{output}"
    );
}
