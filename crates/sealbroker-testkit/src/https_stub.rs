//! An HTTPS stub server: the part of a cloud-API stand-in that is not the
//! API. It binds 127.0.0.1 on a free port, speaks TLS with a config from
//! [`pki`](crate::pki), reads HTTP/1.1 requests (keep-alive, bodies by
//! `Content-Length`) and writes whatever the stand-in's handler answers.
//! Dropping it stops the server and closes every connection.
//!
//! A stand-in keeps only its wire protocol: a handler from
//! [`StubRequest`] to [`StubResponse`].
//!
//! ```no_run
//! # async fn f(tls: std::sync::Arc<rustls::ServerConfig>) {
//! use sealbroker_testkit::https_stub::{HttpsStub, StubResponse};
//! let stub = HttpsStub::start(tls, |request| {
//!     StubResponse::json(200, &serde_json::json!({"path": request.path}))
//! })
//! .await;
//! let endpoint = format!("https://localhost:{}", stub.port());
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// One HTTP/1.1 request as the stub read it.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    /// The target's path, without the query.
    pub path: String,
    /// What followed `?` in the target ("" when nothing did).
    pub query: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The name the client asked for in TLS SNI, so one stub can stand in
    /// for two hosts (a vault and its token endpoint).
    pub server_name: Option<String>,
}

impl StubRequest {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// What the stub writes back.
#[derive(Debug, Clone)]
pub struct StubResponse {
    pub status: u16,
    pub content_type: String,
    /// Sent after `content-type` and `content-length`, in this order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl StubResponse {
    /// `status` with `body` as `application/json`.
    pub fn json(status: u16, body: &serde_json::Value) -> StubResponse {
        StubResponse {
            status,
            content_type: "application/json".to_owned(),
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    /// Adds these headers (e.g. `Retry-After`, `WWW-Authenticate`).
    pub fn with_headers<N: Into<String>, V: Into<String>>(
        mut self,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> StubResponse {
        self.headers
            .extend(headers.into_iter().map(|(n, v)| (n.into(), v.into())));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} Stub\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A listener bound on 127.0.0.1, not yet serving: for a stand-in whose
/// answers must name its own port.
pub struct StubListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl StubListener {
    /// Binds a free port on 127.0.0.1.
    pub async fn bind() -> StubListener {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("cannot bind 127.0.0.1 for the HTTPS stub");
        let addr = listener.local_addr().expect("a bound listener has an address");
        StubListener { listener, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves TLS with `tls` on this listener, answering every request with
    /// `handler`, until the returned stub is dropped.
    pub fn serve<H>(self, tls: Arc<rustls::ServerConfig>, handler: H) -> HttpsStub
    where
        H: Fn(&StubRequest) -> StubResponse + Send + Sync + 'static,
    {
        let acceptor = TlsAcceptor::from(tls);
        let handler = Arc::new(handler);
        let listener = self.listener;
        let task = tokio::spawn(async move {
            // Owned here, so aborting this task closes every connection too.
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(serve_connection(acceptor.clone(), tcp, handler.clone()));
            }
        });
        HttpsStub {
            addr: self.addr,
            task,
        }
    }
}

/// A running HTTPS stub; stopped on drop.
pub struct HttpsStub {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpsStub {
    /// Binds a free port on 127.0.0.1 and serves `handler` there.
    pub async fn start<H>(tls: Arc<rustls::ServerConfig>, handler: H) -> HttpsStub
    where
        H: Fn(&StubRequest) -> StubResponse + Send + Sync + 'static,
    {
        StubListener::bind().await.serve(tls, handler)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for HttpsStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection<H>(acceptor: TlsAcceptor, tcp: TcpStream, handler: Arc<H>)
where
    H: Fn(&StubRequest) -> StubResponse,
{
    let Ok(mut stream) = acceptor.accept(tcp).await else {
        return;
    };
    let server_name = stream.get_ref().1.server_name().map(str::to_owned);
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buffer, &server_name).await {
        let response = handler(&request);
        if stream.write_all(&response.to_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 request; `None` at the end of the stream.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    server_name: &Option<String>,
) -> Option<StubRequest> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.lines();
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + 4 + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end + 4..head_end + 4 + length].to_vec();
    buffer.drain(..head_end + 4 + length);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Some(StubRequest {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body,
        server_name: server_name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_pipelined_requests_with_bodies_and_queries() {
        let bytes =
            b"POST /a?x=1 HTTP/1.1\r\nContent-Length: 3\r\nX-Thing: v\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
        let mut stream: &[u8] = bytes;
        let mut buffer = Vec::new();
        let name = Some("host.test".to_owned());
        let first = read_request(&mut stream, &mut buffer, &name).await.unwrap();
        assert_eq!(
            (first.method.as_str(), first.path.as_str(), first.query.as_str()),
            ("POST", "/a", "x=1")
        );
        assert_eq!(first.body, b"abc");
        assert_eq!(first.header("X-THING"), Some("v"));
        assert_eq!(first.server_name.as_deref(), Some("host.test"));
        let second = read_request(&mut stream, &mut buffer, &name).await.unwrap();
        assert_eq!((second.path.as_str(), second.body.len()), ("/b", 0));
        assert!(read_request(&mut stream, &mut buffer, &name).await.is_none());
    }

    #[tokio::test]
    async fn serves_over_tls_and_closes_its_connections_when_dropped() {
        use crate::pki::{Leaf, TestCa};
        let ca = TestCa::new("kit CA");
        let tls = ca.issue(&Leaf::server(&["localhost"])).server_config();
        let stub = HttpsStub::start(tls, |request| {
            StubResponse::json(200, &serde_json::json!({"sni": request.server_name}))
        })
        .await;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        let client =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = TcpStream::connect(stub.addr()).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tls.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200 Stub\r\n"), "{answer}");
        assert!(answer.ends_with("{\"sni\":\"localhost\"}"), "{answer}");

        drop(stub);
        // The connection task goes with the server: the client reads the end.
        let mut rest = [0u8; 16];
        assert!(matches!(tls.read(&mut rest).await, Ok(0) | Err(_)));
    }

    #[test]
    fn a_response_puts_its_headers_after_the_framing() {
        let response =
            StubResponse::json(429, &serde_json::json!({"e": 1})).with_headers([("Retry-After", "1")]);
        assert_eq!(
            String::from_utf8(response.to_bytes()).unwrap(),
            "HTTP/1.1 429 Stub\r\ncontent-type: application/json\r\ncontent-length: 7\r\nRetry-After: 1\r\n\r\n{\"e\":1}"
        );
    }
}
