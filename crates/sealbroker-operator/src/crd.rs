//! The `SealBroker` custom resource (`sealbroker.io/v1alpha1`).
//!
//! The CRD schema is generated from these types (`sealbroker-operator crd`);
//! `deploy/crd/sealbroker.io_sealbrokers.yaml` is that output, never edited by hand.
//!
//! A backend is a struct with one optional field per type (not a Rust enum), so
//! the generated schema stays structural without `oneOf` rewriting; exactly one
//! must be set, which [`crate::validation`] checks.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of one broker: the keys OpenBao unseals with, their backends,
/// and the OpenBao pods that get a sealbroker sidecar.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sealbroker.io",
    version = "v1alpha1",
    kind = "SealBroker",
    namespaced,
    status = "SealBrokerStatus",
    shortname = "sb",
    printcolumn = r#"{"name":"Profile","type":"string","jsonPath":".spec.profile"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Risk","type":"string","jsonPath":".status.conditions[?(@.type==\"SecurityRisk\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SealBrokerSpec {
    /// Hardened (the default) refuses software keys and non-digest images;
    /// Development allows them and reports a SecurityRisk condition.
    /// Immutable: a Development trust path is never promoted in place, and a
    /// Hardened one is never relaxed; create a new SealBroker instead.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": PROFILE_IMMUTABLE_RULE,
        "message": PROFILE_IMMUTABLE_MESSAGE,
    }]))]
    pub profile: Profile,
    /// The sealbroker image for the sidecar and the plugin copy. Hardened
    /// requires a digest (`repo@sha256:...`).
    pub image: String,
    /// SHA-256 (hex) of `/usr/local/bin/sealbroker` in that image: OpenBao
    /// refuses to run a plugin binary whose digest differs.
    pub plugin_sha256: String,
    /// Which OpenBao pods this broker serves, and how they run.
    pub openbao: OpenBaoTarget,
    /// The key OpenBao's seal wraps its root key under.
    pub seal: SealSpec,
    /// Backend connections; credentials are referenced by Secret name only.
    pub backends: Vec<BackendSpec>,
    /// Logical keys, each on one backend.
    pub keys: Vec<KeySpec>,
    /// Unix user the broker sidecar runs as (distinct from OpenBao's).
    #[serde(default = "default_broker_uid")]
    pub broker_uid: i64,
    /// Compute resources of the broker sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra plain environment for the sidecar (e.g. a PKCS#11 module's config
    /// path). Values are visible in the Pod spec: never put credentials here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvEntry>,
    /// Optional TCP listener (mutual TLS) for OpenBao pods reached over the
    /// network; the NetworkPolicy admits only the served pods to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkListener>,
}

/// The CRD's transition rule on `spec.profile` (the apiserver evaluates it
/// on every UPDATE; the validating webhook says the same).
pub const PROFILE_IMMUTABLE_RULE: &str = "self == oldSelf";
/// What the apiserver answers when [`PROFILE_IMMUTABLE_RULE`] fails.
pub const PROFILE_IMMUTABLE_MESSAGE: &str = "spec.profile is immutable: moving between Hardened and Development \
     means creating a new SealBroker (and a new OpenBao), never changing one in place";

/// The security profile, as in sealbroker's own config.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Profile {
    #[default]
    Hardened,
    Development,
}

