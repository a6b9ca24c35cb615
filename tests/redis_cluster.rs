//! A whole deployment on a real Redis Cluster (3 masters, 3 replicas, `redis+cluster://`):
//! submit, two workers, finalize, exactly once; then the master that owns the queue's slot is
//! SIGKILLed mid-batch, its replica takes over, and the batch still completes.
//!
//! Asynchronous replication can lose writes the dead master had acknowledged (an ack, a
//! settlement, a claim): the test reports what ran twice (provider calls beyond one per
//! item) and asserts that the output still holds each item exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::chaos_workers::{
    Workers, is_terminal, provider_requests, settled, submit_batch, wait_settled,
};
use support::cluster::{Cluster, Options};
use support::invariants::assert_invariants;

const ITEMS: usize = 300;

#[test]
fn a_batch_completes_on_a_redis_cluster_through_a_master_failover() {
    let Some(cluster) = Cluster::start_opts(
        "redis_cluster_failover",
        &["--latency-ms", "40"],
        Options {
            visibility_secs: 3,
            redis_cluster: true,
            ..Options::default()
        },
    ) else {
        return;
    };
    let nodes = cluster.redis.cluster().expect("a redis cluster");
    let started = Instant::now();
    let id = submit_batch(&cluster, ITEMS, |i| format!("cluster document {i}"));
    let queue = cluster.depth()["name"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let stream = format!("by:{{{queue}}}:stream");
    let record = format!("by:batch:{{{id}}}");
    let (master, replicas) = nodes.owner_of(&stream).expect("a master owns the queue");
    let (record_master, _) = nodes.owner_of(&record).expect("a master owns the batch");
    let workers = Workers::start(&cluster, 2, &["--concurrency", "4"]);

    let before = wait_settled(&cluster, &id, ITEMS as u64 / 3, Duration::from_secs(60));
    let settled_before = settled(&before);
    nodes.kill_node(master);
    let killed_at = Instant::now();
    // The replica is promoted once the others have missed the master for the node timeout.
    let promoted = loop {
        if let Some((now, _)) = nodes.owner_of(&stream).filter(|(now, _)| *now != master) {
            break now;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "no replica took over from {master}: {}",
            nodes.log_tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let failover = killed_at.elapsed();
    assert!(
        replicas.contains(&promoted),
        "the new master {promoted} is one of {master}'s replicas {replicas:?}"
    );

    let limit = Duration::from_secs(90);
    let done = loop {
        let status = cluster.status(&id);
        if is_terminal(&status) {
            break status;
        }
        assert!(
            started.elapsed() < limit,
            "the batch did not finish within {limit:?} after the failover: {status}\n{}",
            nodes.log_tails()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = assert_invariants(&cluster, &id, ITEMS);
    assert_eq!(ok.len(), ITEMS, "every item succeeded: {errors:?}");
    let calls = provider_requests(&cluster);
    assert!(
        calls >= ITEMS as u64,
        "each item called the provider: {calls}"
    );
    // At most what was in flight around the kill, plus writes the replica never received,
    // runs twice: bounded by the items left when the master died.
    assert!(
        calls - (ITEMS as u64) <= ITEMS as u64 - settled_before,
        "{calls} provider calls for {ITEMS} items"
    );
    eprintln!(
        "redis cluster failover: {ITEMS} items, {settled_before} settled before the kill of \
         {master} (queue's master; batch record on {record_master}), replica {promoted} \
         promoted after {failover:.1?}, {calls} provider calls ({} ran twice), {:.1?} in all",
        calls - ITEMS as u64,
        started.elapsed()
    );
    drop(workers);
}
