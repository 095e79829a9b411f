//! What a `SealBroker` and the Pods it serves must satisfy. Pure functions:
//! the validating webhook, the controller and `sealbroker-operator check`
//! all ask these, so they refuse the same things with the same words.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use crate::crd::{KeyVersions, Profile, SealBroker, SealBrokerSpec};
use crate::injection::SIDECAR_NAME;

/// One reason a spec or Pod is refused, naming the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All problems joined into one sentence for an admission denial or a condition.
pub fn describe(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// A DNS label: it becomes part of TOML table names, volume and object names.
fn is_label(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A Kubernetes object name (DNS subdomain).
fn is_object_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(|part| is_label(part, 63))
}

pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `image` names a digest (`repo@sha256:<64 hex>`).
pub fn is_digest_pinned(image: &str) -> bool {
    image
        .rsplit_once("@sha256:")
        .is_some_and(|(repo, digest)| !repo.is_empty() && is_sha256_hex(digest))
}

fn is_abs_path(path: &str) -> bool {
    path.starts_with('/') && !path.split('/').any(|c| c == "..") && !path.contains('\0')
}

/// Every problem with a spec; empty when it may be applied.
pub fn validate(sb: &SealBroker) -> Vec<Problem> {
    let spec = &sb.spec;
    let mut problems = Vec::new();
    let name = sb.metadata.name.as_deref().unwrap_or("");
    // Object names derive from it: `<name>-broker-secrets` must stay a label.
    if !name.is_empty() && !is_label(name, 40) {
        problems.push(problem(
            "metadata.name",
            "must be a DNS label of at most 40 characters (objects named after it add suffixes)",
        ));
    }
    hardened_rules(spec, &mut problems);
    structure_rules(spec, &mut problems);
    problems
}

/// What an UPDATE may not change, beyond what [`validate`] checks of the
/// new object. The CRD's transition rule says the same
/// ([`crate::crd::PROFILE_IMMUTABLE_RULE`]), so an apiserver without the
/// webhook still refuses it.
pub fn validate_update(old: &SealBroker, new: &SealBroker) -> Vec<Problem> {
    let mut problems = Vec::new();
    if old.spec.profile != new.spec.profile {
        problems.push(problem(
            "spec.profile",
            format!(
                "is immutable (was {:?}, now {:?}): moving between Hardened and Development means \
                 creating a new SealBroker (and a new OpenBao), never changing one in place",
                old.spec.profile, new.spec.profile
            ),
        ));
    }
    problems
}

/// What only the Hardened profile refuses.
fn hardened_rules(spec: &SealBrokerSpec, problems: &mut Vec<Problem>) {
    if spec.profile != Profile::Hardened {
        return;
    }
    for (i, backend) in spec.backends.iter().enumerate() {
        if backend.software.is_some() {
            problems.push(problem(
                format!("spec.backends[{i}].software"),
                format!(
                    "the Hardened profile refuses the software backend {:?}: its key sits on the broker's \
                     own disk, so it is no external root of trust; use pkcs11, kmip, awskms or transit, \
                     or profile Development for testing",
                    backend.name
                ),
            ));
        }
    }
    match &spec.openbao.self_init {
        None => problems.push(problem(
            "spec.openbao.selfInit",
            "the Hardened profile requires OpenBao to initialise itself, so no root token is ever returned \
             or stored: list the requests that set up how admins log in (at least one sys/auth/... request)",
        )),
        Some(init)
            if !init
                .requests
                .iter()
                .any(|r| r.path.trim_start_matches('/').starts_with("sys/auth/")) =>
        {
            problems.push(problem(
                "spec.openbao.selfInit.requests",
                "enable an auth method (a request on sys/auth/<path>): OpenBao revokes the root token after \
                 self-initialisation, and without an auth method nobody could log in again",
            ))
        }
        Some(_) => {}
    }
    if spec.openbao.tls_secret.as_deref().is_none_or(str::is_empty) {
        problems.push(problem(
            "spec.openbao.tlsSecret",
            "the Hardened profile requires OpenBao's listener TLS from an external Secret: name the Secret \
             (kubernetes.io/tls, made by your PKI or cert-manager) that OpenBao's container mounts; \
             OpenBao without TLS, or with a certificate made inside the Pod, is not a Hardened posture",
        ));
    }
    if !is_digest_pinned(&spec.image) {
        problems.push(problem(
            "spec.image",
            format!(
                "the Hardened profile requires an image pinned by digest (repo@sha256:<64 hex>), \
                 got {:?}: a tag can be moved to other code",
                spec.image
            ),
        ));
    }
}

/// The self-init requests' shape: names unique and HCL-safe, a known
/// operation, a path, and data that is an object of strings, numbers,
/// booleans, lists and objects (no nulls).
fn self_init_rules(spec: &SealBrokerSpec, problems: &mut Vec<Problem>) {
    let Some(init) = &spec.openbao.self_init else {
        return;
    };
    if init.requests.is_empty() {
        problems.push(problem(
            "spec.openbao.selfInit.requests",
            "is empty; list at least one request, or leave selfInit out",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, r) in init.requests.iter().enumerate() {
        let at = format!("spec.openbao.selfInit.requests[{i}]");
        let name_ok = r
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && r.name.len() <= 64
            && r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            problems.push(problem(
                format!("{at}.name"),
                format!(
                    "{:?} is not a request name (a letter or _, then letters, digits, _ or -)",
                    r.name
                ),
            ));
        } else if !seen.insert(r.name.as_str()) {
            problems.push(problem(
                format!("{at}.name"),
                format!("{:?} is used twice", r.name),
            ));
        }
        if !["create", "read", "update", "delete", "list", "patch"].contains(&r.operation.as_str()) {
            problems.push(problem(
                format!("{at}.operation"),
                format!(
                    "{:?}: use create, read, update, delete, list or patch",
                    r.operation
                ),
            ));
        }
        if r.path.trim_matches('/').is_empty() || r.path.contains(char::is_whitespace) {
            problems.push(problem(
                format!("{at}.path"),
                format!("{:?} is not an API path", r.path),
            ));
        }
        if let Some(data) = &r.data {
            if !data.is_object() {
                problems.push(problem(format!("{at}.data"), "must be an object"));
            } else if let Some(where_) = null_in(data, "data") {
                problems.push(problem(
                    format!("{at}.{where_}"),
                    "is null; HCL has no null, so leave the field out",
                ));
            }
        }
    }
}

/// The path of the first null in `value`, if any.
fn null_in(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::Null => Some(path.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| null_in(v, &format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| null_in(v, &format!("{path}.{k}"))),
        _ => None,
    }
}

fn structure_rules(spec: &SealBrokerSpec, problems: &mut Vec<Problem>) {
    self_init_rules(spec, problems);
    if spec.image.trim().is_empty() {
        problems.push(problem("spec.image", "is empty"));
    }
    if !is_sha256_hex(&spec.plugin_sha256) {
        problems.push(problem(
            "spec.pluginSha256",
            "must be the plugin binary's SHA-256 as 64 lowercase hex characters (sha256sum output)",
        ));
    }
    let target = &spec.openbao;
    let selector_empty = target.selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && target
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if selector_empty {
        problems.push(problem(
            "spec.openbao.selector",
            "is empty: it would select every Pod in the namespace",
        ));
    }
    if target.container_name == SIDECAR_NAME || target.container_name.is_empty() {
        problems.push(problem(
            "spec.openbao.containerName",
            format!("must name OpenBao's container, not be empty or {SIDECAR_NAME:?}"),
        ));
    }
    if !is_object_name(&target.service_account_name) {
        problems.push(problem(
            "spec.openbao.serviceAccountName",
            format!("{:?} is not a ServiceAccount name", target.service_account_name),
        ));
    }
    if target.uid < 0 || target.gid < 0 {
        problems.push(problem("spec.openbao", "uid and gid must not be negative"));
    }
    if spec.broker_uid <= 0 {
        problems.push(problem("spec.brokerUid", "must be a non-root uid (> 0)"));
    }
    if spec.broker_uid == target.uid {
        problems.push(problem(
            "spec.brokerUid",
            "must differ from spec.openbao.uid: the broker and OpenBao are separate identities",
        ));
    }
    for (field, path) in [
        ("spec.openbao.pluginDirectory", &target.plugin_directory),
        ("spec.openbao.sealConfigDir", &target.seal_config_dir),
    ] {
        if !is_abs_path(path) || path == "/" {
            problems.push(problem(field, "must be an absolute directory path without `..`"));
        }
    }
    let dirs = [
        target.plugin_directory.trim_end_matches('/'),
        target.seal_config_dir.trim_end_matches('/'),
        crate::render::paths::SOCKET_DIR,
    ];
    if dirs[0] == dirs[1] || dirs[0] == dirs[2] || dirs[1] == dirs[2] {
        problems.push(problem(
            "spec.openbao",
            format!(
                "pluginDirectory, sealConfigDir and the socket directory {} must be three different paths",
                crate::render::paths::SOCKET_DIR
            ),
        ));
    }
    for port in target.ports.iter().chain(spec.network.iter().map(|n| &n.port)) {
        if !(1..=65535).contains(port) {
            problems.push(problem("spec", format!("port {port} is out of range")));
        }
    }
    if let Some(net) = &spec.network {
        if !is_object_name(&net.tls_secret) {
            problems.push(problem("spec.network.tlsSecret", "must be a Secret name"));
        }
        if target.ports.contains(&net.port) {
            problems.push(problem(
                "spec.network.port",
                "collides with one of OpenBao's ports",
            ));
        }
    }
    for (i, env) in spec.env.iter().enumerate() {
        if env.name.is_empty() || env.name.contains('=') {
            problems.push(problem(format!("spec.env[{i}].name"), "is not a variable name"));
        }
    }
    backend_rules(spec, problems);
    key_rules(spec, problems);
}

fn backend_rules(spec: &SealBrokerSpec, problems: &mut Vec<Problem>) {
    if spec.backends.is_empty() {
        problems.push(problem("spec.backends", "names no backend"));
    }
    let mut seen = BTreeSet::new();
    for (i, backend) in spec.backends.iter().enumerate() {
        let field = format!("spec.backends[{i}]");
        // Volume names are `sealbroker-cred-<backend>` (63 at most).
        if !is_label(&backend.name, 40) || backend.name.starts_with('_') {
            problems.push(problem(
                format!("{field}.name"),
                "must be a DNS label of at most 40 characters",
            ));
        }
        if !seen.insert(backend.name.as_str()) {
            problems.push(problem(format!("{field}.name"), "is used twice"));
        }
        if backend.type_name().is_none() {
            problems.push(problem(
                field.clone(),
                "must set exactly one of pkcs11, kmip, awskms, transit, software",
            ));
        }
        for item in backend.credential_items() {
            if !is_object_name(&item.secret) {
                problems.push(problem(
                    field.clone(),
                    format!("{:?} is not a Secret name", item.secret),
                ));
            }
            if item.key.is_empty() || item.key.contains('/') || item.key == "." || item.key == ".." {
                problems.push(problem(
                    field.clone(),
                    format!("{:?} is not a Secret key", item.key),
                ));
            }
        }
        if let Some(p) = &backend.pkcs11 {
            if !is_abs_path(&p.lib) {
                problems.push(problem(format!("{field}.pkcs11.lib"), "must be an absolute path"));
            }
            if p.token_label.is_none() && p.slot.is_none() {
                problems.push(problem(format!("{field}.pkcs11"), "needs tokenLabel or slot"));
            }
        }
    }
}

/// Versions count from 1; the one that wraps exists, and no retirement
/// passes it (that would refuse what it wraps).
fn version_rules(field: &str, versions: &KeyVersions, problems: &mut Vec<Problem>) {
    for (name, value) in [
        ("newest", versions.newest),
        ("primary", versions.primary),
        ("minDecryption", versions.min_decryption),
    ] {
        if value == Some(0) {
            problems.push(problem(format!("{field}.{name}"), "versions count from 1"));
        }
    }
    let primary = versions.primary.unwrap_or(1);
    if let Some(newest) = versions.newest
        && newest < primary
    {
        problems.push(problem(
            format!("{field}.newest"),
            format!("is {newest}, below primary {primary}: the version that wraps must exist"),
        ));
    }
    if let Some(min) = versions.min_decryption
        && min > primary
    {
        problems.push(problem(
            format!("{field}.minDecryption"),
            format!("is {min}, above primary {primary}: it would refuse the blobs the primary wraps"),
        ));
    }
}

fn key_rules(spec: &SealBrokerSpec, problems: &mut Vec<Problem>) {
    if spec.keys.is_empty() {
        problems.push(problem("spec.keys", "names no key"));
    }
    let mut seen = BTreeSet::new();
    for (i, key) in spec.keys.iter().enumerate() {
        let field = format!("spec.keys[{i}]");
        if !is_label(&key.name, 63) {
            problems.push(problem(format!("{field}.name"), "must be a DNS label"));
        }
        if !seen.insert(key.name.as_str()) {
            problems.push(problem(format!("{field}.name"), "is used twice"));
        }
        let Some(kind) = spec
            .backends
            .iter()
            .find(|b| b.name == key.backend)
            .and_then(|b| b.type_name())
        else {
            problems.push(problem(
                format!("{field}.backend"),
                format!("{:?} is not a backend in spec.backends", key.backend),
            ));
            continue;
        };
        let set: Vec<(&str, bool)> = vec![
            ("keyLabel", key.key_label.is_some()),
            ("keyId", key.key_id.is_some()),
            ("keyName", key.key_name.is_some()),
            ("kmsKeyId", key.kms_key_id.is_some()),
            ("mechanism", key.mechanism.is_some()),
            ("encryptAlg", key.encrypt_alg.is_some()),
        ];
        let (allowed, required): (&[&str], &[&str]) = match kind {
            "pkcs11" => (&["keyLabel", "keyId", "mechanism"], &["keyLabel", "keyId"]),
            "kmip" => (&["kmsKeyId", "keyName", "encryptAlg"], &["kmsKeyId", "keyName"]),
            "awskms" => (&["keyId"], &["keyId"]),
            "transit" => (&["keyName"], &["keyName"]),
            _ => (&[], &[]),
        };
        for (name, is_set) in &set {
            if *is_set && !allowed.contains(name) {
                problems.push(problem(
                    format!("{field}.{name}"),
                    format!("does not apply to a {kind} backend"),
                ));
            }
        }
        if !required.is_empty() && !set.iter().any(|(n, s)| *s && required.contains(n)) {
            problems.push(problem(
                field.clone(),
                format!("a {kind} key needs one of {}", required.join(", ")),
            ));
        }
        if let Some(versions) = &key.versions {
            version_rules(&format!("{field}.versions"), versions, problems);
        }
    }
    if !spec.keys.iter().any(|k| k.name == spec.seal.key) {
        problems.push(problem(
            "spec.seal.key",
            format!("{:?} is not a key in spec.keys", spec.seal.key),
        ));
    }
}

/// Names of the Pod's volumes that carry the broker's credentials.
fn credential_volumes(pod: &Pod, secrets: &BTreeSet<String>) -> BTreeSet<String> {
    let volumes: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[]);
    volumes
        .iter()
        .filter(|v| {
            let direct = v
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_ref())
                .is_some_and(|n| secrets.contains(n));
            let projected = v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.secret.as_ref().is_some_and(|s| secrets.contains(&s.name)))
            });
            direct || projected
        })
        .map(|v| v.name.clone())
        .collect()
}

