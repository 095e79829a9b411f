//! Desired objects for a `SealBroker`, as pure functions of the spec.
//!
//! They come in two sets with two owners:
//! - [`controller_objects`]: the ConfigMaps and the NetworkPolicy, applied by
//!   the long-running controller;
//! - [`access_grant`]: the broker's ServiceAccount and the Role/RoleBinding
//!   that reads exactly the named Secrets, plus the served Pods' right to
//!   report on themselves, applied by the provisioner. The controller can
//!   read these but never write them (docs/operator.md).
//!
//! [`keygen_job`] is the one object the controller creates rather than
//! applies: a short-lived Job that makes one version of one key with the
//! broker's own credentials, which the controller never holds.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;

use crate::crd::SealBroker;
use crate::injection::{self, VOL_CONFIG, VOL_STATE};
use crate::render::{self, Layout, paths};

/// The controller's server-side-apply field manager.
pub const CONTROLLER_MANAGER: &str = "sealbroker-operator";
/// The provisioner's server-side-apply field manager.
pub const PROVISIONER_MANAGER: &str = "sealbroker-provisioner";

/// Object names derived from the SealBroker's name.
pub struct Names {
    pub broker_config: String,
    pub seal_config: String,
    pub network_policy: String,
    /// The key-creation Jobs' NetworkPolicy.
    pub keygen_network_policy: String,
    pub service_account: String,
    pub secrets_role: String,
    /// Role and RoleBinding letting the served Pods report on themselves.
    pub reports_role: String,
}

impl Names {
    pub fn of(sb: &SealBroker) -> Names {
        let name = sb.metadata.name.as_deref().unwrap_or("sealbroker");
        Names {
            broker_config: format!("{name}-broker-config"),
            seal_config: format!("{name}-openbao-seal"),
            network_policy: format!("{name}-sealbroker"),
            keygen_network_policy: format!("{name}-sealbroker-keygen"),
            service_account: format!("{name}-broker"),
            secrets_role: format!("{name}-broker-secrets"),
            reports_role: format!("{name}-broker-reports"),
        }
    }

    /// The key-creation Job for `version` of `key`: the same name every
    /// time, so a reconcile finds the Job an earlier one made. Within the
    /// 63 characters a Job name may have (its Pods carry it as a label).
    pub fn keygen_job(sb: &SealBroker, key: &str, version: u32) -> String {
        let name = sb.metadata.name.as_deref().unwrap_or("sealbroker");
        let readable = format!("{name}-keygen-{key}-v{version}");
        if readable.len() <= 63 {
            return readable;
        }
        let digest = render::config_sha256(&format!("{key}\n{version}"));
        format!("{name}-keygen-{}", &digest[..12])
    }
}

/// Label values on key-creation Jobs, which the controller lists them by.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const KEYGEN_COMPONENT: &str = "keygen";
pub const KEY_LABEL: &str = "sealbroker.io/key";
pub const VERSION_LABEL: &str = "sealbroker.io/key-version";
/// Annotation on a key-creation Job: which attempt for its version it is.
pub const ATTEMPT_ANNOTATION: &str = "sealbroker.io/keygen-attempt";

/// Labels on every object the operator makes.
pub fn labels(sb: &SealBroker) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".into(), CONTROLLER_MANAGER.into()),
        ("app.kubernetes.io/part-of".into(), "sealbroker".into()),
        (
            "sealbroker.io/name".into(),
            sb.metadata.name.clone().unwrap_or_default(),
        ),
    ])
}

