//! The two artifacts a `SealBroker` turns into: sealbroker's TOML config and
//! the OpenBao `plugin "kms"` + `seal` stanza (HCL).
//!
//! The controller puts exactly this text into ConfigMaps; `sealbroker-operator
//! render` prints it, optionally with the in-pod paths moved under a root
//! directory so both files can run outside a pod. Nothing else differs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::crd::{BackendSpec, KeySpec, Profile, SealBroker};

/// Where the sidecar's volumes are mounted (in the pod).
pub mod paths {
    /// The broker config ConfigMap.
    pub const CONFIG_DIR: &str = "/etc/sealbroker";
    /// The config file name inside [`CONFIG_DIR`] and in the ConfigMap.
    pub const CONFIG_FILE: &str = "sealbroker.toml";
    /// The seal stanza's file name in its ConfigMap.
    pub const SEAL_FILE: &str = "seal.hcl";
    /// The shared socket volume.
    pub const SOCKET_DIR: &str = "/run/sealbroker";
    pub const SOCKET_FILE: &str = "sealbroker.sock";
    /// Credential volumes: `<SECRETS_DIR>/<backend>/<file>`.
    pub const SECRETS_DIR: &str = "/var/run/secrets/sealbroker";
    /// The TCP listener's certificate volume, under [`SECRETS_DIR`].
    pub const LISTENER_TLS: &str = "_listener";
    /// Audit chain and software keys.
    pub const STATE_DIR: &str = "/var/lib/sealbroker";
    /// Where the image holds the sealbroker binary.
    pub const IMAGE_BINARY: &str = "/usr/local/bin/sealbroker";
    /// The sidecar's own API token and the API server's CA (for its report).
    pub const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
}

/// In-pod paths, or the same paths under a root directory.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    root: Option<PathBuf>,
}

impl Layout {
    /// The paths as mounted in the pod.
    pub fn pod() -> Layout {
        Layout { root: None }
    }

    /// Every operator-owned path moved under `root` (for running outside a pod).
    pub fn rooted(root: &Path) -> Layout {
        Layout {
            root: Some(root.to_owned()),
        }
    }

    /// `path` (absolute, in-pod) as seen through this layout.
    pub fn path(&self, path: &str) -> String {
        match &self.root {
            None => path.to_owned(),
            Some(root) => root
                .join(path.trim_start_matches('/'))
                .to_string_lossy()
                .into_owned(),
        }
    }

    pub fn socket(&self) -> String {
        self.path(&format!("{}/{}", paths::SOCKET_DIR, paths::SOCKET_FILE))
    }

    /// A credential file of `backend`.
    pub fn credential(&self, backend: &str, file: &str) -> String {
        self.path(&format!("{}/{backend}/{file}", paths::SECRETS_DIR))
    }

    pub fn state(&self, file: &str) -> String {
        self.path(&format!("{}/{file}", paths::STATE_DIR))
    }
}

