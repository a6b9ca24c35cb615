//! [`TestRedis`]: a throwaway redis-server per test, on a free 127.0.0.1 port in a temp dir,
//! killed by its PID (SIGKILL) on drop.
//!
//! - `tls`: the CA and server certificate for a TLS-only server ([`RedisOptions::tls`]);
//! - `cluster`: [`TestCluster`], a 3-master, 3-replica Redis Cluster (plain or TLS);
//! - `raw`: [`RawConn`], a plain connection to either, for inspecting keys.
//!
//! With `BATCHYARD_TEST_REDIS_CLUSTER=1`, [`TestRedis::start_or_external`] hands out a Redis
//! Cluster instead of a server (one per test process while any test uses it), so a suite
//! written against one server runs unchanged against a cluster.
//!
//! The binary is `$BATCHYARD_REDIS_SERVER` (exported by scripts/test) or `redis-server` on
//! PATH; when neither exists the test skips, or fails under CI ([`crate::skip_or_fail`]).

mod cluster;
mod raw;
mod tls;

pub use cluster::TestCluster;
pub use raw::RawConn;
pub use tls::make_certificates as make_tls_certificates;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::{free_port, skip_or_fail};

const PING_LIMIT: Duration = Duration::from_secs(5);

/// A redis-server owned by one test, or an external one (see [`TestRedis::start_or_external`]).
pub struct TestRedis {
    pub port: u16,
    /// `redis://127.0.0.1:<port>/` (with `:password@`, or `rediss://...` for TLS).
    pub url: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    opts: RedisOptions,
    external: bool,
    cluster: Option<Arc<TestCluster>>,
}

/// The cluster `start_or_external` shares between the tests of one process: it lives while
/// some test holds it, and is stopped (by PID) when the last one ends.
static SHARED_CLUSTER: Mutex<Weak<TestCluster>> = Mutex::new(Weak::new());

/// How [`TestRedis::start_with`] configures the server; the default is a plain server
/// without persistence.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `--appendonly yes --appendfsync always`: the data survives [`TestRedis::restart`].
    pub aof: bool,
    /// `--requirepass`; the URL then carries it as `:password@`.
    pub password: Option<String>,
    /// TLS only (no plain port); the URL is `rediss://...?tls_ca_file=<dir>/ca.pem`. Needs the
    /// `openssl` CLI, which is treated like redis-server when missing.
    pub tls: bool,
}

impl std::fmt::Debug for TestRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedis")
            .field("url", &self.url)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .field("aof", &self.opts.aof)
            .finish()
    }
}

/// `$BATCHYARD_REDIS_SERVER`, else `redis-server` found on PATH.
pub(crate) fn find_redis_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BATCHYARD_REDIS_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// Sends `request` over plain TCP; true when the reply starts with `expect`.
fn answers(port: u16, request: &[u8], expect: &[u8]) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(request).is_err() {
        return false;
    }
    let mut buf = vec![0u8; expect.len()];
    let mut got = 0;
    while got < expect.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(expect)
}

