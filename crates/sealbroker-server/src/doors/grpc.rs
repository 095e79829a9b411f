//! The native gRPC front door (`sealbroker.v1.SealService`).

use std::sync::Arc;

use sealbroker_core::{KeyInfo, SecretBytes};
use sealbroker_proto::sealbroker::v1 as pb;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use crate::broker::Broker;
use crate::broker::caller::{Call, Caller, Door};
use crate::doors::status::to_status;
use crate::net::tls::TlsConnectInfo;

/// Adapts [`Broker`] to the generated `SealService` trait.
pub struct SealGrpc {
    broker: Arc<Broker>,
}

impl SealGrpc {
    pub fn new(broker: Arc<Broker>) -> Self {
        SealGrpc { broker }
    }

    pub fn into_server(self) -> pb::seal_service_server::SealServiceServer<Self> {
        pb::seal_service_server::SealServiceServer::new(self)
    }
}

/// Identifies the caller from what the listener recorded about the connection.
pub fn caller_of<T>(request: &Request<T>) -> Caller {
    if let Some(info) = request.extensions().get::<UdsConnectInfo>()
        && let Some(cred) = info.peer_cred
    {
        return Caller::Unix {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        };
    }
    if let Some(info) = request.extensions().get::<TlsConnectInfo>() {
        return match &info.client_fingerprint {
            Some(fingerprint) => Caller::Tls {
                fingerprint: fingerprint.clone(),
                names: info.client_names.clone(),
            },
            None => Caller::Anonymous {
                peer: info.remote_addr.to_string(),
            },
        };
    }
    let peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    Caller::Anonymous { peer }
}

fn key_info(info: KeyInfo) -> pb::KeyInfo {
    pb::KeyInfo {
        name: info.name,
        primary_version: info.primary_version,
        primary_key_id: info.primary_key_id.to_string(),
        min_decryption_version: info.min_decryption_version,
        backend_kind: info.backend_kind.to_owned(),
        backend_name: info.backend_name,
        versions: info
            .versions
            .into_iter()
            .map(|(version, key_id)| pb::KeyVersionInfo {
                version,
                key_id: key_id.to_string(),
            })
            .collect(),
    }
}

/// A scheme named in a request; empty means the key's default.
fn scheme_of(text: &str) -> Result<Option<sealbroker_core::SignScheme>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    sealbroker_core::SignScheme::parse(text).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!(
            "scheme: {text:?} is not a signature scheme; use rsa-pkcs1-sha256, rsa-pss-sha256, ecdsa-sha256, ed25519 \
             (or -sha384/-sha512 variants), or leave it empty for the key's default"
        ))
    })
}

fn sign_input(data: &[u8], prehashed: bool) -> sealbroker_core::SignInput<'_> {
    if prehashed {
        sealbroker_core::SignInput::Digest(data)
    } else {
        sealbroker_core::SignInput::Message(data)
    }
}

fn version_of(version: u32) -> Option<u32> {
    (version != 0).then_some(version)
}

