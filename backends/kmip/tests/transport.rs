//! The transport against a scripted fake KMIP server (rustls, 127.0.0.1):
//! oversized, truncated, undecodable and unexpected answers, silence and
//! refused handshakes each give a clear error, never a panic, a hang or a
//! large allocation.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Pki;
use sealbroker_backend_kmip::ttlv::{Item, Tag, Value};
use sealbroker_backend_kmip::{BackendConfig, KmipPool};
use sealbroker_core::{BackendError, BackendErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the fake server does with the next request.
enum Answer {
    /// Write these bytes and keep the connection.
    Bytes(Vec<u8>),
    /// Write these bytes and close the connection.
    BytesThenClose(Vec<u8>),
    /// Never answer.
    Silence,
}

/// Starts a TLS server on 127.0.0.1 that reads whole requests and answers
/// each with the next scripted answer, and returns its endpoint.
async fn fake_server(pki: &Pki, script: Vec<Answer>) -> String {
    let acceptor = TlsAcceptor::from(pki.server_tls());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                loop {
                    let mut header = [0u8; 8];
                    if tls.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
                    let mut body = vec![0u8; len];
                    if tls.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let answer = script.lock().unwrap().pop_front();
                    match answer {
                        Some(Answer::Bytes(bytes)) => {
                            let _ = tls.write_all(&bytes).await;
                        }
                        Some(Answer::BytesThenClose(bytes)) => {
                            let _ = tls.write_all(&bytes).await;
                            let _ = tls.shutdown().await;
                            return;
                        }
                        Some(Answer::Silence) => std::future::pending::<()>().await,
                        None => return,
                    }
                }
            });
        }
    });
    endpoint
}

fn tag(value: u32) -> Tag {
    Tag::new(value)
}

/// A successful response to `operation` (an Operation enumeration value).
fn response(operation: u32, payload: Vec<Item>) -> Vec<u8> {
    let version = Item::structure(
        tag(0x420069),
        vec![Item::integer(tag(0x42006A), 1), Item::integer(tag(0x42006B), 4)],
    );
    Item::structure(
        tag(0x42007B),
        vec![
            Item::structure(
                tag(0x42007A),
                vec![
                    version.clone(),
                    Item::new(tag(0x420092), Value::DateTime(1_700_000_000)),
                    Item::integer(tag(0x42000D), 1),
                ],
            ),
            Item::structure(
                tag(0x42000F),
                vec![
                    Item::enumeration(tag(0x42005C), operation),
                    Item::enumeration(tag(0x42007F), 0),
                    Item::structure(tag(0x42007C), payload),
                ],
            ),
        ],
    )
    .encode()
    .unwrap()
    .to_vec()
}

/// DiscoverVersions answered with KMIP 1.4.
fn negotiated() -> Answer {
    let version = Item::structure(
        tag(0x420069),
        vec![Item::integer(tag(0x42006A), 1), Item::integer(tag(0x42006B), 4)],
    );
    Answer::Bytes(response(0x1E, vec![version]))
}

const LOCATE: u32 = 0x08;

async fn locate_against(
    script: Vec<Answer>,
    timeout_secs: u64,
) -> (Result<Vec<String>, BackendError>, KmipPool) {
    let pki = Pki::new();
    let endpoint = fake_server(&pki, script).await;
    let config = BackendConfig {
        timeout_secs,
        ..pki.backend(&endpoint, "client")
    };
    let pool = config.pool().unwrap();
    (pool.locate("k").await, pool)
}

#[tokio::test]
async fn well_formed_answers_work() {
    let found = response(LOCATE, vec![Item::text(tag(0x420094), "7")]);
    let (result, pool) = locate_against(vec![negotiated(), Answer::Bytes(found)], 5).await;
    assert_eq!(result.unwrap(), vec!["7"]);
    assert_eq!(
        pool.protocol_version().map(|v| v.to_string()).as_deref(),
        Some("1.4")
    );
}

#[tokio::test]
async fn oversized_answer_is_refused_before_it_is_read() {
    // A header announcing a 4 GiB message, and nothing after it.
    let header = vec![0x42, 0x00, 0x7B, 0x01, 0xFF, 0xFF, 0xFF, 0xF8];
    let (result, _) = locate_against(vec![negotiated(), Answer::Bytes(header)], 5).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Internal, "{err}");
    assert!(err.message.contains("malformed Locate response"), "{err}");
    assert!(
        err.message.contains("exceeds the limit of 1048576 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn answer_cut_short_is_a_lost_connection() {
    let mut truncated = response(LOCATE, vec![Item::text(tag(0x420094), "7")]);
    truncated.truncate(40);
    let (result, _) = locate_against(vec![negotiated(), Answer::BytesThenClose(truncated)], 5).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(
        err.message
            .contains("lost the connection to KMIP server 127.0.0.1:"),
        "{err}"
    );
    assert!(err.message.contains("during Locate"), "{err}");
}

#[tokio::test]
async fn undecodable_answer_names_the_offset() {
    // A structure holding an item of unknown type 0x0F.
    let garbage = vec![
        0x42, 0x00, 0x7B, 0x01, 0, 0, 0, 8, //
        0x42, 0x00, 0x7A, 0x0F, 0, 0, 0, 0,
    ];
    let (result, _) = locate_against(vec![negotiated(), Answer::Bytes(garbage)], 5).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Internal, "{err}");
    assert!(err.message.contains("undecodable TTLV: item at byte 8"), "{err}");
    assert!(err.message.contains("unknown type 0x0F"), "{err}");
}

#[tokio::test]
async fn answer_to_another_operation_is_refused() {
    let wrong = response(0x20, vec![]);
    let (result, _) = locate_against(vec![negotiated(), Answer::Bytes(wrong)], 5).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Internal, "{err}");
    assert!(
        err.message
            .contains("answered operation 0x20 to a Locate request"),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_during_negotiation_is_a_clear_error() {
    let not_a_response = Item::structure(tag(0x420078), vec![]).encode().unwrap().to_vec();
    let (result, pool) = locate_against(vec![Answer::Bytes(not_a_response)], 5).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Internal, "{err}");
    assert!(err.message.contains("expected a Response Message"), "{err}");
    assert_eq!(pool.protocol_version(), None, "nothing was negotiated");
}

#[tokio::test]
async fn silent_server_times_out() {
    let started = Instant::now();
    let (result, _) = locate_against(vec![negotiated(), Answer::Silence], 1).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Timeout, "{err}");
    assert!(err.message.contains("did not finish within 1s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn server_that_is_not_tls_is_a_handshake_error() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let err = pki
        .backend(&endpoint, "client")
        .pool()
        .unwrap()
        .locate("k")
        .await
        .unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("TLS handshake with KMIP server"), "{err}");
}

#[tokio::test]
async fn dead_pooled_connection_is_replaced_transparently() {
    let found = response(LOCATE, vec![Item::text(tag(0x420094), "7")]);
    let (first, pool) = locate_against(
        vec![
            negotiated(),
            // The answer, then the server drops the (now idle) connection.
            Answer::BytesThenClose(found.clone()),
            Answer::Bytes(found),
        ],
        5,
    )
    .await;
    assert_eq!(first.unwrap(), vec!["7"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.locate("k").await.unwrap(), vec!["7"]);
    assert_eq!(pool.connections_opened(), 2);
}
