//! No token value in any log line or error, at TRACE for every target
//! (reqwest's `log` records included), through renewal, refusals and errors.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Bao, transit_key};
use sealbroker_core::{Backend, BackendErrorKind};
use sealbroker_testkit::assert_no_secret;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_appears_in_no_log_line_and_no_error() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .unwrap();

    let bao = Bao::dev();
    bao.transit_key("k", &[]);
    // Renewed every ~1.3 s, so the renewal path logs several times.
    let token = bao.limited_token("k", &["-ttl=2s", "-explicit-max-ttl=1h"]);
    let file = bao.token_file(&token);
    let (client, key) = transit_key(&bao.backend_config(&file, ""), "k");

    let mut errors = Vec::new();
    let sealed = key
        .encrypt(b"0123456789abcdef0123456789abcdef", b"aad")
        .await
        .unwrap();
    key.decrypt(&sealed, b"aad").await.unwrap();
    errors.push(key.decrypt(&sealed, b"wrong").await.err().unwrap());
    tokio::time::sleep(Duration::from_secs(5)).await;

    bao.must(&["token", "revoke", &token]);
    let refused = key
        .encrypt(b"0123456789abcdef0123456789abcdef", b"aad")
        .await
        .err()
        .unwrap();
    assert_eq!(refused.kind, BackendErrorKind::PermissionDenied);
    errors.push(refused);
    tokio::time::sleep(Duration::from_secs(3)).await; // renewal now fails and logs

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("renewed the upstream token"),
        "renewal did not run:\n{logs}"
    );
    assert!(
        logs.contains("cannot renew the upstream token")
            || logs.contains("cannot look up the upstream token")
    );
    let secrets = [
        ("the token", token.as_str()),
        ("the root token", bao.root.as_str()),
    ];
    assert_no_secret(&logs, &secrets, "the logs");
    for error in &errors {
        assert_no_secret(&error.to_string(), &secrets[..1], "an error");
    }
    assert_no_secret(&format!("{client:?}"), &secrets[..1], "the client's Debug output");
}
