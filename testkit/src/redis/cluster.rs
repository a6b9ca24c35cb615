//! [`TestCluster`]: a real Redis Cluster of 3 masters and 3 replicas on loopback: six
//! `redis-server --cluster-enabled yes` on free ports, joined by `redis-cli --cluster create
//! --cluster-replicas 1`, ready once every node says `cluster_state:ok` and every replica is
//! in sync. Nodes are killed by PID (SIGKILL) on drop, or one by one to force a failover.
//!
//! With [`RedisOptions::tls`] the nodes speak TLS only (`--port 0`, `--tls-cluster yes`,
//! `--tls-replication yes`: clients, the cluster bus and replication), with the certificates
//! of the single TLS server; `redis-cli --cluster create` did not join TLS nodes here, so the
//! cluster is formed by hand: `CLUSTER ADDSLOTSRANGE` on the masters, `CLUSTER MEET` over the
//! bus ports, `CLUSTER REPLICATE` on the replicas.
//!
//! A node that loses its master for `cluster-node-timeout` (1 s here) is promoted by the
//! others, so a failover takes a few seconds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{RedisOptions, find_redis_server};
use crate::{free_port, skip_or_fail};

const NODES: usize = 6;
const NODE_TIMEOUT_MS: u64 = 1000;
const READY_LIMIT: Duration = Duration::from_secs(30);

struct Node {
    port: u16,
    bus: u16,
    child: Option<Child>,
}

