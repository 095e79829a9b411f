//! Reconcile and injection as pure functions, pinned by golden files in
//! tests/golden/. `UPDATE_GOLDEN=1 cargo test` rewrites them (and the CRD in
//! deploy/crd/); without it any drift fails with the path to look at.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sealbroker_operator::crd::{KeyRotationStatus, KeyVersions, MissingReport, VersionReports};
use sealbroker_operator::crd::{Profile, SealBroker, SoftwareBackend};
use sealbroker_operator::desired::{self, Desired};
use sealbroker_operator::injection::{self, SIDECAR_NAME};
use sealbroker_operator::render::{self, Layout};
use sealbroker_operator::rotation::Finding;
use sealbroker_operator::status::{Outcome, Rotation, status_for, status_with_rotation};
use sealbroker_operator::validation;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn input(name: &str) -> SealBroker {
    let text = std::fs::read_to_string(golden_dir().join(format!("{name}.input.yaml"))).unwrap();
    sealbroker_operator::parse_sealbroker(&text).unwrap()
}

fn pod_input() -> Pod {
    pod()
}

fn pod() -> Pod {
    let text = std::fs::read_to_string(golden_dir().join("pod.input.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// Compares `actual` with the file, or rewrites it under UPDATE_GOLDEN=1.
fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} drifted (first difference at line {}); rerun with UPDATE_GOLDEN=1 if intended.\n--- actual ---\n{actual}",
            path.display(),
            first + 1
        );
    }
}

fn yaml(value: &impl serde::Serialize) -> String {
    desired::yaml_documents(&[serde_json::to_value(value).unwrap()])
}

#[test]
fn crd_in_deploy_matches_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crd/sealbroker.io_sealbrokers.yaml");
    golden(&path, &sealbroker_operator::crd_yaml());
}

#[test]
fn pod_report_policy_in_deploy_matches_the_rust_types() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base/operator/pod-report-policy.yaml");
    golden(&path, &sealbroker_operator::policy::pod_report_policy_yaml());
}

#[test]
fn onboarding_in_deploy_is_what_onboard_prints() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base/openbao-example/onboarding.yaml");
    let yaml = sealbroker_operator::onboarding::onboarding_yaml(
        "openbao",
        &["openbao".to_owned()],
        sealbroker_operator::onboarding::POD_SECURITY_VERSION,
    )
    .unwrap();
    golden(&path, &yaml);
}

#[test]
fn tenant_policies_in_deploy_match_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base/operator/tenant-policies.yaml");
    golden(&path, &sealbroker_operator::policy::tenant_policies_yaml());
}

fn rotating() -> SealBroker {
    let mut sb = input("hardened");
    sb.spec.keys[0].versions = Some(KeyVersions {
        newest: Some(2),
        primary: Some(2),
        min_decryption: None,
    });
    sb
}

#[test]
fn keygen_job_matches_golden() {
    let sb = rotating();
    let job = desired::keygen_job(&sb, "openbao-unseal", 2, 1);
    golden(&golden_dir().join("hardened.keygen-job.yaml"), &yaml(&job));
}

