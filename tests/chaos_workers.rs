//! Chaos tests of issue 7 about workers (C1, C2, C6): real worker processes are SIGKILLed,
//! SIGSTOPped past the visibility timeout, or crashed by a poison item, and every batch must
//! still end with the invariants of `support::invariants::assert_invariants`.
//!
//! By default (CI) each test runs a short version, well under 90 s. The long soak:
//!
//! ```text
//! BATCHYARD_CHAOS_LONG=1 BATCHYARD_SKIP_LLAMA=1 scripts/test --test chaos_workers -- --nocapture
//! ```
//!
//! Victims and kill intervals come from a seeded RNG; the seed is printed, and
//! `BATCHYARD_CHAOS_SEED=N` replays it. Each test prints what it measured (jobs, kills,
//! reclaims, duplicate executions, wall time) on stderr: see it with `--nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::chaos_workers::*;
use support::cluster::{Cluster, Options};
use support::invariants::assert_invariants;
use support::signal;

/// The cluster config's `max_reclaims` (see `tests/support/cluster.rs`).
const MAX_RECLAIMS: u64 = 3;

fn cluster(test: &str, fake_args: &[&str], visibility_secs: u64) -> Option<Cluster> {
    Cluster::start_opts(
        test,
        fake_args,
        Options {
            visibility_secs,
            ..Options::default()
        },
    )
}

