//! Webhooks end to end: a batch submitted with `--notify` is announced when it ends, by a
//! POST signed per the Standard Webhooks spec and checked by the spec's reference library
//! (tests/webhook_receiver.py, PyPI `standardwebhooks`); a receiver that fails the first
//! attempts gets the same event (same `webhook-id`) again after growing pauses, and nothing
//! more once it took it. Real Redis, S3, workers and HTTP on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{Cluster, Options};
use support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The Python receiver, stopped on drop; `None` (after skip_or_fail) without the library.
struct Receiver {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(test: &str, dir: &Path, fail_first: u32) -> Option<Self> {
        let script = repo_root().join("tests/webhook_receiver.py");
        let log = dir.join("webhooks.jsonl");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([SECRET, &fail_first.to_string(), log.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 should start");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(port) = line.trim().strip_prefix("listening ") else {
            let _ = child.wait();
            batchyard_testkit::skip_or_fail(test, "the standardwebhooks Python package is missing");
            return None;
        };
        Some(Self {
            url: format!("http://127.0.0.1:{port}/hooks/batchyard?token=url-secret-123"),
            child,
            log,
        })
    }

    fn deliveries(&self) -> Vec<Value> {
        read_jsonl(&self.log)
    }

    /// Waits (at most `limit`) for a delivery the receiver took.
    fn wait_taken(&self, limit: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let got = self.deliveries();
            if got.iter().any(|d| d["status"] == 204) {
                return got;
            }
            assert!(start.elapsed() < limit, "no delivery was taken: {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn an_ended_batch_is_announced_signed_and_retried_until_the_receiver_takes_it() {
    let test = "an_ended_batch_is_announced_signed_and_retried_until_the_receiver_takes_it";
    let Some(cluster) = Cluster::start_opts(
        "notify",
        &[],
        Options {
            extra_toml: "[notify]\nretry_base_secs = 1\npoll_interval_secs = 1\n".into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let Some(receiver) = Receiver::start(test, cluster.dir.path(), 2) else {
        return;
    };
    let body: String = (0..5)
        .map(|i| request_line(&format!("n-{i}"), &format!("item {i}")) + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &["--notify", &receiver.url])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = std::fs::File::create(cluster.dir.path().join("worker-notify.log")).unwrap();
    let mut worker = cluster
        .cmd()
        .arg("worker")
        .env("BATCHYARD_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    // Attempt 1 fails, 1 s later attempt 2 fails, 6 s later attempt 3 is taken.
    let got = receiver.wait_taken(Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(3));
    let got_after = receiver.deliveries();
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(got_after.len(), got.len(), "nothing is sent once taken");
    assert_eq!(got.len(), 3, "{got:?}");
    let statuses: Vec<&Value> = got.iter().map(|d| &d["status"]).collect();
    assert_eq!(statuses, [500, 500, 204]);
    for d in &got {
        assert_eq!(
            d["verified"], true,
            "the reference library verifies it: {d}"
        );
        assert_eq!(d["id"], got[0]["id"], "one id for every attempt at one end");
        let event = &d["event"];
        assert_eq!(event["type"], "batch.completed", "{d}");
        assert_eq!(event["data"]["id"], id.as_str(), "{d}");
        assert_eq!(event["data"]["status"], "completed", "{d}");
        assert_eq!(event["data"]["request_counts"]["completed"], 5, "{d}");
        assert!(event["data"]["output_file"].is_string(), "{d}");
    }
    let at = |i: usize| {
        got[i]["timestamp"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(at(2) - at(1) >= at(1) - at(0), "pauses grow: {got:?}");
    assert!(at(2) - at(1) >= 5, "the second pause is about 6 s: {got:?}");
    let logs = std::fs::read_to_string(cluster.dir.path().join("worker-notify.log")).unwrap();
    assert!(logs.contains("notify: delivered"), "{logs}");
    for secret in ["url-secret-123", SECRET] {
        assert!(!logs.contains(secret), "a secret in the worker's log");
    }
}

#[test]
fn a_batch_created_through_the_api_names_its_webhook_in_metadata() {
    use support::api::{Server, create_batch, input, upload, wait_batch};
    let test = "a_batch_created_through_the_api_names_its_webhook_in_metadata";
    let Some(cluster) = Cluster::start_opts(
        "notify_api",
        &[],
        Options {
            extra_toml: "[notify]\npoll_interval_secs = 1\n".into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let Some(receiver) = Receiver::start(test, cluster.dir.path(), 0) else {
        return;
    };
    let server = Server::start(&cluster);
    let mut worker = cluster
        .cmd()
        .arg("worker")
        .env("BATCHYARD_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let file = upload(&server, &input(cluster.dir.path(), "api", 3));
    let (status, body) = create_batch(
        &server,
        file["id"].as_str().unwrap(),
        r#"{"batchyard_notify":"ftp://nowhere"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("batchyard_notify"), "{body}");
    let metadata = format!(r#"{{"batchyard_notify":"{}"}}"#, receiver.url);
    let (status, body) = create_batch(&server, file["id"].as_str().unwrap(), &metadata);
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = wait_batch(&server, &id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    let got = receiver.wait_taken(Duration::from_secs(30));
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["verified"], true);
    assert_eq!(got[0]["event"]["data"]["id"], id.as_str());
}

#[test]
fn run_announces_its_batch_before_it_exits() {
    let test = "run_announces_its_batch_before_it_exits";
    let dir = tempfile::tempdir().unwrap();
    let Some(receiver) = Receiver::start(test, dir.path(), 0) else {
        return;
    };
    let input = write_file(
        dir.path(),
        "in.jsonl",
        (request_line("r-1", "hello") + "\n").as_bytes(),
    );
    let out = run(batchyard(dir.path())
        .args(["run", input.to_str().unwrap(), "--json"])
        .args(["--notify", &receiver.url])
        .env("BATCHYARD_WEBHOOK_SECRET", SECRET));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let batch = last_json(&out);
    let got = receiver.deliveries();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["verified"], true);
    assert_eq!(got[0]["event"]["data"]["id"], batch["id"]);
    assert_eq!(got[0]["event"]["type"], "batch.completed");
}

#[test]
fn a_bad_notify_url_or_secret_is_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        (request_line("r-1", "hello") + "\n").as_bytes(),
    );
    let out = run(batchyard(dir.path())
        .args(["run", input.to_str().unwrap()])
        .args(["--notify", "ftp://example.com/x"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("http:// or https://"),
        "{}",
        text(&out.stderr)
    );
    let out = run(batchyard(dir.path())
        .args(["run", input.to_str().unwrap()])
        .env("BATCHYARD_WEBHOOK_SECRET", "not a secret"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("notify.secret_env"), "{stderr}");
    assert!(
        !stderr.contains("not a secret"),
        "the secret is never echoed: {stderr}"
    );
}
