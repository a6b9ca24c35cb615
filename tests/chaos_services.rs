//! Service faults (issue 7, C3 C4 C5 C7), against real Redis, the real S3-compatible server and
//! the fake provider over HTTP. Every batch test ends with the four invariants
//! (`support::invariants::assert_invariants`).
//!
//! - C3: Redis killed and restarted (AOF on) mid-batch; workers, `serve` and `scheduler` live on.
//! - C4: the provider fault mix at once: 10% 429 with Retry-After, 5% 5xx, 2% hangs,
//!   1% malformed, 1% truncated.
//! - C5: the object store unreachable for 30 s mid-batch (a loopback TCP proxy in front of it).
//! - C7: three schedulers and a Redis restart: still exactly one batch per tick.
//!
//! CI (short): `BATCHYARD_SKIP_LLAMA=1 scripts/test --test chaos_services`
//! Soak (long batches): `BATCHYARD_CHAOS_LONG=1 BATCHYARD_SKIP_LLAMA=1 scripts/test --test chaos_services`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "chaos_services/provider_faults.rs"]
mod provider_faults;
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::chaos_services::*;
use support::proxy::Proxy;

use serde_json::Value;
use support::cluster::{Cluster, Options};
use support::invariants::assert_invariants;
use support::scheduler::{
    Children, history, pipeline_toml, redis_conn, run_lock_held, spawn_scheduler, wait_for_lock,
};
use support::terminate;
use support::write_file;