#[test]
fn keygen_job_runs_keygen_with_the_sidecars_config_and_credentials_and_no_api_token() {
    let sb = rotating();
    let job = desired::keygen_job(&sb, "openbao-unseal", 2, 3);
    assert_eq!(
        job.metadata.name.as_deref(),
        Some("openbao-keygen-openbao-unseal-v2")
    );
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("SealBroker", Some(true))
    );
    assert_eq!(
        job.metadata.annotations.as_ref().unwrap()["sealbroker.io/keygen-attempt"],
        "3"
    );
    let spec = job.spec.as_ref().unwrap();
    assert!(spec.backoff_limit.is_some() && spec.ttl_seconds_after_finished.is_some());
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name.as_deref(), Some("openbao-broker"));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let container = &pod.containers[0];
    assert_eq!(
        container.args.as_deref().unwrap(),
        [
            "keygen",
            "--config",
            "/etc/sealbroker/sealbroker.toml",
            "--key",
            "openbao-unseal",
            "--version",
            "2"
        ]
    );
    assert_eq!(container.image.as_deref(), Some(sb.spec.image.as_str()));
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    // The same credential volumes and mounts as the sidecar's, and no others.
    let injected = injection::inject(&pod_input(), &sb).unwrap();
    let sidecar = injected
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap()
        .clone();
    let creds = |mounts: &[k8s_openapi::api::core::v1::VolumeMount]| {
        mounts
            .iter()
            .filter(|m| m.name.starts_with("sealbroker-cred") || m.name == "sealbroker-config")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        creds(container.volume_mounts.as_deref().unwrap()),
        creds(sidecar.volume_mounts.as_deref().unwrap())
    );
    let volumes = pod.volumes.as_deref().unwrap();
    let injected_volumes = injected.spec.as_ref().unwrap().volumes.as_deref().unwrap();
    for volume in volumes.iter().filter(|v| v.name.starts_with("sealbroker-cred")) {
        assert!(injected_volumes.contains(volume), "{}", volume.name);
    }
    assert!(
        volumes.iter().all(|v| v.projected.as_ref().is_none_or(|p| p
            .sources
            .iter()
            .flatten()
            .all(|s| s.service_account_token.is_none()))),
        "no API token in the Job"
    );
}

#[test]
fn keygen_job_names_are_deterministic_and_fit_in_63_characters() {
    let mut sb = rotating();
    sb.metadata.name = Some("a".repeat(40));
    let long_key = "k".repeat(63);
    let name = desired::Names::keygen_job(&sb, &long_key, 4_000_000_000);
    assert!(name.len() <= 63, "{name}");
    assert_eq!(name, desired::Names::keygen_job(&sb, &long_key, 4_000_000_000));
    assert_ne!(name, desired::Names::keygen_job(&sb, &long_key, 4_000_000_001));
}

#[test]
fn hardened_objects_match_golden() {
    let sb = input("hardened");
    assert!(
        validation::validate(&sb).is_empty(),
        "{:?}",
        validation::validate(&sb)
    );
    let mut objects = desired::controller_objects(&sb);
    objects.extend(desired::access_grant(&sb));
    golden(
        &golden_dir().join("hardened.objects.yaml"),
        &desired::to_yaml(&objects),
    );
    golden(
        &golden_dir().join("hardened.sealbroker.toml"),
        &render::broker_config(&sb, &Layout::pod()),
    );
    golden(
        &golden_dir().join("hardened.seal.hcl"),
        &render::seal_stanza(&sb, &Layout::pod()),
    );
}

#[test]
fn development_objects_match_golden() {
    let sb = input("development");
    assert!(
        validation::validate(&sb).is_empty(),
        "{:?}",
        validation::validate(&sb)
    );
    let mut objects = desired::controller_objects(&sb);
    objects.extend(desired::access_grant(&sb));
    golden(
        &golden_dir().join("development.objects.yaml"),
        &desired::to_yaml(&objects),
    );
}

#[test]
fn injected_pod_matches_golden_and_second_injection_is_a_no_op() {
    let sb = input("hardened");
    let pod = pod();
    let injected = injection::inject(&pod, &sb).unwrap();
    golden(&golden_dir().join("hardened.pod.yaml"), &yaml(&injected));
    assert_eq!(injection::inject(&injected, &sb).unwrap(), injected);
    assert!(injection::injection_patch(&injected, &sb).unwrap().0.is_empty());
    assert!(validation::credential_leaks(&injected, &sb).is_empty());
}