/// `"..."` with TOML basic-string escapes.
fn toml_str(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `"..."` with HCL escapes, including template sequences.
fn hcl_str(value: &str) -> String {
    let escaped = toml_str(value);
    escaped.replace("${", "$${").replace("%{", "%%{")
}

/// The principal list OpenBao is admitted as.
fn principals(sb: &SealBroker) -> String {
    let mut list = vec![format!("uid:{}", sb.spec.openbao.uid)];
    if let Some(net) = &sb.spec.network {
        list.extend(net.allow.iter().cloned());
    }
    let quoted: Vec<String> = list.iter().map(|p| toml_str(p)).collect();
    format!("[{}]", quoted.join(", "))
}

fn origin(sb: &SealBroker) -> String {
    format!(
        "SealBroker {}/{}",
        sb.metadata.namespace.as_deref().unwrap_or("default"),
        sb.metadata.name.as_deref().unwrap_or("")
    )
}

/// SHA-256 (lowercase hex) of a rendered config, as a sidecar computes it
/// over the file it loaded: its reports count only under this value.
pub fn config_sha256(config: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(config.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// sealbroker's config (`sealbroker.toml`). Assumes a spec that passed
/// [`crate::validation::validate`].
pub fn broker_config(sb: &SealBroker, layout: &Layout) -> String {
    let spec = &sb.spec;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rendered by sealbroker-operator from {}. Do not edit.",
        origin(sb)
    );
    let profile = match spec.profile {
        Profile::Hardened => "hardened",
        Profile::Development => "development",
    };
    let _ = writeln!(out, "profile = \"{profile}\"\n");
    let _ = writeln!(out, "[server]");
    let _ = writeln!(out, "unix_socket = {}", toml_str(&layout.socket()));
    // OpenBao reaches the socket through the group it shares with the sidecar.
    let _ = writeln!(out, "unix_socket_mode = \"0660\"");
    let _ = writeln!(out, "state_dir = {}", toml_str(&layout.path(paths::STATE_DIR)));
    if let Some(net) = &spec.network {
        let tls = |file: &str| toml_str(&layout.credential(paths::LISTENER_TLS, file));
        let _ = writeln!(out, "\n[server.tcp]");
        let _ = writeln!(out, "listen = \"0.0.0.0:{}\"", net.port);
        let _ = writeln!(out, "[server.tcp.tls]");
        let _ = writeln!(out, "cert_file = {}", tls("tls.crt"));
        let _ = writeln!(out, "key_file = {}", tls("tls.key"));
        let _ = writeln!(out, "client_ca_file = {}", tls("ca.crt"));
    }
    let _ = writeln!(out, "\n[audit]");
    // Hardened keeps its trail where the pod's log collector reads it: a
    // file on the pod's own volume would go with the pod, and the broker
    // refuses an unkeyed file under Hardened.
    if profile != "hardened" {
        let _ = writeln!(out, "file = {}", toml_str(&layout.state("audit.jsonl")));
    }
    let _ = writeln!(out, "stdout = true");
    // Each sidecar reports the key versions it can use on its own Pod; the
    // controller promotes a version once every served pod has.
    let _ = writeln!(out, "\n[report]\nkubernetes_pod = true");
    let _ = writeln!(
        out,
        "token_file = {}",
        toml_str(&layout.path(&format!("{}/token", paths::API_TOKEN_DIR)))
    );
    let _ = writeln!(
        out,
        "ca_file = {}",
        toml_str(&layout.path(&format!("{}/ca.crt", paths::API_TOKEN_DIR)))
    );
    let _ = writeln!(out, "\n[log]\nformat = \"json\"");
    for backend in &spec.backends {
        out.push('\n');
        backend_table(&mut out, backend, layout);
    }
    let allow = principals(sb);
    for key in &spec.keys {
        out.push('\n');
        key_table(&mut out, key, &spec.backends, layout, &allow);
    }
    out
}

fn backend_table(out: &mut String, backend: &BackendSpec, layout: &Layout) {
    let name = &backend.name;
    let _ = writeln!(out, "[backends.{name}]");
    let cred = |file: &str| toml_str(&layout.credential(name, file));
    let opt = |out: &mut String, key: &str, value: &Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(out, "{key} = {}", toml_str(v));
        }
    };
    if let Some(p) = &backend.pkcs11 {
        let _ = writeln!(out, "type = \"pkcs11\"");
        let _ = writeln!(out, "lib = {}", toml_str(&p.lib));
        opt(out, "token_label", &p.token_label);
        if let Some(slot) = p.slot {
            let _ = writeln!(out, "slot = {slot}");
        }
        let _ = writeln!(out, "pin_file = {}", cred("pin"));
        if let Some(n) = p.max_sessions {
            let _ = writeln!(out, "max_sessions = {n}");
        }
        // `inline` and `direct` run calls on the broker's own threads, so
        // the module loads into the broker; `pool` keeps the default helper.
        let in_process = match p.dispatch {
            Some(crate::crd::Pkcs11Dispatch::Inline) => Some("inline"),
            Some(crate::crd::Pkcs11Dispatch::Direct) => Some("direct"),
            Some(crate::crd::Pkcs11Dispatch::Pool) | None => None,
        };
        if let Some(dispatch) = in_process {
            let _ = writeln!(out, "isolation = \"in-process\"\ndispatch = \"{dispatch}\"");
        }
    } else if let Some(k) = &backend.kmip {
        let _ = writeln!(out, "type = \"kmip\"");
        let _ = writeln!(out, "endpoint = {}", toml_str(&k.endpoint));
        let _ = writeln!(out, "client_cert = {}", cred("tls.crt"));
        let _ = writeln!(out, "client_key = {}", cred("tls.key"));
        let _ = writeln!(out, "ca_cert = {}", cred("ca.crt"));
        opt(out, "server_name", &k.server_name);
        if let Some(t) = k.timeout_secs {
            let _ = writeln!(out, "timeout_secs = {t}");
        }
    } else if let Some(a) = &backend.awskms {
        let _ = writeln!(out, "type = \"awskms\"");
        opt(out, "region", &a.region);
        opt(out, "endpoint", &a.endpoint);
        if a.credentials_secret.is_some() {
            let _ = writeln!(out, "credentials_file = {}", cred("credentials"));
        }
        opt(out, "profile", &a.profile);
    } else if let Some(t) = &backend.transit {
        let _ = writeln!(out, "type = \"transit\"");
        let _ = writeln!(out, "address = {}", toml_str(&t.address));
        opt(out, "mount_path", &t.mount_path);
        opt(out, "namespace", &t.namespace);
        let _ = writeln!(out, "token_file = {}", cred("token"));
        if t.ca_secret.is_some() {
            let _ = writeln!(out, "tls_ca_file = {}", cred("ca.crt"));
        }
        opt(out, "tls_server_name", &t.tls_server_name);
    } else if backend.software.is_some() {
        let _ = writeln!(out, "type = \"software\"");
    }
}

