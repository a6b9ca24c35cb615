//! Cancelling a batch over the distributed path, and replays that race (the rest of retry is
//! in tests/resilience.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use support::cluster::{Cluster, Options, wait_exit};
use support::*;

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
    // `cancelled` at once if nothing happened to be in flight at that instant.
    let status = last_json(&out)["status"].as_str().unwrap().to_string();
    assert!(
        ["cancelling", "cancelled"].contains(&status.as_str()),
        "{status}"
    );
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

/// Issue 13: four `retry`s of one batch at once. Only one replays it; the others are refused
/// with exit 2, naming the one that runs; every failed item is called once more, not once per
/// retry, and the batch ends with counts that add up.
#[test]
fn racing_retries_replay_a_batch_once() {
    let backup = FakeProvider::start(&[]);
    let Some(cluster) = Cluster::start_opts(
        "retry_race",
        &["--fail-rate-500", "1.0"],
        Options {
            max_attempts: 1,
            extra_toml: format!(
                "[providers.backup]\nkind = \"openai\"\nbase_url = \"{}\"\n\n[models.backup]\nprovider = \"backup\"\nname = \"backup-1\"\ninput_usd_per_mtok = 0.5\noutput_usd_per_mtok = 2.0\ncontext_window = 16000\ntier = 1\n",
                backup.base_url
            ),
            ..Options::default()
        },
    ) else {
        return;
    };
    // Enough failures that reading them back outlasts process start-up: the retries overlap.
    let total = 600;
    let body: String = (0..total)
        .map(|i| request_line(&format!("r-{i}"), "hi") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(cluster.cmd().args(["worker", "--exit-when-idle", "2"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        cluster.wait_terminal(&id, Duration::from_secs(60))["status"],
        "failed"
    );

    let retries: Vec<_> = (0..4)
        .map(|_| {
            cluster
                .cmd()
                .args(["retry", &id, "--model", "backup", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = retries
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(won.len(), 1, "exactly one retry replays the batch");
    let view = last_json(won[0]);
    assert_eq!(view["retried"], total);
    let replay = view["replay_id"].as_str().unwrap().to_string();
    assert!(replay.starts_with("replay_"), "{view}");
    for lost in outs.iter().filter(|o| !o.status.success()) {
        let stderr = text(&lost.stderr);
        assert_eq!(lost.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("being replayed by {replay}")),
            "the refusal names the replay that runs: {stderr}"
        );
    }
    let status = cluster.status(&id);
    assert_eq!(status["request_counts"]["failed"], 0, "{status}");

    let out = run(cluster.cmd().args(["worker", "--exit-when-idle", "2"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], total, "{done}");
    assert_eq!(done["request_counts"]["failed"], 0, "{done}");
    assert_eq!(
        backup.stats()["requests"],
        total,
        "each failed item is called once more, not once per retry"
    );
    assert_eq!(cluster.results(&id, false).len(), total as usize);
}