#[test]
fn status_matches_golden_for_each_outcome() {
    let now = Time("2026-01-02T03:04:05Z".parse().unwrap());
    let hardened = input("hardened");
    let development = input("development");
    let statuses = vec![
        serde_json::to_value(status_for(&hardened, &Outcome::Ready, now.clone())).unwrap(),
        serde_json::to_value(status_for(
            &hardened,
            &Outcome::AwaitingProvisioner("the broker's access grant is missing".into()),
            now.clone(),
        ))
        .unwrap(),
        serde_json::to_value(status_for(&development, &Outcome::Ready, now.clone())).unwrap(),
        serde_json::to_value(status_with_rotation(
            &hardened,
            &Outcome::Ready,
            &Rotation {
                evaluated: true,
                config_sha256: Some("ab".repeat(32)),
                // openbao-1 was injected before the spec's image changed.
                stale_pods: Some(vec!["openbao-1".into()]),
                keys: vec![KeyRotationStatus {
                    name: "openbao-unseal".into(),
                    created: vec![2],
                    newest: 2,
                    primary: 1,
                    min_decryption: None,
                    step: "waiting for every pod to report version 2 usable".into(),
                    versions: vec![
                        VersionReports {
                            version: 1,
                            usable: vec!["openbao-0".into(), "openbao-1".into()],
                            ..VersionReports::default()
                        },
                        VersionReports {
                            version: 2,
                            usable: vec!["openbao-0".into()],
                            unusable: vec![],
                            missing: vec![MissingReport {
                                pod: "openbao-1".into(),
                                reason: "reported under config 0123456789ab…, not the rendered abababababab…"
                                    .into(),
                            }],
                        },
                    ],
                    keygen_failures: vec![],
                }],
                pending: vec![Finding {
                    reason: "AwaitingPodReports",
                    message: "key openbao-unseal: promoting version 2 waits for openbao-1 (reported under \
                              config 0123456789ab…, not the rendered abababababab…)"
                        .into(),
                }],
                blocked: vec![],
            },
            now,
        ))
        .unwrap(),
    ];
    golden(
        &golden_dir().join("status.yaml"),
        &desired::yaml_documents(&statuses),
    );
}

#[test]
fn status_keeps_transition_time_while_a_condition_holds() {
    let mut sb = input("hardened");
    let first = status_for(
        &sb,
        &Outcome::Ready,
        Time("2026-01-01T00:00:00Z".parse().unwrap()),
    );
    sb.status = Some(first.clone());
    let later = status_for(
        &sb,
        &Outcome::Ready,
        Time("2026-02-01T00:00:00Z".parse().unwrap()),
    );
    assert_eq!(first.conditions, later.conditions);
    let changed = status_for(
        &sb,
        &Outcome::AwaitingProvisioner("x".into()),
        Time("2026-02-01T00:00:00Z".parse().unwrap()),
    );
    assert_ne!(
        changed.conditions[0].last_transition_time,
        first.conditions[0].last_transition_time
    );
    assert_eq!(changed.conditions[1], first.conditions[1]);
    assert_eq!(changed.conditions[2], first.conditions[2]);
}

#[test]
fn development_reports_security_risk_and_hardened_does_not() {
    let now = Time("2026-01-01T00:00:00Z".parse().unwrap());
    let dev = status_for(&input("development"), &Outcome::Ready, now.clone());
    let risk = dev.conditions.iter().find(|c| c.type_ == "SecurityRisk").unwrap();
    assert_eq!(risk.status, "True");
    // The golden Hardened input loads SoftHSM and reaches a transit
    // upstream by an outside name: SoftHSM is an in-cluster root.
    let soft = status_for(&input("hardened"), &Outcome::Ready, now.clone());
    let risk = soft
        .conditions
        .iter()
        .find(|c| c.type_ == "SecurityRisk")
        .unwrap();
    assert_eq!(
        (risk.status.as_str(), risk.reason.as_str()),
        ("True", "InClusterTrustRoot")
    );
    assert!(
        risk.message.contains("backend \"hsm\" loads SoftHSM"),
        "{}",
        risk.message
    );
    assert!(!risk.message.contains("upstream"), "{}", risk.message);
    // A vendor's module is not flagged.
    let mut vendor = input("hardened");
    vendor.spec.backends[0].pkcs11.as_mut().unwrap().lib = "/opt/luna/libCryptoki2_64.so".into();
    let hard = status_for(&vendor, &Outcome::Ready, now.clone());
    let risk = hard
        .conditions
        .iter()
        .find(|c| c.type_ == "SecurityRisk")
        .unwrap();
    assert_eq!(risk.status, "False");
    // A transit upstream that is a Service of this cluster is.
    let mut local = vendor.clone();
    local.spec.backends[1].transit.as_mut().unwrap().address = "https://openbao-shared.vault.svc:8200".into();
    let flagged = status_for(&local, &Outcome::Ready, now);
    let risk = flagged
        .conditions
        .iter()
        .find(|c| c.type_ == "SecurityRisk")
        .unwrap();
    assert_eq!(risk.status, "True");
    assert!(
        risk.message
            .contains("backend \"upstream\" reaches openbao-shared.vault.svc"),
        "{}",
        risk.message
    );
    assert_eq!(
        hard.plugin_sha256.as_deref(),
        Some(input("hardened").spec.plugin_sha256.as_str())
    );
}