fn key_table(out: &mut String, key: &KeySpec, backends: &[BackendSpec], layout: &Layout, allow: &str) {
    let _ = writeln!(out, "[keys.{}]", key.name);
    let _ = writeln!(out, "backend = {}", toml_str(&key.backend));
    let kind = backends
        .iter()
        .find(|b| b.name == key.backend)
        .and_then(BackendSpec::type_name);
    let opt = |out: &mut String, name: &str, value: &Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(out, "{name} = {}", toml_str(v));
        }
    };
    match kind {
        Some("pkcs11") => {
            opt(out, "key_label", &key.key_label);
            opt(out, "key_id", &key.key_id);
            opt(out, "mechanism", &key.mechanism);
        }
        Some("kmip") => {
            opt(out, "kms_key_id", &key.kms_key_id);
            opt(out, "key_name", &key.key_name);
            opt(out, "encrypt_alg", &key.encrypt_alg);
        }
        Some("awskms") => opt(out, "key_id", &key.key_id),
        Some("transit") => opt(out, "key_name", &key.key_name),
        Some("software") => {
            let file = layout.state(&format!("{}.key", key.name));
            let _ = writeln!(out, "key_file = {}", toml_str(&file));
            let _ = writeln!(out, "generate = true");
        }
        _ => {}
    }
    if let Some(versions) = &key.versions {
        let number = |out: &mut String, name: &str, value: Option<u32>| {
            if let Some(v) = value {
                let _ = writeln!(out, "{name} = {v}");
            }
        };
        number(out, "primary_version", versions.primary);
        number(out, "newest_version", versions.newest);
        number(out, "min_decryption_version", versions.min_decryption);
    }
    // Only OpenBao may use a key, and only for sealing; nobody administers it
    // through the socket (rotation is done with the broker's own config).
    let _ = writeln!(
        out,
        "allow = {{ wrap = {allow}, unwrap = {allow}, rewrap = {allow} }}"
    );
}

