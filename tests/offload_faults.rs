//! The offload lane when its services fail while provider batches are open, against real
//! Redis, the real S3-compatible server and the fake provider's OpenAI Batch API:
//! - Redis restarts (with its AOF) between the create and the ingest;
//! - Redis refuses writes (`maxmemory`, `noeviction`) when the provider batch ends, so its
//!   answers can't go back into the queue yet;
//! - the object store (where the lane keeps its provider batches) is away across the end.
//!
//! Each time: one paid provider batch, never a second, every item exactly once in the output,
//! answered through the batch API, and the worker alive throughout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::cluster::{Cluster, Options};
use support::offload::assert_once_through_one_provider_batch;
use support::proxy::Proxy;
use support::*;

const ITEMS: usize = 6;

fn cluster(name: &str, aof: bool) -> Option<Cluster> {
    Cluster::start_opts(
        name,
        // Long enough a turnaround for the fault to land while the provider batch is open.
        &["--batch-turnaround-ms", "4000"],
        Options {
            aof,
            provider_extra: "batch_api = true".into(),
            extra_toml: "[offload]\nmin_items = 3\npoll_interval_secs = 1\n\
                         switch_margin_secs = 0\nrealtime_items_per_sec = 1000\n"
                .into(),
            ..Options::default()
        },
    )
}

fn submit(cluster: &Cluster) -> String {
    let body: String = (0..ITEMS)
        .map(|i| request_line(&format!("f-{i}"), &format!("item {i}")) + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    cluster.submit(input.to_str().unwrap(), &["--deadline", "1h"])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits (at most 60 s) for the fake to have accepted a provider batch.
fn wait_created(cluster: &Cluster) {
    let start = Instant::now();
    while cluster.fake.stats()["batches"]["created"] == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no provider batch was sent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(worker: &mut std::process::Child) {
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker died of the fault"
    );
}

#[test]
fn a_redis_restart_while_a_provider_batch_is_open_loses_and_repeats_nothing() {
    let Some(mut cluster) = cluster("offload_redis_restart", true) else {
        return;
    };
    let id = submit(&cluster);
    let mut worker = cluster.spawn_worker(&[]);
    wait_created(&cluster);
    cluster.redis.restart();
    alive(&mut worker);
    assert_once_through_one_provider_batch(&cluster, &id, ITEMS);
    alive(&mut worker);
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn redis_refusing_writes_when_the_provider_batch_ends_delays_the_ingest_only() {
    let Some(cluster) = cluster("offload_redis_oom", false) else {
        return;
    };
    let id = submit(&cluster);
    let mut worker = cluster.spawn_worker(&[]);
    wait_created(&cluster);
    let mut c = redis::Client::open(cluster.redis.url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let set = |c: &mut redis::Connection, key: &str, value: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(key)
            .arg(value)
            .query(c)
            .unwrap();
    };
    set(&mut c, "maxmemory-policy", "noeviction");
    set(&mut c, "maxmemory", "1");
    // The provider batch ends (4 s) while Redis takes no writes: nothing can be ingested.
    std::thread::sleep(Duration::from_secs(7));
    let stats = cluster.fake.stats();
    assert_eq!(
        stats["batches"]["openai"]["by_status"]["completed"], 1,
        "the provider batch ended during the fault: {stats}"
    );
    // `status` still reads a full Redis, and nothing was ingested.
    let status = cluster.status(&id);
    assert_eq!(status["request_counts"]["completed"], 0, "{status}");
    alive(&mut worker);
    set(&mut c, "maxmemory", "0");
    assert_once_through_one_provider_batch(&cluster, &id, ITEMS);
    alive(&mut worker);
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn the_store_away_when_the_provider_batch_ends_delays_the_ingest_only() {
    let Some(mut cluster) = cluster("offload_store_away", false) else {
        return;
    };
    // Every child (and the test's own S3 reads) goes through the proxy.
    let proxy = Proxy::in_front_of_store(&mut cluster);
    let id = submit(&cluster);
    let mut worker = cluster.spawn_worker(&[]);
    wait_created(&cluster);
    proxy.set_up(false);
    std::thread::sleep(Duration::from_secs(7));
    alive(&mut worker);
    assert!(
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the lane kept trying the store"
    );
    proxy.set_up(true);
    assert_once_through_one_provider_batch(&cluster, &id, ITEMS);
    alive(&mut worker);
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn cancelling_a_batch_cancels_its_provider_batch_and_counts_the_answers_it_still_paid_for() {
    let Some(cluster) = Cluster::start_opts(
        "offload_cancel",
        // Items are answered one by one from 14 s to 54 s: a cancel at about 16 s leaves
        // the first answered (and paid), and comes well before the batch would complete.
        &["--batch-turnaround-ms", "60000"],
        Options {
            provider_extra: "batch_api = true".into(),
            extra_toml: "[offload]\nmin_items = 3\npoll_interval_secs = 1\n\
                         switch_margin_secs = 0\nrealtime_items_per_sec = 1000\n"
                .into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = submit(&cluster);
    let mut worker = cluster.spawn_worker(&[]);
    wait_created(&cluster);
    std::thread::sleep(Duration::from_secs(16));
    let out = run(cluster.cmd().args(["cancel", &id]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "cancelled", "{done}");
    let start = Instant::now();
    let status = loop {
        let status = cluster.status(&id);
        let stats = cluster.fake.stats();
        if stats["batches"]["openai"]["by_status"]["cancelled"] == 1
            && status["cost_usd"].as_f64().unwrap_or(0.0) > 0.0
        {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cancelled provider batch's answers were never counted: {status}\n{stats}\n{}",
            support::chaos_services::logs(&cluster)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let stats = cluster.fake.stats();
    assert_eq!(stats["batches"]["created"], 1, "{stats}");
    assert_eq!(stats["batches"]["cancelled"], 1, "{stats}");
    // Nothing was answered real-time: every paid answer came from the provider batch.
    assert_eq!(stats["requests"], 0, "{stats}");
    assert!(status["cost_usd"].as_f64().unwrap() > 0.0, "{status}");
    alive(&mut worker);
    let _ = worker.kill();
    let _ = worker.wait();
}
