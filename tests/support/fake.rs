//! The fake OpenAI-compatible provider (`batchyard-fake-provider`), as a real process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct FakeProvider {
    pub base_url: String,
    child: Child,
}

fn binary() -> PathBuf {
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_batchyard"));
    let fake = ours.with_file_name("batchyard-fake-provider");
    if !fake.exists() {
        // `cargo test -p batchyard` alone does not build the workers crate's binaries.
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "batchyard-workers",
                "--bin",
                "batchyard-fake-provider",
            ])
            .status()
            .expect("cargo should run");
        assert!(status.success(), "building batchyard-fake-provider failed");
    }
    fake
}

impl FakeProvider {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("fake provider should start");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake provider should print its address within 10 s");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        Self {
            base_url: format!("{url}/v1"),
            child,
        }
    }

    /// `GET /stats` via a raw HTTP/1.0 request (no client crate needed).
    pub fn stats(&self) -> serde_json::Value {
        use std::io::{Read, Write};
        let addr = self
            .base_url
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(deadline - Instant::now()))
            .unwrap();
        write!(stream, "GET /stats HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        let json = body.split("\r\n\r\n").nth(1).unwrap_or("{}");
        serde_json::from_str(json).unwrap()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
