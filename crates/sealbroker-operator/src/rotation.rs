//! Key rotation across every served pod, as a pure function of what the
//! controller observed.
//!
//! `spec.keys[].versions` is the wanted state. What the pods actually run
//! (`newest_version`, `primary_version`, `min_decryption_version` in the
//! rendered `sealbroker.toml`) moves towards it one safe step at a time:
//!
//! 1. **create**: each missing version up to `newest` is made on the backend
//!    by a key-creation Job (the controller holds no backend credentials);
//!    a failed Job is reported and retried with backoff;
//! 2. **stage**: a created version is rendered as `newest_version`, so every
//!    sidecar probes it and reports it on its Pod ([`REPORT_ANNOTATION`]);
//! 3. **promote**: `primary_version` moves to the wanted primary only once
//!    every served pod has reported that version usable *under the config
//!    the controller rendered* (a report under an older config proves
//!    nothing about this one);
//! 4. **retire**: `min_decryption_version` is rendered as declared, but never
//!    above the rendered primary.
//!
//! [`plan_key`] makes that decision for one key; the controller (in
//! [`crate::kubeapi`]) gathers its inputs, carries out its actions and writes
//! its status. The rendered state lives in `status.keys`, the controller's
//! memory between reconciles.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use crate::crd::{KeyRotationStatus, KeyVersions, KeygenFailure, MissingReport, SealBroker, VersionReports};

/// The annotation each sidecar keeps on its own Pod: which versions of which
/// keys it can use, under which config. Written by the broker, read here.
///
/// `{"config":"<hex sha256 of the loaded sealbroker.toml>","keys":{"<key>":{"<version>":"usable"|"unusable"}}}`
pub const REPORT_ANNOTATION: &str = "sealbroker.io/key-versions";

/// How often the controller looks again while a rotation waits on pods:
/// their reports are annotations on Pods it does not watch.
pub const RECHECK: Duration = Duration::from_secs(10);

/// A version's state as one sidecar reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionState {
    Usable,
    Unusable,
    /// Anything else the annotation said (kept short, for the status).
    Other(String),
}

/// One sidecar's report, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodReport {
    /// SHA-256 (lowercase hex) of the config the sidecar had loaded.
    pub config: String,
    pub keys: BTreeMap<String, BTreeMap<u32, VersionState>>,
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// At most `max` characters of untrusted text, for a status message.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Reads the report from a Pod's annotations. Missing or garbled reports
/// are `Err(reason)`: the pod has not reported, and the reason says why.
pub fn parse_report(annotations: Option<&BTreeMap<String, String>>) -> Result<PodReport, String> {
    match annotations.and_then(|a| a.get(REPORT_ANNOTATION)) {
        None => Err(format!("no {REPORT_ANNOTATION} annotation yet")),
        Some(text) => parse_report_text(text),
    }
}

/// Parses the annotation's value. Tolerant where it can be: entries with a
/// version that is not a positive number, or a key whose value is not an
/// object, are skipped; only a report without a valid `config` or `keys` is
/// refused as a whole.
pub fn parse_report_text(text: &str) -> Result<PodReport, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("{REPORT_ANNOTATION} is not JSON ({e})"))?;
    let Some(object) = value.as_object() else {
        return Err(format!("{REPORT_ANNOTATION} is not a JSON object"));
    };
    let config = match object.get("config").and_then(Value::as_str) {
        Some(c) if is_sha256_hex(c) => c.to_ascii_lowercase(),
        Some(_) => return Err(format!("{REPORT_ANNOTATION}: \"config\" is not a hex SHA-256")),
        None => return Err(format!("{REPORT_ANNOTATION} has no \"config\" string")),
    };
    let Some(keys) = object.get("keys").and_then(Value::as_object) else {
        return Err(format!("{REPORT_ANNOTATION} has no \"keys\" object"));
    };
    let mut report = PodReport {
        config,
        keys: BTreeMap::new(),
    };
    for (key, versions) in keys {
        let Some(versions) = versions.as_object() else {
            continue;
        };
        let entry = report.keys.entry(key.clone()).or_default();
        for (version, state) in versions {
            let Ok(version) = version.parse::<u32>() else {
                continue;
            };
            if version == 0 {
                continue;
            }
            let state = match state.as_str() {
                Some("usable") => VersionState::Usable,
                Some("unusable") => VersionState::Unusable,
                Some(other) => VersionState::Other(clip(other, 32)),
                None => VersionState::Other(clip(&state.to_string(), 32)),
            };
            entry.insert(version, state);
        }
    }
    Ok(report)
}

/// A Pod the SealBroker serves, with its report (or why it has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedPod {
    pub name: String,
    pub report: Result<PodReport, String>,
}

