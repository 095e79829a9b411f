//! Test harness: a real moto KMS server on a free loopback port, dummy
//! credentials in a credentials file, and a client built from them.

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealbroker_backend_awskms::{BackendConfig, KmsClient, RetryConfig, connect};
#[allow(unused_imports)]
pub use sealbroker_testkit::assert_no_secret;
use sealbroker_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const REGION: &str = "eu-west-1";
pub const ACCESS_KEY_ID: &str = "AKIAMOTOTESTEXAMPLE1";
/// Must never show up in any error message.
pub const SECRET_ACCESS_KEY: &str = "sealbroker-test-secret-DO-NOT-LEAK-0123456789";
/// What no error may show.
pub const SECRETS: &[(&str, &str)] = &[
    ("the secret access key", SECRET_ACCESS_KEY),
    ("a secret marked not to leak", "DO-NOT-LEAK"),
];

/// The moto_server binary from the peers venv; a missing moto fails the test.
fn moto_server() -> PathBuf {
    let venv = std::env::var_os("SEALBROKER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
                .join(".cache/sealbroker-peers/venv")
        });
    let path = venv.join("bin/moto_server");
    assert!(
        path.exists(),
        "moto_server not found at {}: install it with `{}/bin/pip install 'moto[server]'` \
         (or set SEALBROKER_PEERS_VENV)",
        path.display(),
        venv.display()
    );
    path
}

/// A running moto server, killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let binary = moto_server();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let mut child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default();
                panic!("moto_server exited with {status} before listening on port {port}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A credentials file with the dummy keys, and a backend config that uses it.
pub struct Creds {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
}

pub fn credentials() -> Creds {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY_ID}\naws_secret_access_key = {SECRET_ACCESS_KEY}\n"
        ),
    )
    .unwrap();
    Creds { dir, file }
}

pub fn backend_config(endpoint: &str, creds: &Creds) -> BackendConfig {
    BackendConfig {
        region: Some(REGION.into()),
        endpoint: Some(endpoint.into()),
        credentials_file: Some(creds.file.clone()),
        profile: None,
        timeout_ms: 5_000,
        retry: RetryConfig {
            max_retries: 2,
            initial_backoff_ms: 10,
            max_backoff_ms: 200,
        },
    }
}

pub async fn client(endpoint: &str, creds: &Creds) -> KmsClient {
    connect(&backend_config(endpoint, creds)).await.unwrap()
}

/// One scripted answer of a KMS stand-in.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Serves `script` in order (the last reply repeats) and counts requests.
pub async fn scripted_kms(script: Vec<Reply>) -> (String, Arc<AtomicUsize>) {
    let (endpoint, count, _) = recording_kms(script).await;
    (endpoint, count)
}

/// One request a KMS stand-in received: the operation (`Sign` of
/// `X-Amz-Target: TrentService.Sign`) and the JSON body.
#[derive(Debug, Clone)]
pub struct Request {
    pub operation: String,
    pub body: serde_json::Value,
}

/// [`scripted_kms`] that also keeps every request it received.
pub async fn recording_kms(script: Vec<Reply>) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = requests.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then the body by Content-Length.
                let (head_end, length) = loop {
                    let read = stream.read(&mut buf).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..read]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while request.len() < head_end + length {
                    let read = stream.read(&mut buf).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..read]);
                }
                let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
                let operation = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("x-amz-target"))
                    .and_then(|(_, v)| v.trim().rsplit('.').next())
                    .unwrap_or_default()
                    .to_owned();
                let body = serde_json::from_slice(&request[head_end..]).unwrap_or_default();
                recorded.lock().unwrap().push(Request { operation, body });
                let reply = &script[n.min(script.len() - 1)];
                let mut response = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n",
                    reply.status,
                    reply.body.len()
                );
                for (name, value) in &reply.headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&reply.body);
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (endpoint, count, requests)
}
