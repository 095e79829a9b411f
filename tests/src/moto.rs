//! moto's AWS KMS (PyPI `moto[server]`, installed by tests/peers/install.sh)
//! on a free loopback port, for the end-to-end tests that reach AWS KMS.

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, peers_python};

/// `moto_server` on 127.0.0.1 and a free port, its log in `dir/moto.log`;
/// killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts it and waits until it listens (at most 60 s).
    pub fn start(dir: &Path) -> Moto {
        let moto = peers_python().with_file_name("moto_server");
        let port = free_port();
        let log = fs::File::create(dir.join("moto.log")).unwrap();
        let mut child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", moto.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "moto_server exited with {status}:\n{}",
                    fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
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
