//! The Kubernetes KMS v2 front door (`v2.KeyManagementService`), so
//! kube-apiserver can encrypt Secrets at rest through the same broker.
//!
//! kube-apiserver polls `Status` about every minute, so it is answered from
//! the broker's cached deep probe (a real encrypt+decrypt at most every
//! `limits.health_cache_secs`). `Encrypt` reports the key's current version
//! id, which changes on rotation and is never reused; `Decrypt` refuses key
//! ids this broker did not issue for the configured key.

use std::sync::Arc;

use sealbroker_core::SecretBytes;
use sealbroker_proto::kms_v2 as pb;
use tonic::{Request, Response, Status};

use crate::broker::Broker;
use crate::broker::caller::{Call, Door};
use crate::doors::grpc::caller_of;
use crate::doors::status::to_status;

/// Annotation carrying the key version (non-secret; keys must be domain names).
const VERSION_ANNOTATION: &str = "version.sealbroker.io";
/// kube-apiserver rejects ciphertexts and key ids over 1 KiB.
const MAX_CIPHERTEXT: usize = 1024;

pub struct KmsV2 {
    broker: Arc<Broker>,
    key_name: String,
}

impl KmsV2 {
    pub fn new(broker: Arc<Broker>, key_name: String) -> Self {
        KmsV2 { broker, key_name }
    }

    pub fn into_server(self) -> pb::key_management_service_server::KeyManagementServiceServer<Self> {
        pb::key_management_service_server::KeyManagementServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::key_management_service_server::KeyManagementService for KmsV2 {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let info = self.broker.get_key(&Call::internal(Door::KmsV2), &self.key_name);
        let key_id = info
            .map(|i| i.primary_key_id.to_string())
            .map_err(|e| to_status(&e))?;
        let status = self.broker.status(false).await;
        // The key works while any member of its primary version does.
        let healthz = match status.unavailable(&self.key_name) {
            None => "ok".to_owned(),
            Some(why) => format!("sealbroker key {:?} unavailable: {why}", self.key_name),
        };
        Ok(Response::new(pb::StatusResponse {
            version: "v2".into(),
            healthz,
            key_id,
        }))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let call = Call::new(Door::KmsV2, caller_of(&request));
        let mut req = request.into_inner();
        let plaintext = SecretBytes::new(std::mem::take(&mut req.plaintext));
        let wrapped = self
            .broker
            .wrap(&call, &self.key_name, plaintext, b"")
            .await
            .map_err(|e| to_status(&e))?;
        if wrapped.blob.len() > MAX_CIPHERTEXT {
            return Err(Status::internal(format!(
                "the sealed blob is {} bytes; kube-apiserver accepts at most {MAX_CIPHERTEXT} (too many key ring members?)",
                wrapped.blob.len()
            )));
        }
        Ok(Response::new(pb::EncryptResponse {
            ciphertext: wrapped.blob,
            key_id: wrapped.key_id.to_string(),
            annotations: [(
                VERSION_ANNOTATION.to_owned(),
                wrapped.key_version.to_string().into_bytes(),
            )]
            .into(),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let call = Call::new(Door::KmsV2, caller_of(&request));
        let req = request.into_inner();
        let opened = self
            .broker
            .unwrap_issued(&call, &self.key_name, &req.key_id, &req.ciphertext, b"")
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::DecryptResponse {
            plaintext: opened.plaintext.into_unprotected_vec(),
        }))
    }
}