/// The OpenBao pods served.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenBaoTarget {
    /// Pods (in this namespace) that get the sidecar.
    pub selector: LabelSelector,
    /// The OpenBao container in those pods.
    #[serde(default = "default_container")]
    pub container_name: String,
    /// Unix user OpenBao runs as; the keys' ACLs admit exactly this uid on the
    /// socket (100 in the official OpenBao image).
    #[serde(default = "default_openbao_uid")]
    pub uid: i64,
    /// Group shared by OpenBao and the sidecar, so OpenBao may open the socket.
    #[serde(default = "default_openbao_gid")]
    pub gid: i64,
    /// OpenBao's `plugin_directory`; the plugin binary is copied there.
    #[serde(default = "default_plugin_directory")]
    pub plugin_directory: String,
    /// Where the rendered seal stanza is mounted in the OpenBao container;
    /// pass `-config=<dir>/seal.hcl` to `bao server`.
    #[serde(default = "default_seal_config_dir")]
    pub seal_config_dir: String,
    /// OpenBao's own ports, left open by the NetworkPolicy (but for
    /// `clusterPort`), and open between the served Pods.
    #[serde(default = "default_openbao_ports")]
    pub ports: Vec<i32>,
    /// OpenBao's cluster port (raft and request forwarding): the
    /// NetworkPolicy admits only the served OpenBao Pods to it.
    #[serde(default = "default_cluster_port")]
    pub cluster_port: i32,
    /// The Secret holding OpenBao's listener certificate and key, made
    /// outside the operator (your PKI, cert-manager). Required under
    /// Hardened: the webhook refuses a served Pod whose OpenBao container
    /// does not mount it, so OpenBao's TLS never comes from inside the Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    /// OpenBao's self-initialisation: the requests OpenBao runs once, on its
    /// first start, before it revokes the root token it used, so no root
    /// token is ever returned or stored. Rendered into the seal stanza's
    /// file as an `initialize` block. Required under Hardened, with a
    /// request that enables an auth method (`sys/auth/...`): without one,
    /// nobody could log in. Its data is stored in the SealBroker: never put
    /// a secret in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_init: Option<SelfInit>,
    /// The ServiceAccount the OpenBao Pods run under. The injected sidecar
    /// shares it (a Pod has one identity) and uses it to report, on its own
    /// Pod, which key versions it can use; the provisioner grants it that.
    #[serde(default = "default_service_account")]
    pub service_account_name: String,
}

/// OpenBao's `initialize` stanza
/// (<https://openbao.org/docs/configuration/self-init>).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfInit {
    /// Run in this order; a failed one stops initialisation unless it may fail.
    pub requests: Vec<SelfInitRequest>,
}

/// One API request of OpenBao's self-initialisation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfInitRequest {
    /// Unique among the requests: letters, digits, `_` and `-`.
    pub name: String,
    /// `create`, `read`, `update`, `delete`, `list` or `patch`.
    pub operation: String,
    /// The API path, without `/v1/`: `sys/auth/jwt`, `auth/jwt/role/admin`.
    pub path: String,
    /// The request body (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub data: Option<serde_json::Value>,
    /// Whether initialisation goes on when this request fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_failure: bool,
}

/// An object of any shape (`x-kubernetes-preserve-unknown-fields`).
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The seal OpenBao uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SealSpec {
    /// A key in `spec.keys`.
    pub key: String,
    /// Optional string bound into every blob (e.g. the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<String>,
}

/// One backend connection; exactly one type field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    /// `[backends.NAME]` in the broker config.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kmip: Option<KmipBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awskms: Option<AwsKmsBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit: Option<TransitBackend>,
    /// A key file on the broker's state volume. Development only: it is no
    /// external root of trust, and it does not outlive the Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software: Option<SoftwareBackend>,
}

/// A key in a Secret, mounted into the sidecar only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name, in the SealBroker's namespace.
    pub name: String,
    /// Key within the Secret; each backend documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A PKCS#11 token (HSM).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs11Backend {
    /// The vendor module, inside the sealbroker image.
    pub lib: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// The user PIN (key `pin` by default).
    pub pin_secret: SecretKeyRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Where device calls run: `pool` (default: in a helper process, so a
    /// module crash fails calls, not the broker; right for network HSMs), or
    /// `inline` or `direct`, which load the module into the broker
    /// (`isolation = "in-process"`) for a local HSM: `inline` is faster,
    /// `direct` fastest; a hung call holds its request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<Pkcs11Dispatch>,
}

