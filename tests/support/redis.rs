//! A throwaway redis-server per test, on a free 127.0.0.1 port in a temp dir.
//!
//! The binary is `$BATCHYARD_REDIS_SERVER` (exported by scripts/test) or
//! `redis-server` on PATH. The server is killed by PID (SIGKILL) on drop.
//!
//! [`RedisServer::start_secure`] starts one that wants a password (`--requirepass`) and/or
//! speaks only TLS (`--port 0 --tls-port`), with a CA and server certificate made at start
//! with the `openssl` CLI (`$BATCHYARD_OPENSSL` or `openssl` on PATH).
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
    password: Option<String>,
    tls: bool,
}

/// What [`RedisServer::start_secure`] turns on.
#[derive(Debug, Clone, Default)]
pub struct Secure {
    /// `--requirepass`; the URL then carries it as `:password@`.
    pub password: Option<String>,
    /// TLS only (no plain port); the URL is `rediss://...?tls_ca_file=<dir>/ca.pem`.
    pub tls: bool,
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

/// `AUTH <password>` then `PING` over plain TCP; true on `+OK` and `+PONG`.
fn auth_ping(port: u16, password: &str) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let cmd = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\nPING\r\n",
        password.len()
    );
    if s.write_all(cmd.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"+OK\r\n+PONG")
}

fn find_openssl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BATCHYARD_OPENSSL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("openssl"))
        .find(|p| p.is_file())
}

/// Writes `ca.pem`, `server.pem` and `server.key` (EC P-256, valid two days, the server's
/// names 127.0.0.1 and localhost) into `dir`. False (after a skip line) when there is no
/// openssl outside CI; panics in CI or when openssl fails.
fn make_certificates(dir: &Path) -> bool {
    let Some(openssl) = find_openssl() else {
        if in_ci() {
            panic!("CI=true but the openssl CLI was not found: apt-get install openssl");
        }
        eprintln!("SKIP: openssl CLI not found (needed to make a TLS certificate for redis)");
        return false;
    };
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", ext.display()));
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=batchyard test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    ];
    for args in steps {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", openssl.display()));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    true
}

impl RedisServer {
    /// Starts a server (`--appendonly yes` when `aof`, with `--appendfsync always`).
    ///
    /// Returns `None` (after printing a skip line) when redis-server is missing,
    /// unless `CI=true`, where that panics. Panics if the server does not
    /// answer PING within 5 s.
    pub fn start(aof: bool) -> Option<Self> {
        Self::start_inner(aof, Secure::default())
    }

    /// Starts a server with a password and/or TLS (see [`Secure`]). As [`RedisServer::start`]
    /// for a missing redis-server; a missing `openssl` CLI (needed for TLS) is treated alike.
    pub fn start_secure(secure: Secure) -> Option<Self> {
        Self::start_inner(false, secure)
    }

    fn start_inner(aof: bool, secure: Secure) -> Option<Self> {
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
            password: secure.password,
            tls: secure.tls,
        };
        if me.tls && !make_certificates(me.dir.path()) {
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

    fn url_for(&self, port: u16) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        if self.tls {
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
        self.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// Whether the server answers, judged from `log_from` on in its log for a secure server.
    fn ready(&self, log_from: usize) -> bool {
        if self.tls {
            let log = std::fs::read(self.log_path()).unwrap_or_default();
            let fresh = String::from_utf8_lossy(log.get(log_from..).unwrap_or_default());
            let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
            return fresh.contains("Ready to accept connections")
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        }
        match &self.password {
            Some(pw) => auth_ping(self.port, pw),
            None => ping(self.port),
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1"]);
        if self.tls {
            let d = self.dir.path();
            cmd.args(["--port", "0"])
                .args(["--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(d.join("server.pem"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
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
