//! Issue 15's proof for OpenBao: a three-node raft cluster of the real
//! OpenBao 2.7.2, each node with its own broker daemon and its own
//! `state_dir`, all on one SoftHSM2 token. Under continuous seal traffic the
//! key is staged, promoted and the old version retired, all through live
//! reloads; then every node and every broker restarts in turn, one broker
//! with its disk wiped. Every node auto-unseals, the KV secret is intact,
//! and no wrap or unwrap failed anywhere.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealbroker_e2e::openbao::{BaoConfig, OpenBao};
use sealbroker_e2e::*;
use sealbroker_proto::sealbroker::v1::*;
use sealbroker_server::net::client::{self, Target};
use tokio::sync::RwLock;

const PIN: &str = "raft-e2e-pin-7730";
const SECRET: &str = "kv-secret-raft-4f1c9e";
const NODES: usize = 3;

/// One node: its OpenBao directory and ports, its broker's files.
struct Node {
    dir: PathBuf,
    port: u16,
    cluster_port: u16,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.join("sb.sock")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn audit(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }
    fn broker_config(&self) -> PathBuf {
        self.dir.join("sealbroker.toml")
    }
    /// Writes the broker's config with `extra` in the key table, as a
    /// ConfigMap update lands (beside, then renamed).
    fn write_broker_config(&self, token: &SoftHsmToken, extra: &str) {
        let text = format!(
            "profile = \"hardened\"\n[server]\nunix_socket = \"{}\"\nstate_dir = \"{}\"\nreload_poll_secs = 3600\n\
             [audit]\nfile = \"{}\"\nseal_key = \"unseal\"\ncheckpoint_file = \"{}\"\n{}\n[keys.unseal]\nbackend = \"hsm\"\nkey_label = \"unseal-key\"\n{extra}{}",
            self.socket().display(),
            self.state().display(),
            self.audit().display(),
            self.dir.join("audit-checkpoint/audit.checkpoint").display(),
            token.backend_toml("hsm"),
            allow_test_callers(),
        );
        let staging = self.dir.join("sealbroker.toml.new");
        fs::write(&staging, text).unwrap();
        fs::rename(&staging, self.broker_config()).unwrap();
    }
    fn broker_log(&self, generation: usize) -> PathBuf {
        self.dir.join(format!("broker-{generation}.log"))
    }
}

/// Seal traffic straight to every broker (as the other OpenBao nodes' seal
/// calls would be): wrap on one broker, unwrap on the next, each call held
/// under that broker's lock so a restart waits for the call in flight.
struct Traffic {
    stop: AtomicBool,
    ops: AtomicUsize,
    failures: Mutex<Vec<String>>,
    gates: Vec<RwLock<()>>,
}

