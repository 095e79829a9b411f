//! A replica's report of the key versions it can use, kept as one
//! annotation on its own Pod, for the operator that promotes a version only
//! once every replica reports it usable (docs/operator.md).
//!
//! The value is
//! `{"config":"<hex sha256 of the loaded config file>","keys":{"<key>":{"<version>":"usable"|"unusable"|"decrypt"}}}`:
//! primary and staged versions are `usable` or `unusable` by the last
//! health probe, older versions that still open blobs are `decrypt`, and
//! retired versions are left out. The config digest lets the operator count
//! only reports made under the config it rendered.
//!
//! The broker writes it with a JSON merge patch of its own Pod, through the
//! API server, with the Pod's service account token (read again for every
//! request, as projected tokens rotate). It writes only when the report
//! changed, and tries again on the next tick after a failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, Request, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::broker::{Broker, BrokerStatus, VersionRole};
use crate::config::{ConfigError, ReportConfig};

/// The annotation the operator reads.
pub const ANNOTATION: &str = "sealbroker.io/key-versions";
/// The environment variables that name the broker's own Pod.
pub const POD_NAME_ENV: &str = "SEALBROKER_POD_NAME";
pub const POD_NAMESPACE_ENV: &str = "SEALBROKER_POD_NAMESPACE";

/// The report for `status`, under the config whose SHA-256 is `config`.
pub fn report_json(status: &BrokerStatus, config: &str) -> String {
    let mut keys: BTreeMap<&str, BTreeMap<String, &str>> = BTreeMap::new();
    for version in &status.versions {
        let state = match (version.role, version.usable) {
            (VersionRole::Retired, _) => continue,
            (_, Some(true)) => "usable",
            (_, Some(false)) => "unusable",
            (_, None) => "decrypt",
        };
        keys.entry(version.key_name.as_str())
            .or_default()
            .insert(version.version.to_string(), state);
    }
    serde_json::json!({ "config": config, "keys": keys }).to_string()
}

/// Where and as whom the broker writes its report.
pub struct PodReporter {
    api: Uri,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    token_file: PathBuf,
    path: String,
    interval: Duration,
}