/// Every container of a Pod, with the list it sits in: `containers`,
/// `initContainers` (the sidecar is one) and `ephemeralContainers` (debug
/// containers, added later through `pods/ephemeralcontainers`), the last
/// read into a [`Container`] for the fields that matter here.
pub fn all_containers(pod: &Pod) -> Vec<(&'static str, Container)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<(&'static str, Container)> = spec
        .containers
        .iter()
        .map(|c| ("containers", c.clone()))
        .collect();
    out.extend(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| ("initContainers", c.clone())),
    );
    out.extend(spec.ephemeral_containers.iter().flatten().map(|e| {
        (
            "ephemeralContainers",
            Container {
                name: e.name.clone(),
                image: e.image.clone(),
                command: e.command.clone(),
                args: e.args.clone(),
                env: e.env.clone(),
                env_from: e.env_from.clone(),
                volume_mounts: e.volume_mounts.clone(),
                security_context: e.security_context.clone(),
                ..Container::default()
            },
        )
    }));
    out
}

/// Whether `c` (in `list` of `pod`) is a broker container of `sb`, known by
/// what it runs rather than by its name (any container may be named
/// `sealbroker`): the injected sidecar (a native sidecar running `sealbroker
/// serve` on the rendered config, in a Pod `sb` selects) or a key-creation
/// Job's container (`sealbroker keygen` on that config, in a Pod labelled
/// for `sb`); either with `sb`'s image and the broker's restricted security
/// context. These alone may hold `sb`'s credentials.
pub fn is_broker_container(pod: &Pod, list: &str, c: &Container, sb: &SealBroker) -> bool {
    let config = format!(
        "{}/{}",
        crate::render::paths::CONFIG_DIR,
        crate::render::paths::CONFIG_FILE
    );
    let same_code = c.image.as_deref() == Some(sb.spec.image.as_str())
        && c.command.as_deref() == Some(&[crate::render::paths::IMAGE_BINARY.to_string()][..])
        && c.security_context.as_ref()
            == Some(&crate::injection::restricted_context(
                sb.spec.broker_uid,
                sb.spec.openbao.gid,
            ));
    if !same_code {
        return false;
    }
    let args = c.args.as_deref().unwrap_or(&[]);
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let sidecar = list == "initContainers"
        && c.restart_policy.as_deref() == Some("Always")
        && args == ["serve", "--config", config.as_str()]
        && crate::desired::selector_matches(&sb.spec.openbao.selector, &labels);
    let keygen = list == "containers"
        && args.len() == 7
        && args[..3] == ["keygen", "--config", config.as_str()]
        && args[3] == "--key"
        && args[5] == "--version"
        && labels.get("sealbroker.io/name") == sb.metadata.name.as_ref()
        && labels.get(crate::desired::COMPONENT_LABEL).map(String::as_str)
            == Some(crate::desired::KEYGEN_COMPONENT);
    sidecar || keygen
}