/// Where a PKCS#11 device call runs; see the pkcs11 backend docs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pkcs11Dispatch {
    Pool,
    Inline,
    Direct,
}

/// A KMIP server over mutual TLS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KmipBackend {
    /// `host:port`.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A `kubernetes.io/tls` Secret with `tls.crt`, `tls.key` and `ca.crt`.
    pub tls_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

/// AWS KMS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsKmsBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A shared-credentials file (key `credentials` by default); without it
    /// the SDK's chain (e.g. web identity) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// An upstream OpenBao/Vault transit engine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitBackend {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The upstream token (key `token` by default).
    pub token_secret: SecretKeyRef,
    /// CA of the upstream's certificate (key `ca.crt` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

/// The software backend has no settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SoftwareBackend {}

/// One logical key (`[keys.NAME]`). Which fields apply depends on the backend type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySpec {
    pub name: String,
    /// A name in `spec.backends`.
    pub backend: String,
    /// pkcs11: CKA_LABEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_label: Option<String>,
    /// pkcs11: CKA_ID (hex); awskms: key id, ARN or alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// kmip: name to Locate; transit: the transit key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// kmip: Unique Identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// pkcs11: `AES_GCM` or `RSA_PKCS_OAEP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    /// kmip: `AES_GCM` or `AES_CBC_PAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt_alg: Option<String>,
    /// The key's versions, declared here so that every broker pod agrees on
    /// them and none forgets them with its disk (docs/ha-and-rotation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<KeyVersions>,
}

/// The wanted state of a key's versions: which exist, which one wraps, which
/// are retired. Versions above 1 are found on the backend by name
/// (`<keyLabel>-v2` on PKCS#11, `<keyName>-v2` on KMIP, the same AWS KMS or
/// transit key). The controller drives the pods there step by step and
/// shows how far it got in `status.keys` (docs/operator.md).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersions {
    /// Versions up to this one should exist: the controller creates each
    /// with a key-creation Job, then stages it in every pod's config, where
    /// each broker probes and reports it. Default: `primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<u32>,
    /// The version new wraps should use. The controller renders it only once
    /// every served pod has reported it usable. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<u32>,
    /// Blobs under older versions are refused. Rendered as declared, but
    /// never above the rendered primary. Raise it only once OpenBao has
    /// re-wrapped its stored keys and recovery key under `primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_decryption: Option<u32>,
}

/// A plain environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EnvEntry {
    pub name: String,
    pub value: String,
}

/// The sidecar's TCP listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkListener {
    pub port: i32,
    /// A `kubernetes.io/tls` Secret: `tls.crt`, `tls.key`, and `ca.crt` (the CA
    /// that signs the OpenBao pods' client certificates).
    pub tls_secret: String,
    /// Principals admitted over TCP besides OpenBao's uid, e.g.
    /// `uri:spiffe://cluster/ns/openbao/sa/openbao` (sealbroker's ACL syntax).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

/// What the controller last observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SealBrokerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `SecurityRisk`, `RotationPending` and `RotationBlocked`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The plugin digest the rendered seal stanza expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_sha256: Option<String>,
    /// ConfigMap holding the broker config (`sealbroker.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_config_map: Option<String>,
    /// ConfigMap holding the OpenBao stanza (`seal.hcl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_config_map: Option<String>,
    /// SHA-256 (hex) of the `sealbroker.toml` the controller rendered: a
    /// sidecar's report counts only when made under exactly this config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// Rotation state of each key that declares `versions`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyRotationStatus>,
}