impl PodReporter {
    /// The reporter `config` asks for, or `None` when it asks for none.
    /// Refuses, naming the field, what cannot work: no Pod named in the
    /// environment, no API server, an unreadable CA.
    pub fn from_config(config: &ReportConfig) -> Result<Option<PodReporter>, ConfigError> {
        if !config.kubernetes_pod {
            return Ok(None);
        }
        let field = "report.kubernetes_pod";
        let env = |name: &str| {
            std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    field,
                    format!("needs {name} in the environment (the operator sets it from the Pod's metadata)"),
                )
            })
        };
        let (name, namespace) = (env(POD_NAME_ENV)?, env(POD_NAMESPACE_ENV)?);
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !valid(&name) || !valid(&namespace) {
            return Err(ConfigError::new(
                field,
                format!("{POD_NAME_ENV} and {POD_NAMESPACE_ENV} must be Kubernetes names"),
            ));
        }
        let api = match &config.api_server {
            Some(api) => api.clone(),
            None => {
                let host = env("KUBERNETES_SERVICE_HOST")?;
                let port = env("KUBERNETES_SERVICE_PORT")?;
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let api: Uri = api
            .parse()
            .map_err(|e| ConfigError::new("report.api_server", format!("is not a URL: {e}")))?;
        if api.scheme_str() != Some("https") {
            return Err(ConfigError::new(
                "report.api_server",
                "must be https://: the report is sent with the Pod's token",
            ));
        }
        let host = api
            .host()
            .ok_or_else(|| ConfigError::new("report.api_server", "names no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = api.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        let ca_error =
            |e: String| ConfigError::new("report.ca_file", format!("{}: {e}", config.ca_file.display()));
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&config.ca_file)
            .map_err(|e| ca_error(e.to_string()))?
        {
            roots
                .add(cert.map_err(|e| ca_error(e.to_string()))?)
                .map_err(|e| ca_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_error("holds no certificate".to_owned()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(PodReporter {
            api,
            host,
            port,
            tls: Arc::new(tls),
            token_file: config.token_file.clone(),
            path: format!("/api/v1/namespaces/{namespace}/pods/{name}"),
            interval: Duration::from_secs(config.interval_secs.max(1)),
        }))
    }

    /// Looks at the versions every interval and writes the report when it
    /// changed, until `stop`.
    pub async fn run(self, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
        let mut sent: Option<String> = None;
        let mut failing = false;
        loop {
            if let Some(config) = broker.loaded_config() {
                let report = report_json(&broker.status(false).await, &config);
                if sent.as_deref() != Some(report.as_str()) {
                    match self.patch(&report).await {
                        Ok(()) => {
                            tracing::info!(pod = %self.path, report = %report, "reported key versions");
                            sent = Some(report);
                            failing = false;
                        }
                        Err(e) => {
                            // Once per outage, not once per tick.
                            if !failing {
                                tracing::warn!(api = %self.api, pod = %self.path, error = %e, "cannot report key versions; retrying");
                            }
                            failing = true;
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One JSON merge patch of the Pod's annotation.
    async fn patch(&self, report: &str) -> Result<(), String> {
        let token = Zeroizing::new(
            std::fs::read_to_string(&self.token_file)
                .map_err(|e| format!("cannot read the token {}: {e}", self.token_file.display()))?,
        );
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| format!("the token in {} is not a header value", self.token_file.display()))?;
        bearer.set_sensitive(true);
        let body = serde_json::json!({ "metadata": { "annotations": { ANNOTATION: report } } }).to_string();
        let request = Request::builder()
            .method(Method::PATCH)
            .uri(&self.path)
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(header::AUTHORIZATION, bearer)
            .header(header::CONTENT_TYPE, "application/merge-patch+json")
            .header(header::ACCEPT, "application/json")
            .body(axum::body::Body::from(body))
            .map_err(|e| e.to_string())?;
        let server_name =
            ServerName::try_from(self.host.clone()).map_err(|e| format!("{}: {e}", self.host))?;
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            tokio::spawn(connection);
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 4096)
                .await
                .unwrap_or_default();
            Err(format!(
                "the API server answered {status}: {}",
                String::from_utf8_lossy(&body)
            ))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::VersionReport;
    use crate::config::Profile;

    fn version(key: &str, version: u32, role: VersionRole, usable: Option<bool>) -> VersionReport {
        VersionReport {
            key_name: key.into(),
            version,
            key_id: format!("{key}-{version}"),
            role,
            usable,
        }
    }

    #[test]
    fn the_report_names_usable_unusable_and_decrypt_only_versions_and_leaves_retired_ones_out() {
        let status = BrokerStatus {
            profile: Profile::Hardened,
            security_risk: false,
            keys: Vec::new(),
            versions: vec![
                version("unseal", 1, VersionRole::Retired, None),
                version("unseal", 2, VersionRole::Decrypt, None),
                version("unseal", 3, VersionRole::Primary, Some(true)),
                version("unseal", 4, VersionRole::Staged, Some(false)),
                version("k8s", 1, VersionRole::Primary, Some(true)),
            ],
            config_error: None,
        };
        let report: serde_json::Value = serde_json::from_str(&report_json(&status, "ab12")).unwrap();
        assert_eq!(
            report,
            serde_json::json!({
                "config": "ab12",
                "keys": {
                    "k8s": {"1": "usable"},
                    "unseal": {"2": "decrypt", "3": "usable", "4": "unusable"}
                }
            })
        );
    }

    #[test]
    fn a_reporter_without_its_pod_in_the_environment_is_refused_naming_the_field() {
        // The test process has no SEALBROKER_POD_NAME.
        let config = ReportConfig {
            kubernetes_pod: true,
            ..ReportConfig::default()
        };
        let Err(refused) = PodReporter::from_config(&config) else {
            panic!("a reporter without a Pod was built");
        };
        assert_eq!(refused.path, "report.kubernetes_pod");
        assert!(refused.message.contains(POD_NAME_ENV), "{refused}");
        assert!(
            PodReporter::from_config(&ReportConfig::default())
                .unwrap()
                .is_none()
        );
    }
}