async fn traffic(me: usize, sockets: Arc<Vec<PathBuf>>, t: Arc<Traffic>) {
    let next = (me + 1) % sockets.len();
    // A connection per call: a restarted broker is a new socket.
    let client = |i: usize| {
        let target = Target::Unix(sockets[i].clone());
        async move { client::connect_lazy(&target).await.unwrap() }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(30));
    for step in 0usize.. {
        if t.stop.load(Ordering::SeqCst) {
            return;
        }
        tick.tick().await;
        let plaintext = format!("traffic {me}/{step}").into_bytes();
        let wrapped = {
            let _up = t.gates[me].read().await;
            client(me)
                .await
                .wrap(WrapRequest {
                    key_name: "unseal".into(),
                    plaintext: plaintext.clone(),
                    aad: b"raft".to_vec(),
                })
                .await
        };
        let blob = match wrapped {
            Ok(reply) => reply.into_inner().blob,
            Err(e) => {
                t.fail(format!("wrap on broker {me}: {e:?}"));
                continue;
            }
        };
        let opened = {
            let _up = t.gates[next].read().await;
            client(next)
                .await
                .unwrap(UnwrapRequest {
                    blob,
                    aad: b"raft".to_vec(),
                    key_name: "unseal".into(),
                })
                .await
        };
        match opened {
            Ok(reply) if reply.get_ref().plaintext == plaintext => {
                t.ops.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => t.fail(format!("unwrap on broker {next}: other bytes")),
            Err(e) => t.fail(format!("unwrap on broker {next}: {e:?}")),
        }
    }
}

impl Traffic {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    /// Waits until `more` round trips have completed.
    async fn progress(&self, more: usize) {
        let mark = self.ops.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ops.load(Ordering::SeqCst) < mark + more {
            assert!(
                Instant::now() < deadline,
                "seal traffic stopped: {:#?}",
                self.failures.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Rotates OpenBao's root key, which re-wraps it through the seal: an
/// Encrypt on the active node's broker. Asserts success.
fn rotate_root(bao: &OpenBao, root: &str) {
    bao.must(&["write", "-f", "sys/rotate/root"], Some(root));
}

/// Every node is unsealed and names the same active node, so each serves
/// reads and forwards writes.
fn wait_cluster(nodes: &[OpenBao], root: &str) {
    for bao in nodes {
        bao.wait_unsealed(Duration::from_secs(60));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaders: Vec<Option<String>> = nodes.iter().map(|bao| bao.leader()).collect();
        if leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes do not agree on an active node: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for bao in nodes {
        bao.wait_active(root, Duration::from_secs(60));
    }
}

/// The audit trail's (operation, outcome) pairs.
fn audited(path: &Path) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["operation"].as_str().unwrap().to_owned(),
                v["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What every step of the test needs.
struct Cluster<'a> {
    nodes: &'a [Node],
    token: &'a SoftHsmToken,
    root: &'a str,
    traffic: &'a Traffic,
}

impl Cluster<'_> {
    /// Applies `extra` to every broker's key table, one broker at a time
    /// (the `round`th reload of each), rotating OpenBao's root key through
    /// each node and waiting for traffic in between.
    async fn reload_all(&self, extra: &str, round: usize, brokers: &[Daemon], baos: &[OpenBao]) {
        for ((node, broker), bao) in self.nodes.iter().zip(brokers).zip(baos) {
            node.write_broker_config(self.token, extra);
            broker.hangup();
            broker.logged("config reloaded", round).await;
            rotate_root(bao, self.root);
            self.traffic.progress(3).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_raft_cluster_rotates_retires_and_restarts_through_three_brokers() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(&dir.path().join("hsm"), "bao", "unseal-key", PIN);
    let nodes: Vec<Node> = (1..=NODES)
        .map(|i| {
            let node = Node {
                dir: dir.path().join(format!("node{i}")),
                port: free_port(),
                cluster_port: free_port(),
            };
            fs::create_dir_all(&node.dir).unwrap();
            node
        })
        .collect();
    let seal = |node: &Node| {
        format!(
            "seal \"sealbroker\" {{\n  endpoint = \"unix://{}\"\n  key_name = \"unseal\"\n}}",
            node.socket().display()
        )
    };
    let configs: Vec<BaoConfig> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let join: Vec<u16> = nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, other)| other.port)
                .collect();
            BaoConfig::write_node(
                &node.dir,
                &format!("node{}", i + 1),
                node.port,
                node.cluster_port,
                &join,
                &seal(node),
            )
        })
        .collect();

    let mut generation = 1;
    let mut brokers = Vec::new();
    for node in &nodes {
        node.write_broker_config(&token, "");
        brokers.push(Daemon::serve(&node.broker_config(), Some(&token), &node.broker_log(generation)).await);
    }

    // Node 1 initialises; 2 and 3 join it and unseal through their brokers.
    let mut baos = vec![OpenBao::start(&configs[0], &[], "bao-1.log")];
    let root = baos[0].init_auto();
    baos[0].wait_unsealed(Duration::from_secs(30));
    baos[0].wait_active(&root, Duration::from_secs(30));
    baos[0].write_secret(&root, SECRET);
    for config in &configs[1..] {
        baos.push(OpenBao::start(config, &[], "bao-1.log"));
    }
    wait_cluster(&baos, &root);
    let peers = baos[0].must(&["operator", "raft", "list-peers", "-format=json"], Some(&root));
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    assert_eq!(
        peers["data"]["config"]["servers"].as_array().unwrap().len(),
        NODES,
        "{peers}"
    );

    let t = Arc::new(Traffic {
        stop: AtomicBool::new(false),
        ops: AtomicUsize::new(0),
        failures: Mutex::new(Vec::new()),
        gates: (0..NODES).map(|_| RwLock::new(())).collect(),
    });
    let sockets = Arc::new(nodes.iter().map(Node::socket).collect::<Vec<_>>());
    let tasks: Vec<_> = (0..NODES)
        .map(|me| tokio::spawn(traffic(me, sockets.clone(), t.clone())))
        .collect();
    t.progress(10).await;

    let cluster = Cluster {
        nodes: &nodes,
        token: &token,
        root: &root,
        traffic: &t,
    };
    // Stage v2, tell every broker, and gate on each reporting it usable.
    let out = run_cli(
        &[
            "keys",
            "--socket",
            nodes[0].socket().to_str().unwrap(),
            "rotate",
            "unseal",
            "--stage",
        ],
        b"",
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    cluster
        .reload_all("newest_version = 2\n", 1, &brokers, &baos)
        .await;
    let staged = vec![(1, "primary".to_owned(), true), (2, "staged".to_owned(), true)];
    for broker in &brokers {
        let roles = broker.version_roles().await;
        assert_eq!(roles, staged, "{}", broker.logs());
    }

    // Promote, broker by broker: the root key rotations after it re-wrap
    // OpenBao's stored keys under v2, and a step-down makes the new active
    // node re-wrap its recovery key (OpenBao's UpgradeKeys: the KeyId changed).
    cluster
        .reload_all("newest_version = 2\nprimary_version = 2\n", 2, &brokers, &baos)
        .await;
    baos[0].must(&["operator", "step-down"], Some(&root));
    wait_cluster(&baos, &root);
    let upgraded = |needle: &str| baos.iter().any(|bao| bao.logs().contains(needle));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !upgraded("upgrading recovery key") {
        assert!(
            Instant::now() < deadline,
            "no node re-wrapped its recovery key after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for bao in &baos {
        rotate_root(bao, &root);
    }

    // Retire v1 everywhere.
    let retired = "newest_version = 2\nprimary_version = 2\nmin_decryption_version = 2\n";
    cluster.reload_all(retired, 3, &brokers, &baos).await;

    // Every node and every broker restarts in turn; node 1's broker loses its disk.
    generation += 1;
    for i in 0..NODES {
        let bao = baos.remove(i);
        bao.stop();
        {
            let _down = t.gates[i].write().await;
            let broker = brokers.remove(i);
            assert!(broker.terminate().success());
            // Node 1's broker staged v2 and recorded it: it loses that disk.
            if i == 0 {
                assert!(nodes[i].state().join("keyring-state.json").exists());
                fs::remove_dir_all(nodes[i].state()).unwrap();
            }
            nodes[i].write_broker_config(&token, retired);
            brokers.insert(
                i,
                Daemon::serve(
                    &nodes[i].broker_config(),
                    Some(&token),
                    &nodes[i].broker_log(generation),
                )
                .await,
            );
        }
        baos.insert(i, OpenBao::start(&configs[i], &[], "bao-2.log"));
        wait_cluster(&baos, &root);
        assert_eq!(baos[i].read_secret(&root), SECRET);
        rotate_root(&baos[i], &root);
        t.progress(5).await;
    }
    t.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }

    eprintln!(
        "MEASURED raft e2e: {} wrap/unwrap round trips across brokers",
        t.ops.load(Ordering::SeqCst)
    );
    let failures = t.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "seal traffic failed: {failures:#?}");
    for bao in &baos {
        assert_eq!(bao.read_secret(&root), SECRET);
    }
    // Not one refused or failed call in any broker's trail, and every
    // broker saw OpenBao's and the traffic's wraps and unwraps.
    for node in &nodes {
        let lines = audited(&node.audit());
        let bad: Vec<_> = lines.iter().filter(|(_, outcome)| outcome != "ok").collect();
        assert!(bad.is_empty(), "{}: {bad:#?}", node.audit().display());
        for op in ["wrap", "unwrap"] {
            assert!(
                lines.iter().any(|(o, _)| o == op),
                "no {op} in {}",
                node.audit().display()
            );
        }
    }
    for broker in brokers {
        assert!(broker.terminate().success());
    }
}
