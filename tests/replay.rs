//! Operator levers over the distributed path: `retry` of failed items and `cancel`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::cluster::{Cluster, wait_exit};
use support::*;

fn exactly_once(ok: &[serde_json::Value], errors: &[serde_json::Value]) -> usize {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
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

#[test]
fn retry_replays_failed_items_and_rewrites_the_batch_files() {
    let key = "sk-test-secret-123";
    let Some(cluster) = Cluster::start("retry", &["--require-key", key], 30) else {
        return;
    };
    let body: String = (0..5)
        .map(|i| request_line(&format!("r-{i}"), "hello") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A worker with a wrong key: every item fails with `auth`.
    let mut wrong = cluster.cmd();
    wrong
        .env("FAKE_API_KEY", "sk-wrong")
        .args(["worker", "--exit-when-idle", "2"]);
    let out = run(&mut wrong);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("sk-wrong"),
        "the key leaked into logs"
    );
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "failed", "{done}");
    let errors = cluster.results(&id, true);
    assert_eq!(errors.len(), 5);
    assert!(
        errors.iter().all(|e| e["error"]["code"] == "auth"),
        "{errors:?}"
    );
    assert!(
        errors.iter().all(|e| e.get("job").is_none()),
        "replay data stays out of errors.jsonl"
    );

    // Bad retries are refused.
    let out = run(cluster.cmd().args(["retry", &id, "--model", "nope"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(cluster
        .cmd()
        .args(["retry", &id, "--code", "transient", "--json"]));
    assert!(out.status.success());
    assert_eq!(last_json(&out)["retried"], 0);

    // Replay on the big model with the right key.
    let out = run(cluster
        .cmd()
        .args(["retry", &id, "--code", "auth", "--model", "large", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let view = last_json(&out);
    assert_eq!(view["retried"], 5);
    assert_eq!(view["status"], "in_progress");
    let out = run(cluster.cmd().args(["retry", &id]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "retry of a running batch: {}",
        text(&out.stderr)
    );

    let mut right = cluster.spawn_worker(&["--exit-when-idle", "2"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert!(wait_exit(&mut right, Duration::from_secs(30)).success());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 5);
    assert_eq!(done["request_counts"]["failed"], 0);
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_eq!(exactly_once(&ok, &errors), 5);
    assert!(errors.is_empty());
    for line in &ok {
        assert_eq!(line["batchyard"]["model"], "large");
        assert_eq!(line["response"]["body"]["model"], "large-1");
    }
}

#[test]
fn cancel_ends_queued_items_as_cancelled_and_in_flight_ones_finish() {
    let Some(cluster) = Cluster::start("cancel", &["--latency-ms", "40"], 30) else {
        return;
    };
    let total = 200;
    let body: String = (0..total)
        .map(|i| request_line(&format!("c-{i}"), "x") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut worker = cluster.spawn_worker(&["--concurrency", "2", "--exit-when-idle", "2"]);
    let start = Instant::now();
    while cluster.status(&id)["request_counts"]["completed"]
        .as_u64()
        .unwrap()
        < 10
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(cluster.cmd().args(["cancel", &id, "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(last_json(&out)["status"], "cancelling");
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    assert_eq!(done["status"], "cancelled", "{done}");
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_eq!(exactly_once(&ok, &errors), total);
    assert!(ok.len() >= 10, "work done before the cancel is kept");
    assert!(
        errors.len() > 100,
        "most queued items were cancelled: {}",
        errors.len()
    );
    assert!(errors.iter().all(|e| e["error"]["code"] == "cancelled"));
    let out = run(cluster.cmd().args(["cancel", &id]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already cancelled"),
        "{}",
        text(&out.stderr)
    );
}