fn meta(sb: &SealBroker, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: sb.metadata.namespace.clone(),
        labels: Some(labels(sb)),
        owner_references: owner_ref(sb).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The controller owner reference (needs the SealBroker's uid).
fn owner_ref(sb: &SealBroker) -> Option<OwnerReference> {
    sb.controller_owner_ref(&())
}

/// One desired object, serialised with apiVersion and kind for server-side apply.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Desired {
    ConfigMap(ConfigMap),
    NetworkPolicy(NetworkPolicy),
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
}

impl Desired {
    /// As JSON with `apiVersion` and `kind` set (k8s-openapi leaves them to the serialiser).
    pub fn to_value(&self) -> serde_json::Value {
        // k8s-openapi's Serialize impls write apiVersion and kind themselves.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Desired::ConfigMap(_) => "ConfigMap",
            Desired::NetworkPolicy(_) => "NetworkPolicy",
            Desired::ServiceAccount(_) => "ServiceAccount",
            Desired::Role(_) => "Role",
            Desired::RoleBinding(_) => "RoleBinding",
        }
    }

    pub fn name(&self) -> &str {
        let meta = match self {
            Desired::ConfigMap(o) => &o.metadata,
            Desired::NetworkPolicy(o) => &o.metadata,
            Desired::ServiceAccount(o) => &o.metadata,
            Desired::Role(o) => &o.metadata,
            Desired::RoleBinding(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or("")
    }
}

/// What the controller applies: broker config, seal stanza, and the
/// NetworkPolicies of the served Pods and of the key-creation Jobs.
pub fn controller_objects(sb: &SealBroker) -> Vec<Desired> {
    let names = Names::of(sb);
    let layout = Layout::pod();
    let broker = ConfigMap {
        metadata: meta(sb, &names.broker_config),
        data: Some(BTreeMap::from([(
            paths::CONFIG_FILE.into(),
            render::broker_config(sb, &layout),
        )])),
        ..ConfigMap::default()
    };
    let seal = ConfigMap {
        metadata: meta(sb, &names.seal_config),
        data: Some(BTreeMap::from([(
            paths::SEAL_FILE.into(),
            render::seal_stanza(sb, &layout),
        )])),
        ..ConfigMap::default()
    };
    vec![
        Desired::ConfigMap(broker),
        Desired::ConfigMap(seal),
        Desired::NetworkPolicy(network_policy(sb, &names)),
        Desired::NetworkPolicy(keygen_network_policy(sb, &names)),
    ]
}

fn tcp_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

/// A UDP port.
fn udp_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("UDP".into()),
        ..tcp_port(port)
    }
}

fn peers(selector: &LabelSelector) -> Option<Vec<NetworkPolicyPeer>> {
    Some(vec![NetworkPolicyPeer {
        pod_selector: Some(selector.clone()),
        ..NetworkPolicyPeer::default()
    }])
}

/// Name lookups: the cluster DNS (kube-dns in kube-system), UDP and TCP 53.
fn dns_egress() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".into(),
                    "kube-system".into(),
                )])),
                ..LabelSelector::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![udp_port(53), tcp_port(53)]),
    }
}

/// Where a backend's endpoint is: its host and port, from the spec.
pub fn backend_endpoints(sb: &SealBroker) -> Vec<(String, String, i32)> {
    let mut out = Vec::new();
    for backend in &sb.spec.backends {
        if let Some(kmip) = &backend.kmip {
            let (host, port) = host_port(&kmip.endpoint, 5696);
            out.push((backend.name.clone(), host, port));
        }
        if let Some(transit) = &backend.transit {
            let (host, port) = url_host_port(&transit.address);
            out.push((backend.name.clone(), host, port));
        }
        if let Some(aws) = &backend.awskms {
            match &aws.endpoint {
                Some(endpoint) => {
                    let (host, port) = url_host_port(endpoint);
                    out.push((backend.name.clone(), host, port));
                }
                None => {
                    let region = aws.region.as_deref().unwrap_or("<region>");
                    out.push((backend.name.clone(), format!("kms.{region}.amazonaws.com"), 443));
                }
            }
        }
    }
    out
}

/// `host:port` (a bracketed IPv6 host too), with `default` when no port.
fn host_port(text: &str, default: i32) -> (String, i32) {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') || host.starts_with('[') => match port.parse() {
            Ok(port) => (host, port),
            Err(_) => (text, default),
        },
        _ => (text, default),
    };
    (
        host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        port,
    )
}

