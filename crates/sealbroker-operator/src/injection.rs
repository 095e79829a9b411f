//! Sidecar injection into OpenBao Pods, as a pure function of (Pod, SealBroker).
//!
//! Added to a selected Pod:
//! - init container `sealbroker-plugin`: copies the sealbroker binary into a
//!   shared plugin-directory volume, which OpenBao mounts read-only;
//! - native sidecar `sealbroker` (an init container with `restartPolicy:
//!   Always`, so it starts before OpenBao): `sealbroker serve`, with the
//!   credential volumes mounted into it alone;
//! - a shared socket volume and the seal stanza, mounted into OpenBao;
//! - the Pod's own ServiceAccount token, mounted into the sidecar alone, with
//!   the Pod's name and namespace in its environment: the sidecar reports on
//!   its own Pod which key versions it can use (`sealbroker.io/key-versions`,
//!   see [`crate::rotation`]). Containers added by a webhook never get the
//!   token the ServiceAccount admission plugin mounts, since that plugin runs
//!   first, so the sidecar gets its own projected one.
//!
//! Every injected container runs non-root, with a read-only root filesystem,
//! all capabilities dropped, seccomp RuntimeDefault and no privilege
//! escalation. A Pod that already has the sidecar is returned unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIProjection, DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    ObjectFieldSelector, Pod, ProjectedVolumeSource, SeccompProfile, SecretProjection, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};

use crate::crd::{CredentialItem, SealBroker};
use crate::desired::Names;
use crate::render::paths;

/// The sidecar container's name; its presence marks a Pod as injected.
pub const SIDECAR_NAME: &str = "sealbroker";
/// The init container that installs the plugin binary.
pub const PLUGIN_INIT_NAME: &str = "sealbroker-plugin";
/// Annotation naming the SealBroker that injected the Pod.
pub const INJECTED_ANNOTATION: &str = "sealbroker.io/injected-by";
/// The SHA-256 of what the injection added to the Pod (sidecar, init
/// container, volumes and mounts), so the controller can tell which pods
/// run a sidecar injected for an older spec.
pub const INJECTION_ANNOTATION: &str = "sealbroker.io/injection-sha256";

/// Environment variables that tell the sidecar which Pod it reports on.
pub const POD_NAME_ENV: &str = "SEALBROKER_POD_NAME";
pub const POD_NAMESPACE_ENV: &str = "SEALBROKER_POD_NAMESPACE";

pub(crate) const VOL_CONFIG: &str = "sealbroker-config";
const VOL_SEAL: &str = "sealbroker-seal";
const VOL_SOCKET: &str = "sealbroker-socket";
const VOL_PLUGINS: &str = "sealbroker-plugins";
pub(crate) const VOL_STATE: &str = "sealbroker-state";
const VOL_LISTENER: &str = "sealbroker-listener-tls";
const VOL_API_TOKEN: &str = "sealbroker-api-token";
/// Where the init container sees the plugin volume.
const PLUGIN_STAGING: &str = "/sealbroker-plugins";

/// Why a Pod cannot be injected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("the Pod has no container named {0:?} (spec.openbao.containerName of SealBroker {1:?})")]
    NoOpenBaoContainer(String, String),
    #[error(
        "container {container:?} already mounts something at {path}, where sealbroker needs to mount {volume}"
    )]
    MountClash {
        container: String,
        path: String,
        volume: String,
    },
    #[error("the Pod already has a volume named {0:?}")]
    VolumeClash(String),
    #[error("the Pod has no spec")]
    NoSpec,
}

/// Whether the Pod already carries the sidecar.
pub fn is_injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == SIDECAR_NAME)
    })
}

/// The restricted security context every injected container gets.
pub fn restricted_context(uid: i64, gid: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(gid),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

pub(crate) fn empty_dir(name: &str, memory: bool) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: memory.then(|| "Memory".into()),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub(crate) fn config_map_volume(name: &str, config_map: &str, key: &str) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: key.into(),
                mode: None,
            }]),
            default_mode: Some(0o444),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

/// A projected volume of Secret keys, one file each. Read-only for all users
/// of the one container that mounts it: the mount is the boundary.
pub(crate) fn secret_volume(name: &str, items: &[CredentialItem]) -> Volume {
    let mut by_secret: BTreeMap<&str, Vec<KeyToPath>> = BTreeMap::new();
    for item in items {
        by_secret.entry(&item.secret).or_default().push(KeyToPath {
            key: item.key.clone(),
            path: item.file.clone(),
            mode: None,
        });
    }
    let sources = by_secret
        .into_iter()
        .map(|(secret, items)| VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.into(),
                items: Some(items),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        })
        .collect();
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o444),
        }),
        ..Volume::default()
    }
}

/// The Pod's own ServiceAccount token, as the kubelet projects it for
/// in-cluster clients (token, cluster CA, namespace).
fn api_token_volume() -> Volume {
    Volume {
        name: VOL_API_TOKEN.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        audience: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(field("metadata.namespace")),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            default_mode: Some(0o444),
        }),
        ..Volume::default()
    }
}

