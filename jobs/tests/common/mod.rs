//! Test helpers: a throwaway redis-server per test, and job builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchyard_jobs::job::{Job, Route};
use serde_json::{Map, json};

/// A redis-server owned by one test (killed by PID on drop), or an external one named by
/// `BATCHYARD_TEST_REDIS_URL` (then tests must use unique queue names; see [`unique_name`]).
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: Option<tempfile::TempDir>,
    url: String,
    appendonly: bool,
}

/// Whether redis-server can be run here.
fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl TestRedis {
    /// Starts a server, or returns `None` (after printing a skip line) when redis-server is
    /// missing outside CI. In CI (`CI=true`) a missing server fails the test.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, false)
    }

    /// Like [`TestRedis::start`], always with a server of our own (never the external one),
    /// for tests that kill and restart it. `appendonly` keeps data across a restart.
    pub fn start_owned(test: &str, appendonly: bool) -> Option<Self> {
        if !redis_server_available() {
            return skip(test);
        }
        Some(Self::spawn(appendonly))
    }

    fn start_with(test: &str, appendonly: bool) -> Option<Self> {
        if let Ok(url) = std::env::var("BATCHYARD_TEST_REDIS_URL")
            && !url.is_empty()
        {
            return Some(Self {
                child: None,
                port: 0,
                dir: None,
                url,
                appendonly,
            });
        }
        Self::start_owned(test, appendonly)
    }

    fn spawn(appendonly: bool) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut me = Self {
            child: None,
            port,
            dir: Some(dir),
            url: format!("redis://127.0.0.1:{port}/"),
            appendonly,
        };
        me.launch();
        me
    }

    fn launch(&mut self) {
        let dir = self.dir.as_ref().map(|d| d.path().to_path_buf()).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server could not be started");
        self.child = Some(child);
        wait_for_ping(&self.url, Duration::from_secs(5));
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_external(&self) -> bool {
        self.child.is_none() && self.dir.is_none()
    }

    /// SIGKILLs the server (by its PID) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        assert!(self.dir.is_some(), "only an owned server can be restarted");
        self.kill();
        self.launch();
    }

    /// A plain connection for inspecting keys.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn skip(test: &str) -> Option<TestRedis> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "{test}: redis-server is not installed, and CI=true requires the Redis tests to run; install redis-server or set BATCHYARD_TEST_REDIS_URL"
        );
    }
    eprintln!("SKIP {test}: redis-server not found (install it or set BATCHYARD_TEST_REDIS_URL)");
    None
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn wait_for_ping(url: &str, limit: Duration) {
    let started = Instant::now();
    let client = redis::Client::open(url).unwrap();
    loop {
        if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
            && redis::cmd("PING").query::<String>(&mut conn).is_ok()
        {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "redis-server at {url} did not answer PING within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A queue name no other test (or test run) uses.
pub fn unique_name(test: &str) -> String {
    format!("t-{test}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A small job; `pad` bytes of filler make it bigger.
pub fn job(batch: &str, seq: u64, pad: usize) -> Job {
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        json!([{"role": "user", "content": "x".repeat(pad)}]),
    );
    Job {
        batch_id: batch.to_string(),
        job_id: format!("{batch}-{seq}"),
        seq,
        custom_id: format!("item-{seq}"),
        body,
        route: Route::Auto,
        attempt: 0,
        last_error: None,
        prior_cost_usd: 0.0,
    }
}

pub fn jobs(batch: &str, range: std::ops::Range<u64>, pad: usize) -> Vec<Job> {
    range.map(|seq| job(batch, seq, pad)).collect()
}