/// C1: every couple of seconds one of three workers, picked at random, is SIGKILLed and a
/// fresh one started in its place. Nothing is lost or written twice.
#[test]
fn c1_random_sigkill_of_one_of_three_workers() {
    let long = long_mode();
    let (n, min_kills, gap, limit) = if long {
        let gap = (Duration::from_secs(2), Duration::from_secs(4));
        (20_000, 10, gap, Duration::from_secs(900))
    } else {
        let gap = (Duration::from_millis(1500), Duration::from_millis(2500));
        (2_000, 3, gap, Duration::from_secs(120))
    };
    let Some(cluster) = cluster("chaos_c1", &["--latency-ms", "80"], 3) else {
        return;
    };
    let mut rng = Rng::from_env("c1");
    let started = Instant::now();
    let id = submit_batch(&cluster, n, |i| format!("chaos document {i}"));
    let mut workers = Workers::start(&cluster, 3, &["--concurrency", "4"]);

    let (mut kills, mut held_by_killed) = (0u64, 0u64);
    let mut next_kill = Instant::now() + rng.between(gap.0, gap.1);
    let done = loop {
        let status = cluster.status(&id);
        if is_terminal(&status) {
            break status;
        }
        assert!(
            started.elapsed() < limit,
            "batch not done within {limit:?} after {kills} kills: {status}"
        );
        // Kills go on until the end: a finalizer killed mid-write is taken over by a sweep.
        if Instant::now() >= next_kill {
            let slot = rng.below(workers.count() as u64) as usize;
            let pid = workers.kill(slot);
            // Dead now, so what it holds is exactly what the queue must reclaim.
            held_by_killed += held_by(&cluster, pid);
            workers.restart(slot);
            kills += 1;
            next_kill = Instant::now() + rng.between(gap.0, gap.1);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let batch_secs = started.elapsed().as_secs_f64();
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = assert_invariants(&cluster, &id, n);
    let requests = provider_requests(&cluster);
    let lost = errors
        .iter()
        .filter(|e| error_code(e) == "worker_lost")
        .count();
    eprintln!(
        "c1 facts: mode={} jobs={n} workers=3 kills={kills} workers_spawned={} \
         held_by_killed_workers(reclaimed)={held_by_killed} provider_requests={requests} \
         duplicate_executions={} ok={} errors={} worker_lost={lost} batch_wall_s={batch_secs:.1} \
         total_wall_s={:.1}",
        if long { "long" } else { "short" },
        workers.spawned,
        requests.saturating_sub(n as u64),
        ok.len(),
        errors.len(),
        started.elapsed().as_secs_f64(),
    );
    assert!(
        kills >= min_kills,
        "only {kills} kills happened during the batch: the batch was too short to prove anything"
    );
    assert!(
        held_by_killed > 0,
        "no killed worker held a job: nothing was reclaimed, so nothing was proven"
    );
    // Only a job caught by more than max_reclaims kills may fail, and only as worker_lost.
    assert_eq!(lost, errors.len(), "unexpected errors: {errors:?}");
    assert!(
        requests >= ok.len() as u64,
        "every completed item called the provider at least once"
    );
}

/// C2: a worker SIGSTOPped past the visibility timeout has its jobs reclaimed and run by
/// another one; after SIGCONT it finishes them too (duplicate executions), yet every item has
/// exactly one output line.
#[test]
fn c2_sigstop_past_the_visibility_timeout_then_sigcont() {
    let long = long_mode();
    let visibility = if long { 3 } else { 2 };
    let (n, stop_for, limit) = if long {
        (3_000, Duration::from_secs(30), Duration::from_secs(600))
    } else {
        (
            600,
            Duration::from_secs(visibility + 3),
            Duration::from_secs(75),
        )
    };
    let Some(cluster) = cluster("chaos_c2", &["--latency-ms", "100"], visibility) else {
        return;
    };
    let started = Instant::now();
    let id = submit_batch(&cluster, n, |i| format!("stopped document {i}"));
    let mut workers = Workers::start(&cluster, 2, &["--concurrency", "8"]);
    wait_settled(&cluster, &id, n as u64 / 10, Duration::from_secs(60));

    let victim = workers.pid(0);
    signal(victim, "STOP");
    let stopped_at = Instant::now();
    let held_at_stop = held_by(&cluster, victim);
    std::thread::sleep(stop_for.saturating_sub(stopped_at.elapsed()));
    let held_before_cont = held_by(&cluster, victim);
    let settled_at_cont = settled(&cluster.status(&id));
    signal(victim, "CONT");
    let stopped_secs = stopped_at.elapsed().as_secs_f64();

    let done = cluster.wait_terminal(&id, limit.saturating_sub(started.elapsed()));
    let batch_secs = started.elapsed().as_secs_f64();
    // Let the resumed worker finish what it still held, so its late writes race the result.
    std::thread::sleep(Duration::from_secs(1));
    let resumed_alive = workers.alive(0);
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = assert_invariants(&cluster, &id, n);
    let requests = provider_requests(&cluster);
    let reclaimed = held_at_stop.saturating_sub(held_before_cont);
    eprintln!(
        "c2 facts: mode={} jobs={n} visibility_s={visibility} stopped_s={stopped_secs:.1} \
         held_at_stop={held_at_stop} held_before_cont={held_before_cont} \
         reclaimed_from_stopped={reclaimed} settled_at_cont={settled_at_cont} \
         provider_requests={requests} duplicate_executions={} ok={} errors={} \
         resumed_worker_alive={resumed_alive} batch_wall_s={batch_secs:.1} total_wall_s={:.1}",
        if long { "long" } else { "short" },
        requests.saturating_sub(n as u64),
        ok.len(),
        errors.len(),
        started.elapsed().as_secs_f64(),
    );
    assert!(
        held_at_stop > 0,
        "the stopped worker held no job: nothing to reclaim"
    );
    assert!(
        reclaimed > 0,
        "no job was reclaimed from the stopped worker within {stopped_secs:.1} s"
    );
    assert!(
        requests > n as u64,
        "no duplicate execution ({requests} calls for {n} items): the scenario proved nothing"
    );
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    assert!(resumed_alive, "the resumed worker died");
}

/// C6: an item whose call hangs (the fake's `FAKE:HANG`) stands in for one that crashes its
/// worker: each time it hangs, the one running worker is SIGKILLed and replaced. After
/// `max_reclaims` reclaims the item is dead-lettered as `worker_lost`; the rest completes.
#[test]
fn c6_poison_item_is_dead_lettered_as_worker_lost() {
    let long = long_mode();
    let (n, limit) = if long {
        (2_000, Duration::from_secs(300))
    } else {
        (60, Duration::from_secs(75))
    };
    let poison = n / 2;
    let poison_id = format!("c-{poison}");
    let Some(cluster) = cluster("chaos_c6", &["--hang-secs", "300"], 2) else {
        return;
    };
    let started = Instant::now();
    let id = submit_batch(&cluster, n, |i| {
        if i == poison {
            "this item crashes its worker FAKE:HANG".to_string()
        } else {
            format!("healthy document {i}")
        }
    });
    let mut workers = Workers::start(&cluster, 1, &["--concurrency", "4"]);

    let (mut kills, mut held_by_killed) = (0u64, 0u64);
    let done = loop {
        let status = cluster.status(&id);
        if is_terminal(&status) {
            break status;
        }
        assert!(
            started.elapsed() < limit,
            "batch not done within {limit:?} after {kills} kills: {status}"
        );
        let hung = cluster.fake.stats()["hung"].as_u64().unwrap_or(0);
        if hung > kills {
            assert!(
                kills <= MAX_RECLAIMS + 2,
                "the poison item was run {hung} times; it should be dead-lettered after {} runs",
                MAX_RECLAIMS + 1
            );
            // A moment for the worker's healthy jobs to finish, so only the poison is caught.
            std::thread::sleep(Duration::from_millis(300));
            let pid = workers.kill(0);
            held_by_killed += held_by(&cluster, pid);
            workers.restart(0);
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let batch_secs = started.elapsed().as_secs_f64();
    let hung = cluster.fake.stats()["hung"].as_u64().unwrap_or(0);
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = assert_invariants(&cluster, &id, n);
    eprintln!(
        "c6 facts: mode={} jobs={n} max_reclaims={MAX_RECLAIMS} poison_runs(hung)={hung} \
         kills={kills} held_by_killed_workers(reclaimed)={held_by_killed} ok={} errors={} \
         error_codes={:?} batch_wall_s={batch_secs:.1} total_wall_s={:.1}",
        if long { "long" } else { "short" },
        ok.len(),
        errors.len(),
        errors.iter().map(error_code).collect::<Vec<_>>(),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(errors.len(), 1, "only the poison fails: {errors:?}");
    assert_eq!(errors[0]["custom_id"], poison_id.as_str(), "{errors:?}");
    assert_eq!(error_code(&errors[0]), "worker_lost", "{errors:?}");
    assert_eq!(ok.len(), n - 1, "every other item completed");
    // Delivered max_reclaims + 1 times, each one crashing its worker; the next delivery is
    // dead-lettered without a call.
    assert_eq!(hung, MAX_RECLAIMS + 1, "runs of the poison item");
    assert_eq!(
        kills,
        MAX_RECLAIMS + 1,
        "workers crashed by the poison item"
    );
    assert!(
        held_by_killed >= kills,
        "each killed worker held the poison"
    );
}

/// C1, the case the random kills above leave out: the worker that is writing the batch's
/// files is SIGKILLed. Another worker must finish the finalization.
/// C1, aimed: the worker writing the batch files is SIGKILLed. Its lease lapses and another
/// worker's sweep finishes the batch.
#[test]
fn c1_a_finalizer_killed_mid_finalization_is_replaced() {
    let n = if long_mode() { 20_000 } else { 3_000 };
    let Some(cluster) = cluster("chaos_c1_final", &[], 2) else {
        return;
    };
    let started = Instant::now();
    let id = submit_batch(&cluster, n, |i| format!("finalized document {i}"));
    let mut workers = Workers::start(&cluster, 1, &["--concurrency", "16"]);
    let status = loop {
        let status = cluster.status(&id);
        if status["status"] == "finalizing" || is_terminal(&status) {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(75),
            "batch never reached finalizing: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = workers.kill(0);
    let held = held_by(&cluster, pid);
    let killed_while = cluster.status(&id)["status"].clone();
    assert_eq!(
        (status["status"].as_str(), killed_while.as_str()),
        (Some("finalizing"), Some("finalizing")),
        "the finalization was too quick to catch; raise n"
    );
    workers.restart(0);
    let killed_at = Instant::now();
    let done = loop {
        let status = cluster.status(&id);
        if is_terminal(&status) || killed_at.elapsed() > Duration::from_secs(45) {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "c1 finalizer facts: jobs={n} held_by_killed_finalizer={held} status={} \
         waited_after_kill_s={:.1} 'another worker is finalizing' log lines={} wall_s={:.1}",
        done["status"],
        killed_at.elapsed().as_secs_f64(),
        worker_log_count(&cluster, "another worker is finalizing"),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(done["status"], "completed", "{done}");
    assert_invariants(&cluster, &id, n);
}
