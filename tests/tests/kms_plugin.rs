//! The OpenBao KMS plugin door driven as OpenBao drives it, without OpenBao:
//! `sealbroker kms-plugin` launched with go-plugin's environment (the magic
//! cookie, the protocol versions, and `PLUGIN_CLIENT_CERT`, the AutoMTLS
//! client certificate), its handshake line read from stdout, and
//! go-kms-wrapping's `pb.Wrapper` spoken over mutual TLS on the unix socket
//! that line names. OpenBao always presents the right certificate and never
//! tampers with a blob, so those refusals are tried here, through the
//! plugin's real gRPC.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hyper_util::rt::TokioIo;
use prost::Message;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sealbroker_e2e::*;
use sealbroker_proto::pb::wrapper_client::WrapperClient;
use sealbroker_proto::{pb, wrapping};
use sealbroker_server::doors::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use sealbroker_testkit::pki::{IssuedCert, Leaf, TestCa};
use tonic::Code;
use tonic::transport::Channel;

/// A running `sealbroker kms-plugin`; killed (by its own handle) on drop.
struct Plugin {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
    /// The server certificate the handshake line carries, as OpenBao pins it.
    server_cert: CertificateDer<'static>,
}

impl Plugin {
    /// Launches the plugin as OpenBao would, expecting `openbao` as its
    /// client, and reads the handshake line (20 s at most).
    fn launch(dir: &Path, openbao: &IssuedCert) -> Plugin {
        let log = dir.join("plugin.log");
        let mut child = Command::new(sealbroker_bin())
            .arg("kms-plugin")
            .env_clear()
            .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
            .env("PLUGIN_PROTOCOL_VERSIONS", "1")
            .env("PLUGIN_CLIENT_CERT", openbao.cert_pem())
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no handshake line within 20 s:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let fields: Vec<&str> = line.trim_end().split('|').collect();
        assert!(
            fields.len() == 6 && fields[..3] == ["1", "1", "unix"] && fields[4] == "grpc",
            "not a go-plugin handshake: {line:?}\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        let der = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(fields[5])
            .unwrap();
        Plugin {
            child,
            log,
            socket: PathBuf::from(fields[3]),
            server_cert: CertificateDer::from(der),
        }
    }

    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One TLS connection to the plugin socket, presenting `client` (or no
    /// certificate), then one read: a plugin that accepted the client speaks
    /// first (HTTP/2 SETTINGS), one that refused it sends an alert or hangs
    /// up. `Ok(bytes read)` or what ended the connection.
    async fn tls_probe(&self, client: Option<&IssuedCert>) -> Result<usize, String> {
        use tokio::io::AsyncReadExt;
        let connector = tokio_rustls::TlsConnector::from(self.client_config(client));
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), stream)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Err(_) => Err("no byte and no alert within 10 s".into()),
            Ok(Ok(0)) => Err("the plugin hung up".into()),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(format!("read: {e}")),
        }
    }

    /// A TLS client config trusting the handshake's certificate, presenting
    /// `client` (or no certificate), offering h2 as go-plugin does.
    fn client_config(&self, client: Option<&IssuedCert>) -> Arc<rustls::ClientConfig> {
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServer(self.server_cert.clone())));
        let mut config = match client {
            Some(cert) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.cert_pem().as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A gRPC channel over the plugin socket, as [`Self::client_config`].
    async fn channel(&self, client: Option<&IssuedCert>) -> Result<Channel, tonic::transport::Error> {
        let connector = tokio_rustls::TlsConnector::from(self.client_config(client));
        let socket = self.socket.clone();
        tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let (connector, socket) = (connector.clone(), socket.clone());
                async move {
                    let stream = tokio::net::UnixStream::connect(&socket).await?;
                    let tls = connector
                        .connect(ServerName::try_from("localhost").unwrap(), stream)
                        .await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Trusts exactly one server certificate, as OpenBao trusts the one in the
/// handshake line.
#[derive(Debug)]
struct PinnedServer(CertificateDer<'static>);

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// OpenBao's AutoMTLS certificate, another from the same CA (as a second
/// OpenBao on the host would have), and one from another CA.
fn certificates() -> (IssuedCert, IssuedCert, IssuedCert) {
    let ca = TestCa::new("openbao automtls");
    let leaf = Leaf::client("localhost").names(&["localhost"]);
    let rogue = TestCa::new("rogue");
    (ca.issue(&leaf), ca.issue(&leaf), rogue.issue(&leaf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_refuses_a_client_without_openbaos_exact_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (openbao, sibling, rogue) = certificates();
    let mut plugin = Plugin::launch(dir.path(), &openbao);

    // Each refusal happens in the TLS handshake (the pinning verifier): the
    // client gets an alert, never a byte of HTTP/2, and the plugin logs why.
    let refusals = [
        (
            "a certificate from OpenBao's CA that is not OpenBao's",
            Some(&sibling),
            "invalid peer certificate: ApplicationVerificationFailure",
        ),
        (
            "a certificate from another CA",
            Some(&rogue),
            "invalid peer certificate: ApplicationVerificationFailure",
        ),
        ("no certificate", None, "peer sent no certificates"),
    ];
    for (i, (what, cert, reason)) in refusals.iter().enumerate() {
        let outcome = plugin.tls_probe(*cert).await;
        assert!(outcome.is_err(), "{what}: the plugin spoke to it ({outcome:?})");
        wait_until_async(
            &format!("the plugin to log refusal {}", i + 1),
            Duration::from_secs(10),
            || plugin.logs().matches("TLS handshake refused").count() > i,
        )
        .await;
        let logs = plugin.logs();
        let logged: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("TLS handshake refused"))
            .collect();
        assert_eq!(logged.len(), i + 1, "one refusal per connection:\n{logs}");
        assert!(logged[i].ends_with(reason), "{what}: {}", logged[i]);
    }
    // OpenBao's own certificate gets through, to the same process, whose
    // Wrapper service answers (NOT_FOUND for an instance never configured).
    assert!(plugin.tls_probe(Some(&openbao)).await.is_ok_and(|n| n > 0));
    let mut client = WrapperClient::new(plugin.channel(Some(&openbao)).await.unwrap());
    let status = client
        .r#type(pb::TypeRequest {
            wrapper_id: "never-configured".into(),
        })
        .await
        .expect_err("no such instance");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        plugin.child.try_wait().unwrap().is_none(),
        "the plugin survived the refusals"
    );
    assert_eq!(
        plugin.logs().matches("TLS handshake refused").count(),
        3,
        "OpenBao's certificate was not refused"
    );
}

/// A standalone (config_file) plugin on a software key: `unseal` granted to
/// this test's uid, `locked` to uid 4242 only.
fn plugin_config(dir: &Path) -> PathBuf {
    let path = dir.join("plugin.toml");
    fs::write(
        &path,
        format!(
            "profile = \"development\"\n[backends.soft]\ntype = \"software\"\n\
             [keys.unseal]\nbackend = \"soft\"\nkey_file = \"{}\"\ngenerate = true\nallow = {{ any = [\"uid:{}\"] }}\n\
             [keys.locked]\nbackend = \"soft\"\nkey_file = \"{}\"\ngenerate = true\nallow = {{ any = [\"uid:4242\"] }}\n{}",
            dir.join("unseal.key").display(),
            current_uid(),
            dir.join("locked.key").display(),
            audit_toml(dir, "unseal"),
        ),
    )
    .unwrap();
    path
}

async fn set_config(client: &mut WrapperClient<Channel>, config: &Path, key: &str) -> String {
    client
        .set_config(pb::SetConfigRequest {
            options: Some(wrapping::RpcOptions {
                with_config_map: [
                    ("config_file".to_owned(), config.display().to_string()),
                    ("key_name".to_owned(), key.to_owned()),
                ]
                .into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .wrapper_id
}

fn aad(aad: &[u8]) -> Option<wrapping::RpcOptions> {
    Some(wrapping::RpcOptions {
        with_aad: aad.to_vec(),
        ..Default::default()
    })
}

async fn decrypt(
    client: &mut WrapperClient<Channel>,
    id: &str,
    ciphertext: Vec<u8>,
    with_aad: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    client
        .decrypt(pb::DecryptRequest {
            wrapper_id: id.to_owned(),
            ciphertext: Some(wrapping::BlobInfo {
                ciphertext,
                ..Default::default()
            }),
            options: aad(with_aad),
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

/// What OpenBao shows for a refused call: the bare message of an UNKNOWN
/// status, which must carry the broker's code.
fn assert_refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: &str, needle: &str) {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(
        status.message().starts_with(&format!("sealbroker: {code}: ")) && status.message().contains(needle),
        "{:?} should read `sealbroker: {code}: …{needle}…`",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_grpc_refuses_wrong_aad_tampering_and_callers_the_acl_excludes() {
    let dir = tempfile::tempdir().unwrap();
    let (openbao, _, _) = certificates();
    let config = plugin_config(dir.path());
    let plugin = Plugin::launch(dir.path(), &openbao);
    let mut client = WrapperClient::new(plugin.channel(Some(&openbao)).await.unwrap());

    let id = set_config(&mut client, &config, "unseal").await;
    const ROOT_KEY: &[u8] = b"openbao root key, 32 bytes long!";
    let sealed = client
        .encrypt(pb::EncryptRequest {
            wrapper_id: id.clone(),
            plaintext: ROOT_KEY.to_vec(),
            options: aad(b"core/hsm/barrier-unseal-keys"),
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext
        .unwrap()
        .ciphertext;
    assert_eq!(
        decrypt(&mut client, &id, sealed.clone(), b"core/hsm/barrier-unseal-keys")
            .await
            .unwrap(),
        ROOT_KEY
    );

    // Another path's AAD.
    assert_refused(
        decrypt(&mut client, &id, sealed.clone(), b"core/other").await,
        "FailedPrecondition",
        "does not authenticate",
    );
    // One bit of the sealed payload flipped, the wrapped DEK intact.
    let mut blob = sealbroker_core::WrappedBlob::decode(sealed.as_slice()).unwrap();
    assert!(!blob.ciphertext.is_empty() && !blob.deks.is_empty());
    blob.ciphertext[0] ^= 0x01;
    assert_refused(
        decrypt(
            &mut client,
            &id,
            blob.encode_to_vec(),
            b"core/hsm/barrier-unseal-keys",
        )
        .await,
        "FailedPrecondition",
        "does not authenticate",
    );
    // A key whose ACL grants this uid nothing.
    let locked = set_config(&mut client, &config, "locked").await;
    assert_refused(
        client
            .encrypt(pb::EncryptRequest {
                wrapper_id: locked,
                plaintext: ROOT_KEY.to_vec(),
                options: None,
            })
            .await,
        "PermissionDenied",
        "locked",
    );

    // Every call was audited as door kms-plugin, OpenBao's uid the caller.
    let lines: Vec<serde_json::Value> = fs::read_to_string(audit_log(dir.path()))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let seen: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["door"].as_str().unwrap(),
                l["operation"].as_str().unwrap(),
                l["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("kms-plugin", "wrap", "ok"),
            ("kms-plugin", "unwrap", "ok"),
            ("kms-plugin", "unwrap", "FailedPrecondition"),
            ("kms-plugin", "unwrap", "FailedPrecondition"),
            ("kms-plugin", "wrap", "PermissionDenied"),
        ],
        "{lines:#?}"
    );
    let caller = format!("unix:uid={},", current_uid());
    assert!(
        lines
            .iter()
            .all(|l| l["caller"].as_str().unwrap().starts_with(&caller)),
        "{lines:#?}"
    );
    let logs = plugin.logs();
    assert_no_secret(
        &logs,
        &[("the root key", std::str::from_utf8(ROOT_KEY).unwrap())],
        "the plugin log",
    );
}