/// Containers other than `sb`'s broker containers that would receive its
/// credentials (volume mounts or environment), in any container kind;
/// empty when the Pod is clean.
pub fn credential_leaks(pod: &Pod, sb: &SealBroker) -> Vec<Problem> {
    let secrets: BTreeSet<String> = sb.spec.secret_names().into_iter().collect();
    if secrets.is_empty() {
        return Vec::new();
    }
    let volumes = credential_volumes(pod, &secrets);
    let mut problems = Vec::new();
    for (list, container) in all_containers(pod) {
        if is_broker_container(pod, list, &container, sb) {
            continue;
        }
        let field = format!("spec.{list}[{}]", container.name);
        for leak in container_leaks(&container, &volumes, &secrets) {
            problems.push(problem(
                field.clone(),
                format!(
                    "{leak}: the broker's credentials (Secrets {}) go to the sealbroker sidecar only, \
                     never to OpenBao or other containers",
                    secrets.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    problems
}

/// What a Pod that holds or is served by a broker must not do, whatever the
/// profile: share its process namespace (a neighbour would read the PIN
/// through `/proc/<pid>/root`), use the node's, or attach a debug container
/// to a broker container (same effect).
pub fn isolation_problems(pod: &Pod, brokers: &[SealBroker]) -> Vec<Problem> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let containers = all_containers(pod);
    let broker_names: BTreeSet<&str> = containers
        .iter()
        .filter(|(list, c)| brokers.iter().any(|sb| is_broker_container(pod, list, c, sb)))
        .map(|(_, c)| c.name.as_str())
        .collect();
    let served = !broker_names.is_empty()
        || brokers
            .iter()
            .any(|sb| crate::desired::selector_matches(&sb.spec.openbao.selector, &labels));
    if !served {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if spec.share_process_namespace == Some(true) {
        problems.push(problem(
            "spec.shareProcessNamespace",
            "must not be true in a Pod served by a broker: every container could read the broker's \
             credentials through /proc",
        ));
    }
    if spec.host_pid == Some(true) {
        problems.push(problem(
            "spec.hostPID",
            "must not be true in a Pod served by a broker: the node's processes could read the \
             broker's credentials through /proc",
        ));
    }
    for e in spec.ephemeral_containers.iter().flatten() {
        if let Some(target) = e.target_container_name.as_deref()
            && broker_names.contains(target)
        {
            problems.push(problem(
                format!("spec.ephemeralContainers[{}].targetContainerName", e.name),
                format!(
                    "targets the broker container {target:?}: a debug container in its process \
                     namespace could read its credentials through /proc"
                ),
            ));
        }
    }
    problems
}

/// Whether `host` names something inside the cluster: `localhost`, a bare
/// Service name (resolved through the Pod's search domains), `*.svc` or
/// `*.cluster.local`. Not judged: IP addresses (a Pod or Service IP looks
/// like any other) and `name.namespace` (it looks like `example.com`).
fn in_cluster_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    !host.contains('.') || host.ends_with(".svc") || host.ends_with(".cluster.local")
}

/// The backends whose root of trust lives inside the cluster: a SoftHSM
/// token (its key file is on the sidecar's volume) or a KMIP, transit or
/// KMS endpoint that is a cluster Service. Each says which and why.
pub fn in_cluster_roots(sb: &SealBroker) -> Vec<String> {
    let mut found = Vec::new();
    for backend in &sb.spec.backends {
        if let Some(p) = &backend.pkcs11
            && p.lib.to_ascii_lowercase().contains("softhsm")
        {
            found.push(format!(
                "backend {:?} loads SoftHSM ({}), whose token is a file in the sidecar's volume",
                backend.name, p.lib
            ));
        }
        for (_, host, _) in crate::desired::backend_endpoints(sb)
            .into_iter()
            .filter(|(name, _, _)| name == &backend.name)
        {
            if in_cluster_host(&host) {
                found.push(format!(
                    "backend {:?} reaches {host}, a Service of this cluster",
                    backend.name
                ));
            }
        }
    }
    found
}

/// Under Hardened, OpenBao's container in a served Pod mounts its TLS from
/// the external Secret `spec.openbao.tlsSecret` (a `secret` volume, or a
/// `projected` one with that Secret among its sources).
pub fn openbao_tls_problems(pod: &Pod, sb: &SealBroker) -> Vec<Problem> {
    let Some(secret) = sb.spec.openbao.tls_secret.as_deref() else {
        return vec![problem(
            "spec.openbao.tlsSecret",
            "is not set; a Hardened SealBroker names OpenBao's TLS Secret",
        )];
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let wanted = &sb.spec.openbao.container_name;
    let Some(openbao) = spec.containers.iter().find(|c| &c.name == wanted) else {
        return vec![problem(
            "spec.containers",
            format!(
                "has no container named {wanted:?} (spec.openbao.containerName of SealBroker {})",
                kube::ResourceExt::name_any(sb)
            ),
        )];
    };
    let tls_volumes: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret)
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.secret.as_ref().map(|s| s.name.as_str()) == Some(secret))
                })
        })
        .map(|v| v.name.as_str())
        .collect();
    let mounted = openbao
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| tls_volumes.contains(m.name.as_str()));
    if mounted {
        Vec::new()
    } else {
        vec![problem(
            format!("spec.containers[{wanted}].volumeMounts"),
            format!(
                "mount OpenBao's TLS from Secret {secret:?} (spec.openbao.tlsSecret): the Hardened profile \
                 takes OpenBao's listener certificate from an external Secret, and this container mounts \
                 no volume of it"
            ),
        )]
    }
}