/// Six redis-server processes forming one cluster, owned by a test.
pub struct TestCluster {
    /// `redis+cluster://[:password@]127.0.0.1:<port>,...` naming every node as a seed
    /// (`rediss+cluster://...?tls_ca_file=<dir>/ca.pem` for TLS).
    pub url: String,
    opts: RedisOptions,
    nodes: Mutex<Vec<Node>>,
    cli: PathBuf,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// `redis-cli` beside the redis-server in use, else on PATH.
fn find_redis_cli(server: &Path) -> Option<PathBuf> {
    let beside = server.with_file_name("redis-cli");
    if beside.is_file() {
        return Some(beside);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-cli"))
        .find(|p| p.is_file())
}

impl TestCluster {
    /// Starts the cluster and waits until it serves. `None` (after a skip line) when
    /// redis-server or redis-cli is missing, unless `CI=true`, where that fails `test`.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, RedisOptions::default())
    }

    /// [`TestCluster::start`] with a password (`requirepass` and `masterauth`) and/or TLS
    /// (see the module's doc); `aof` is not used.
    pub fn start_with(test: &str, opts: RedisOptions) -> Option<Self> {
        let Some(server) = find_redis_server() else {
            skip_or_fail(
                test,
                "redis-server not found (BATCHYARD_REDIS_SERVER or PATH)",
            );
            return None;
        };
        let Some(cli) = find_redis_cli(&server) else {
            skip_or_fail(test, "redis-cli not found (apt-get install redis-tools)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("batchyard-cluster-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for the cluster: {e}"));
        let mut me = Self {
            url: String::new(),
            opts,
            nodes: Mutex::new(Vec::new()),
            cli,
            dir,
        };
        if me.opts.tls && !super::tls::make_certificates(test, me.dir.path()) {
            return None;
        }
        for _ in 0..NODES {
            let node = me.spawn_node(&server);
            me.nodes.lock().unwrap().push(node);
        }
        let ports = me.ports();
        let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let auth = me
            .opts
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        me.url = match me.ca_file() {
            Some(ca) => format!(
                "rediss+cluster://{auth}{}/?tls_ca_file={}",
                seeds.join(","),
                ca.display()
            ),
            None => format!("redis+cluster://{auth}{}", seeds.join(",")),
        };
        if me.opts.tls {
            me.join_by_hand();
        } else {
            me.create(&ports);
        }
        Some(me)
    }

    /// One node on a free port (its bus port too), answering PING.
    fn spawn_node(&self, server: &Path) -> Node {
        let mut last = String::new();
        for _ in 0..5 {
            let (Some(port), Some(bus)) = (free_port(), free_port()) else {
                continue;
            };
            let dir = self.dir.path().join(port.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            // A config error (e.g. TLS options to a redis-server built without TLS) goes to
            // stderr before the log file is opened.
            let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
            let mut cmd = Command::new(server);
            if self.opts.tls {
                super::tls::listen_tls_only(&mut cmd, port, self.dir.path());
                cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            } else {
                cmd.args(["--port", &port.to_string()]);
            }
            if let Some(pw) = &self.opts.password {
                cmd.args(["--requirepass", pw, "--masterauth", pw]);
            }
            let child = cmd
                .args(["--cluster-port", &bus.to_string()])
                .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // A replica may take over however long it was cut off: the test kills masters.
                .args(["--cluster-replica-validity-factor", "0"])
                // A new replica syncs at once, not after the default 5 s wait for others.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", server.display()));
            let mut node = Node {
                port,
                bus,
                child: Some(child),
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if self.cli(port, &["PING"]).trim() == "PONG" {
                    return node;
                }
                if let Some(Ok(Some(status))) = node.child.as_mut().map(|c| c.try_wait()) {
                    let said = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                    last = format!("node on port {port} exited with {status}: {said}{log}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            kill(&mut node);
        }
        panic!("a cluster node did not start: {last}");
    }

    /// redis-cli with the cluster's password.
    fn cli_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.cli);
        if let Some(pw) = &self.opts.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        if let Some(ca) = self.ca_file() {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn create(&self, ports: &[u16]) {
        let mut cmd = self.cli_cmd();
        cmd.args(["--cluster", "create"]);
        for p in ports {
            cmd.arg(format!("127.0.0.1:{p}"));
        }
        let out = cmd
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("running redis-cli --cluster create: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_ready(READY_LIMIT);
    }

    /// The PEM file of the CA that signed the nodes' certificate, for a TLS cluster.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// What `redis-cli --cluster create --cluster-replicas 1` does, by hand: the first half
    /// of the nodes are masters over three equal slot ranges, they meet over the bus, and
    /// each of the other half replicates one master.
    fn join_by_hand(&self) {
        let (ports, buses): (Vec<u16>, Vec<u16>) = {
            let nodes = self.nodes.lock().unwrap();
            nodes.iter().map(|n| (n.port, n.bus)).unzip()
        };
        let masters = NODES / 2;
        let per = 16384 / masters;
        for (i, &port) in ports[..masters].iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == masters {
                16383
            } else {
                first + per - 1
            };
            let (first, last) = (first.to_string(), last.to_string());
            self.cli_ok(port, &["CLUSTER", "ADDSLOTSRANGE", &first, &last]);
        }
        for (&port, &bus) in ports.iter().zip(&buses).skip(1) {
            let (port, bus) = (port.to_string(), bus.to_string());
            self.cli_ok(ports[0], &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
        }
        // A replica can only follow a master it knows: wait until every node knows all.
        let started = Instant::now();
        while !ports.iter().all(|&p| {
            let nodes = self.cli(p, &["CLUSTER", "NODES"]);
            nodes.lines().count() == NODES && !nodes.contains("handshake")
        }) {
            assert!(
                started.elapsed() < READY_LIMIT,
                "the TLS nodes did not meet within {READY_LIMIT:?}: {}",
                self.cli(ports[0], &["CLUSTER", "NODES"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for (i, &port) in ports[masters..].iter().enumerate() {
            let master = self.cli(ports[i], &["CLUSTER", "MYID"]);
            self.cli_ok(port, &["CLUSTER", "REPLICATE", master.trim()]);
        }
        self.wait_ready(READY_LIMIT);
    }

    /// [`TestCluster::cli`] that must answer OK.
    fn cli_ok(&self, port: u16, args: &[&str]) {
        let out = self.cli(port, args);
        assert_eq!(out.trim(), "OK", "redis-cli -p {port} {args:?}: {out:?}");
    }

    /// Waits until every live node says `cluster_state:ok` and every live replica's link to
    /// its master is up; panics after `limit`.
    pub fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let ready = self.ports().iter().all(|&p| {
                let info = self.cli(p, &["CLUSTER", "INFO"]);
                let repl = self.cli(p, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ready {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "the cluster was not ready within {limit:?}: {}",
                self.cli(self.ports()[0], &["CLUSTER", "NODES"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ports of the nodes still running.
    pub fn ports(&self) -> Vec<u16> {
        let nodes = self.nodes.lock().unwrap();
        nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `redis-cli -p port args...`: its stdout (empty when it cannot run).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.cli_cmd()
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The port of the master that owns `key`'s slot now, and of its replicas; `None` while
    /// that master is failing and no replica has taken over yet.
    pub fn owner_of(&self, key: &str) -> Option<(u16, Vec<u16>)> {
        let port = self.ports()[0];
        let slot: u16 = self
            .cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"));
        let nodes = self.cli(port, &["CLUSTER", "NODES"]);
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let node_port = |addr: &str| -> u16 {
            addr.split(['@', ','])
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        };
        let owns = |fields: &[&str]| {
            fields.iter().skip(8).any(|range| {
                let mut ends = range.split('-').map(|s| s.parse::<u16>().ok());
                match (ends.next().flatten(), ends.next()) {
                    (Some(a), None) => a == slot,
                    (Some(a), Some(Some(b))) => (a..=b).contains(&slot),
                    _ => false,
                }
            })
        };
        let master = lines.iter().find(|f| {
            f.len() > 8 && f[2].contains("master") && !f[2].contains("fail") && owns(f)
        })?;
        let replicas = lines
            .iter()
            .filter(|f| f.len() > 3 && f[3] == master[0] && !f[2].contains("fail"))
            .map(|f| node_port(f[1]))
            .collect();
        Some((node_port(master[1]), replicas))
    }

    /// SIGKILLs the node on `port` by its PID, as a crash would.
    pub fn kill_node(&self, port: u16) {
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(node) = nodes.iter_mut().find(|n| n.port == port) {
            kill(node);
        }
    }

    /// The last lines of each node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let nodes = self.nodes.lock().unwrap();
        nodes
            .iter()
            .map(|n| {
                let log = self.dir.path().join(n.port.to_string()).join("redis.log");
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- node {}\n{}",
                    n.port,
                    lines[lines.len().saturating_sub(8)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn kill(node: &mut Node) {
    if let Some(mut child) = node.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.iter_mut().for_each(kill);
        }
    }
}