/// Where a key-creation Job stands.
#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    Running,
    Succeeded,
    /// Failed for good (the Job's own retries are spent).
    Failed {
        message: String,
        at: Option<Time>,
    },
}

/// A key-creation Job that exists for this key.
#[derive(Clone, Debug, PartialEq)]
pub struct KeygenJob {
    pub version: u32,
    /// 1 for the first Job of a version, then one more per retry.
    pub attempt: u32,
    pub outcome: JobOutcome,
}

/// Everything [`plan_key`] decides from.
#[derive(Clone, Debug)]
pub struct KeyObservation<'a> {
    pub key: &'a str,
    /// The wanted state (`spec.keys[].versions`).
    pub declared: KeyVersions,
    /// What the last reconcile rendered and recorded; `None` the first time
    /// the controller sees this key.
    pub previous: Option<&'a KeyRotationStatus>,
    /// This key's key-creation Jobs.
    pub jobs: Vec<KeygenJob>,
    /// The served pods and their reports.
    pub pods: &'a [ServedPod],
    /// SHA-256 of the config rendered before this step: the one the pods
    /// should have loaded, so the only one their reports count under.
    pub config_sha256: &'a str,
    /// Whether a Job can create versions on this key's backend (not the
    /// software backend, whose key files live on each pod's own disk).
    pub can_create: bool,
    pub now: &'a Time,
}

/// Something the controller does for the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the key-creation Job for `version` (its `attempt`-th).
    CreateJob { version: u32, attempt: u32 },
    /// Delete the failed Job for `version`, so that its retry can take the name.
    DeleteJob { version: u32 },
}

/// One thing that happens, or is waited for, in this step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A Job is created for this version now.
    CreateVersion(u32),
    /// Its Job is running.
    AwaitKeygen(u32),
    /// Its Job failed; the next one starts at `at`.
    RetryKeygen {
        version: u32,
        at: Time,
    },
    /// The backend cannot get versions from a Job.
    CannotCreate(u32),
    /// Created, and staged in the config rendered now; reports follow.
    AwaitStaging(u32),
    /// Staged; waiting for every served pod to report it usable.
    AwaitReports(u32),
    Promote {
        from: u32,
        to: u32,
    },
    /// The wanted primary went down: rendered at once, every pod knows it.
    Demote {
        from: u32,
        to: u32,
    },
    Retire {
        from: Option<u32>,
        to: u32,
    },
    /// The wanted retirement waits for the primary to get there.
    AwaitRetire {
        wanted: u32,
        primary: u32,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::CreateVersion(v) => write!(f, "creating version {v}"),
            Step::AwaitKeygen(v) => write!(f, "waiting for the Job creating version {v}"),
            Step::RetryKeygen { version, at } => {
                write!(f, "retrying version {version}'s key-creation Job at {}", at.0)
            }
            Step::CannotCreate(v) => write!(f, "version {v} cannot be created by a Job"),
            Step::AwaitStaging(v) => write!(f, "staging version {v}"),
            Step::AwaitReports(v) => write!(f, "waiting for every pod to report version {v} usable"),
            Step::Promote { from, to } => write!(f, "promoted version {to} (was {from})"),
            Step::Demote { from, to } => write!(f, "primary lowered to version {to} (was {from})"),
            Step::Retire { from, to } => match from {
                Some(from) => write!(f, "retired versions below {to} (was below {from})"),
                None => write!(f, "retired versions below {to}"),
            },
            Step::AwaitRetire { wanted, primary } => write!(
                f,
                "minDecryption {wanted} waits for the primary (rendered {primary})"
            ),
        }
    }
}

/// A reason and message for a condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub reason: &'static str,
    pub message: String,
}

/// The decision for one key.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyPlan {
    /// What to render and remember (its `versions` are filled in by
    /// [`version_reports`] once the new config's hash is known).
    pub status: KeyRotationStatus,
    pub actions: Vec<Action>,
    /// Everything happening or awaited; empty when the key is where the
    /// spec wants it.
    pub steps: Vec<Step>,
    /// Progress that needs only time (`RotationPending`).
    pub pending: Vec<Finding>,
    /// What needs a person or will not resolve by itself (`RotationBlocked`).
    pub blocked: Vec<Finding>,
    /// When to look again, if something is waited for.
    pub recheck: Option<Duration>,
}

/// How long to wait before the `attempts + 1`-th Job for a version:
/// 30 s, doubling per failure, at most 30 min.
pub fn keygen_backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(6);
    Duration::from_secs(30 << doublings).min(Duration::from_secs(1800))
}

fn plus(time: &Time, by: Duration) -> Time {
    let by = k8s_openapi::jiff::SignedDuration::from_secs(i64::try_from(by.as_secs()).unwrap_or(i64::MAX));
    Time(time.0.checked_add(by).unwrap_or(time.0))
}

