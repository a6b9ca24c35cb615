//! The shared rate limiter across worker processes: three workers against one fake provider
//! that counts requests per window and rejects what goes over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::cluster::{Cluster, Options, wait_exit};
use support::*;

/// Requests per window, for both the provider and the model's declared limit.
const LIMIT: u64 = 20;
const WINDOW_SECS: u64 = 4;

#[test]
fn three_workers_share_one_rpm_limit_and_the_provider_never_sees_more() {
    let limit = LIMIT.to_string();
    let window = WINDOW_SECS.to_string();
    let Some(cluster) = Cluster::start_opts(
        "shared_limit",
        &[
            "--rpm",
            &limit,
            "--window-secs",
            &window,
            "--latency-ms",
            "20",
        ],
        Options {
            small_extra: format!("rpm = {LIMIT}"),
            extra_toml: format!("\n[limits]\nwindow_secs = {WINDOW_SECS}\n"),
            ..Options::default()
        },
    ) else {
        return;
    };
    let total = 60u64;
    let body: String = (0..total)
        .map(|i| request_line(&format!("l-{i}"), "count me") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    // 24 concurrent slots would send all 60 in well under a second without the limiter.
    let mut workers: Vec<_> = (0..3)
        .map(|_| cluster.spawn_worker(&["--concurrency", "8", "--exit-when-idle", "3"]))
        .collect();
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    let elapsed = start.elapsed();
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], total);

    let stats = cluster.fake.stats();
    let max_window = stats["max_requests_per_window"].as_u64().unwrap();
    assert!(
        max_window <= LIMIT,
        "the provider saw {max_window} in one window: {stats}"
    );
    let rejected: u64 = stats["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["rejected"].as_u64().unwrap_or(0))
        .sum();
    let calls = stats["requests"].as_u64().unwrap();
    eprintln!(
        "shared limit: {calls} calls, {rejected} answered 429, at most {max_window} per {WINDOW_SECS} s window (limit {LIMIT}), {elapsed:?}"
    );
    assert!(
        rejected * 100 <= calls * 2,
        "{rejected} of {calls} calls were answered 429: {stats}"
    );
    // The limit was used, not just respected: 60 items at 20 per 4 s need about 3 windows.
    let windows_needed = (total / LIMIT).saturating_sub(1) * WINDOW_SECS;
    assert!(
        elapsed >= Duration::from_secs(windows_needed),
        "finished in {elapsed:?}: faster than the limit allows"
    );
    assert!(
        elapsed <= Duration::from_secs(windows_needed + 4 * WINDOW_SECS + 10),
        "took {elapsed:?}: the limit was badly under-used"
    );
}
