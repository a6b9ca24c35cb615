//! Cancelling a batch over the distributed path (retry is in tests/resilience.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::cluster::{Cluster, wait_exit};
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
