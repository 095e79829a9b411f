//! The OpenBaoCluster fragment for the seeds' operator
//! (dc-tec/openbao-operator): its `spec.plugins[]` entry and
//! `spec.unseal` of `type: kms`, so that operator renders OpenBao's
//! `plugin "kms" "sealbroker"` and `seal "sealbroker"` stanzas itself while
//! this operator injects the broker sidecar and its socket.
//!
//! The field names are that operator's `api/v1alpha1` (`Plugin`,
//! `UnsealConfig`, `KMSPluginSealConfig`): a plugin needs `type`, `name`,
//! `version`, `binaryName`, a 64-hex `sha256sum` and `image` or `command`;
//! `unseal.kms.pluginName` must name a `type: kms` plugin, and every
//! `unseal.kms.config` key must be an HCL identifier with a string value.
//! The SealBroker's `spec.openbao.selfInit` becomes `spec.selfInit`
//! (`SelfInitConfig`: `enabled`, and requests of `name`, `operation`,
//! `path`, `data`, `allowFailure`).

use serde_json::{Value, json};

use crate::crd::SealBroker;
use crate::render::Layout;
use crate::validation::is_digest_pinned;

/// The plugin's name in OpenBao: the seal stanza's label.
pub const PLUGIN_NAME: &str = "sealbroker";

/// Where OpenBao finds the plugin.
pub enum PluginSource<'a> {
    /// OpenBao downloads the plugin image (docs/install.md), pinned by
    /// digest; `version` is only the name of its link.
    Image(&'a str),
    /// `sealbroker` in OpenBao's plugin directory, where this operator's
    /// init container installs it.
    Command,
}

