//! A throwaway redis-server per test, on a free 127.0.0.1 port in a temp dir.
//!
//! The binary is `$BATCHYARD_REDIS_SERVER` (exported by scripts/test) or
//! `redis-server` on PATH. The server is killed by PID (SIGKILL) on drop.
#![allow(dead_code, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PING_LIMIT: Duration = Duration::from_secs(5);

pub struct RedisServer {
    pub port: u16,
    /// `redis://127.0.0.1:<port>/`
    pub url: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    aof: bool,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("url", &self.url)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .field("aof", &self.aof)
            .finish()
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `$BATCHYARD_REDIS_SERVER`, else `redis-server` found on PATH.
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

fn free_port() -> Option<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    listener.local_addr().ok().map(|a| a.port())
}

/// One raw `PING` over TCP; true on `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 7 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"+PONG")
}

impl RedisServer {
    /// Starts a server (`--appendonly yes` when `aof`, with `--appendfsync always`).
    ///
    /// Returns `None` (after printing a skip line) when redis-server is missing,
    /// unless `CI=true`, where that panics. Panics if the server does not
    /// answer PING within 5 s.
    pub fn start(aof: bool) -> Option<Self> {
        let Some(bin) = find_redis_server() else {
            if in_ci() {
                panic!(
                    "CI=true but redis-server was not found (BATCHYARD_REDIS_SERVER or PATH): \
                     run the tests through scripts/test, which installs it"
                );
            }
            eprintln!("SKIP: redis-server not found (install it, or run scripts/test)");
            return None;
        };
        let dir = match tempfile::Builder::new()
            .prefix("batchyard-redis-")
            .tempdir()
        {
            Ok(d) => d,
            Err(e) => panic!("creating a temp dir for redis-server: {e}"),
        };
        let mut me = Self {
            port: 0,
            url: String::new(),
            child: None,
            dir,
            bin,
            aof,
        };
        let mut last_err = String::new();
        // The free port can be taken by someone else before redis binds it: retry.
        for _ in 0..3 {
            let Some(port) = free_port() else {
                last_err = "no free port on 127.0.0.1".to_string();
                continue;
            };
            me.port = port;
            me.url = format!("redis://127.0.0.1:{port}/");
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

    fn launch(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let child = Command::new(&self.bin)
            .args(["--bind", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
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
            if ping(self.port) {
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
