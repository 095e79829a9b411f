//! Live reload of a running daemon (issue 15): SIGHUP and changed files
//! apply a renewed certificate, a revoked transit token and new keys
//! without a restart; a broken config leaves the old one serving.

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use sealbroker_e2e::*;
use sealbroker_proto::sealbroker::v1::seal_service_client::SealServiceClient;
use sealbroker_proto::sealbroker::v1::*;
use tonic::transport::Channel;

const OPENBAO_TOKEN: &str = "s.reload-openbao-61c2e9";
const OPS_TOKEN: &str = "s.reload-ops-0d7f31Kx4Nw8Bq";

/// The daemon's config, checking its files every `poll` seconds, with
/// `ops` listed or not, and `extra` appended.
fn write_config(dir: &Path, poll: u64, tcp: u16, transit: u16, ops: bool, extra: &str) {
    let d = dir.display();
    let ops = if ops {
        format!(
            "[[server.transit.tokens]]\nidentity = \"ops\"\ntoken_file = \"{d}/ops.token\"\nkeys = [\"unseal\"]\n"
        )
    } else {
        String::new()
    };
    let text = format!(
        "profile = \"development\"\n[server]\nunix_socket = \"{d}/sb.sock\"\nreload_poll_secs = {poll}\n\
         [server.tcp]\nlisten = \"127.0.0.1:{tcp}\"\n[server.tcp.tls]\ncert_file = \"{d}/live/server.pem\"\n\
         key_file = \"{d}/live/server.key\"\nclient_ca_file = \"{d}/live/ca.pem\"\n\
         [server.transit]\nlisten = \"127.0.0.1:{transit}\"\nplaintext = true\n\
         [[server.transit.tokens]]\nidentity = \"openbao\"\ntoken_file = \"{d}/openbao.token\"\nkeys = [\"unseal\"]\n{ops}\
         [audit]\nfile = \"{d}/audit.log\"\n\
         [backends.soft]\ntype = \"software\"\n\
         [keys.unseal]\nbackend = \"soft\"\nkey_file = \"{d}/unseal.key\"\ngenerate = true\n{extra}"
    );
    // Written beside and renamed, as a ConfigMap update lands.
    let staging = dir.join("sealbroker.toml.new");
    fs::write(&staging, text).unwrap();
    fs::rename(&staging, dir.join("sealbroker.toml")).unwrap();
}

/// Points the daemon's live TLS directory at `pki`'s files in one step, as
/// a Kubernetes Secret volume swaps its `..data` link: a reload never sees
/// a new certificate beside an old key.
fn install(pki: &Pki, dir: &Path) {
    let target = pki.ca.parent().unwrap();
    let staging = dir.join("live.new");
    let _ = fs::remove_file(&staging);
    std::os::unix::fs::symlink(target, &staging).unwrap();
    fs::rename(&staging, dir.join("live")).unwrap();
}

/// A transit encrypt with `token`; the HTTP status.
fn transit_encrypt(addr: SocketAddr, token: &str) -> u16 {
    let body = r#"{"plaintext":"aGVsbG8="}"#;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/transit/encrypt/unseal HTTP/1.1\r\nHost: localhost\r\nX-Vault-Token: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn wrap(c: &mut SealServiceClient<Channel>, key: &str) -> Result<u32, tonic::Status> {
    c.wrap(WrapRequest {
        key_name: key.into(),
        plaintext: b"reload".to_vec(),
        aad: Vec::new(),
    })
    .await
    .map(|r| r.into_inner().key_version)
}

async fn config_error(c: &mut SealServiceClient<Channel>) -> String {
    c.status(StatusRequest { deep: false })
        .await
        .unwrap()
        .into_inner()
        .config_error
}

