//! The contract between a broker sidecar and the operator: each replica
//! keeps `sealbroker.io/key-versions` on its own Pod, and the operator
//! counts a report only under the config it rendered. There is no
//! kube-apiserver emulator, so an in-repo HTTPS stand-in takes the Pod
//! PATCH as the API server would (path, merge-patch content type, bearer
//! token); the report is then read with the operator's own parser.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealbroker_e2e::*;
use sealbroker_operator::render::config_sha256;
use sealbroker_operator::rotation::{PodReport, VersionState, parse_report_text};
use sealbroker_testkit::https_stub::{HttpsStub, StubRequest, StubResponse};
use sealbroker_testkit::pki::{Leaf, TestCa};

const POD_TOKEN: &str = "pod-sa-token-for-the-report-test-0f9e";

/// Waits for a PATCH whose report satisfies `done`; returns it parsed.
async fn report_where(
    seen: &Mutex<Vec<StubRequest>>,
    done: impl Fn(&PodReport) -> bool,
) -> (StubRequest, PodReport) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = seen.lock().unwrap().iter().rev().find_map(|request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).ok()?;
            let text = body["metadata"]["annotations"]["sealbroker.io/key-versions"].as_str()?;
            let report = parse_report_text(text).ok()?;
            done(&report).then(|| (request.clone(), report))
        });
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no such report: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reports_its_key_versions_on_its_pod_as_the_operator_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("stand-in API server CA");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let token_file = dir.path().join("token");
    fs::write(&token_file, format!("{POD_TOKEN}\n")).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<StubRequest>::new()));
    let api = HttpsStub::start(ca.issue(&Leaf::server(&["localhost"])).server_config(), {
        let seen = seen.clone();
        move |request| {
            seen.lock().unwrap().push(request.clone());
            StubResponse::json(200, &serde_json::json!({"kind": "Pod", "apiVersion": "v1"}))
        }
    })
    .await;

    let socket = dir.path().join("sb.sock");
    let config_text = |extra: &str| {
        format!(
            "profile = \"development\"\n[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\n\
             [report]\nkubernetes_pod = true\napi_server = \"https://localhost:{}\"\ntoken_file = \"{}\"\n\
             ca_file = \"{}\"\ninterval_secs = 1\n\
             [backends.soft]\ntype = \"software\"\n\
             [keys.dev]\nbackend = \"soft\"\nkey_file = \"{}\"\ngenerate = true\n{extra}",
            socket.display(),
            dir.path().join("state").display(),
            api.port(),
            token_file.display(),
            ca_file.display(),
            dir.path().join("dev.key").display(),
        )
    };
    let config = dir.path().join("sealbroker.toml");
    let first = config_text("");
    fs::write(&config, &first).unwrap();
    let pod = [
        ("SEALBROKER_POD_NAME", Path::new("openbao-0")),
        ("SEALBROKER_POD_NAMESPACE", Path::new("openbao")),
    ];
    let daemon = Daemon::start(
        &["serve", "--config", config.to_str().unwrap()],
        &pod,
        &dir.path().join("d.log"),
        Some(socket.clone()),
        None,
    )
    .await;

    // The first report: under the config as written, v1 usable.
    let (request, report) = report_where(&seen, |r| r.config == config_sha256(&first)).await;
    assert_eq!(request.method, "PATCH");
    assert_eq!(request.path, "/api/v1/namespaces/openbao/pods/openbao-0");
    assert_eq!(
        request.header("content-type"),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {POD_TOKEN}").as_str())
    );
    assert_eq!(
        report.keys["dev"].get(&1),
        Some(&VersionState::Usable),
        "{report:?}"
    );
    assert!(!daemon.logs().contains(POD_TOKEN), "the token reached the log");

    // Stage v2: created offline with the broker's own credentials, then the
    // config (as the operator renders it) names it; the report follows.
    let created = run_cli(
        &[
            "keygen",
            "--config",
            config.to_str().unwrap(),
            "--key",
            "dev",
            "--version",
            "2",
        ],
        b"",
        &[],
    );
    assert!(created.status.success(), "{created:?}");
    let second = config_text("newest_version = 2\n");
    fs::write(&config, &second).unwrap();
    daemon.hangup();
    let (_, report) = report_where(&seen, |r| r.config == config_sha256(&second)).await;
    assert_eq!(
        report.keys["dev"].get(&2),
        Some(&VersionState::Usable),
        "{report:?}"
    );
    assert_eq!(
        report.keys["dev"].get(&1),
        Some(&VersionState::Usable),
        "{report:?}"
    );
}

#[test]
fn a_reporting_broker_outside_a_pod_refuses_to_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sealbroker.toml");
    fs::write(
        &config,
        format!(
            "profile = \"development\"\n[server]\nunix_socket = \"{}\"\n[report]\nkubernetes_pod = true\n\
             [backends.soft]\ntype = \"software\"\n[keys.dev]\nbackend = \"soft\"\nkey_file = \"{}\"\ngenerate = true\n",
            dir.path().join("sb.sock").display(),
            dir.path().join("dev.key").display()
        ),
    )
    .unwrap();
    let out = run_cli(&["serve", "--config", config.to_str().unwrap()], b"", &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("report.kubernetes_pod") && stderr.contains("SEALBROKER_POD_NAME"),
        "{stderr}"
    );
}
