//! The offload lane across crashes: a worker aborted (as by `kill -9`) at each step of a
//! provider batch's life — recorded but not sent, sent but its id not recorded, half
//! ingested — and another worker taking the lane over. Each time: one paid provider batch,
//! never two, and every item exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::cluster::{Cluster, Options, QUICK_OFFLOAD};

const ITEMS: usize = 6;

fn crash_at(point: &str) {
    let Some(cluster) = Cluster::start_opts(
        &format!("offload_crash_{point}"),
        &["--batch-turnaround-ms", "500"],
        Options {
            provider_extra: "batch_api = true".into(),
            extra_toml: QUICK_OFFLOAD.into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = cluster.submit_with_deadline("c", ITEMS);
    cluster.crash_worker_at(point);
    let mut worker = cluster.spawn_worker(&["--exit-when-idle", "30"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(120));
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(done["status"], "completed", "{done}");
    let lines = cluster.results(&id, false);
    assert_eq!(lines.len(), ITEMS, "{lines:?}");
    let ids: BTreeSet<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), ITEMS, "each item exactly once");
    for line in &lines {
        let steps = line["batchyard"]["cascade"].as_array().unwrap();
        assert!(
            steps.iter().any(|s| s["provider_batch"].is_string()),
            "answered through the batch API: {line}"
        );
    }
    let stats = cluster.fake.stats();
    assert_eq!(
        stats["batches"]["created"], 1,
        "one paid provider batch: {stats}"
    );
}

#[test]
fn a_crash_before_the_create_sends_the_batch_once() {
    crash_at("before_create");
}

#[test]
fn a_crash_after_the_create_does_not_send_it_again() {
    crash_at("after_create");
}

#[test]
fn a_crash_mid_ingest_loses_and_repeats_nothing() {
    crash_at("mid_ingest");
}