#[test]
fn c3_workers_serve_and_scheduler_survive_a_redis_restart() {
    let started = Instant::now();
    let docs = tempfile::tempdir().unwrap();
    write_file(docs.path(), "a.txt", b"a scheduled document");
    let n = if long() { 20_000 } else { 600 };
    let Some(mut cluster) = Cluster::start_opts(
        "chaos_c3",
        &["--latency-ms", "20"],
        Options {
            aof: true,
            visibility_secs: 5,
            extra_toml: pipeline_toml("tick", 1, docs.path()),
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = submit(&cluster, "c3", n);
    let mut workers = Children(
        (0..2)
            .map(|_| cluster.spawn_worker(&["--concurrency", "8"]))
            .collect(),
    );
    let server = support::api::Server::start(&cluster);
    assert_eq!(readyz(&server.base), 200, "serve ready before the fault");
    let mut scheduler = Children(vec![spawn_scheduler(&cluster, 0)]);
    wait_settled(&cluster, &id, n as u64 / 6, Duration::from_secs(60));

    // A crash of Redis, down for about 2 s, then back from its AOF. It lands between two
    // scheduler runs: one that lands inside a run is c3_..._during_a_run, below.
    wait_for_lock(&cluster, "tick", false, Duration::from_secs(10));
    cluster.redis.kill();
    let down = Instant::now();
    let mut unready = 0;
    while down.elapsed() < Duration::from_secs(2) {
        if readyz(&server.base) == 503 {
            unready += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(unready > 0, "/readyz never said 503 while Redis was down");
    cluster.redis.restart();
    let up_unix = unix_now();
    let up = Instant::now();
    while readyz(&server.base) != 200 {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "/readyz not 200 within 30 s of Redis coming back: {}",
            support::api::serve_log(&cluster)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready_again = up.elapsed();
    workers.assert_alive("a worker");
    scheduler.assert_alive("the scheduler");

    // The scheduler fires again: a submitted run for a tick after Redis came back.
    let fired_after = loop {
        let runs = history(&cluster, "tick");
        let after: Vec<&Value> = runs
            .iter()
            .filter(|r| r["tick_unix"].as_i64().unwrap() > up_unix && r["outcome"] == "submitted")
            .collect();
        if !after.is_empty() {
            break after.len();
        }
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "no scheduled run after the restart: {runs:?}{}",
            logs(&cluster)
        );
        std::thread::sleep(Duration::from_millis(300));
    };

    let done = wait_done(
        &cluster,
        &id,
        Duration::from_secs(if long() { 600 } else { 60 }),
    );
    assert_eq!(done["status"], "completed", "{done}");
    workers.assert_alive("a worker");
    scheduler.assert_alive("the scheduler");
    assert_eq!(readyz(&server.base), 200);
    scheduler.terminate_all();
    // The pipeline's batches drain too, so the queue's depth can come back to zero.
    let runs = history(&cluster, "tick");
    for r in runs.iter().filter(|r| r["outcome"] == "submitted") {
        let b = cluster.wait_terminal(r["batch_id"].as_str().unwrap(), Duration::from_secs(30));
        assert_eq!(b["status"], "completed", "{b}");
    }
    let (ok, errors) = assert_invariants(&cluster, &id, n);
    workers.terminate_all();
    server.stop();
    eprintln!(
        "C3: {n} jobs ({} ok, {} errors); Redis down {:.1}s, /readyz 503 x{unready}, ready again \
         after {ready_again:?}; {} pipeline runs ({} submitted after the restart); wall {:.1}s",
        ok.len(),
        errors.len(),
        up.duration_since(down).as_secs_f64(),
        runs.len(),
        fired_after,
        started.elapsed().as_secs_f64()
    );
}

/// The restart lands while a scheduler run holds the pipeline's run lock: the run's Redis
/// writes and its unlock retry until Redis is back, so the lock never strands later ticks.
#[test]
fn c3_the_scheduler_fires_again_after_a_redis_restart_during_a_run() {
    let started = Instant::now();
    let docs = tempfile::tempdir().unwrap();
    // Enough documents that a run holds its lock long enough to be caught holding it.
    for i in 0..500 {
        write_file(docs.path(), &format!("d{i}.txt"), b"a scheduled document");
    }
    let Some(mut cluster) = Cluster::start_opts(
        "chaos_c3_lock",
        &[],
        Options {
            aof: true,
            extra_toml: pipeline_toml("tick", 2, docs.path()),
            ..Options::default()
        },
    ) else {
        return;
    };
    let mut scheduler = Children(vec![spawn_scheduler(&cluster, 0)]);
    wait_for_lock(&cluster, "tick", true, Duration::from_secs(15));
    cluster.redis.kill();
    std::thread::sleep(Duration::from_secs(1));
    cluster.redis.restart();
    let up_unix = unix_now();
    let up = Instant::now();
    let fired = loop {
        let runs = history(&cluster, "tick");
        let after = runs
            .iter()
            .filter(|r| r["tick_unix"].as_i64().unwrap() > up_unix && r["outcome"] == "submitted")
            .count();
        if after > 0 {
            break after;
        }
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "no scheduled run within 20 s of the restart (run lock still held: {}): {runs:?}{}",
            run_lock_held(&mut redis_conn(cluster.redis.port), "tick"),
            logs(&cluster)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    scheduler.assert_alive("the scheduler");
    scheduler.terminate_all();
    eprintln!(
        "C3 (restart during a run): {fired} runs after the restart; wall {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn c5_the_object_store_away_for_30_seconds() {
    let started = Instant::now();
    let n = if long() { 20_000 } else { 1_500 };
    let outage = Duration::from_secs(30);
    let Some(mut cluster) = Cluster::start_opts(
        "chaos_c5",
        &["--latency-ms", "20"],
        Options {
            visibility_secs: 10,
            ..Options::default()
        },
    ) else {
        return;
    };
    // Every child (and the test's own S3 reads) goes through the proxy.
    let proxy = Proxy::in_front_of_store(&mut cluster);
    let id = submit(&cluster, "c5", n);
    let mut workers = Children(
        (0..2)
            .map(|_| cluster.spawn_worker(&["--concurrency", "8"]))
            .collect(),
    );
    wait_settled(&cluster, &id, n as u64 / 5, Duration::from_secs(60));

    proxy.set_up(false);
    let cut = Instant::now();
    // Puts already answered may still settle for a moment; after that nothing may.
    std::thread::sleep(Duration::from_secs(1));
    let frozen = settled(&cluster, &id);
    let mut samples = 0;
    while cut.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(2));
        let now = settled(&cluster, &id);
        assert_eq!(
            now, frozen,
            "items settled while the object store was away: their outcomes cannot be stored"
        );
        let depth = cluster.depth();
        let queued: u64 = ["pending", "in_flight", "delayed"]
            .iter()
            .map(|k| depth[k].as_u64().unwrap_or(0))
            .sum();
        assert!(
            queued + frozen >= n as u64,
            "a job left the queue without its outcome: {queued} queued + {frozen} settled < {n}: {depth}"
        );
        samples += 1;
    }
    workers.assert_alive("a worker");
    proxy.set_up(true);
    let back = Instant::now();
    let done = wait_done(
        &cluster,
        &id,
        Duration::from_secs(if long() { 900 } else { 90 }),
    );
    let after_back = back.elapsed();
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = assert_invariants(&cluster, &id, n);
    // Calls whose outcome could not be stored were paid for: their cost is carried to the
    // item's line and the ledger, so spend follows the calls made, not only the ones kept.
    let calls = cluster.fake.stats()["requests"].as_f64().unwrap();
    let per_call: Vec<f64> = ok
        .iter()
        .filter(|l| {
            l["batchyard"]["cascade"]
                .as_array()
                .is_some_and(|c| c.len() == 1)
        })
        .map(|l| l["batchyard"]["cascade"][0]["cost_usd"].as_f64().unwrap())
        .collect();
    let mean = per_call.iter().sum::<f64>() / per_call.len() as f64;
    let spent = done["cost_usd"].as_f64().unwrap();
    assert!(
        (spent - calls * mean).abs() <= 0.02 * calls * mean,
        "spend {spent} vs {calls} calls at ~{mean} each"
    );
    workers.assert_alive("a worker");
    workers.terminate_all();
    eprintln!(
        "C5: {n} jobs ({} ok, {} errors); store away {:.1}s with {frozen} settled ({samples} checks, \
         {} connections refused); done {after_back:?} after it came back; {} provider calls; \
         wall {:.1}s",
        ok.len(),
        errors.len(),
        back.duration_since(cut).as_secs_f64(),
        proxy.refused.load(Ordering::SeqCst),
        cluster.fake.stats()["requests"],
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn c7_three_schedulers_and_a_redis_restart_one_batch_per_tick() {
    let started = Instant::now();
    let docs = tempfile::tempdir().unwrap();
    write_file(docs.path(), "a.txt", b"first document");
    write_file(docs.path(), "b.md", b"second document");
    let Some(mut cluster) = Cluster::start_opts(
        "chaos_c7",
        &[],
        Options {
            aof: true,
            extra_toml: pipeline_toml("every-second", 1, docs.path()),
            ..Options::default()
        },
    ) else {
        return;
    };
    // The history keeps 100 runs: the soak stays under that.
    let phase = Duration::from_secs(if long() { 40 } else { 6 });
    let mut schedulers = Children((0..3).map(|k| spawn_scheduler(&cluster, k)).collect());
    let mut worker = Children(vec![cluster.spawn_worker(&["--concurrency", "4"])]);
    std::thread::sleep(phase);
    // Between two runs, as in C3 (a crash inside a run is c3_..._during_a_run).
    wait_for_lock(&cluster, "every-second", false, Duration::from_secs(10));
    let down_unix = unix_now();
    cluster.redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    cluster.redis.restart();
    let up_unix = unix_now();
    std::thread::sleep(phase);
    schedulers.assert_alive("a scheduler");
    for s in &mut schedulers.0 {
        terminate(s);
    }

    let runs = history(&cluster, "every-second");
    let mut ticks = BTreeSet::new();
    let mut batches = BTreeSet::new();
    for r in &runs {
        assert!(
            ticks.insert(r["tick_unix"].as_i64().unwrap()),
            "a tick ran twice: {r}\n{runs:?}"
        );
        if r["outcome"] == "submitted" {
            assert!(
                batches.insert(r["batch_id"].as_str().unwrap().to_string()),
                "{r}"
            );
        }
    }
    let before = batches_between(&runs, i64::MIN, down_unix);
    let after = batches_between(&runs, up_unix, i64::MAX);
    let min = phase.as_secs() as usize / 2;
    assert!(
        before >= min,
        "{before} ticks fired before the restart: {runs:?}"
    );
    assert!(
        after >= min,
        "{after} ticks fired after the restart: {runs:?}"
    );

    // The store agrees: one batch per tick, and no batch the history does not know of.
    let stored = pipeline_batches(&cluster);
    let stored_ticks: BTreeSet<i64> = stored.iter().map(|(_, t)| *t).collect();
    assert_eq!(
        stored_ticks.len(),
        stored.len(),
        "two batches for one tick: {stored:?}"
    );
    let stored_ids: BTreeSet<String> = stored.iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(
        stored_ids, batches,
        "the batches in the store and in the history"
    );

    for b in &batches {
        let done = cluster.wait_terminal(b, Duration::from_secs(30));
        assert_eq!(done["status"], "completed", "{done}");
    }
    for b in &batches {
        assert_invariants(&cluster, b, 2);
    }
    worker.terminate_all();
    let mut outcomes: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &runs {
        *outcomes
            .entry(r["outcome"].as_str().unwrap_or("?"))
            .or_default() += 1;
    }
    eprintln!(
        "C7: {} runs {outcomes:?}, {} batches ({before} before the restart, {after} after), \
         ticks unique; wall {:.1}s",
        runs.len(),
        batches.len(),
        started.elapsed().as_secs_f64()
    );
}