fn until(now: &Time, at: &Time) -> Duration {
    let seconds = at.0.as_second().saturating_sub(now.0.as_second());
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0).max(1))
}

fn shorten(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// What the served pods say about one version, under `config_sha256`.
pub fn gather_reports(key: &str, version: u32, pods: &[ServedPod], config_sha256: &str) -> VersionReports {
    let mut out = VersionReports {
        version,
        ..VersionReports::default()
    };
    for pod in pods {
        let missing = |reason: String| MissingReport {
            pod: pod.name.clone(),
            reason,
        };
        let report = match &pod.report {
            Err(reason) => {
                out.missing.push(missing(reason.clone()));
                continue;
            }
            Ok(report) => report,
        };
        if !report.config.eq_ignore_ascii_case(config_sha256) {
            out.missing.push(missing(format!(
                "reported under config {}…, not the rendered {}…",
                shorten(&report.config),
                shorten(config_sha256)
            )));
            continue;
        }
        match report.keys.get(key).and_then(|v| v.get(&version)) {
            Some(VersionState::Usable) => out.usable.push(pod.name.clone()),
            Some(VersionState::Unusable) => out.unusable.push(pod.name.clone()),
            Some(VersionState::Other(state)) => out.missing.push(missing(format!(
                "reported version {version} as {state:?}, neither usable nor unusable"
            ))),
            None => out
                .missing
                .push(missing(format!("reported nothing about version {version}"))),
        }
    }
    out
}

/// The served pods' reports about every version from `primary` to `newest`,
/// under the config rendered now (for the status).
pub fn version_reports(
    status: &KeyRotationStatus,
    pods: &[ServedPod],
    config_sha256: &str,
) -> Vec<VersionReports> {
    (status.primary..=status.newest.max(status.primary))
        .map(|v| gather_reports(&status.name, v, pods, config_sha256))
        .collect()
}

fn missing_list(reports: &VersionReports) -> String {
    reports
        .missing
        .iter()
        .map(|m| format!("{} ({})", m.pod, m.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The next step for one key. Pure: the same observation gives the same plan.
pub fn plan_key(obs: &KeyObservation) -> KeyPlan {
    let key = obs.key;
    let wanted_primary = obs.declared.primary.unwrap_or(1).max(1);
    let wanted_newest = obs.declared.newest.unwrap_or(wanted_primary).max(wanted_primary);
    // The first time, the declared state is taken as rendered: before this
    // controller gated promotion it rendered the spec as it was, and a key
    // new to the spec has no blobs yet for any pod to miss.
    let (prev_primary, prev_newest, prev_min, mut created, mut failures) = match obs.previous {
        Some(p) => (
            p.primary.max(1),
            p.newest.max(p.primary).max(1),
            p.min_decryption,
            p.created
                .iter()
                .copied()
                .filter(|v| *v > 1)
                .collect::<BTreeSet<u32>>(),
            p.keygen_failures.clone(),
        ),
        None => (
            wanted_primary,
            wanted_primary,
            obs.declared.min_decryption.map(|m| m.min(wanted_primary)),
            BTreeSet::new(),
            Vec::new(),
        ),
    };
    let mut plan = KeyPlan {
        status: KeyRotationStatus::default(),
        actions: Vec::new(),
        steps: Vec::new(),
        pending: Vec::new(),
        blocked: Vec::new(),
        recheck: None,
    };
    let recheck = |plan: &mut KeyPlan, after: Duration| {
        plan.recheck = Some(plan.recheck.map_or(after, |r| r.min(after)));
    };

    // What the Jobs say.
    let mut running = BTreeSet::new();
    let mut failed_jobs = BTreeSet::new();
    for job in &obs.jobs {
        match &job.outcome {
            JobOutcome::Succeeded => {
                created.insert(job.version);
                failures.retain(|f| f.version != job.version);
            }
            JobOutcome::Running => {
                running.insert(job.version);
            }
            JobOutcome::Failed { message, at } => {
                if created.contains(&job.version) {
                    continue;
                }
                failed_jobs.insert(job.version);
                let at = at.clone().unwrap_or_else(|| obs.now.clone());
                match failures.iter_mut().find(|f| f.version == job.version) {
                    Some(f) if f.attempts >= job.attempt => {}
                    Some(f) => {
                        f.attempts = job.attempt;
                        f.last_failure = at;
                        f.message = clip(message, 256);
                    }
                    None => failures.push(KeygenFailure {
                        version: job.version,
                        attempts: job.attempt.max(1),
                        last_failure: at,
                        message: clip(message, 256),
                    }),
                }
            }
        }
    }
    let exists = |v: u32, created: &BTreeSet<u32>| v <= prev_primary || created.contains(&v);

    // Create what is missing, up to the wanted newest.
    failures.retain(|f| f.version <= wanted_newest && !exists(f.version, &created));
    for version in 2..=wanted_newest {
        if exists(version, &created) {
            continue;
        }
        if !obs.can_create {
            plan.steps.push(Step::CannotCreate(version));
            plan.blocked.push(Finding {
                reason: "CannotCreateVersion",
                message: format!(
                    "key {key}: version {version} cannot be created by a Job on the software backend \
                     (its key files live on each pod's own disk)"
                ),
            });
            break;
        }
        if running.contains(&version) {
            plan.steps.push(Step::AwaitKeygen(version));
            plan.pending.push(Finding {
                reason: "AwaitingKeygen",
                message: format!("key {key}: the Job creating version {version} is running"),
            });
            recheck(&mut plan, RECHECK);
            continue;
        }
        let failure = failures.iter().find(|f| f.version == version);
        let attempt = failure.map_or(1, |f| f.attempts + 1);
        if let Some(f) = failure {
            let at = plus(&f.last_failure, keygen_backoff(f.attempts));
            plan.blocked.push(Finding {
                reason: "KeygenFailed",
                message: format!(
                    "key {key}: the Job creating version {version} failed ({} attempt{}): {}; next attempt at {}",
                    f.attempts,
                    if f.attempts == 1 { "" } else { "s" },
                    f.message,
                    at.0
                ),
            });
            if obs.now.0 < at.0 {
                recheck(&mut plan, until(obs.now, &at));
                plan.steps.push(Step::RetryKeygen { version, at });
                continue;
            }
            if failed_jobs.contains(&version) {
                // The failed Job still holds the name: free it, create next time.
                plan.actions.push(Action::DeleteJob { version });
                plan.steps.push(Step::RetryKeygen { version, at });
                recheck(&mut plan, Duration::from_secs(1));
                continue;
            }
        }
        plan.actions.push(Action::CreateJob { version, attempt });
        plan.steps.push(Step::CreateVersion(version));
        plan.pending.push(Finding {
            reason: "AwaitingKeygen",
            message: format!("key {key}: creating version {version} (Job attempt {attempt})"),
        });
        recheck(&mut plan, RECHECK);
    }

    // Staged: every existing version, without gaps, up to the wanted newest.
    let mut staged = 1;
    while staged < wanted_newest && exists(staged + 1, &created) {
        staged += 1;
    }

    // Promote only what every served pod vouched for under the config they
    // were given; lowering needs no vouching (every pod knows older versions).
    let primary = if wanted_primary <= prev_primary {
        if wanted_primary < prev_primary {
            plan.steps.push(Step::Demote {
                from: prev_primary,
                to: wanted_primary,
            });
        }
        wanted_primary
    } else if !exists(wanted_primary, &created) {
        plan.pending.push(Finding {
            reason: "AwaitingKeygen",
            message: format!("key {key}: primary {wanted_primary} waits for the version to be created"),
        });
        prev_primary
    } else if wanted_primary > staged {
        plan.pending.push(Finding {
            reason: "AwaitingKeygen",
            message: format!(
                "key {key}: primary {wanted_primary} waits for version {} below it to be created",
                staged + 1
            ),
        });
        prev_primary
    } else if wanted_primary > prev_newest {
        plan.steps.push(Step::AwaitStaging(wanted_primary));
        plan.pending.push(Finding {
            reason: "AwaitingPodReports",
            message: format!(
                "key {key}: version {wanted_primary} is staged in the config rendered now; \
                 every pod reloads it and reports"
            ),
        });
        recheck(&mut plan, RECHECK);
        prev_primary
    } else {
        let reports = gather_reports(key, wanted_primary, obs.pods, obs.config_sha256);
        if obs.pods.is_empty() {
            plan.blocked.push(Finding {
                reason: "NoServedPods",
                message: format!(
                    "key {key}: no served pod runs, so none can vouch for version {wanted_primary}; \
                     it is promoted once every served pod reports it usable"
                ),
            });
        } else if !reports.unusable.is_empty() {
            plan.blocked.push(Finding {
                reason: "VersionUnusable",
                message: format!(
                    "key {key}: version {wanted_primary} is reported unusable by {}",
                    reports.unusable.join(", ")
                ),
            });
        }
        if !reports.missing.is_empty() {
            plan.pending.push(Finding {
                reason: "AwaitingPodReports",
                message: format!(
                    "key {key}: promoting version {wanted_primary} waits for {}",
                    missing_list(&reports)
                ),
            });
        }
        if !obs.pods.is_empty() && reports.unusable.is_empty() && reports.missing.is_empty() {
            plan.steps.push(Step::Promote {
                from: prev_primary,
                to: wanted_primary,
            });
            wanted_primary
        } else {
            plan.steps.push(Step::AwaitReports(wanted_primary));
            recheck(&mut plan, RECHECK);
            prev_primary
        }
    };

    let newest = staged.max(primary);

    // Retire as declared, never above what wraps.
    let min_decryption = obs.declared.min_decryption.map(|m| m.min(primary));
    if let Some(to) = min_decryption
        && to > prev_min.unwrap_or(1)
    {
        plan.steps.push(Step::Retire { from: prev_min, to });
    }
    if let Some(wanted) = obs.declared.min_decryption
        && wanted > primary
    {
        plan.steps.push(Step::AwaitRetire { wanted, primary });
        plan.pending.push(Finding {
            reason: "AwaitingPromotion",
            message: format!(
                "key {key}: minDecryption {wanted} is rendered as {primary} until version {wanted} is primary"
            ),
        });
    }

    failures.sort_by_key(|f| f.version);
    plan.status = KeyRotationStatus {
        name: key.to_owned(),
        created: created.into_iter().collect(),
        newest,
        primary,
        min_decryption,
        step: if plan.steps.is_empty() {
            "settled".into()
        } else {
            plan.steps
                .iter()
                .map(Step::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        },
        versions: Vec::new(),
        keygen_failures: failures,
    };
    plan
}

/// The SealBroker with each key's `versions` replaced by what is rendered
/// (`statuses`), for [`crate::render`]. Keys without a status keep theirs.
pub fn with_rendered_versions(sb: &SealBroker, statuses: &[KeyRotationStatus]) -> SealBroker {
    let mut out = sb.clone();
    for key in &mut out.spec.keys {
        if let Some(st) = statuses.iter().find(|s| s.name == key.name) {
            key.versions = Some(KeyVersions {
                newest: Some(st.newest),
                primary: Some(st.primary),
                min_decryption: st.min_decryption,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "openbao-unseal";

    fn hash(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    fn now() -> Time {
        at("2026-03-01T12:00:00Z")
    }

    fn wanted(newest: Option<u32>, primary: Option<u32>, min: Option<u32>) -> KeyVersions {
        KeyVersions {
            newest,
            primary,
            min_decryption: min,
        }
    }

    fn previous(created: &[u32], newest: u32, primary: u32, min: Option<u32>) -> KeyRotationStatus {
        KeyRotationStatus {
            name: KEY.into(),
            created: created.to_vec(),
            newest,
            primary,
            min_decryption: min,
            ..KeyRotationStatus::default()
        }
    }

    fn report(config: &str, versions: &[(u32, &str)]) -> String {
        let versions: serde_json::Map<String, Value> = versions
            .iter()
            .map(|(v, s)| (v.to_string(), Value::String((*s).into())))
            .collect();
        serde_json::json!({"config": config, "keys": {KEY: versions}}).to_string()
    }

    fn pod(name: &str, annotation: Option<String>) -> ServedPod {
        let annotations = annotation.map(|a| BTreeMap::from([(REPORT_ANNOTATION.to_string(), a)]));
        ServedPod {
            name: name.into(),
            report: parse_report(annotations.as_ref()),
        }
    }

    fn job(version: u32, attempt: u32, outcome: JobOutcome) -> KeygenJob {
        KeygenJob {
            version,
            attempt,
            outcome,
        }
    }

    fn failed(message: &str, when: &str) -> JobOutcome {
        JobOutcome::Failed {
            message: message.into(),
            at: Some(at(when)),
        }
    }

    struct Case {
        name: &'static str,
        declared: KeyVersions,
        previous: Option<KeyRotationStatus>,
        jobs: Vec<KeygenJob>,
        pods: Vec<ServedPod>,
        can_create: bool,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                name: "",
                declared: KeyVersions::default(),
                previous: None,
                jobs: Vec::new(),
                pods: Vec::new(),
                can_create: true,
            }
        }
    }

    fn run(case: &Case) -> KeyPlan {
        let config = hash('a');
        let now = now();
        plan_key(&KeyObservation {
            key: KEY,
            declared: case.declared.clone(),
            previous: case.previous.as_ref(),
            jobs: case.jobs.clone(),
            pods: &case.pods,
            config_sha256: &config,
            can_create: case.can_create,
            now: &now,
        })
    }

    fn reasons(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.reason).collect()
    }

    /// Rendered (newest, primary, minDecryption).
    type Rendered = (u32, u32, Option<u32>);

    /// (case, expected actions, expected steps, rendered).
    #[test]
    fn each_transition_of_the_state_machine() {
        let usable = |name: &str| pod(name, Some(report(&hash('a'), &[(1, "usable"), (2, "usable")])));
        let table: Vec<(Case, Vec<Action>, Vec<Step>, Rendered)> = vec![
            (
                Case {
                    name: "a key first seen is taken as rendered, nothing to do",
                    declared: wanted(None, Some(1), None),
                    ..Case::default()
                },
                vec![],
                vec![],
                (1, 1, None),
            ),
            (
                Case {
                    name: "a wanted newest version that does not exist gets a Job",
                    declared: wanted(Some(2), None, None),
                    previous: Some(previous(&[], 1, 1, None)),
                    pods: vec![usable("openbao-0")],
                    ..Case::default()
                },
                vec![Action::CreateJob {
                    version: 2,
                    attempt: 1,
                }],
                vec![Step::CreateVersion(2)],
                (1, 1, None),
            ),
            (
                Case {
                    name: "a running Job is waited for, not made again",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[], 1, 1, None)),
                    jobs: vec![job(2, 1, JobOutcome::Running)],
                    ..Case::default()
                },
                vec![],
                vec![Step::AwaitKeygen(2)],
                (1, 1, None),
            ),
            (
                Case {
                    name: "a succeeded Job records the version and stages it; promotion waits for reports \
                           under the config that stages it",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[], 1, 1, None)),
                    jobs: vec![job(2, 1, JobOutcome::Succeeded)],
                    pods: vec![usable("openbao-0")],
                    ..Case::default()
                },
                vec![],
                vec![Step::AwaitStaging(2)],
                (2, 1, None),
            ),
            (
                Case {
                    name: "every served pod reports the staged version usable under the rendered config: promote",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[2], 2, 1, None)),
                    pods: vec![usable("openbao-0"), usable("openbao-1")],
                    ..Case::default()
                },
                vec![],
                vec![Step::Promote { from: 1, to: 2 }],
                (2, 2, None),
            ),
            (
                Case {
                    name: "a pod that reports under an old config hash does not count",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[2], 2, 1, None)),
                    pods: vec![
                        usable("openbao-0"),
                        pod("openbao-1", Some(report(&hash('b'), &[(2, "usable")]))),
                    ],
                    ..Case::default()
                },
                vec![],
                vec![Step::AwaitReports(2)],
                (2, 1, None),
            ),
            (
                Case {
                    name: "a pod without a report, or with a garbled one, holds promotion back",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[2], 2, 1, None)),
                    pods: vec![
                        usable("openbao-0"),
                        pod("openbao-1", None),
                        pod("openbao-2", Some("{not json".into())),
                    ],
                    ..Case::default()
                },
                vec![],
                vec![Step::AwaitReports(2)],
                (2, 1, None),
            ),
            (
                Case {
                    name: "a pod that disappeared (rescheduled) is not waited for",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[2], 2, 1, None)),
                    // openbao-1 was here last time; it is gone from the served pods now.
                    pods: vec![usable("openbao-0"), usable("openbao-2")],
                    ..Case::default()
                },
                vec![],
                vec![Step::Promote { from: 1, to: 2 }],
                (2, 2, None),
            ),
            (
                Case {
                    name: "a pod reporting the version unusable blocks promotion",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[2], 2, 1, None)),
                    pods: vec![
                        usable("openbao-0"),
                        pod("openbao-1", Some(report(&hash('a'), &[(2, "unusable")]))),
                    ],
                    ..Case::default()
                },
                vec![],
                vec![Step::AwaitReports(2)],
                (2, 1, None),
            ),
            (
                Case {
                    name: "with no served pod nobody vouches: no promotion",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[2], 2, 1, None)),
                    ..Case::default()
                },
                vec![],
                vec![Step::AwaitReports(2)],
                (2, 1, None),
            ),
            (
                Case {
                    name: "a failed Job is recorded and not retried before its backoff",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[], 1, 1, None)),
                    jobs: vec![job(
                        2,
                        1,
                        failed("BackoffLimitExceeded: pin rejected", "2026-03-01T11:59:50Z"),
                    )],
                    pods: vec![usable("openbao-0")],
                    ..Case::default()
                },
                vec![],
                vec![Step::RetryKeygen {
                    version: 2,
                    at: at("2026-03-01T12:00:20Z"),
                }],
                (1, 1, None),
            ),
            (
                Case {
                    name: "after the backoff the failed Job is deleted to free its name",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[], 1, 1, None)),
                    jobs: vec![job(2, 1, failed("BackoffLimitExceeded", "2026-03-01T11:00:00Z"))],
                    ..Case::default()
                },
                vec![Action::DeleteJob { version: 2 }],
                vec![Step::RetryKeygen {
                    version: 2,
                    at: at("2026-03-01T11:00:30Z"),
                }],
                (1, 1, None),
            ),
            (
                Case {
                    name: "once the failed Job is gone the next attempt starts",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(KeyRotationStatus {
                        keygen_failures: vec![KeygenFailure {
                            version: 2,
                            attempts: 1,
                            last_failure: at("2026-03-01T11:00:00Z"),
                            message: "BackoffLimitExceeded".into(),
                        }],
                        ..previous(&[], 1, 1, None)
                    }),
                    ..Case::default()
                },
                vec![Action::CreateJob {
                    version: 2,
                    attempt: 2,
                }],
                vec![Step::CreateVersion(2)],
                (1, 1, None),
            ),
            (
                Case {
                    name: "a failed version is never promoted past: v3 exists, v2 failed",
                    declared: wanted(Some(3), Some(3), None),
                    previous: Some(KeyRotationStatus {
                        keygen_failures: vec![KeygenFailure {
                            version: 2,
                            attempts: 2,
                            last_failure: at("2026-03-01T11:59:30Z"),
                            message: "DeadlineExceeded".into(),
                        }],
                        ..previous(&[3], 1, 1, None)
                    }),
                    pods: vec![pod(
                        "openbao-0",
                        Some(report(&hash('a'), &[(2, "usable"), (3, "usable")])),
                    )],
                    ..Case::default()
                },
                vec![],
                vec![Step::RetryKeygen {
                    version: 2,
                    at: at("2026-03-01T12:00:30Z"),
                }],
                (1, 1, None),
            ),
            (
                Case {
                    name: "retirement is rendered as declared once the primary is there",
                    declared: wanted(Some(2), Some(2), Some(2)),
                    previous: Some(previous(&[2], 2, 2, None)),
                    ..Case::default()
                },
                vec![],
                vec![Step::Retire { from: None, to: 2 }],
                (2, 2, Some(2)),
            ),
            (
                Case {
                    name: "retirement never goes above the rendered primary",
                    declared: wanted(Some(2), Some(2), Some(2)),
                    previous: Some(previous(&[2], 2, 1, None)),
                    pods: vec![pod("openbao-0", None)],
                    ..Case::default()
                },
                vec![],
                vec![
                    Step::AwaitReports(2),
                    Step::AwaitRetire {
                        wanted: 2,
                        primary: 1,
                    },
                ],
                (2, 1, Some(1)),
            ),
            (
                Case {
                    name: "a lower wanted primary is rendered at once",
                    declared: wanted(Some(3), Some(2), None),
                    previous: Some(previous(&[2, 3], 3, 3, None)),
                    ..Case::default()
                },
                vec![],
                vec![Step::Demote { from: 3, to: 2 }],
                (3, 2, None),
            ),
            (
                Case {
                    name: "the software backend gets no Job; the rotation is blocked",
                    declared: wanted(Some(2), Some(2), None),
                    previous: Some(previous(&[], 1, 1, None)),
                    can_create: false,
                    ..Case::default()
                },
                vec![],
                vec![Step::CannotCreate(2)],
                (1, 1, None),
            ),
        ];
        for (case, actions, steps, (newest, primary, min)) in table {
            let plan = run(&case);
            assert_eq!(plan.actions, actions, "{}", case.name);
            assert_eq!(plan.steps, steps, "{}", case.name);
            assert_eq!(
                (
                    plan.status.newest,
                    plan.status.primary,
                    plan.status.min_decryption
                ),
                (newest, primary, min),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn conditions_name_the_missing_pods_and_the_failed_job() {
        let plan = run(&Case {
            declared: wanted(Some(2), Some(2), None),
            previous: Some(previous(&[2], 2, 1, None)),
            pods: vec![
                pod("openbao-0", Some(report(&hash('a'), &[(2, "usable")]))),
                pod("openbao-1", Some(report(&hash('b'), &[(2, "usable")]))),
                pod("openbao-2", None),
            ],
            ..Case::default()
        });
        assert_eq!(reasons(&plan.pending), ["AwaitingPodReports"]);
        let message = &plan.pending[0].message;
        assert!(
            message.contains("openbao-1 (reported under config bbbbbbbbbbbb…"),
            "{message}"
        );
        assert!(
            message.contains("openbao-2 (no sealbroker.io/key-versions annotation yet)"),
            "{message}"
        );
        assert!(!message.contains("openbao-0"), "{message}");
        assert!(plan.blocked.is_empty());
        assert_eq!(plan.recheck, Some(RECHECK));

        let plan = run(&Case {
            declared: wanted(Some(2), Some(2), None),
            previous: Some(previous(&[], 1, 1, None)),
            jobs: vec![job(
                2,
                3,
                failed(
                    "BackoffLimitExceeded: Job has reached the specified backoff limit",
                    "2026-03-01T11:59:00Z",
                ),
            )],
            ..Case::default()
        });
        assert_eq!(reasons(&plan.blocked), ["KeygenFailed"]);
        let message = &plan.blocked[0].message;
        assert!(message.contains("version 2 failed (3 attempts)"), "{message}");
        assert!(message.contains("BackoffLimitExceeded"), "{message}");
        // The third failure waits 120 s: one minute of it is left.
        assert_eq!(plan.recheck, Some(Duration::from_secs(60)));
        assert_eq!(plan.status.keygen_failures[0].attempts, 3);
    }

    #[test]
    fn an_unusable_report_blocks_and_no_pods_blocks() {
        let plan = run(&Case {
            declared: wanted(Some(2), Some(2), None),
            previous: Some(previous(&[2], 2, 1, None)),
            pods: vec![pod("openbao-0", Some(report(&hash('a'), &[(2, "unusable")])))],
            ..Case::default()
        });
        assert_eq!(reasons(&plan.blocked), ["VersionUnusable"]);
        assert!(plan.blocked[0].message.contains("openbao-0"));
        let plan = run(&Case {
            declared: wanted(Some(2), Some(2), None),
            previous: Some(previous(&[2], 2, 1, None)),
            ..Case::default()
        });
        assert_eq!(reasons(&plan.blocked), ["NoServedPods"]);
    }

    #[test]
    fn backoff_doubles_from_thirty_seconds_to_half_an_hour() {
        let secs: Vec<u64> = (1..=9).map(|a| keygen_backoff(a).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1800, 1800, 1800]);
        assert_eq!(keygen_backoff(0).as_secs(), 30);
        assert_eq!(keygen_backoff(u32::MAX).as_secs(), 1800);
    }

    #[test]
    fn a_succeeded_retry_clears_the_failure() {
        let plan = run(&Case {
            declared: wanted(Some(2), Some(2), None),
            previous: Some(KeyRotationStatus {
                keygen_failures: vec![KeygenFailure {
                    version: 2,
                    attempts: 1,
                    last_failure: at("2026-03-01T11:00:00Z"),
                    message: "x".into(),
                }],
                ..previous(&[], 1, 1, None)
            }),
            jobs: vec![job(2, 2, JobOutcome::Succeeded)],
            ..Case::default()
        });
        assert!(plan.blocked.is_empty(), "{:?}", plan.blocked);
        assert!(plan.status.keygen_failures.is_empty());
        assert_eq!(plan.status.created, [2]);
    }

    #[test]
    fn reports_parse_tolerantly_and_say_why_they_do_not_count() {
        let good = format!(
            r#"{{"config":"{}","keys":{{"k":{{"1":"usable","2":"unusable","x":"usable","0":"usable","3":"maybe"}},"bad":7}},"extra":true}}"#,
            hash('A')
        );
        let report = parse_report_text(&good).unwrap();
        assert_eq!(report.config, hash('a'));
        assert_eq!(
            report.keys["k"],
            BTreeMap::from([
                (1, VersionState::Usable),
                (2, VersionState::Unusable),
                (3, VersionState::Other("maybe".into())),
            ])
        );
        assert!(!report.keys.contains_key("bad"));
        for (text, says) in [
            ("", "is not JSON"),
            ("[1]", "is not a JSON object"),
            (r#"{"keys":{}}"#, "no \"config\" string"),
            (r#"{"config":"abc","keys":{}}"#, "not a hex SHA-256"),
            (&format!(r#"{{"config":"{}"}}"#, hash('a')), "no \"keys\" object"),
        ] {
            let err = parse_report_text(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        assert!(
            parse_report(None)
                .unwrap_err()
                .contains("no sealbroker.io/key-versions annotation")
        );
        let long = format!(
            r#"{{"config":"{}","keys":{{"k":{{"2":"{}"}}}}}}"#,
            hash('a'),
            "z".repeat(5000)
        );
        match &parse_report_text(&long).unwrap().keys["k"][&2] {
            VersionState::Other(s) => assert!(s.chars().count() <= 33),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_reports_list_who_vouched_and_who_did_not() {
        let status = previous(&[2], 2, 1, None);
        let pods = vec![
            pod("a", Some(report(&hash('a'), &[(1, "usable"), (2, "usable")]))),
            pod("b", Some(report(&hash('a'), &[(1, "usable"), (2, "unusable")]))),
            pod("c", Some(report(&hash('c'), &[(1, "usable"), (2, "usable")]))),
        ];
        let reports = version_reports(&status, &pods, &hash('a'));
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].usable, ["a", "b"]);
        assert_eq!(reports[1].usable, ["a"]);
        assert_eq!(reports[1].unusable, ["b"]);
        assert_eq!(reports[1].missing[0].pod, "c");
    }
}