/// The fragment as a YAML document (an `OpenBaoCluster` with only the
/// fields this names), or why it cannot be made.
pub fn openbao_cluster_fragment(sb: &SealBroker, source: PluginSource<'_>) -> Result<String, String> {
    let spec = &sb.spec;
    if !crate::validation::is_sha256_hex(&spec.plugin_sha256) {
        return Err(format!(
            "spec.pluginSha256 {:?} is not 64 lowercase hex digits; OpenBao checks the plugin binary against it",
            spec.plugin_sha256
        ));
    }
    let mut plugin = json!({
        "type": "kms",
        "name": PLUGIN_NAME,
        "version": "v1",
        "binaryName": "sealbroker",
        "sha256sum": spec.plugin_sha256,
        "args": ["kms-plugin"],
    });
    match source {
        PluginSource::Image(image) => {
            if !is_digest_pinned(image) {
                return Err(format!(
                    "--plugin-image {image:?} is not pinned by digest (repository@sha256:<64 hex>)"
                ));
            }
            plugin["image"] = json!(image);
        }
        PluginSource::Command => plugin["command"] = json!("sealbroker"),
    }
    let mut config = serde_json::Map::new();
    config.insert(
        "endpoint".into(),
        json!(format!("unix://{}", Layout::pod().socket())),
    );
    config.insert("key_name".into(), json!(spec.seal.key));
    if let Some(aad) = &spec.seal.aad {
        config.insert("aad".into(), json!(aad));
    }
    let mut fragment = json!({
        "apiVersion": "openbao.org/v1alpha1",
        "kind": "OpenBaoCluster",
        "metadata": {
            "namespace": sb.metadata.namespace.as_deref().unwrap_or("default"),
        },
        "spec": {
            "plugins": [plugin],
            "unseal": {
                "type": "kms",
                "kms": { "pluginName": PLUGIN_NAME, "config": Value::Object(config) },
            },
        },
    });
    // That operator renders OpenBao's config itself, so the SealBroker's
    // self-init goes to its spec.selfInit (same request fields).
    if let Some(init) = &spec.openbao.self_init {
        let requests: Vec<Value> = init
            .requests
            .iter()
            .map(|r| {
                let mut request = json!({"name": r.name, "operation": r.operation, "path": r.path});
                if let Some(data) = &r.data {
                    request["data"] = data.clone();
                }
                if r.allow_failure {
                    request["allowFailure"] = json!(true);
                }
                request
            })
            .collect();
        fragment["spec"]["selfInit"] = json!({"enabled": true, "requests": requests});
    }
    let yaml = serde_saphyr::to_string(&fragment).map_err(|e| format!("cannot write YAML: {e}"))?;
    Ok(format!(
        "# For dc-tec/openbao-operator, from SealBroker {}/{}: merge into your OpenBaoCluster.\n\
         # Its pods must carry the labels spec.openbao.selector matches, so the sidecar is injected.\n{yaml}",
        sb.metadata.namespace.as_deref().unwrap_or("default"),
        sb.metadata.name.as_deref().unwrap_or(""),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealbroker() -> SealBroker {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/development/sealbroker.yaml"
        ))
        .unwrap();
        serde_saphyr::from_str(&text).unwrap()
    }

    fn parse(text: &str) -> Value {
        serde_saphyr::from_str(text).unwrap()
    }

    #[test]
    fn self_init_becomes_the_seed_operators_self_init() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/hardened/sealbroker.yaml"
        ))
        .unwrap();
        let mut sb: SealBroker = serde_saphyr::from_str(&text).unwrap();
        sb.spec.plugin_sha256 = "ab".repeat(32);
        let fragment = parse(&openbao_cluster_fragment(&sb, PluginSource::Command).unwrap());
        let init = &fragment["spec"]["selfInit"];
        assert_eq!(init["enabled"], true);
        let requests = init["requests"].as_array().unwrap();
        let want = &sb.spec.openbao.self_init.as_ref().unwrap().requests;
        assert_eq!(requests.len(), want.len());
        for (got, want) in requests.iter().zip(want) {
            assert_eq!(got["name"], want.name.as_str());
            assert_eq!(got["operation"], want.operation.as_str());
            assert_eq!(got["path"], want.path.as_str());
            assert_eq!(got.get("data"), want.data.as_ref());
        }
        // Without selfInit (Development here), none is rendered.
        let dev = parse(&openbao_cluster_fragment(&sealbroker(), PluginSource::Command).unwrap());
        assert!(dev["spec"].get("selfInit").is_none());
    }

    /// What the seeds' operator requires of the two objects, checked field
    /// by field from its `api/v1alpha1` types.
    fn assert_seed_contract(fragment: &Value) {
        let plugins = fragment["spec"]["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 1);
        let plugin = &plugins[0];
        for field in ["type", "name", "version", "binaryName", "sha256sum"] {
            let value = plugin[field].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "plugins[0].{field} is required: {plugin}");
        }
        let sum = plugin["sha256sum"].as_str().unwrap();
        assert!(
            sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sum}"
        );
        assert!(
            plugin.get("image").is_some() != plugin.get("command").is_some(),
            "exactly one of image and command: {plugin}"
        );
        let unseal = &fragment["spec"]["unseal"];
        assert_eq!(unseal["type"], "kms");
        assert_eq!(unseal["kms"]["pluginName"], plugin["name"]);
        assert_eq!(plugin["type"], "kms");
        for (key, value) in unseal["kms"]["config"].as_object().unwrap() {
            assert!(
                key.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{key} is not an HCL identifier"
            );
            assert!(value.is_string(), "{key}: values are strings");
        }
    }

    #[test]
    fn the_command_fragment_names_the_socket_key_and_plugin_digest() {
        let sb = sealbroker();
        let fragment = parse(&openbao_cluster_fragment(&sb, PluginSource::Command).unwrap());
        assert_seed_contract(&fragment);
        let plugin = &fragment["spec"]["plugins"][0];
        assert_eq!(plugin["command"], "sealbroker");
        assert_eq!(plugin["args"], json!(["kms-plugin"]));
        assert_eq!(plugin["sha256sum"], sb.spec.plugin_sha256.as_str());
        let config = &fragment["spec"]["unseal"]["kms"]["config"];
        assert_eq!(config["endpoint"], "unix:///run/sealbroker/sealbroker.sock");
        assert_eq!(config["key_name"], sb.spec.seal.key.as_str());
        assert_eq!(
            fragment["metadata"]["namespace"],
            sb.metadata.namespace.as_deref().unwrap()
        );
    }

    #[test]
    fn the_image_fragment_pins_the_plugin_image_by_digest() {
        let sb = sealbroker();
        let image = format!("registry.example/sealbroker-kms-plugin@sha256:{}", "a".repeat(64));
        let fragment = parse(&openbao_cluster_fragment(&sb, PluginSource::Image(&image)).unwrap());
        assert_seed_contract(&fragment);
        assert_eq!(fragment["spec"]["plugins"][0]["image"], image.as_str());
        let e = openbao_cluster_fragment(
            &sb,
            PluginSource::Image("registry.example/sealbroker-kms-plugin:v1"),
        )
        .unwrap_err();
        assert!(e.contains("not pinned by digest"), "{e}");
    }

    #[test]
    fn a_sealbroker_without_a_plugin_digest_gets_no_fragment() {
        let mut sb = sealbroker();
        sb.spec.plugin_sha256 = "not-a-digest".into();
        let e = openbao_cluster_fragment(&sb, PluginSource::Command).unwrap_err();
        assert!(e.contains("spec.pluginSha256"), "{e}");
    }
}
