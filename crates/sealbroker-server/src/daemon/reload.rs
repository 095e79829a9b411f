//! Live reload: SIGHUP, or a change to the config file, a transit token
//! file or a TLS file, applies the new config without a restart and without
//! dropping calls in flight.
//!
//! Everything is built from the new files first; only when all of it is
//! good is it swapped in: the key ring and ACLs (in the broker), the transit
//! tokens, and each TCP listener's certificate, key and client CA (for
//! connections accepted from then on). A refused reload changes nothing:
//! the old config keeps serving, the log names the field, and `Status`, the
//! `sealbroker_config_reload_failed` metric and the audit trail say so.
//! Listener addresses, the profile, `state_dir`, `[audit]`, `[limits]` and
//! `[log]` take effect at the next restart; a reload that changes them says
//! which.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;
use crate::broker::registry::BackendRegistry;
use crate::config::Config;
use crate::doors::transit::{self, tokens::LiveTokens, tokens::TokenTable};
use crate::net::tls::{self, LiveTls};

/// Where a running daemon's config comes from, so it can be read again.
pub struct ReloadSource {
    pub path: PathBuf,
    pub registry: BackendRegistry,
    /// How often the watched files are compared with what is loaded.
    pub poll: Duration,
}

/// What a reload replaces besides the broker.
#[derive(Default)]
pub(super) struct Live {
    pub tcp_tls: Option<LiveTls>,
    pub transit_tls: Option<LiveTls>,
    pub kmip_tls: Option<LiveTls>,
    pub transit_tokens: Option<LiveTokens>,
}

pub(super) struct Reloader {
    source: ReloadSource,
    broker: Arc<Broker>,
    live: Live,
    /// The config in force.
    running: Mutex<Config>,
    /// The fingerprint of the files as the last reload (or start-up) read
    /// them: a refused reload is not retried until they change again.
    attempted: Mutex<[u8; 32]>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(source: ReloadSource, broker: Arc<Broker>, live: Live, config: Config) -> Self {
        let fingerprint = fingerprint(&source.path, &config);
        Reloader {
            source,
            broker,
            live,
            running: Mutex::new(config),
            attempted: Mutex::new(fingerprint),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads on SIGHUP and whenever a watched file changes, until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut tick = tokio::time::interval(self.source.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let why = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
                _ = tick.tick() => {
                    if !self.changed() {
                        continue;
                    }
                    "a watched file changed"
                }
            };
            self.reload(why).await;
        }
    }

    fn current_fingerprint(&self) -> [u8; 32] {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        fingerprint(&self.source.path, &running)
    }