#[tonic::async_trait]
impl pb::seal_service_server::SealService for SealGrpc {
    async fn wrap(&self, request: Request<pb::WrapRequest>) -> Result<Response<pb::WrapResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let mut req = request.into_inner();
        let plaintext = SecretBytes::new(std::mem::take(&mut req.plaintext));
        let wrapped = self
            .broker
            .wrap(&call, &req.key_name, plaintext, &req.aad)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::WrapResponse {
            blob: wrapped.blob,
            key_name: wrapped.key_name,
            key_id: wrapped.key_id.to_string(),
            key_version: wrapped.key_version,
            missing_backends: wrapped.missing_members,
        }))
    }

    async fn unwrap(
        &self,
        request: Request<pb::UnwrapRequest>,
    ) -> Result<Response<pb::UnwrapResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let req = request.into_inner();
        let opened = self
            .broker
            .unwrap(&call, &req.key_name, &req.blob, &req.aad)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::UnwrapResponse {
            plaintext: opened.plaintext.into_unprotected_vec(),
            key_name: opened.key_name,
            key_id: opened.key_id.to_string(),
            key_version: opened.key_version,
        }))
    }

    async fn rewrap(
        &self,
        request: Request<pb::RewrapRequest>,
    ) -> Result<Response<pb::RewrapResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let mut req = request.into_inner();
        let result = self
            .broker
            .rewrap(&call, &req.key_name, &req.blob, &req.aad)
            .await;
        req.aad.zeroize();
        let wrapped = result.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::RewrapResponse {
            blob: wrapped.blob,
            key_name: wrapped.key_name,
            key_id: wrapped.key_id.to_string(),
            key_version: wrapped.key_version,
            missing_backends: wrapped.missing_members,
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let info = self
            .broker
            .get_key(&call, &request.get_ref().key_name)
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::GetKeyResponse {
            key: Some(key_info(info)),
        }))
    }

    async fn sign(&self, request: Request<pb::SignRequest>) -> Result<Response<pb::SignResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let req = request.into_inner();
        let scheme = scheme_of(&req.scheme)?;
        let input = sign_input(&req.data, req.prehashed);
        let signed = self
            .broker
            .sign(&call, &req.key_name, version_of(req.key_version), scheme, input)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::SignResponse {
            signature: signed.signature,
            key_name: signed.key_name,
            key_version: signed.key_version,
            scheme: signed.scheme.name(),
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let req = request.into_inner();
        let scheme = scheme_of(&req.scheme)?;
        let input = sign_input(&req.data, req.prehashed);
        let verdict = self
            .broker
            .verify(
                &call,
                &req.key_name,
                version_of(req.key_version),
                scheme,
                input,
                &req.signature,
            )
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::VerifyResponse {
            valid: verdict.valid,
            key_name: verdict.key_name,
            key_version: verdict.key_version,
        }))
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let req = request.into_inner();
        let public = self
            .broker
            .public_key(&call, &req.key_name, version_of(req.key_version))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::GetPublicKeyResponse {
            pem: public.public.pem(),
            algorithm: public.public.algorithm.as_str().to_owned(),
            spki_der: public.public.spki_der,
            key_name: public.key_name,
            key_version: public.key_version,
        }))
    }

    async fn encrypt_asymmetric(
        &self,
        request: Request<pb::EncryptAsymmetricRequest>,
    ) -> Result<Response<pb::EncryptAsymmetricResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let mut req = request.into_inner();
        let plaintext = SecretBytes::new(std::mem::take(&mut req.plaintext));
        let sealed = self
            .broker
            .encrypt_asymmetric(&call, &req.key_name, version_of(req.key_version), plaintext)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::EncryptAsymmetricResponse {
            ciphertext: sealed.ciphertext,
            key_name: sealed.key_name,
            key_version: sealed.key_version,
        }))
    }

    async fn decrypt_asymmetric(
        &self,
        request: Request<pb::DecryptAsymmetricRequest>,
    ) -> Result<Response<pb::DecryptAsymmetricResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let req = request.into_inner();
        let opened = self
            .broker
            .decrypt_asymmetric(&call, &req.key_name, version_of(req.key_version), &req.ciphertext)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::DecryptAsymmetricResponse {
            plaintext: opened.plaintext.into_unprotected_vec(),
            key_name: opened.key_name,
            key_version: opened.key_version,
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let keys = self.broker.list_keys(&call).into_iter().map(key_info).collect();
        Ok(Response::new(pb::ListKeysResponse { keys }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let pb::RotateKeyRequest { key_name, stage } = request.get_ref();
        let info = if *stage {
            self.broker.stage(&call, key_name).await
        } else {
            self.broker.rotate(&call, key_name).await
        }
        .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::GetKeyResponse {
            key: Some(key_info(info)),
        }))
    }

    async fn set_min_decryption_version(
        &self,
        request: Request<pb::SetMinDecryptionVersionRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let req = request.get_ref();
        let info = self
            .broker
            .set_min_decryption_version(&call, &req.key_name, req.min_decryption_version)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::GetKeyResponse {
            key: Some(key_info(info)),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let call = Call::new(Door::Grpc, caller_of(&request));
        let mut status = if request.get_ref().deep {
            self.broker
                .status_deep_for(&call)
                .await
                .map_err(|e| to_status(&e))?
        } else {
            self.broker.status(false).await
        };
        status.keys.retain(|k| self.broker.visible(&call, &k.key_name));
        status
            .versions
            .retain(|v| self.broker.visible(&call, &v.key_name));
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            profile: status.profile.as_str().to_owned(),
            security_risk: status.security_risk,
            config_error: status.config_error.unwrap_or_default(),
            keys: status
                .keys
                .into_iter()
                .map(|k| pb::KeyHealth {
                    key_name: k.key_name,
                    backend_name: k.backend_name,
                    healthy: k.healthy,
                    error: k.error.unwrap_or_default(),
                })
                .collect(),
            versions: status
                .versions
                .into_iter()
                .map(|v| pb::KeyVersionStatus {
                    key_name: v.key_name,
                    version: v.version,
                    key_id: v.key_id,
                    role: v.role.as_str().to_owned(),
                    usable: v.usable.unwrap_or(false),
                })
                .collect(),
        }))
    }
}
