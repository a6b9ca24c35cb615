//! Learned adequacy shared through Redis: what one worker learns about a model, every worker
//! routes by.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::cluster::{Cluster, Options, wait_exit};
use support::*;

#[test]
fn workers_share_what_they_learn_and_stop_asking_a_model_that_fails() {
    let Some(cluster) = Cluster::start_opts(
        "learn-shared",
        &[],
        Options {
            // Only the large model's answers name it, so only they pass.
            extra_toml: "[tasks.summarize.validate]\nregex = \"large-1\"\n".into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    // Small close in price to large, so a small model that keeps failing is worth skipping.
    let config = std::fs::read_to_string(&cluster.config).unwrap().replace(
        "input_usd_per_mtok = 0.10\noutput_usd_per_mtok = 0.40",
        "input_usd_per_mtok = 1.00\noutput_usd_per_mtok = 4.00",
    );
    std::fs::write(&cluster.config, config).unwrap();
    let write_batch = |name: &str, from: usize, n: usize| {
        let body: String = (from..from + n)
            .map(|i| format!("{{\"id\":\"s-{i}\",\"text\":\"shared item {i}\"}}\n"))
            .collect();
        write_file(cluster.dir.path(), name, body.as_bytes())
    };
    // First batch: one worker learns, one item at a time.
    let first = write_batch("first.jsonl", 0, 20);
    let id = cluster.submit(first.to_str().unwrap(), &["--task", "summarize"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = cluster.spawn_worker(&["--concurrency", "1", "--exit-when-idle", "2"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    assert!(wait_exit(&mut w, Duration::from_secs(30)).success());
    assert_eq!(done["request_counts"]["completed"], 20, "{done}");
    let after_first = cluster.fake.stats()["requests"].as_u64().unwrap();
    let small_first = after_first - 20;
    assert!(
        (1..=12).contains(&small_first),
        "small asked {small_first} times"
    );

    // Second batch, two fresh worker processes: they start from what Redis holds.
    let second = write_batch("second.jsonl", 100, 20);
    let id = cluster.submit(second.to_str().unwrap(), &["--task", "summarize"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut workers: Vec<_> = (0..2)
        .map(|_| cluster.spawn_worker(&["--concurrency", "1", "--exit-when-idle", "2"]))
        .collect();
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    assert_eq!(done["request_counts"]["completed"], 20, "{done}");
    let small_second = cluster.fake.stats()["requests"].as_u64().unwrap() - after_first - 20;
    assert!(
        small_second <= 4,
        "fresh workers still asked the failing model {small_second} times of 20 (first batch: {small_first})"
    );
    let ok = cluster.results(&id, false);
    assert!(ok.iter().all(|l| l["batchyard"]["model"] == "large"));
}
