//! Admission decisions (`admission.k8s.io/v1`), separate from the HTTPS server
//! that carries them: given a request and the SealBrokers of its namespace,
//! answer allow, deny (with the reason) or a JSONPatch.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::crd::{Profile, SealBroker};
use crate::desired::selector_matches;
use crate::injection;
use crate::validation::{self, describe};

/// The webhook endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `/mutate-pods`: inject the sidecar.
    MutatePods,
    /// `/validate-pods`: credentials go to the sidecar only.
    ValidatePods,
    /// `/validate-sealbrokers`: the profile's rules.
    ValidateSealBrokers,
}

impl Hook {
    pub fn from_path(path: &str) -> Option<Hook> {
        match path {
            "/mutate-pods" => Some(Hook::MutatePods),
            "/validate-pods" => Some(Hook::ValidatePods),
            "/validate-sealbrokers" => Some(Hook::ValidateSealBrokers),
            _ => None,
        }
    }

    /// Whether deciding needs the namespace's SealBrokers.
    pub fn needs_sealbrokers(self) -> bool {
        matches!(self, Hook::MutatePods | Hook::ValidatePods)
    }
}

/// Parses an AdmissionReview body; the error is the review to answer with.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, Box<AdmissionReview<DynamicObject>>> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| {
        Box::new(AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review())
    })?;
    review
        .try_into()
        .map_err(|e| Box::new(AdmissionResponse::invalid(format!("{e}")).into_review()))
}

/// The SealBrokers whose selector matches the Pod's labels.
pub fn selecting<'a>(pod: &Pod, brokers: &'a [SealBroker]) -> Vec<&'a SealBroker> {
    let labels = pod.labels();
    brokers
        .iter()
        .filter(|sb| selector_matches(&sb.spec.openbao.selector, labels))
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(obj: &DynamicObject) -> Result<T, String> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("cannot read the object: {e}"))
}

/// The answer to one request.
pub fn decide(
    hook: Hook,
    req: &AdmissionRequest<DynamicObject>,
    brokers: &[SealBroker],
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    if matches!(req.operation, Operation::Delete | Operation::Connect) {
        return response;
    }
    let Some(object) = req.object.as_ref() else {
        return response;
    };
    match hook {
        Hook::ValidateSealBrokers => match typed::<SealBroker>(object) {
            Err(e) => response.deny(e),
            Ok(mut sb) => {
                if sb.metadata.name.is_none() {
                    sb.metadata.name = Some(req.name.clone());
                }
                let mut problems = validation::validate(&sb);
                if req.operation == Operation::Update
                    && let Some(old) = req.old_object.as_ref()
                {
                    match typed::<SealBroker>(old) {
                        Ok(old) => problems.extend(validation::validate_update(&old, &sb)),
                        Err(e) => return response.deny(format!("oldObject: {e}")),
                    }
                }
                if !problems.is_empty() {
                    return response.deny(format!("SealBroker refused: {}", describe(&problems)));
                }
                with_risk_warning(response, &sb)
            }
        },
        Hook::MutatePods | Hook::ValidatePods => {
            let pod: Pod = match typed(object) {
                Ok(pod) => pod,
                Err(e) => return response.deny(e),
            };
            let chosen = selecting(&pod, brokers);
            if chosen.len() > 1 {
                let names: Vec<String> = chosen.iter().map(|s| s.name_any()).collect();
                return response.deny(format!(
                    "the Pod is selected by several SealBrokers ({}); exactly one may serve it",
                    names.join(", ")
                ));
            }
            match hook {
                Hook::MutatePods => match chosen.first() {
                    // Injection happens once, at CREATE; an UPDATE (or an
                    // ephemeral container) is only validated.
                    Some(sb) if req.operation == Operation::Create && req.sub_resource.is_none() => {
                        mutate(response, &pod, sb)
                    }
                    _ => response,
                },
                _ => validate_pod(response, &pod, chosen.first().copied(), brokers),
            }
        }
    }
}

fn with_risk_warning(mut response: AdmissionResponse, sb: &SealBroker) -> AdmissionResponse {
    if sb.spec.profile == Profile::Development {
        response.warnings = Some(vec![format!(
            "SealBroker {} uses the Development profile: it is reported as a SecurityRisk and is no \
             production trust path",
            sb.name_any()
        )]);
    } else {
        let roots = validation::in_cluster_roots(sb);
        if !roots.is_empty() {
            response.warnings = Some(vec![format!(
                "Hardened SealBroker {} keeps its unseal root inside the cluster ({}): it is reported as a \
                 SecurityRisk (InClusterTrustRoot)",
                sb.name_any(),
                roots.join("; ")
            )]);
        }
    }
    response
}

fn mutate(response: AdmissionResponse, pod: &Pod, sb: &SealBroker) -> AdmissionResponse {
    let problems = validation::validate(sb);
    if !problems.is_empty() {
        return response.deny(format!(
            "SealBroker {} is invalid, so the Pod cannot be served: {}",
            sb.name_any(),
            describe(&problems)
        ));
    }
    match injection::injection_patch(pod, sb) {
        Err(e) => response.deny(format!("sealbroker injection refused: {e}")),
        Ok(patch) if patch.0.is_empty() => response,
        Ok(patch) => match response.clone().with_patch(patch) {
            Ok(patched) => patched,
            Err(e) => response.deny(format!("cannot encode the patch: {e}")),
        },
    }
}

/// Every Pod of a served namespace, selected or not, created or updated
/// (ephemeral containers included): no container but a broker's may hold
/// that broker's credentials; a served Pod shares no process namespace; and
/// under Hardened every image of a served Pod is pinned by digest and
/// OpenBao mounts its TLS from the external Secret the SealBroker names.
fn validate_pod(
    response: AdmissionResponse,
    pod: &Pod,
    serving: Option<&SealBroker>,
    brokers: &[SealBroker],
) -> AdmissionResponse {
    let mut denials = Vec::new();
    let mut warnings = Vec::new();
    for sb in brokers {
        let leaks = validation::credential_leaks(pod, sb);
        if leaks.is_empty() {
            continue;
        }
        match sb.spec.profile {
            Profile::Hardened => denials.push(format!(
                "Hardened SealBroker {} refuses this Pod: {}",
                sb.name_any(),
                describe(&leaks)
            )),
            Profile::Development => warnings.extend(leaks.iter().map(|p| p.to_string())),
        }
    }
    let isolation = validation::isolation_problems(pod, brokers);
    if !isolation.is_empty() {
        denials.push(format!(
            "a Pod served by a broker must be isolated: {}",
            describe(&isolation)
        ));
    }
    if let Some(sb) = serving.filter(|sb| sb.spec.profile == Profile::Hardened) {
        let mut unpinned = validation::unpinned_images(pod);
        unpinned.extend(validation::openbao_tls_problems(pod, sb));
        if !unpinned.is_empty() {
            denials.push(format!(
                "Hardened SealBroker {} refuses this Pod: {}",
                sb.name_any(),
                describe(&unpinned)
            ));
        }
    }
    if !denials.is_empty() {
        return response.deny(denials.join("; "));
    }
    let mut response = response;
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}
