//! `serve` and `keygen`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use sealbroker_server::broker::{Broker, key_ring_of};
use sealbroker_server::config::{Config, ConfigError};
use sealbroker_server::daemon::{self, Bound};
use sealbroker_server::logging;

use crate::backends;
use crate::cli::{KeygenArgs, ServeArgs};

/// The default --dev data directory.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sealbroker");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/sealbroker")
}

fn toml_string(path: &std::path::Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// Renders the embedded development config for `data_dir`.
pub fn dev_config(data_dir: &std::path::Path, port: u16) -> String {
    include_str!("dev.toml")
        .replace("{socket}", &toml_string(&data_dir.join("sealbroker.sock")))
        .replace("{key_file}", &toml_string(&data_dir.join("dev.key")))
        .replace("{port}", &port.to_string())
}

/// The config, the dev data directory (with --dev), and the text the
/// config was parsed from (its SHA-256 is what the broker reports under).
fn load(args: &ServeArgs) -> Result<(Config, Option<PathBuf>, String), String> {
    if args.dev {
        let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let text = dev_config(&data_dir, args.port);
        Ok((
            Config::parse(&text).map_err(|e| format!("embedded dev config: {e}"))?,
            Some(data_dir),
            text,
        ))
    } else {
        let path = args.config.as_ref().ok_or("give --config FILE or --dev")?;
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
        Ok((
            Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            None,
            text,
        ))
    }
}

fn print_dev_banner(bound: &Bound) {
    let socket = bound
        .unix_socket
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let tcp = bound.tcp.map(|a| a.to_string()).unwrap_or_default();
    eprintln!(
        "\nsealbroker is serving on the DEVELOPMENT profile (software key; not a root of trust).\n\
         \n  unix socket: {socket}\n  gRPC (TCP):  {tcp} (plaintext, loopback only)\n\
         \nTry it:\n  echo -n 'my secret' | sealbroker wrap --socket {socket} --key dev > blob.b64\n  \
         sealbroker unwrap --socket {socket} < blob.b64\n  \
         grpcurl -plaintext -d '{{\"key_name\":\"dev\",\"plaintext\":\"aGVsbG8=\"}}' {tcp} sealbroker.v1.SealService/Wrap\n\
         \nStop with Ctrl-C.\n"
    );
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// SIGXFSZ on Linux.
const SIGXFSZ: i32 = 25;

pub async fn run(args: ServeArgs) -> Result<ExitCode, String> {
    // A file-size limit (`ulimit -f`) must fail the audit write, which
    // refuses that one operation, not kill the broker with SIGXFSZ.
    let _file_size_limit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ))
        .map_err(|e| format!("cannot take SIGXFSZ: {e}"))?;
    let (config, dev_dir, text) = load(&args)?;
    config.require_listener().map_err(|e| e.to_string())?;
    logging::init(config.log.format, &config.log.level);
    let broker = Broker::from_config(&config, &backends::registry())
        .await
        .map_err(|e| e.to_string())?;
    broker.set_loaded_config(text.as_bytes());
    let broker = Arc::new(broker);

    if args.check {
        let status = broker.status(true).await;
        let mut healthy = true;
        for key in &status.keys {
            match &key.error {
                None => println!("key {:?} on backend {:?}: ok", key.key_name, key.backend_name),
                Some(error) => {
                    healthy = false;
                    println!(
                        "key {:?} on backend {:?}: UNHEALTHY: {error}",
                        key.key_name, key.backend_name
                    );
                }
            }
        }
        return Ok(if healthy {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    // Probe every backend once in the background: a missing HSM is logged at
    // start-up, but does not stop the broker from serving the others.
    let prober = broker.clone();
    tokio::spawn(async move {
        let status = prober.status(true).await;
        for key in status.keys.iter().filter(|k| k.healthy) {
            tracing::info!(key = %key.key_name, backend = %key.backend_name, "backend ready");
        }
    });

    let is_dev = dev_dir.is_some();
    tracing::info!(
        profile = config.profile.as_str(),
        version = env!("CARGO_PKG_VERSION"),
        "sealbroker starting"
    );
    let reload = args
        .config
        .clone()
        .filter(|_| !args.dev)
        .map(|path| daemon::ReloadSource {
            path,
            registry: backends::registry(),
            poll: std::time::Duration::from_secs(config.server.reload_poll_secs),
        });
    daemon::serve(broker, &config, reload, shutdown_signal(), |bound| {
        if is_dev {
            print_dev_banner(bound);
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

pub async fn keygen(args: KeygenArgs) -> Result<ExitCode, String> {
    let config = Config::load(&args.config).map_err(|e| format!("{}: {e}", args.config.display()))?;
    logging::init(config.log.format, &config.log.level);
    let key_path = format!("keys.{}", args.key);
    if let Some(version) = args.version {
        return create_version(&config, &args.key, version).await;
    }
    let spec = config
        .keys
        .get(&args.key)
        .ok_or_else(|| ConfigError::new(&key_path, "no such key in the config").to_string())?;
    let version = spec
        .version(spec.primary())
        .ok_or_else(|| ConfigError::new(&key_path, "has no primary version").to_string())?;
    // Every member of the primary version: an HA key gets its key on each backend.
    let registry = backends::registry();
    for member in &version.members {
        let (kind, backend_table, _) = registry
            .kind_of(&config, &member.backend)
            .map_err(|e| e.to_string())?;
        let backend_path = format!("backends.{}", member.backend);
        let opened = kind
            .open(&backend_table, &backend_path, config.profile)
            .await
            .map_err(|e| e.to_string())?;
        let created = opened
            .create_key(&member.settings, &member.path)
            .await
            .map_err(|e| format!("{backend_path} ({} backend): {e}", kind.name()))?;
        println!("created {created}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `keygen --version N`: version N of `key` on every member of the newest
/// version at or below N, through the backends' own idempotent creation.
async fn create_version(config: &Config, key: &str, version: u32) -> Result<ExitCode, String> {
    let key_path = format!("keys.{key}");
    // Only the key ring: a live broker may be writing the audit trail.
    let ring = key_ring_of(config, &backends::registry())
        .await
        .map_err(|e| e.to_string())?;
    let logical = ring
        .get(key)
        .map_err(|_| ConfigError::new(&key_path, "no such key in the config").to_string())?;
    let template = logical
        .versions()
        .filter(|v| v.version <= version)
        .max_by_key(|v| v.version)
        .ok_or_else(|| {
            ConfigError::new(&key_path, format!("has no version at or below {version}")).to_string()
        })?;
    for member in &template.members {
        let created = member.backend.create_version(version).await.map_err(|e| {
            format!(
                "{key_path} version {version} on backend {:?}: {e}",
                member.backend_name
            )
        })?;
        println!(
            "version {version} of {key} on backend {}: {}",
            member.backend_name,
            created.backend.key_identity()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn kms_plugin(stock: Option<String>) -> Result<ExitCode, String> {
    sealbroker_server::logging::init_plugin();
    sealbroker_server::doors::plugin::run(backends::registry(), stock).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn audit_verify(
    file: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
) -> Result<ExitCode, String> {
    use sealbroker_server::broker::audit::{Verdict, verify, verify_configured};
    let (verdict, shown) = match (config, file) {
        (Some(path), _) => {
            let config = Config::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut audit = config.audit.clone();
            if let Some(file) = file {
                audit.file = Some(file.to_owned());
            }
            let shown = audit
                .file
                .as_ref()
                .map_or_else(|| "audit.file".to_owned(), |f| f.display().to_string());
            let ring = key_ring_of(&config, &backends::registry())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let state_dir = config.server.state_dir.as_deref();
            (verify_configured(&audit, state_dir, &ring).await?, shown)
        }
        (None, Some(file)) => (
            verify(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?,
            file.display().to_string(),
        ),
        (None, None) => return Err("name the audit file, or --config for a keyed chain".to_owned()),
    };
    match verdict {
        Verdict::Intact { lines } => {
            println!("{shown}: intact, {lines} lines");
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Broken { line, reason } => {
            println!("{shown}: BROKEN at line {line}: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}
