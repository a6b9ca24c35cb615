//! Shared helpers for the end-to-end tests: real processes, real servers, loopback only. Every
//! test file does `mod support;` and uses what it needs, so items one file leaves unused are not
//! dead code. The services themselves (Redis, S3, the fake provider) come from
//! `batchyard-testkit`; here is what is specific to these tests, one module per topic:
//!
//! - `api`: a `batchyard serve` process and curl calls against it;
//! - `bad_input`: the machinery of tests/bad_input_corpus.rs (generated inputs, bounded runs);
//! - `chaos_services`: what the service-fault tests share (polling, logs, pipeline listings);
//! - `chaos_workers`: worker processes, signals and pending entries for the worker-fault tests;
//! - `cluster`: a whole deployment on loopback (Redis, S3, fake provider, workers);
//! - `invariants`: the exactly-once and accounting checks every chaos test ends with;
//! - `proxy`: a loopback TCP proxy in front of the object store that can be switched off;
//! - `scheduler`: a `batchyard scheduler` process;
//! - here: the batchyard binary with a clean environment, signals, JSONL readers, request
//!   lines, and where chromium is.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod bad_input;
pub mod chaos_services;
pub mod chaos_workers;
pub mod cluster;
pub mod invariants;
pub mod offload;
pub mod proxy;
pub mod scheduler;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Sends `SIG<name>` (e.g. `TERM`, `STOP`, `CONT`) to one process by PID.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// SIGTERM by PID, then a clean exit within 30 s.
pub fn terminate(child: &mut std::process::Child) {
    signal(child.id(), "TERM");
    let status = cluster::wait_exit(child, std::time::Duration::from_secs(30));
    assert!(
        status.success(),
        "exit of pid {} after SIGTERM: {status:?}",
        child.id()
    );
}

/// The batchyard binary with a clean environment: no config, Redis or storage leaking in
/// from the developer's shell.
pub fn batchyard(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batchyard"));
    cmd.current_dir(dir)
        .env_remove("BATCHYARD_CONFIG")
        .env_remove("BATCHYARD_REDIS_URL")
        .env_remove("BATCHYARD_STORAGE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("batchyard should start")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last line of stdout, parsed as the JSON object `--json` promises.
pub fn last_json(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "last stdout line is not JSON ({e}): {stdout}\nstderr: {}",
            text(&out.stderr)
        )
    })
}

/// Runs a prepared `batchyard run … --json` (in `dir`, storing under `dir/store`), expects
/// success within two minutes, and returns the batch, its output lines and stderr.
pub fn run_to_output(dir: &Path, cmd: &mut Command) -> (Value, Vec<Value>, String) {
    let started = std::time::Instant::now();
    let out = run(cmd);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    let batch = last_json(&out);
    let output = read_jsonl(
        &dir.join("store/batches")
            .join(batch["id"].as_str().unwrap())
            .join("output.jsonl"),
    );
    (batch, output, stderr)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a JSONL file into values.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let body = std::fs::read_to_string(path).unwrap_or_default();
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

/// Writes `lines` as a JSONL file and returns its path.
pub fn write_file(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// A chat request line.
pub fn request_line(custom_id: &str, content: &str) -> String {
    serde_json::json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "auto", "messages": [{"role": "user", "content": content}]}
    })
    .to_string()
}

/// `BATCHYARD_CHROMIUM`, else `chromium` or `chromium-browser` on PATH (for
/// tests/dashboard_check.py).
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BATCHYARD_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .find(|p| p.is_file())
}

/// Every custom id appears exactly once in `output.jsonl` ∪ `errors.jsonl`; returns how many.
pub fn exactly_once(ok: &[Value], errors: &[Value]) -> usize {
    let mut seen: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for line in ok.iter().chain(errors) {
        *seen
            .entry(line["custom_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a custom id in two lines: {seen:?}"
    );
    seen.len()
}