/// Under Hardened, every image of a served Pod is pinned by digest: a tag
/// can be moved to other code, next to the broker and its socket.
pub fn unpinned_images(pod: &Pod) -> Vec<Problem> {
    all_containers(pod)
        .into_iter()
        .filter(|(_, c)| !c.image.as_deref().is_some_and(is_digest_pinned))
        .map(|(list, c)| {
            problem(
                format!("spec.{list}[{}].image", c.name),
                format!(
                    "the Hardened profile requires every image of a served Pod pinned by digest \
                     (repo@sha256:<64 hex>), got {:?}",
                    c.image.unwrap_or_default()
                ),
            )
        })
        .collect()
}

fn container_leaks(c: &Container, volumes: &BTreeSet<String>, secrets: &BTreeSet<String>) -> Vec<String> {
    let mut leaks = Vec::new();
    for mount in c.volume_mounts.iter().flatten() {
        if volumes.contains(&mount.name) {
            leaks.push(format!("mounts volume {:?}", mount.name));
        }
    }
    for env in c.env.iter().flatten() {
        let secret = env
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|r| r.name.clone());
        if let Some(name) = secret.filter(|n| secrets.contains(n)) {
            leaks.push(format!("env {:?} reads Secret {name:?}", env.name));
        }
    }
    for from in c.env_from.iter().flatten() {
        if let Some(name) = from
            .secret_ref
            .as_ref()
            .map(|r| r.name.clone())
            .filter(|n| secrets.contains(n))
        {
            leaks.push(format!("envFrom reads Secret {name:?}"));
        }
    }
    leaks
}