/// A URL's host and port (the scheme's port when none is given).
fn url_host_port(url: &str) -> (String, i32) {
    let (default, rest) = match url.split_once("://") {
        Some(("http", rest)) => (80, rest),
        Some((_, rest)) => (443, rest),
        None => (443, url),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    host_port(authority, default)
}

/// Egress to each backend's endpoint: its port, and its address when the
/// spec gives an IP. NetworkPolicy cannot name a host, so a hostname's port
/// is open to every address (docs/operator.md, Honest limits).
fn backend_egress(sb: &SealBroker) -> Vec<NetworkPolicyEgressRule> {
    backend_endpoints(sb)
        .into_iter()
        .map(|(_, host, port)| {
            let to = host.parse::<std::net::IpAddr>().ok().map(|ip| {
                let cidr = match ip {
                    std::net::IpAddr::V4(_) => format!("{ip}/32"),
                    std::net::IpAddr::V6(_) => format!("{ip}/128"),
                };
                vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock { cidr, except: None }),
                    ..NetworkPolicyPeer::default()
                }]
            });
            NetworkPolicyEgressRule {
                to,
                ports: Some(vec![tcp_port(port)]),
            }
        })
        .collect()
}

/// The ports the API server may answer on (its Service's 443, and the
/// 6443 its endpoints usually listen on once the Service is resolved).
pub const API_SERVER_PORTS: [i32; 2] = [443, 6443];

/// Default-deny ingress and egress for the served pods. In: OpenBao's own
/// ports (that exposure is OpenBao's business) but its cluster port, which
/// admits only the served pods, as does the broker's TCP port when it
/// listens on one. Out: the served pods among themselves on OpenBao's
/// ports, the cluster DNS, the API server (the sidecar reports on its Pod),
/// and each backend's endpoint.
fn network_policy(sb: &SealBroker, names: &Names) -> NetworkPolicy {
    let spec = &sb.spec;
    let selector = &spec.openbao.selector;
    let cluster = spec.openbao.cluster_port;
    let mut ingress = Vec::new();
    let open: Vec<_> = spec
        .openbao
        .ports
        .iter()
        .copied()
        .filter(|p| *p != cluster)
        .map(tcp_port)
        .collect();
    if !open.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(open),
        });
    }
    ingress.push(NetworkPolicyIngressRule {
        from: peers(selector),
        ports: Some(vec![tcp_port(cluster)]),
    });
    if let Some(net) = &spec.network {
        ingress.push(NetworkPolicyIngressRule {
            from: peers(selector),
            ports: Some(vec![tcp_port(net.port)]),
        });
    }
    let mut peer_ports: Vec<i32> = spec.openbao.ports.clone();
    peer_ports.push(cluster);
    peer_ports.sort_unstable();
    peer_ports.dedup();
    let mut egress = vec![
        NetworkPolicyEgressRule {
            to: peers(selector),
            ports: Some(peer_ports.into_iter().map(tcp_port).collect()),
        },
        dns_egress(),
        NetworkPolicyEgressRule {
            to: None,
            ports: Some(API_SERVER_PORTS.into_iter().map(tcp_port).collect()),
        },
    ];
    egress.extend(backend_egress(sb));
    NetworkPolicy {
        metadata: meta(sb, &names.network_policy),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector.clone()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// The key-creation Jobs' Pods: no ingress; out, the cluster DNS and the
/// backends' endpoints only.
fn keygen_network_policy(sb: &SealBroker, names: &Names) -> NetworkPolicy {
    let mut egress = vec![dns_egress()];
    egress.extend(backend_egress(sb));
    NetworkPolicy {
        metadata: meta(sb, &names.keygen_network_policy),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (
                        "sealbroker.io/name".into(),
                        sb.metadata.name.clone().unwrap_or_default(),
                    ),
                    (COMPONENT_LABEL.into(), KEYGEN_COMPONENT.into()),
                ])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(Vec::new()),
            egress: Some(egress),
        }),
    }
}