#[test]
fn hardened_refuses_software_backend_and_tag_images_and_says_why() {
    let mut sb = input("development");
    sb.spec.profile = Profile::Hardened;
    let problems = validation::describe(&validation::validate(&sb));
    assert!(problems.contains("refuses the software backend"), "{problems}");
    assert!(problems.contains("pinned by digest"), "{problems}");
    assert!(
        problems.contains("spec.openbao.tlsSecret: the Hardened profile requires OpenBao's listener TLS from an external Secret"),
        "{problems}"
    );
}

#[test]
fn role_without_secrets_grants_nothing_rather_than_everything() {
    let sb = input("development");
    let grant = desired::access_grant(&sb);
    let Desired::Role(role) = &grant[1] else {
        panic!("second object is the Role")
    };
    assert_eq!(role.rules.as_deref(), Some(&[][..]));
    let sb = input("hardened");
    let Desired::Role(role) = &desired::access_grant(&sb)[1] else {
        panic!()
    };
    let rule = &role.rules.as_ref().unwrap()[0];
    assert_eq!(rule.verbs, vec!["get"]);
    assert_eq!(
        rule.resource_names.as_deref().unwrap(),
        ["hsm-pin", "transit-ca", "transit-token"]
    );
}

#[test]
fn credentials_are_mounted_into_the_sidecar_only() {
    let sb = input("hardened");
    let injected = injection::inject(&pod(), &sb).unwrap();
    let spec = injected.spec.unwrap();
    let openbao = spec.containers.iter().find(|c| c.name == "openbao").unwrap();
    let mounts: Vec<&str> = openbao
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert!(
        mounts.iter().all(|m| !m.starts_with("sealbroker-cred")),
        "{mounts:?}"
    );
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap();
    let sidecar_mounts: Vec<&str> = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert!(
        sidecar_mounts.contains(&"sealbroker-cred-hsm"),
        "{sidecar_mounts:?}"
    );
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.name.starts_with("sealbroker"))
    {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    }
}

#[test]
fn a_pod_whose_openbao_container_mounts_credentials_is_a_leak() {
    let sb = input("hardened");
    let mut injected = injection::inject(&pod(), &sb).unwrap();
    let spec = injected.spec.as_mut().unwrap();
    spec.containers[0]
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(k8s_openapi::api::core::v1::VolumeMount {
            name: "sealbroker-cred-hsm".into(),
            mount_path: "/pin".into(),
            ..Default::default()
        });
    let leaks = validation::describe(&validation::credential_leaks(&injected, &sb));
    assert!(leaks.contains("spec.containers[openbao]"), "{leaks}");
    assert!(leaks.contains("never to OpenBao"), "{leaks}");
}

#[test]
fn injection_refuses_a_pod_without_the_openbao_container() {
    let sb = input("hardened");
    let mut pod = pod();
    pod.spec.as_mut().unwrap().containers[0].name = "vault".into();
    let err = injection::inject(&pod, &sb).unwrap_err().to_string();
    assert!(err.contains("no container named \"openbao\""), "{err}");
}

#[test]
fn selectors_follow_kubernetes_semantics() {
    let sb = input("development");
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let selector = &sb.spec.openbao.selector;
    assert!(desired::selector_matches(
        selector,
        &labels(&[
            ("app.kubernetes.io/name", "openbao"),
            ("app.kubernetes.io/instance", "dev")
        ])
    ));
    assert!(!desired::selector_matches(
        selector,
        &labels(&[("app.kubernetes.io/name", "openbao")])
    ));
    let empty = Default::default();
    assert!(!desired::selector_matches(&empty, &labels(&[("a", "b")])));
}

