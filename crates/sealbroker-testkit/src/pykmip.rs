//! A real PyKMIP server (`pykmip-server` from the peers venv) on a port of
//! 127.0.0.1, with mutual TLS and its database in a state dir; stopped with
//! SIGINT (as it expects) when dropped. Used by the KMIP backend's tests and
//! the end-to-end tests. A missing PyKMIP fails the test; it never skips it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server's TLS files: its certificate and key, and the CA whose
/// client certificates it accepts (PyKMIP takes the client certificate's
/// common name as the caller's identity, which owns what it creates).
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// `bin/NAME` in the peers venv (`$SEALBROKER_PEERS_VENV`, else
/// `~/.cache/sealbroker-peers/venv`); panics, saying how to install it, when absent.
pub fn peers_venv_bin(name: &str) -> PathBuf {
    let home_venv =
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sealbroker-peers/venv");
    let candidates = std::env::var_os("SEALBROKER_PEERS_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([home_venv]);
    let mut tried = Vec::new();
    for venv in candidates {
        let path = venv.join("bin").join(name);
        if path.exists() {
            return path;
        }
        tried.push(path.display().to_string());
    }
    panic!(
        "PyKMIP is not installed (looked for {}); run backends/kmip/tests/install-pykmip.sh",
        tried.join(" and ")
    );
}

/// A running `pykmip-server`, stopped with SIGINT when dropped.
pub struct PyKmip {
    child: Option<Child>,
    pub port: u16,
    state: PathBuf,
}

/// How long a SIGINT may take before the server is killed. PyKMIP joins each
/// open client session for up to 10 s on the way down.
const STOP_GRACE: Duration = Duration::from_secs(25);

impl PyKmip {
    /// Starts a server whose config, database and logs live in `state`;
    /// starting again with the same `state` and port reopens the same keys.
    pub fn start(tls: &ServerFiles, state: &Path, port: u16) -> Self {
        let server = peers_venv_bin("pykmip-server");
        std::fs::create_dir_all(state.join("policies")).unwrap();
        let conf = state.join("server.conf");
        std::fs::write(
            &conf,
            format!(
                "[server]\n\
                 hostname=127.0.0.1\n\
                 port={port}\n\
                 certificate_path={}\n\
                 key_path={}\n\
                 ca_path={}\n\
                 auth_suite=TLS1.2\n\
                 policy_path={}\n\
                 enable_tls_client_auth=True\n\
                 logging_level=DEBUG\n\
                 database_path={}\n",
                tls.cert.display(),
                tls.key.display(),
                tls.client_ca.display(),
                state.join("policies").display(),
                state.join("pykmip.db").display(),
            ),
        )
        .unwrap();
        let output = std::fs::File::create(state.join("stdout.log")).unwrap();
        let child = Command::new(&server)
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(state.join("server.log"))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let mut pykmip = PyKmip {
            child: Some(child),
            port,
            state: state.to_owned(),
        };
        pykmip.wait_until_listening();
        pykmip
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "pykmip-server exited ({status}) before listening:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pykmip-server did not listen within 30 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        let read = |file: &str| std::fs::read_to_string(self.state.join(file)).unwrap_or_default();
        let tail = |text: String| {
            text.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "--- stdout ---\n{}\n--- server.log ---\n{}",
            tail(read("stdout.log")),
            tail(read("server.log"))
        )
    }

    /// SIGINT, then SIGKILL if the server outlives `STOP_GRACE`. Returns how
    /// long the server took to exit.
    pub fn stop(&mut self) -> Duration {
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status();
        while started.elapsed() < STOP_GRACE {
            if child.try_wait().ok().flatten().is_some() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("pykmip-server ignored SIGINT for {STOP_GRACE:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
        started.elapsed()
    }
}

impl Drop for PyKmip {
    fn drop(&mut self) {
        self.stop();
    }
}
