//! The protocol floors: servers that answer the broker's requests and do
//! nothing else, run as a child process of the bench (`sealbroker-bench
//! --serve-floor`), so each comparison is process against process with the
//! same client.
//!
//! - gRPC: a bare tonic server on a unix socket with the broker's
//!   `SealService`. Wrap answers the plaintext as the blob and Unwrap the
//!   blob as the plaintext, so the bench's own gRPC callers (and their
//!   checks) drive it unchanged. Every other method is UNIMPLEMENTED.
//! - HTTP: a bare hyper HTTP/1.1 server on 127.0.0.1 that reads each request
//!   and answers 200 with one fixed transit-shaped JSON body (`data.ciphertext`
//!   and `data.plaintext`), so the transit callers drive it unchanged.

use std::convert::Infallible;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sealbroker_proto::sealbroker::v1 as pb;
use sealbroker_proto::sealbroker::v1::seal_service_server::{SealService, SealServiceServer};
use tonic::{Status, async_trait};

use crate::peers::Error;
use crate::scenarios::PAYLOAD;

/// Serves both floors until the process is stopped.
pub async fn serve(socket: &Path, http_port: u16) -> Result<(), Error> {
    let _ = std::fs::remove_file(socket);
    let unix = tokio::net::UnixListener::bind(socket)?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<SealServiceServer<Floor>>().await;
    let grpc = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(SealServiceServer::new(Floor))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(unix));

    let tcp = tokio::net::TcpListener::bind(("127.0.0.1", http_port)).await?;
    let body = Bytes::from(
        serde_json::json!({
            "data": { "ciphertext": "vault:v1:floor", "plaintext": STANDARD.encode(PAYLOAD) }
        })
        .to_string(),
    );
    tokio::select! {
        served = grpc => served?,
        served = serve_http(tcp, body) => served?,
    }
    Ok(())
}

/// The bare HTTP/1.1 floor: every connection on its own task, every
/// request read in full and answered 200 with `body`.
async fn serve_http(tcp: tokio::net::TcpListener, body: Bytes) -> std::io::Result<()> {
    loop {
        let (stream, _) = tcp.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let body = body.clone();
                async move {
                    // Read the request as a server must, then answer.
                    let _ = request.into_body().collect().await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The no-op `SealService`.
struct Floor;

fn unimplemented<T>() -> Result<tonic::Response<T>, Status> {
    Err(Status::unimplemented(
        "the floor server answers Wrap and Unwrap only",
    ))
}

#[async_trait]
impl SealService for Floor {
    async fn wrap(
        &self,
        request: tonic::Request<pb::WrapRequest>,
    ) -> Result<tonic::Response<pb::WrapResponse>, Status> {
        let request = request.into_inner();
        Ok(tonic::Response::new(pb::WrapResponse {
            blob: request.plaintext,
            key_name: request.key_name,
            key_version: 1,
            ..Default::default()
        }))
    }

    async fn unwrap(
        &self,
        request: tonic::Request<pb::UnwrapRequest>,
    ) -> Result<tonic::Response<pb::UnwrapResponse>, Status> {
        Ok(tonic::Response::new(pb::UnwrapResponse {
            plaintext: request.into_inner().blob,
            key_version: 1,
            ..Default::default()
        }))
    }

    async fn rewrap(
        &self,
        _: tonic::Request<pb::RewrapRequest>,
    ) -> Result<tonic::Response<pb::RewrapResponse>, Status> {
        unimplemented()
    }

    async fn get_key(
        &self,
        _: tonic::Request<pb::GetKeyRequest>,
    ) -> Result<tonic::Response<pb::GetKeyResponse>, Status> {
        unimplemented()
    }

    async fn list_keys(
        &self,
        _: tonic::Request<pb::ListKeysRequest>,
    ) -> Result<tonic::Response<pb::ListKeysResponse>, Status> {
        unimplemented()
    }

    async fn status(
        &self,
        _: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, Status> {
        unimplemented()
    }

    async fn rotate_key(
        &self,
        _: tonic::Request<pb::RotateKeyRequest>,
    ) -> Result<tonic::Response<pb::GetKeyResponse>, Status> {
        unimplemented()
    }

    async fn set_min_decryption_version(
        &self,
        _: tonic::Request<pb::SetMinDecryptionVersionRequest>,
    ) -> Result<tonic::Response<pb::GetKeyResponse>, Status> {
        unimplemented()
    }

    async fn sign(
        &self,
        _: tonic::Request<pb::SignRequest>,
    ) -> Result<tonic::Response<pb::SignResponse>, Status> {
        unimplemented()
    }

    async fn verify(
        &self,
        _: tonic::Request<pb::VerifyRequest>,
    ) -> Result<tonic::Response<pb::VerifyResponse>, Status> {
        unimplemented()
    }

    async fn get_public_key(
        &self,
        _: tonic::Request<pb::GetPublicKeyRequest>,
    ) -> Result<tonic::Response<pb::GetPublicKeyResponse>, Status> {
        unimplemented()
    }

    async fn encrypt_asymmetric(
        &self,
        _: tonic::Request<pb::EncryptAsymmetricRequest>,
    ) -> Result<tonic::Response<pb::EncryptAsymmetricResponse>, Status> {
        unimplemented()
    }

    async fn decrypt_asymmetric(
        &self,
        _: tonic::Request<pb::DecryptAsymmetricRequest>,
    ) -> Result<tonic::Response<pb::DecryptAsymmetricResponse>, Status> {
        unimplemented()
    }
}
