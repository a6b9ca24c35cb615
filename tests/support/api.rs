//! Helpers for tests/api.rs: a `batchyard serve` process and curl calls against it, and the
//! dashboard driven in headless chromium (tests/dashboard_check.py).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchyard_testkit::listening_line;
use serde_json::Value;

use crate::support::cluster::Cluster;
use crate::support::{request_line, text, write_file};

pub const TOKEN: &str = "tok-api-test-123";

/// A running `batchyard serve`, stopped on drop.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    pub fn start(cluster: &Cluster) -> Self {
        Self::start_env(cluster, &[])
    }

    pub fn start_env(cluster: &Cluster, env: &[(&str, &str)]) -> Self {
        let log = std::fs::File::create(cluster.dir.path().join("serve.log")).unwrap();
        let mut child = cluster
            .cmd()
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("BATCHYARD_API_TOKENS", format!("other-token,{TOKEN}"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("serve should start");
        let base = listening_line(&mut child, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("serve: {e}: {}", serve_log(cluster)));
        Self { child, base }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port`, for raw TCP.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// Sends SIGTERM and expects a clean exit.
    pub fn stop(mut self) {
        crate::support::terminate(&mut self.child);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Worker processes, killed on drop.
pub struct Workers(pub Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

pub fn serve_log(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.dir.path().join("serve.log")).unwrap_or_default()
}

/// One HTTP call with curl: (status, body). `token` None sends no Authorization header.
pub fn curl(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[&str],
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .args(extra)
        .arg(format!("{base}{path}"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl failed: {}", text(&out.stderr))),
        body.to_string(),
    )
}

pub fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Asserts an OpenAI-shaped error with `status`, returning its `error` object.
pub fn expect_error(got: (u16, String), status: u16) -> Value {
    assert_eq!(got.0, status, "{}", got.1);
    let v = json_of(&got.1);
    let e = v["error"].clone();
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e
}

pub fn call(s: &Server, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    curl(&s.base, method, path, Some(TOKEN), extra)
}

pub fn ok_json(got: (u16, String)) -> Value {
    assert_eq!(got.0, 200, "{}", got.1);
    json_of(&got.1)
}

pub fn upload(s: &Server, path: &Path) -> Value {
    let file = format!("file=@{}", path.display());
    ok_json(call(
        s,
        "POST",
        "/v1/files",
        &["-F", "purpose=batch", "-F", &file],
    ))
}

pub fn create_batch(s: &Server, file_id: &str, metadata: &str) -> (u16, String) {
    let body = format!(
        r#"{{"input_file_id":"{file_id}","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{metadata}}}"#
    );
    call(
        s,
        "POST",
        "/v1/batches",
        &["-H", "Content-Type: application/json", "-d", &body],
    )
}

pub fn wait_batch(s: &Server, id: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let b = ok_json(call(s, "GET", &format!("/v1/batches/{id}"), &[]));
        if ["completed", "failed", "expired", "cancelled"].contains(&b["status"].as_str().unwrap())
        {
            return b;
        }
        assert!(start.elapsed() < limit, "batch did not finish: {b}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn input(dir: &Path, name: &str, n: usize) -> std::path::PathBuf {
    let body: String = (0..n)
        .map(|i| request_line(&format!("{name}-{i}"), &format!("say {i}")) + "\n")
        .collect();
    write_file(dir, &format!("{name}.jsonl"), body.as_bytes())
}

/// Runs tests/dashboard_check.py in headless `chromium` against `s`, with `env` (the
/// `BATCHYARD_DASH_*` that say what to check), and keeps its screenshot as `target/NAME`.
/// False when `test` skips (websocket-client missing outside CI).
pub fn dashboard_check(
    test: &str,
    chromium: &Path,
    cluster: &Cluster,
    s: &Server,
    env: &[(&str, &str)],
    name: &str,
) -> bool {
    let shot = cluster.dir.path().join(name);
    let out = Command::new("python3")
        .arg(crate::support::repo_root().join("tests/dashboard_check.py"))
        .env("BATCHYARD_DASH_URL", format!("{}/", s.base))
        .env("BATCHYARD_DASH_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .env("BATCHYARD_DASH_SHOT", &shot)
        .env("BATCHYARD_CHROMIUM", chromium)
        .env("BATCHYARD_DASH_TMP", cluster.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("python3 should run");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if out.status.code() == Some(77) {
        batchyard_testkit::skip_or_fail(test, stdout.trim());
        return false;
    }
    // Keep the picture where a human can find it, pass or fail.
    if shot.exists() {
        let target = std::path::PathBuf::from(env!("CARGO_BIN_EXE_batchyard"))
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join(name))
            .unwrap();
        std::fs::copy(&shot, &target).unwrap();
        eprintln!("screenshot: {}", target.display());
    }
    assert!(
        out.status.success(),
        "dashboard_check.py failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}\nserve log:\n{}",
        out.status.code(),
        serve_log(cluster)
    );
    eprintln!("{stderr}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a real screenshot"
    );
    true
}