struct Setup {
    dir: tempfile::TempDir,
    old_pki: Pki,
    new_pki: Pki,
    tcp: u16,
    transit: u16,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (old_pki, new_pki) = (Pki::create(&d.join("pki-old")), Pki::create(&d.join("pki-new")));
        install(&old_pki, d);
        for (file, token) in [("openbao.token", OPENBAO_TOKEN), ("ops.token", OPS_TOKEN)] {
            sweep::secret(token);
            fs::write(d.join(file), token).unwrap();
        }
        Setup {
            dir,
            old_pki,
            new_pki,
            tcp: free_port(),
            transit: free_port(),
        }
    }

    fn transit_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.transit).into()
    }

    fn write(&self, poll: u64, ops: bool, extra: &str) {
        write_config(self.dir.path(), poll, self.tcp, self.transit, ops, extra);
    }

    async fn serve(&self) -> Daemon {
        let d = self.dir.path();
        Daemon::serve(&d.join("sealbroker.toml"), None, &d.join("daemon.log")).await
    }

    async fn tls_client(&self, pki: &Pki) -> Result<SealServiceClient<Channel>, tonic::transport::Error> {
        let channel = tls_channel(self.tcp, &pki.ca, Some((&pki.client_cert, &pki.client_key))).await?;
        Ok(SealServiceClient::new(channel))
    }

    /// The operations of the audit trail's reload lines: ok or refused.
    fn audited_reloads(&self) -> Vec<&'static str> {
        let audit = fs::read_to_string(self.dir.path().join("audit.log")).unwrap();
        audit
            .lines()
            .filter(|l| l.contains("\"operation\":\"reload\""))
            .map(|l| {
                if l.contains("\"outcome\":\"ok\"") {
                    "ok"
                } else {
                    "refused"
                }
            })
            .collect()
    }
}

/// File changes alone (no signal): a renewed certificate, a broken config
/// (refused once, not retried while unchanged), and its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_reload_a_renewed_certificate_and_a_broken_config_leaves_the_old_one_serving() {
    let setup = Setup::new();
    let d = setup.dir.path();
    setup.write(1, true, "");
    let daemon = setup.serve().await;
    let mut unix = daemon.unix_client().await;
    let mut before = setup.tls_client(&setup.old_pki).await.unwrap();
    assert_eq!(wrap(&mut before, "unseal").await.unwrap(), 1);

    // cert-manager renews the certificate (here under a new CA, so the test
    // can tell which one is served).
    install(&setup.new_pki, d);
    daemon.logged("config reloaded", 1).await;
    let mut after = setup
        .tls_client(&setup.new_pki)
        .await
        .expect("new connections get the renewed certificate");
    assert_eq!(wrap(&mut after, "unseal").await.unwrap(), 1);
    assert!(
        setup.tls_client(&setup.old_pki).await.is_err(),
        "a new connection still got the old certificate"
    );
    // The connection opened before the renewal keeps working.
    assert_eq!(wrap(&mut before, "unseal").await.unwrap(), 1);

    // A broken config: refused, said why, and the old one keeps serving.
    setup.write(1, true, "[keys.added]\nbackend = \"nope\"\n");
    daemon.logged("config reload refused", 1).await;
    let why = config_error(&mut unix).await;
    assert!(why.contains("keys.added.backend"), "{why}");
    assert_eq!(wrap(&mut unix, "unseal").await.unwrap(), 1);
    assert_eq!(wrap(&mut after, "unseal").await.unwrap(), 1);
    assert_eq!(transit_encrypt(setup.transit_addr(), OPS_TOKEN), 200);

    // Fixed, it applies; the broken one was tried once only.
    setup.write(1, true, "");
    daemon.logged("config reloaded", 2).await;
    assert_eq!(config_error(&mut unix).await, "");
    assert_eq!(daemon.logs().matches("config reload refused").count(), 1);
    assert!(daemon.terminate().success());
    assert_eq!(setup.audited_reloads(), ["ok", "refused", "ok"]);
}

/// SIGHUP (files are not polled within the test): a revoked transit token
/// is refused from then on, and a new key serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_revokes_a_transit_token_and_adds_a_key() {
    let setup = Setup::new();
    let d = setup.dir.path();
    setup.write(3600, true, "");
    let daemon = setup.serve().await;
    let mut unix = daemon.unix_client().await;
    assert_eq!(transit_encrypt(setup.transit_addr(), OPS_TOKEN), 200);
    assert!(wrap(&mut unix, "added").await.is_err(), "no key `added` yet");

    let added = format!(
        "[keys.added]\nbackend = \"soft\"\nkey_file = \"{}\"\ngenerate = true\n",
        d.join("added.key").display()
    );
    setup.write(3600, false, &added);
    daemon.hangup();
    daemon.logged("config reloaded", 1).await;
    assert_eq!(
        transit_encrypt(setup.transit_addr(), OPS_TOKEN),
        403,
        "a revoked token was accepted"
    );
    assert_eq!(transit_encrypt(setup.transit_addr(), OPENBAO_TOKEN), 200);
    assert_eq!(wrap(&mut unix, "added").await.unwrap(), 1);
    assert_eq!(config_error(&mut unix).await, "");
    assert!(daemon.terminate().success());
    assert_eq!(setup.audited_reloads(), ["ok"]);
}
