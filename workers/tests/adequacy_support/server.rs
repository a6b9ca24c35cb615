//! A throwaway redis-server per test, on a free 127.0.0.1 port in a temp dir, killed by its
//! PID on drop. The binary is `$BATCHYARD_REDIS_SERVER` (exported by scripts/test) or
//! `redis-server` on PATH; when neither exists the test skips, except under `CI=true`, where
//! it fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRedis {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    url: String,
}

fn find_redis_server() -> Option<PathBuf> {
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

impl TestRedis {
    pub fn start(test: &str) -> Option<Self> {
        let Some(bin) = find_redis_server() else {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!(
                    "{test}: redis-server was not found (BATCHYARD_REDIS_SERVER or PATH), and CI=true requires it"
                );
            }
            eprintln!("SKIP {test}: redis-server not found");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server could not be started");
        let me = Self {
            child: Some(child),
            _dir: dir,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        me.wait_for_ping(Duration::from_secs(5));
        Some(me)
    }

    fn wait_for_ping(&self, limit: Duration) {
        let started = Instant::now();
        let client = redis::Client::open(self.url.as_str()).unwrap();
        loop {
            if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A plain connection for inspecting keys.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Kills the server by its PID and reaps it, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