    fn changed(&self) -> bool {
        self.current_fingerprint() != *self.attempted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the config and every file it names again and applies them, or
    /// keeps the running config and says why.
    pub async fn reload(&self, why: &str) {
        let _one = self.reloading.lock().await;
        *self.attempted.lock().unwrap_or_else(|p| p.into_inner()) = self.current_fingerprint();
        match self.try_reload().await {
            Ok(restart) => {
                tracing::info!(trigger = why, config = %self.source.path.display(), "config reloaded");
                if !restart.is_empty() {
                    tracing::warn!(
                        fields = %restart.join(", "),
                        "changed fields that take effect at the next restart"
                    );
                }
                self.broker.reloaded(None);
            }
            Err(reason) => {
                tracing::error!(
                    trigger = why,
                    error = %reason,
                    "config reload refused; the config before it keeps serving"
                );
                self.broker.reloaded(Some(reason));
            }
        }
    }

    async fn try_reload(&self) -> Result<Vec<String>, String> {
        let path = &self.source.path;
        let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config = std::str::from_utf8(&text)
            .map_err(|_| format!("{}: is not UTF-8 text", path.display()))
            .and_then(|t| Config::parse(t).map_err(|e| format!("{}: {e}", path.display())))?;
        config.require_listener().map_err(|e| e.to_string())?;
        // Taken before the files are read, so a change made while this
        // reload runs is seen by the next poll.
        let seen = fingerprint_of(Some(&text), &watched_files(&config));
        let restart = restart_needed(&self.running.lock().unwrap_or_else(|p| p.into_inner()), &config);
        let tcp = match (
            &self.live.tcp_tls,
            config.server.tcp.as_ref().and_then(|t| t.tls.as_ref()),
        ) {
            (Some(live), Some(t)) => Some((live, tls::server_config(t).map_err(|e| e.to_string())?)),
            _ => None,
        };
        let transit_tls = match (
            &self.live.transit_tls,
            config.server.transit.as_ref().and_then(|t| t.tls.as_ref()),
        ) {
            (Some(live), Some(t)) => Some((
                live,
                tls::server_config_at(t, "server.transit.tls", transit::ALPN).map_err(|e| e.to_string())?,
            )),
            _ => None,
        };
        let kmip_tls = match (
            &self.live.kmip_tls,
            config.server.kmip.as_ref().and_then(|k| k.tls.as_ref()),
        ) {
            (Some(live), Some(t)) => Some((
                live,
                tls::server_config_at(t, "server.kmip.tls", &[]).map_err(|e| e.to_string())?,
            )),
            _ => None,
        };
        let tokens = match (&self.live.transit_tokens, &config.server.transit) {
            (Some(live), Some(t)) => Some((live, TokenTable::load(t).map_err(|e| e.to_string())?)),
            _ => None,
        };
        self.broker
            .reconfigure(&config, &self.source.registry)
            .await
            .map_err(|e| e.to_string())?;
        if let Some((live, server)) = tcp {
            live.replace(server);
        }
        if let Some((live, server)) = transit_tls {
            live.replace(server);
        }
        if let Some((live, server)) = kmip_tls {
            live.replace(server);
        }
        if let Some((live, table)) = tokens {
            live.replace(table);
        }
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = config;
        *self.attempted.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        self.broker.set_loaded_config(&text);
        Ok(restart)
    }
}

/// Every file a reload reads besides the config itself.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut tls = |t: &crate::config::TlsConfig| {
        files.push(t.cert_file.clone());
        files.push(t.key_file.clone());
        files.extend(t.client_ca_file.clone());
    };
    if let Some(t) = config.server.tcp.as_ref().and_then(|t| t.tls.as_ref()) {
        tls(t);
    }
    if let Some(t) = config.server.kmip.as_ref().and_then(|k| k.tls.as_ref()) {
        tls(t);
    }
    if let Some(transit) = &config.server.transit {
        if let Some(t) = &transit.tls {
            tls(t);
        }
        files.extend(transit.tokens.iter().map(|t| t.token_file.clone()));
    }
    files
}

fn fingerprint(config_path: &std::path::Path, config: &Config) -> [u8; 32] {
    fingerprint_of(std::fs::read(config_path).ok().as_deref(), &watched_files(config))
}

/// A digest of the config text and of `files`, by content: a file that is
/// replaced (cert-manager, a Kubernetes Secret's symlink swap) or rewritten
/// in place changes it, and so does one that appears or vanishes.
fn fingerprint_of(config_text: Option<&[u8]>, files: &[PathBuf]) -> [u8; 32] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut add = |name: &[u8], content: Option<&[u8]>| {
        digest.update(name);
        match content {
            Some(bytes) => {
                digest.update(&[1]);
                digest.update(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
            }
            None => digest.update(&[0]),
        }
    };
    add(b"config", config_text);
    for path in files {
        add(
            path.as_os_str().as_encoded_bytes(),
            std::fs::read(path).ok().as_deref(),
        );
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.finish().as_ref());
    out
}

/// The fields that differ between `old` and `new` and that only a restart
/// applies.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let listen = |c: &Config| {
        (
            c.server
                .tcp
                .as_ref()
                .map(|t| (t.listen, t.plaintext, t.tls.is_some())),
            c.server
                .transit
                .as_ref()
                .map(|t| (t.listen, t.mount_path.clone(), t.plaintext, t.tls.is_some())),
        )
    };
    let checks: [(&str, bool); 11] = [
        ("profile", old.profile != new.profile),
        (
            "server.unix_socket",
            differs(&old.server.unix_socket, &new.server.unix_socket),
        ),
        (
            "server.unix_socket_mode",
            old.server.unix_socket_mode != new.server.unix_socket_mode,
        ),
        (
            "server.tcp / server.transit listeners",
            differs(&listen(old), &listen(new)),
        ),
        ("server.kms_v2", differs(&old.server.kms_v2, &new.server.kms_v2)),
        (
            "server.kmip.listen",
            old.server.kmip.as_ref().map(|k| k.listen) != new.server.kmip.as_ref().map(|k| k.listen),
        ),
        (
            "server.metrics",
            differs(&old.server.metrics, &new.server.metrics),
        ),
        ("server.state_dir", old.server.state_dir != new.server.state_dir),
        ("audit", differs(&old.audit, &new.audit)),
        ("limits", differs(&old.limits, &new.limits)),
        ("log", differs(&old.log, &new.log)),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(field, _)| field.to_owned())
        .collect()
}