fn field(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector {
        api_version: Some("v1".into()),
        field_path: path.into(),
    }
}

/// The plain environment of `spec.env`.
pub(crate) fn plain_env(sb: &SealBroker) -> Vec<EnvVar> {
    sb.spec
        .env
        .iter()
        .map(|e| EnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            value_from: None,
        })
        .collect()
}

/// The credential volumes of a SealBroker: (volume, mount path, items).
pub(crate) fn credential_volumes(sb: &SealBroker) -> Vec<(String, String, Vec<CredentialItem>)> {
    let mut out: Vec<(String, String, Vec<CredentialItem>)> = sb
        .spec
        .backends
        .iter()
        .filter_map(|b| {
            let items = b.credential_items();
            (!items.is_empty()).then(|| {
                (
                    format!("sealbroker-cred-{}", b.name),
                    format!("{}/{}", paths::SECRETS_DIR, b.name),
                    items,
                )
            })
        })
        .collect();
    if let Some(net) = &sb.spec.network {
        let items = ["tls.crt", "tls.key", "ca.crt"]
            .into_iter()
            .map(|k| CredentialItem {
                secret: net.tls_secret.clone(),
                key: k.into(),
                file: k.into(),
            })
            .collect();
        out.push((
            VOL_LISTENER.into(),
            format!("{}/{}", paths::SECRETS_DIR, paths::LISTENER_TLS),
            items,
        ));
    }
    out
}

/// The Pod with the sidecar injected (unchanged if it already has one).
pub fn inject(pod: &Pod, sb: &SealBroker) -> Result<Pod, InjectError> {
    let mut out = inject_spec(pod, sb)?;
    if !is_injected(pod) {
        out.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(INJECTION_ANNOTATION.into(), injection_sha256(sb));
    }
    Ok(out)
}

/// [`inject`] without the injection hash (which is computed from it).
fn inject_spec(pod: &Pod, sb: &SealBroker) -> Result<Pod, InjectError> {
    if is_injected(pod) {
        return Ok(pod.clone());
    }
    let spec_in = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let sb_name = sb.metadata.name.clone().unwrap_or_default();
    let target = &sb.spec.openbao;
    let names = Names::of(sb);
    let mut out = pod.clone();
    let spec = out.spec.get_or_insert_with(|| spec_in.clone());

    let openbao = spec
        .containers
        .iter_mut()
        .find(|c| c.name == target.container_name)
        .ok_or_else(|| InjectError::NoOpenBaoContainer(target.container_name.clone(), sb_name.clone()))?;
    let openbao_mounts = [
        mount(VOL_PLUGINS, &target.plugin_directory, true),
        // Connecting to a socket needs no write access to the directory.
        mount(VOL_SOCKET, paths::SOCKET_DIR, true),
        mount(VOL_SEAL, &target.seal_config_dir, true),
    ];
    let existing = openbao.volume_mounts.get_or_insert_with(Vec::new);
    for m in &openbao_mounts {
        if existing
            .iter()
            .any(|e| e.mount_path.trim_end_matches('/') == m.mount_path.trim_end_matches('/'))
        {
            return Err(InjectError::MountClash {
                container: target.container_name.clone(),
                path: m.mount_path.clone(),
                volume: m.name.clone(),
            });
        }
    }
    existing.extend(openbao_mounts);

    let credentials = credential_volumes(sb);
    let mut volumes = vec![
        config_map_volume(VOL_CONFIG, &names.broker_config, paths::CONFIG_FILE),
        config_map_volume(VOL_SEAL, &names.seal_config, paths::SEAL_FILE),
        empty_dir(VOL_SOCKET, true),
        empty_dir(VOL_PLUGINS, false),
        empty_dir(VOL_STATE, false),
        api_token_volume(),
    ];
    volumes.extend(
        credentials
            .iter()
            .map(|(name, _, items)| secret_volume(name, items)),
    );
    let pod_volumes = spec.volumes.get_or_insert_with(Vec::new);
    for v in &volumes {
        if pod_volumes.iter().any(|e| e.name == v.name) {
            return Err(InjectError::VolumeClash(v.name.clone()));
        }
    }
    pod_volumes.extend(volumes);

    let security = restricted_context(sb.spec.broker_uid, target.gid);
    let plugin_init = Container {
        name: PLUGIN_INIT_NAME.into(),
        image: Some(sb.spec.image.clone()),
        // The image has no shell and no `cp`: the binary copies itself.
        command: Some(vec![
            paths::IMAGE_BINARY.into(),
            "install-plugin".into(),
            format!("{PLUGIN_STAGING}/sealbroker"),
        ]),
        volume_mounts: Some(vec![mount(VOL_PLUGINS, PLUGIN_STAGING, false)]),
        security_context: Some(security.clone()),
        resources: sb.spec.resources.clone(),
        ..Container::default()
    };
    let mut sidecar_mounts = vec![
        mount(VOL_CONFIG, paths::CONFIG_DIR, true),
        mount(VOL_SOCKET, paths::SOCKET_DIR, false),
        mount(VOL_STATE, paths::STATE_DIR, false),
        mount(VOL_API_TOKEN, paths::API_TOKEN_DIR, true),
    ];
    sidecar_mounts.extend(credentials.iter().map(|(name, path, _)| mount(name, path, true)));
    let mut env = plain_env(sb);
    for (name, path) in [
        (POD_NAME_ENV, "metadata.name"),
        (POD_NAMESPACE_ENV, "metadata.namespace"),
    ] {
        env.push(EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(field(path)),
                ..EnvVarSource::default()
            }),
        });
    }
    let sidecar = Container {
        name: SIDECAR_NAME.into(),
        image: Some(sb.spec.image.clone()),
        command: Some(vec![paths::IMAGE_BINARY.into()]),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{}/{}", paths::CONFIG_DIR, paths::CONFIG_FILE),
        ]),
        restart_policy: Some("Always".into()),
        env: Some(env),
        ports: sb.spec.network.as_ref().map(|n| {
            vec![ContainerPort {
                name: Some("sealbroker".into()),
                container_port: n.port,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]
        }),
        volume_mounts: Some(sidecar_mounts),
        security_context: Some(security),
        resources: sb.spec.resources.clone(),
        ..Container::default()
    };
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .extend([plugin_init, sidecar]);

    out.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_ANNOTATION.into(), sb_name);
    Ok(out)
}

