//! [`FakeProvider`]: the `batchyard-fake-provider` binary (crate `fake-provider/`) as a real
//! process on a free loopback port, killed by its PID on drop.
//!
//! The binary lives in its own package, so `env!("CARGO_BIN_EXE_...")` cannot name it from the
//! other crates' tests. [`fake_provider_bin`] finds it in the target directory the running test
//! was built into, after `cargo build -p batchyard-fake-provider` once per test process: a no-op
//! when it is fresh, and it keeps `cargo test -p <crate>` from running a stale or missing fake.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::listening_line;

/// A running fake provider.
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `http://127.0.0.1:PORT/v1`, the OpenAI-compatible base URL.
    pub base_url: String,
    child: Child,
}

/// The `batchyard-fake-provider` binary, built (once per process) into the target directory
/// of the running test executable.
pub fn fake_provider_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build).clone()
}

fn build() -> PathBuf {
    // A test executable is `<target>/<profile>/deps/<name>-<hash>`.
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable sits in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("a target directory");
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace.parent().unwrap_or(&workspace))
        .args(["build", "--quiet", "-p", "batchyard-fake-provider"])
        .args(["--bin", "batchyard-fake-provider"])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo should run");
    assert!(status.success(), "building batchyard-fake-provider failed");
    let bin = profile_dir.join(format!(
        "batchyard-fake-provider{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(bin.is_file(), "no {} after the build", bin.display());
    bin
}

impl FakeProvider {
    /// Starts the fake with `args` on `127.0.0.1:0`; panics unless it prints its address
    /// within 10 s.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(fake_provider_bin())
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("fake provider should start");
        match listening_line(&mut child, Duration::from_secs(10)) {
            Ok(url) => Self {
                base_url: format!("{url}/v1"),
                url,
                child,
            },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fake provider {args:?}: {e}");
            }
        }
    }

    /// `GET /stats` via a raw HTTP/1.0 request (no client crate, no runtime needed).
    pub fn stats(&self) -> serde_json::Value {
        let addr = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET /stats HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        let json = body.split("\r\n\r\n").nth(1).unwrap_or("{}");
        serde_json::from_str(json).unwrap()
    }

    /// Requests served with `status`, from [`FakeProvider::stats`].
    pub fn count(&self, status: u16) -> u64 {
        self.stats()["by_status"][status.to_string()]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