#[cfg(test)]
mod in_cluster_tests {
    use super::in_cluster_host;

    #[test]
    fn cluster_service_names_are_in_cluster_and_outside_names_are_not() {
        for host in [
            "openbao",
            "localhost",
            "bao.vault.svc",
            "bao.vault.svc.cluster.local",
            "kms.corp.cluster.local.",
        ] {
            assert!(in_cluster_host(host), "{host}");
        }
        for host in [
            "kms.eu-west-1.amazonaws.com",
            "bao.example.com",
            "10.0.0.7",
            "fd00::7",
            "bao.vault",
        ] {
            assert!(!in_cluster_host(host), "{host}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_pinning_needs_a_full_sha256() {
        let digest = "a".repeat(64);
        assert!(is_digest_pinned(&format!("ghcr.io/x/sealbroker@sha256:{digest}")));
        assert!(is_digest_pinned(&format!(
            "ghcr.io/x/sealbroker:1.0@sha256:{digest}"
        )));
        assert!(!is_digest_pinned("ghcr.io/x/sealbroker:1.0"));
        assert!(!is_digest_pinned("ghcr.io/x/sealbroker@sha256:abc"));
        assert!(!is_digest_pinned(&format!("@sha256:{digest}")));
    }

    #[test]
    fn versions_count_from_one_and_the_primary_exists_and_is_not_retired() {
        let check = |newest, primary, min_decryption| {
            let mut problems = Vec::new();
            let versions = KeyVersions {
                newest,
                primary,
                min_decryption,
            };
            version_rules("spec.keys[0].versions", &versions, &mut problems);
            problems.into_iter().map(|p| p.field).collect::<Vec<_>>()
        };
        assert!(check(Some(3), Some(2), Some(2)).is_empty());
        assert!(
            check(Some(2), None, None).is_empty(),
            "staged above the default primary 1"
        );
        assert_eq!(check(Some(1), Some(2), None), ["spec.keys[0].versions.newest"]);
        assert_eq!(
            check(None, Some(2), Some(3)),
            ["spec.keys[0].versions.minDecryption"]
        );
        assert_eq!(
            check(None, None, Some(2)),
            ["spec.keys[0].versions.minDecryption"]
        );
        assert_eq!(
            check(Some(0), Some(0), None),
            ["spec.keys[0].versions.newest", "spec.keys[0].versions.primary"]
        );
    }

    #[test]
    fn the_pods_service_account_must_be_a_name() {
        let mut sb = crate::parse_sealbroker(include_str!("../tests/golden/hardened.input.yaml")).unwrap();
        assert!(validate(&sb).is_empty());
        sb.spec.openbao.service_account_name = "Open Bao".into();
        let fields: Vec<String> = validate(&sb).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["spec.openbao.serviceAccountName"]);
    }

    #[test]
    fn labels_refuse_uppercase_dots_and_edges() {
        assert!(is_label("hsm-1", 63));
        assert!(!is_label("HSM", 63));
        assert!(!is_label("a.b", 63));
        assert!(!is_label("-a", 63));
        assert!(!is_label("", 63));
    }
}