/// The SHA-256 (hex) of what [`inject`] adds for `sb`: the injected spec of
/// a Pod holding only the OpenBao container. It changes when the image,
/// credentials, resources, ports, uid or mounts would.
pub fn injection_sha256(sb: &SealBroker) -> String {
    let template = Pod {
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![Container {
                name: sb.spec.openbao.container_name.clone(),
                ..Container::default()
            }],
            ..Default::default()
        }),
        ..Pod::default()
    };
    let spec = inject_spec(&template, sb).ok().and_then(|pod| pod.spec);
    let bytes = serde_json::to_vec(&spec).unwrap_or_default();
    crate::render::config_sha256(&String::from_utf8_lossy(&bytes))
}

/// Which of the served `pods` carry a sidecar injected for another spec
/// than `sb`'s now (or injected before the hash was recorded), by name.
pub fn out_of_date<'a>(pods: impl IntoIterator<Item = &'a Pod>, sb: &SealBroker) -> Vec<String> {
    let current = injection_sha256(sb);
    let mut stale: Vec<String> = pods
        .into_iter()
        .filter(|pod| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INJECTION_ANNOTATION))
                != Some(&current)
        })
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();
    stale.sort();
    stale
}

/// The RFC 6902 patch that turns `pod` into its injected form (empty when
/// nothing changes, e.g. on a second admission of the same Pod).
pub fn injection_patch(pod: &Pod, sb: &SealBroker) -> Result<json_patch::Patch, InjectError> {
    let injected = inject(pod, sb)?;
    let before = serde_json::to_value(pod).unwrap_or_default();
    let after = serde_json::to_value(&injected).unwrap_or_default();
    Ok(json_patch::diff(&before, &after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hardened() -> SealBroker {
        crate::parse_sealbroker(include_str!("../tests/golden/hardened.input.yaml")).unwrap()
    }

    #[test]
    fn the_injection_hash_follows_what_is_injected_and_nothing_else() {
        let sb = hardened();
        let before = injection_sha256(&sb);
        assert_eq!(before.len(), 64);
        assert_eq!(injection_sha256(&sb), before, "the hash is deterministic");

        let mut new_image = sb.clone();
        new_image.spec.image = format!("{}-next", sb.spec.image);
        assert_ne!(injection_sha256(&new_image), before, "a new image needs new pods");

        // A key version change reaches sidecars through the ConfigMap
        // (live reload), not through the Pod: no rollout.
        let mut new_versions = sb.clone();
        new_versions.spec.keys[0].versions = Some(Default::default());
        assert_eq!(injection_sha256(&new_versions), before);
    }

    #[test]
    fn pods_injected_for_another_spec_or_before_the_hash_existed_are_out_of_date() {
        let sb = hardened();
        let pod = |name: &str, hash: Option<String>| {
            let mut pod = Pod::default();
            pod.metadata.name = Some(name.into());
            if let Some(hash) = hash {
                pod.metadata.annotations = Some([(INJECTION_ANNOTATION.to_owned(), hash)].into());
            }
            pod
        };
        let pods = [
            pod("b", Some(injection_sha256(&sb))),
            pod("c", Some("0".repeat(64))),
            pod("a", None),
        ];
        assert_eq!(out_of_date(&pods, &sb), ["a", "c"]);
    }
}
