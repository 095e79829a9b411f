//! A thin Kubernetes operator that makes "OpenBao unseals through sealbroker"
//! one object away.
//!
//! A `SealBroker` (see [`crd`]) names the keys, their backends (credentials
//! only by Secret name) and the OpenBao pods it serves. From it:
//!
//! - [`render`] produces the broker's TOML config and OpenBao's seal stanza;
//! - [`desired`] computes every Kubernetes object as a pure function of the
//!   spec, split between the controller (ConfigMaps, NetworkPolicy) and the
//!   provisioner (ServiceAccount, Role and RoleBinding on named Secrets);
//! - [`injection`] adds the plugin installer, the broker sidecar and the
//!   shared volumes to OpenBao Pods, and [`validation`] refuses what a
//!   profile forbids; [`admission`] turns both into AdmissionReview answers,
//!   which [`webhook`] serves over HTTPS;
//! - [`rotation`] decides, per key, the next safe step of a rotation: create
//!   a version with a key-creation Job, stage it, promote it once every
//!   served pod reported it usable, retire; [`policy`] is the admission
//!   policy that keeps those pod reports honest;
//! - [`onboarding`] is what a platform admin applies once per tenant
//!   namespace: its labels, a default-deny NetworkPolicy, and the
//!   controller's and provisioner's Roles scoped to the named SealBrokers;
//! - [`kubeapi`] applies the objects with server-side apply and writes status;
//!   under Hardened only once [`signature`] verified the image's signature.
//!
//! Everything but [`kubeapi`], [`webhook`] and [`signature`]'s registry client is free of I/O and tested with
//! golden files; see docs/operator.md for the design and the RBAC split.

pub mod admission;
pub mod crd;
pub mod desired;
pub mod injection;
pub mod kubeapi;
pub mod leader;
pub mod onboarding;
pub mod policy;
pub mod render;
pub mod rotation;
pub mod seeds;
pub mod signature;
pub mod status;
pub mod validation;
pub mod webhook;

/// The CRD as YAML, exactly as `deploy/crd/` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(crd::SealBroker::crd()).unwrap_or_default();
    desired::yaml_documents(&[crd])
}

/// Reads a `SealBroker` from YAML (or JSON).
pub fn parse_sealbroker(text: &str) -> Result<crd::SealBroker, String> {
    let sb: crd::SealBroker = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if sb.metadata.name.as_deref().unwrap_or("").is_empty() {
        return Err("metadata.name is missing".into());
    }
    Ok(sb)
}