/// What the provisioner applies: the broker's identity and its name-scoped
/// read access to exactly the Secrets the spec names.
pub fn access_grant(sb: &SealBroker) -> Vec<Desired> {
    let names = Names::of(sb);
    let secrets = sb.spec.secret_names();
    let account = ServiceAccount {
        metadata: meta(sb, &names.service_account),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    // An empty resourceNames would mean every Secret: no Secrets, no rule.
    let rules = if secrets.is_empty() {
        Vec::new()
    } else {
        vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(secrets),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }]
    };
    let role = Role {
        metadata: meta(sb, &names.secrets_role),
        rules: Some(rules),
    };
    let binding = RoleBinding {
        metadata: meta(sb, &names.secrets_role),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: names.secrets_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names.service_account.clone(),
            namespace: sb.metadata.namespace.clone(),
            ..Subject::default()
        }]),
    };
    // The served Pods (OpenBao's ServiceAccount, which their sidecar shares)
    // report on themselves; the pod-report ValidatingAdmissionPolicy keeps
    // that to the report annotation on the caller's own Pod.
    let reports_role = Role {
        metadata: meta(sb, &names.reports_role),
        rules: Some(reports_rules()),
    };
    let reports_binding = RoleBinding {
        metadata: meta(sb, &names.reports_role),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: names.reports_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sb.spec.openbao.service_account_name.clone(),
            namespace: sb.metadata.namespace.clone(),
            ..Subject::default()
        }]),
    };
    vec![
        Desired::ServiceAccount(account),
        Desired::Role(role),
        Desired::RoleBinding(binding),
        Desired::Role(reports_role),
        Desired::RoleBinding(reports_binding),
    ]
}

fn reports_rules() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["pods".into()]),
        verbs: vec!["get".into(), "patch".into()],
        ..PolicyRule::default()
    }]
}

/// Whether a RoleBinding the provisioner made binds exactly what
/// [`access_grant`] binds under that name: the same Role, and the same
/// subjects (one ServiceAccount of the namespace), nothing more.
pub fn binding_matches(existing: &RoleBinding, sb: &SealBroker) -> bool {
    let name = existing.metadata.name.as_deref();
    let want = access_grant(sb).into_iter().find_map(|d| match d {
        Desired::RoleBinding(b) if b.metadata.name.as_deref() == name => Some(b),
        _ => None,
    });
    let Some(want) = want else {
        return false;
    };
    let subjects = |b: &RoleBinding| {
        b.subjects
            .iter()
            .flatten()
            .map(|s| {
                (
                    s.kind.clone(),
                    s.name.clone(),
                    s.namespace.clone().or_else(|| b.metadata.namespace.clone()),
                )
            })
            .collect::<Vec<_>>()
    };
    existing.role_ref == want.role_ref && subjects(existing) == subjects(&want)
}

/// Whether an existing reports Role grants exactly `pods: get, patch`.
pub fn reports_role_matches(existing: &Role) -> bool {
    existing.rules.clone().unwrap_or_default() == reports_rules()
}