/// OpenBao's `plugin_directory`, `plugin "kms"` and `seal` blocks (`seal.hcl`).
pub fn seal_stanza(sb: &SealBroker, layout: &Layout) -> String {
    let spec = &sb.spec;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rendered by sealbroker-operator from {}. Pass it to OpenBao as an extra -config file.",
        origin(sb)
    );
    let _ = writeln!(
        out,
        "plugin_directory = {}\n",
        hcl_str(&layout.path(&spec.openbao.plugin_directory))
    );
    let _ = writeln!(out, "plugin \"kms\" \"sealbroker\" {{");
    let _ = writeln!(out, "  command   = \"sealbroker\"");
    let _ = writeln!(out, "  args      = [\"kms-plugin\"]");
    let _ = writeln!(out, "  sha256sum = {}", hcl_str(&spec.plugin_sha256));
    let _ = writeln!(out, "}}\n");
    let _ = writeln!(out, "seal \"sealbroker\" {{");
    let _ = writeln!(
        out,
        "  endpoint = {}",
        hcl_str(&format!("unix://{}", layout.socket()))
    );
    let _ = writeln!(out, "  key_name = {}", hcl_str(&spec.seal.key));
    if let Some(aad) = &spec.seal.aad {
        let _ = writeln!(out, "  aad      = {}", hcl_str(aad));
    }
    let _ = writeln!(out, "}}");
    if let Some(init) = &spec.openbao.self_init {
        let _ = writeln!(
            out,
            "\n# spec.openbao.selfInit: OpenBao runs these once, on its first start, then revokes the\n\
             # root token it used; none is ever returned or stored."
        );
        let _ = writeln!(out, "initialize \"sealbroker\" {{");
        for request in &init.requests {
            let _ = writeln!(out, "  request {} {{", hcl_str(&request.name));
            let _ = writeln!(out, "    operation = {}", hcl_str(&request.operation));
            let _ = writeln!(
                out,
                "    path      = {}",
                hcl_str(request.path.trim_start_matches('/'))
            );
            if let Some(data) = &request.data {
                let _ = writeln!(out, "    data      = {}", hcl_value(data, 2));
            }
            if request.allow_failure {
                let _ = writeln!(out, "    allow_failure = true");
            }
            let _ = writeln!(out, "  }}");
        }
        let _ = writeln!(out, "}}");
    }
    out
}

/// A JSON value as an HCL expression (objects with quoted keys), indented
/// for nesting level `level`. Nulls render as `""`; validation refuses them.
fn hcl_value(value: &serde_json::Value, level: usize) -> String {
    use serde_json::Value;
    let pad = "  ".repeat(level + 1);
    let close = "  ".repeat(level);
    match value {
        Value::Null => "\"\"".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => hcl_str(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| hcl_value(v, level + 1)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{pad}{} = {}", hcl_str(k), hcl_value(v, level + 1)))
                .collect();
            format!("{{\n{}\n{close}}}", fields.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(toml_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn json_renders_as_hcl_with_quoted_keys_and_escaped_strings() {
        let value = serde_json::json!({
            "type": "jwt",
            "n": 3,
            "on": true,
            "list": ["a\"b", "${x}"],
            "nested": {"k-1": {}}
        });
        assert_eq!(
            hcl_value(&value, 2),
            "{\n      \"list\" = [\"a\\\"b\", \"$${x}\"]\n      \"n\" = 3\n      \"nested\" = {\n        \"k-1\" = {}\n      }\n      \"on\" = true\n      \"type\" = \"jwt\"\n    }"
        );
    }

    #[test]
    fn hcl_strings_escape_template_sequences() {
        assert_eq!(hcl_str("${x}%{y}"), "\"$${x}%%{y}\"");
    }

    #[test]
    fn key_versions_render_into_the_key_table() {
        let mut sb = crate::parse_sealbroker(include_str!("../tests/golden/hardened.input.yaml")).unwrap();
        sb.spec.keys[0].versions = Some(crate::crd::KeyVersions {
            newest: Some(3),
            primary: Some(2),
            min_decryption: Some(2),
        });
        let config = broker_config(&sb, &Layout::pod());
        let table = config
            .split("[keys.openbao-unseal]\n")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .unwrap();
        for line in [
            "primary_version = 2",
            "newest_version = 3",
            "min_decryption_version = 2",
        ] {
            assert!(table.lines().any(|l| l == line), "no {line:?} in\n{table}");
        }
    }

    #[test]
    fn config_hash_is_the_sha256_of_the_text() {
        assert_eq!(
            config_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rooted_layout_moves_paths_under_root() {
        let layout = Layout::rooted(Path::new("/tmp/r"));
        assert_eq!(layout.socket(), "/tmp/r/run/sealbroker/sealbroker.sock");
        assert_eq!(
            layout.credential("hsm", "pin"),
            "/tmp/r/var/run/secrets/sealbroker/hsm/pin"
        );
        assert_eq!(Layout::pod().socket(), "/run/sealbroker/sealbroker.sock");
    }
}