#[test]
fn exactly_one_backend_type_is_required() {
    let mut sb = input("hardened");
    sb.spec.backends[0].software = Some(SoftwareBackend {});
    let problems = validation::describe(&validation::validate(&sb));
    assert!(problems.contains("exactly one of"), "{problems}");
}

#[test]
fn deploy_examples_are_valid_sealbrokers() {
    for overlay in ["hardened", "development"] {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../deploy/{overlay}/sealbroker.yaml"));
        let sb = sealbroker_operator::parse_sealbroker(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let problems = validation::validate(&sb);
        assert!(
            problems.is_empty(),
            "{}: {}",
            path.display(),
            validation::describe(&problems)
        );
        assert_eq!(format!("{:?}", sb.spec.profile).to_lowercase(), overlay);
    }
}

#[test]
fn openbao_mount_paths_must_not_collide() {
    let mut sb = input("hardened");
    sb.spec.openbao.seal_config_dir = sb.spec.openbao.plugin_directory.clone();
    let problems = validation::describe(&validation::validate(&sb));
    assert!(problems.contains("three different paths"), "{problems}");
}

#[test]
fn the_sidecar_alone_gets_its_pods_api_token_and_name_to_report_on_it() {
    let sb = input("hardened");
    let injected = injection::inject(&pod(), &sb).unwrap();
    let spec = injected.spec.unwrap();
    let mounts_token = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "sealbroker-api-token")
    };
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap();
    assert!(mounts_token(sidecar));
    let token_mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "sealbroker-api-token")
        .unwrap();
    assert_eq!(
        token_mount.mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(token_mount.read_only, Some(true));
    let env: Vec<(&str, &str)> = sidecar
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let path = e.value_from.as_ref()?.field_ref.as_ref()?.field_path.as_str();
            Some((e.name.as_str(), path))
        })
        .collect();
    assert_eq!(
        env,
        [
            (injection::POD_NAME_ENV, "metadata.name"),
            (injection::POD_NAMESPACE_ENV, "metadata.namespace")
        ]
    );
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name != SIDECAR_NAME)
    {
        assert!(!mounts_token(c), "{} must not get the sidecar's token", c.name);
    }
}

#[test]
fn hardened_requires_self_init_with_an_auth_method_and_checks_each_request() {
    let mut sb = input("hardened");
    assert!(validation::validate(&sb).is_empty());
    let init = sb.spec.openbao.self_init.take().unwrap();
    let problems = validation::describe(&validation::validate(&sb));
    assert!(
        problems
            .contains("spec.openbao.selfInit: the Hardened profile requires OpenBao to initialise itself"),
        "{problems}"
    );
    // Requests that set up no auth method would lock everyone out.
    let mut no_auth = init.clone();
    no_auth.requests.retain(|r| !r.path.starts_with("sys/auth/"));
    sb.spec.openbao.self_init = Some(no_auth);
    let problems = validation::describe(&validation::validate(&sb));
    assert!(
        problems.contains("spec.openbao.selfInit.requests: enable an auth method"),
        "{problems}"
    );
    // Each request's shape, named by its index.
    let mut bad = init.clone();
    bad.requests[0].name = "1st".into();
    bad.requests[1].operation = "post".into();
    bad.requests[2].path = "auth/ kubernetes".into();
    bad.requests[3].data = Some(serde_json::json!({"token_ttl": null}));
    bad.requests.push(bad.requests[1].clone());
    sb.spec.openbao.self_init = Some(bad);
    let problems = validation::describe(&validation::validate(&sb));
    for expected in [
        "spec.openbao.selfInit.requests[0].name: \"1st\" is not a request name",
        "spec.openbao.selfInit.requests[1].operation: \"post\"",
        "spec.openbao.selfInit.requests[2].path",
        "spec.openbao.selfInit.requests[3].data.token_ttl: is null",
        "spec.openbao.selfInit.requests[4].name: \"enable-kubernetes-auth\" is used twice",
    ] {
        assert!(problems.contains(expected), "{expected}\n{problems}");
    }
    // Development may leave it out.
    let dev = input("development");
    assert!(dev.spec.openbao.self_init.is_none());
    assert!(validation::validate(&dev).is_empty());
}