/// The Job that creates `version` of `key` (its `attempt`-th try): the
/// sidecar's image running `sealbroker keygen --version`, with the rendered
/// config and the backend credentials mounted as the sidecar mounts them,
/// under the broker's ServiceAccount with no API token, and the sidecar's
/// restricted security context. The controller creates it; only its Pod
/// sees the credentials.
pub fn keygen_job(sb: &SealBroker, key: &str, version: u32, attempt: u32) -> Job {
    let names = Names::of(sb);
    let name = Names::keygen_job(sb, key, version);
    let mut labels = labels(sb);
    labels.insert(COMPONENT_LABEL.into(), KEYGEN_COMPONENT.into());
    labels.insert(KEY_LABEL.into(), key.into());
    labels.insert(VERSION_LABEL.into(), version.to_string());
    let mut metadata = meta(sb, &name);
    metadata.labels = Some(labels.clone());
    metadata.annotations = Some(BTreeMap::from([(ATTEMPT_ANNOTATION.into(), attempt.to_string())]));
    let credentials = injection::credential_volumes(sb);
    let mut volumes = vec![
        injection::config_map_volume(VOL_CONFIG, &names.broker_config, paths::CONFIG_FILE),
        // The broker writes its audit trail and state while it works.
        injection::empty_dir(VOL_STATE, false),
    ];
    volumes.extend(
        credentials
            .iter()
            .map(|(name, _, items)| injection::secret_volume(name, items)),
    );
    let mut mounts = vec![
        injection::mount(VOL_CONFIG, paths::CONFIG_DIR, true),
        injection::mount(VOL_STATE, paths::STATE_DIR, false),
    ];
    mounts.extend(
        credentials
            .iter()
            .map(|(name, path, _)| injection::mount(name, path, true)),
    );
    let env = injection::plain_env(sb);
    let container = Container {
        name: KEYGEN_COMPONENT.into(),
        image: Some(sb.spec.image.clone()),
        command: Some(vec![paths::IMAGE_BINARY.into()]),
        args: Some(vec![
            "keygen".into(),
            "--config".into(),
            format!("{}/{}", paths::CONFIG_DIR, paths::CONFIG_FILE),
            "--key".into(),
            key.into(),
            "--version".into(),
            version.to_string(),
        ]),
        env: (!env.is_empty()).then_some(env),
        volume_mounts: Some(mounts),
        security_context: Some(injection::restricted_context(
            sb.spec.broker_uid,
            sb.spec.openbao.gid,
        )),
        resources: sb.spec.resources.clone(),
        ..Container::default()
    };
    Job {
        metadata,
        spec: Some(JobSpec {
            // Each Pod retry is the Job controller's; each Job retry, with
            // its own backoff, the operator's (crate::rotation).
            backoff_limit: Some(3),
            // A hung HSM call must not hold the rotation forever.
            active_deadline_seconds: Some(600),
            // Long enough for the controller to read the outcome, and for a
            // person to read a failed Pod's log before the retry replaces it.
            ttl_seconds_after_finished: Some(86400),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(names.service_account),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(sb.spec.broker_uid),
                        run_as_group: Some(sb.spec.openbao.gid),
                        fs_group: Some(sb.spec.openbao.gid),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// Whether an existing Role grants exactly what [`access_grant`] would.
pub fn role_matches(existing: &Role, sb: &SealBroker) -> bool {
    let Some(Desired::Role(want)) = access_grant(sb).into_iter().nth(1) else {
        return false;
    };
    existing.rules.clone().unwrap_or_default() == want.rules.unwrap_or_default()
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions).
/// An empty selector matches nothing here: a SealBroker must say which pods.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector.match_labels.clone().unwrap_or_default();
    let expressions = selector.match_expressions.clone().unwrap_or_default();
    if match_labels.is_empty() && expressions.is_empty() {
        return false;
    }
    let labels_ok = match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = expressions.iter().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Multi-document YAML of some objects (for golden files and `manifests`).
pub fn to_yaml(objects: &[Desired]) -> String {
    let values: Vec<serde_json::Value> = objects.iter().map(Desired::to_value).collect();
    yaml_documents(&values)
}

/// `---`-separated YAML documents.
pub fn yaml_documents(values: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for value in values {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(value).unwrap_or_default());
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_give_host_and_port_with_the_scheme_default() {
        assert_eq!(host_port("kms.example:5696", 5696), ("kms.example".into(), 5696));
        assert_eq!(host_port("kms.example", 5696), ("kms.example".into(), 5696));
        assert_eq!(host_port("10.0.0.7:15696", 5696), ("10.0.0.7".into(), 15696));
        assert_eq!(host_port("[fd00::7]:5696", 1), ("fd00::7".into(), 5696));
        assert_eq!(host_port("fd00::7", 5696), ("fd00::7".into(), 5696));
        assert_eq!(
            url_host_port("https://bao.example:8200/v1"),
            ("bao.example".into(), 8200)
        );
        assert_eq!(url_host_port("https://bao.example"), ("bao.example".into(), 443));
        assert_eq!(url_host_port("http://10.1.2.3"), ("10.1.2.3".into(), 80));
        assert_eq!(
            url_host_port("https://user@[fd00::1]:9443/x"),
            ("fd00::1".into(), 9443)
        );
    }

    fn sealbroker(backends: serde_json::Value) -> SealBroker {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sealbroker.io/v1alpha1",
            "kind": "SealBroker",
            "metadata": {"name": "sb", "namespace": "t", "uid": "u"},
            "spec": {
                "profile": "Development",
                "image": "sealbroker:dev",
                "pluginSha256": "00",
                "openbao": {"selector": {"matchLabels": {"app": "bao"}}, "ports": [8200, 8201, 9000]},
                "seal": {"key": "k"},
                "backends": backends,
                "keys": [{"name": "k", "backend": "b0"}]
            }
        }))
        .unwrap()
    }

    fn egress_of(policy: &NetworkPolicy) -> Vec<(Option<String>, Vec<i32>)> {
        policy
            .spec
            .as_ref()
            .unwrap()
            .egress
            .clone()
            .unwrap()
            .into_iter()
            .map(|rule| {
                let cidr = rule
                    .to
                    .and_then(|to| to.into_iter().find_map(|peer| peer.ip_block.map(|b| b.cidr)));
                let ports = rule
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| match p.port {
                        Some(IntOrString::Int(n)) => n,
                        other => panic!("{other:?}"),
                    })
                    .collect();
                (cidr, ports)
            })
            .collect()
    }

    #[test]
    fn backends_are_reached_on_their_port_and_at_their_address_when_it_is_an_ip() {
        let sb = sealbroker(serde_json::json!([
            {"name": "b0", "kmip": {"endpoint": "10.0.0.7:5696", "tlsSecret": "kmip-tls"}},
            {"name": "b1", "transit": {"address": "https://bao.example:8210", "tokenSecret": {"name": "t"}}},
            {"name": "b2", "awskms": {"region": "eu-west-1"}},
            {"name": "b3", "software": {}}
        ]));
        let names = Names::of(&sb);
        let served = egress_of(&network_policy(&sb, &names));
        assert_eq!(
            served,
            vec![
                (None, vec![8200, 8201, 9000]),
                (None, vec![53, 53]),
                (None, vec![443, 6443]),
                (Some("10.0.0.7/32".into()), vec![5696]),
                (None, vec![8210]),
                (None, vec![443]),
            ]
        );
        // Key-creation Jobs reach only DNS and the backends.
        let keygen = egress_of(&keygen_network_policy(&sb, &names));
        assert_eq!(keygen[0], (None, vec![53, 53]));
        assert_eq!(keygen[1..], served[3..]);
        assert_eq!(
            backend_endpoints(&sb)[2],
            ("b2".into(), "kms.eu-west-1.amazonaws.com".into(), 443)
        );
    }

    #[test]
    fn the_cluster_port_admits_only_the_served_pods_and_the_rest_stay_open() {
        let sb = sealbroker(serde_json::json!([{"name": "b0", "software": {}}]));
        let policy = network_policy(&sb, &Names::of(&sb));
        let spec = policy.spec.unwrap();
        assert_eq!(spec.policy_types, Some(vec!["Ingress".into(), "Egress".into()]));
        let ingress = spec.ingress.unwrap();
        assert_eq!(ingress.len(), 2);
        assert_eq!(ingress[0].from, None);
        assert_eq!(
            ingress[0]
                .ports
                .as_ref()
                .unwrap()
                .iter()
                .map(|p| p.port.clone())
                .collect::<Vec<_>>(),
            vec![Some(IntOrString::Int(8200)), Some(IntOrString::Int(9000))]
        );
        let from = ingress[1].from.as_ref().unwrap();
        assert_eq!(from[0].pod_selector, Some(sb.spec.openbao.selector.clone()));
        assert_eq!(
            ingress[1].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(8201))
        );
    }
}