impl TestRedis {
    /// Starts a plain server. Returns `None` (after a skip line) when redis-server is missing,
    /// unless `CI=true`, where that fails `test`. Panics if the server does not answer PING
    /// within 5 s.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, RedisOptions::default())
    }

    /// [`TestRedis::start`] with AOF, a password and/or TLS (see [`RedisOptions`]).
    pub fn start_with(test: &str, opts: RedisOptions) -> Option<Self> {
        let Some(bin) = find_redis_server() else {
            skip_or_fail(
                test,
                "redis-server not found (BATCHYARD_REDIS_SERVER or PATH)",
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("batchyard-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for redis-server: {e}"));
        let mut me = Self {
            port: 0,
            url: String::new(),
            child: None,
            dir,
            bin,
            opts,
            external: false,
            cluster: None,
        };
        if me.opts.tls && !tls::make_certificates(test, me.dir.path()) {
            return None;
        }
        let mut last_err = String::new();
        // The free port can be taken by someone else before redis binds it: retry.
        for _ in 0..3 {
            let Some(port) = free_port() else {
                last_err = "no free port on 127.0.0.1".to_string();
                continue;
            };
            me.port = port;
            me.url = me.url_for(port);
            match me.launch() {
                Ok(()) => return Some(me),
                Err(e) => {
                    last_err = e;
                    me.kill();
                }
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    /// The server named by `BATCHYARD_TEST_REDIS_URL` when set (then tests must use unique key
    /// names, and cannot kill or restart it), else [`TestRedis::start`].
    /// With `BATCHYARD_TEST_REDIS_CLUSTER=1`, a Redis Cluster shared by the tests of this
    /// process instead (also external: not to be killed or restarted).
    pub fn start_or_external(test: &str) -> Option<Self> {
        if std::env::var("BATCHYARD_TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1") {
            let mut shared = SHARED_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
            let cluster = match shared.upgrade() {
                Some(c) => c,
                None => {
                    let c = Arc::new(TestCluster::start(test)?);
                    *shared = Arc::downgrade(&c);
                    c
                }
            };
            return Some(Self::on_cluster(cluster, true));
        }
        let Some(url) = std::env::var("BATCHYARD_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            return Self::start(test);
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        Some(Self {
            port: 0,
            url,
            child: None,
            dir,
            bin: PathBuf::new(),
            opts: RedisOptions::default(),
            external: true,
            cluster: None,
        })
    }

    /// A Redis Cluster of its own (3 masters, 3 replicas), e.g. to kill a master; `None` as
    /// [`TestRedis::start`] when redis-server or redis-cli is missing.
    pub fn start_cluster(test: &str) -> Option<Self> {
        Self::start_cluster_with(test, RedisOptions::default())
    }

    /// [`TestRedis::start_cluster`] with a password (see [`TestCluster::start_with`]).
    pub fn start_cluster_with(test: &str, opts: RedisOptions) -> Option<Self> {
        let cluster = TestCluster::start_with(test, opts)?;
        Some(Self::on_cluster(Arc::new(cluster), false))
    }

    fn on_cluster(cluster: Arc<TestCluster>, external: bool) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        Self {
            port: 0,
            url: cluster.url.clone(),
            child: None,
            dir,
            bin: PathBuf::new(),
            opts: RedisOptions::default(),
            external,
            cluster: Some(cluster),
        }
    }

    /// The cluster behind this handle, when it is one.
    pub fn cluster(&self) -> Option<&TestCluster> {
        self.cluster.as_deref()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is the external server of [`TestRedis::start_or_external`].
    pub fn is_external(&self) -> bool {
        self.external
    }

    /// A plain async connection, for inspecting keys (a cluster connection on a cluster).
    pub async fn raw(&self) -> RawConn {
        RawConn::open(&self.url).await
    }

    fn url_for(&self, port: u16) -> String {
        let auth = self
            .opts
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        if self.opts.tls {
            let ca = self.dir.path().join("ca.pem");
            format!(
                "rediss://{auth}127.0.0.1:{port}/?tls_ca_file={}",
                ca.display()
            )
        } else {
            format!("redis://{auth}127.0.0.1:{port}/")
        }
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// Whether the server answers, judged from `log_from` on in its log for a secure server.
    fn ready(&self, log_from: usize) -> bool {
        if self.opts.tls {
            let log = std::fs::read(self.log_path()).unwrap_or_default();
            let fresh = String::from_utf8_lossy(log.get(log_from..).unwrap_or_default());
            let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
            return fresh.contains("Ready to accept connections")
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        }
        match &self.opts.password {
            Some(pw) => {
                let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\nPING\r\n", pw.len());
                answers(self.port, auth.as_bytes(), b"+OK\r\n+PONG")
            }
            None => answers(self.port, b"PING\r\n", b"+PONG"),
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1"]);
        if self.opts.tls {
            tls::listen_tls_only(&mut cmd, self.port, self.dir.path());
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        if let Some(pw) = &self.opts.password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--appendonly", if self.opts.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if self.ready(log_from) {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited with {status}; log: {}",
                    self.port,
                    self.log_tail()
                ));
            }
            if started.elapsed() > PING_LIMIT {
                return Err(format!(
                    "redis-server on port {} did not answer PING within {PING_LIMIT:?}; log: {}",
                    self.port,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The server's working directory (RDB/AOF files live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILLs the server by its PID and reaps it. Data not yet in the AOF is lost,
    /// as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and
    /// directory (with `aof`, the data comes back). Panics if it does not come up.
    pub fn restart(&mut self) {
        assert!(!self.external, "only an owned server can be restarted");
        self.kill();
        let deadline = Instant::now() + PING_LIMIT;
        loop {
            match self.launch() {
                Ok(()) => return,
                // The old socket can linger for a moment; retry until the deadline.
                Err(e) if Instant::now() >= deadline => panic!("restarting redis-server: {e}"),
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