/// Where one key's rotation stands: what exists, what is rendered, who
/// vouched for it. The controller's memory between reconciles.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotationStatus {
    /// The key (`spec.keys[].name`).
    pub name: String,
    /// Versions above 1 a key-creation Job made (or found) on the backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<u32>,
    /// `newest_version` as rendered: versions up to it are staged everywhere.
    pub newest: u32,
    /// `primary_version` as rendered: the version new wraps use.
    pub primary: u32,
    /// `min_decryption_version` as rendered, when any version is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_decryption: Option<u32>,
    /// What happens next for this key, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
    /// Per staged or primary version: which served Pods reported it usable
    /// under the rendered config, and which have not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionReports>,
    /// Key-creation Jobs that failed, per version, for the retry backoff.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keygen_failures: Vec<KeygenFailure>,
}

/// The served Pods' reports about one version of a key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionReports {
    pub version: u32,
    /// Pods that reported the version usable under the rendered config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usable: Vec<String>,
    /// Pods that reported it unusable under the rendered config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unusable: Vec<String>,
    /// Pods with no usable report yet, each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<MissingReport>,
}

/// A served Pod whose report does not (yet) count.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct MissingReport {
    pub pod: String,
    pub reason: String,
}

/// A key-creation Job that failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeygenFailure {
    pub version: u32,
    /// How many Jobs for this version failed so far.
    pub attempts: u32,
    /// When the last one failed; the next waits out a backoff from here.
    pub last_failure: Time,
    /// The failed Job's reason and message.
    pub message: String,
}

fn default_broker_uid() -> i64 {
    65532
}
fn default_container() -> String {
    "openbao".into()
}
fn default_openbao_uid() -> i64 {
    100
}
fn default_openbao_gid() -> i64 {
    1000
}
fn default_plugin_directory() -> String {
    "/openbao/plugins".into()
}
fn default_seal_config_dir() -> String {
    "/openbao/sealbroker".into()
}
fn default_openbao_ports() -> Vec<i32> {
    vec![8200, 8201]
}
fn default_cluster_port() -> i32 {
    8201
}
fn default_service_account() -> String {
    "default".into()
}

impl BackendSpec {
    /// The backend's type name in sealbroker's config, when exactly one is set.
    pub fn type_name(&self) -> Option<&'static str> {
        let set: Vec<&'static str> = [
            self.pkcs11.is_some().then_some("pkcs11"),
            self.kmip.is_some().then_some("kmip"),
            self.awskms.is_some().then_some("awskms"),
            self.transit.is_some().then_some("transit"),
            self.software.is_some().then_some("software"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// The Secrets this backend's credentials come from: (secret, key, file name).
    pub fn credential_items(&self) -> Vec<CredentialItem> {
        let item = |r: &SecretKeyRef, default_key: &str, file: &str| CredentialItem {
            secret: r.name.clone(),
            key: r.key.clone().unwrap_or_else(|| default_key.into()),
            file: file.into(),
        };
        let mut items = Vec::new();
        if let Some(p) = &self.pkcs11 {
            items.push(item(&p.pin_secret, "pin", "pin"));
        }
        if let Some(k) = &self.kmip {
            for key in ["tls.crt", "tls.key", "ca.crt"] {
                items.push(CredentialItem {
                    secret: k.tls_secret.clone(),
                    key: key.into(),
                    file: key.into(),
                });
            }
        }
        if let Some(a) = &self.awskms
            && let Some(c) = &a.credentials_secret
        {
            items.push(item(c, "credentials", "credentials"));
        }
        if let Some(t) = &self.transit {
            items.push(item(&t.token_secret, "token", "token"));
            if let Some(ca) = &t.ca_secret {
                items.push(item(ca, "ca.crt", "ca.crt"));
            }
        }
        items
    }
}

/// One credential file projected from a Secret into the sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialItem {
    pub secret: String,
    pub key: String,
    /// File name under the backend's credential directory.
    pub file: String,
}

impl SealBrokerSpec {
    /// Every Secret the broker reads (backends and the TLS listener), sorted, unique.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .backends
            .iter()
            .flat_map(|b| b.credential_items().into_iter().map(|i| i.secret))
            .chain(self.network.iter().map(|n| n.tls_secret.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}
