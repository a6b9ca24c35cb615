//! A whole deployment on a real Redis Cluster (3 masters, 3 replicas, `redis+cluster://`):
//! submit, two workers, finalize, exactly once; then the master that owns the queue's slot is
//! SIGKILLed mid-batch, its replica takes over, and the batch still completes.
//!
//! Asynchronous replication can lose writes the dead master had acknowledged (an ack, a
//! settlement, a claim): the test reports what ran twice (provider calls beyond one per
//! item) and asserts that the output still holds each item exactly once.
//!
//! Also on a cluster: a batch over TLS only (`rediss+cluster://` with a password and a
//! private CA, TLS on the cluster bus and replication too), a CA that did not sign the nodes
//! refused, and the pipeline scheduler (two replicas) running each tick once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use batchyard_testkit::TestCluster;
use serde_json::Value;

use support::chaos_workers::{
    Workers, is_terminal, provider_requests, settled, submit_batch, wait_settled,
};
use support::cluster::{Cluster, Options};
use support::invariants::assert_invariants;
use support::scheduler::{Children, history, pipeline_toml, spawn_scheduler};
use support::{run, terminate, text, write_file};

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
    let (promoted, failover) = wait_promoted(nodes, &stream, master);
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

const TLS_PASSWORD: &str = "tls-cluster-pw-canary";

/// A batch end to end through a TLS-only cluster with a password, trusting the CA made for
/// the test (`tls_ca_file`); each item runs once. A CA that did not sign the nodes is refused
/// quickly, naming the setting to fix and never the password.
#[test]
fn a_batch_runs_on_a_tls_redis_cluster_trusting_a_private_ca() {
    const N: usize = 40;
    let begun = Instant::now();
    let Some(cluster) = Cluster::start_opts(
        "redis_cluster_tls",
        &[],
        Options {
            redis_cluster: true,
            redis_cluster_tls: Some(TLS_PASSWORD.into()),
            ..Options::default()
        },
    ) else {
        return;
    };
    let formed = begun.elapsed();
    let url = cluster.redis.url.clone();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let started = Instant::now();
    let id = submit_batch(&cluster, N, |i| format!("tls cluster document {i}"));
    let workers = Workers::start(&cluster, 1, &["--concurrency", "8"]);
    let mut done = wait_settled(&cluster, &id, N as u64, Duration::from_secs(60));
    let settled_at = Instant::now();
    while !is_terminal(&done) {
        assert!(
            settled_at.elapsed() < Duration::from_secs(30),
            "the settled batch did not finish: {done}"
        );
        std::thread::sleep(Duration::from_millis(100));
        done = cluster.status(&id);
    }
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = assert_invariants(&cluster, &id, N);
    assert_eq!(ok.len(), N, "every item succeeded: {errors:?}");
    assert_eq!(provider_requests(&cluster), N as u64, "each item ran once");
    drop(workers);
    let batch_secs = started.elapsed();

    // A CA of its own, which signed none of the nodes' certificates.
    let other = tempfile::tempdir().unwrap();
    assert!(batchyard_testkit::make_tls_certificates(
        "redis_cluster_tls",
        other.path()
    ));
    let wrong = other.path().join("ca.pem");
    let (base, _) = url.split_once("?tls_ca_file=").unwrap();
    let wrong_url = format!("{base}?tls_ca_file={}", wrong.display());
    let refused_at = Instant::now();
    let out = run(cluster
        .cmd()
        .env("BATCHYARD_REDIS_URL", &wrong_url)
        .args(["status", "--json"]));
    let refused = refused_at.elapsed();
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(!out.status.success(), "{all}");
    let lower = all.to_lowercase();
    assert!(lower.contains("certificate"), "the cause is named: {all}");
    assert!(lower.contains("tls_ca_file"), "the setting is named: {all}");
    assert!(!all.contains(TLS_PASSWORD), "the password shows: {all}");
    assert!(
        refused < Duration::from_secs(30),
        "refused after {refused:?}"
    );
    eprintln!(
        "redis cluster over TLS: formed (6 nodes, certificates, S3, fake) in {formed:.1?}, \
         {N} items from submit to completed in {batch_secs:.1?}, a wrong CA refused in \
         {refused:.1?}"
    );
}

/// Two `batchyard scheduler` replicas on a cluster, a pipeline due every 2 s with only-new
/// on: the first tick submits both documents; then the master that owns the pipeline's keys
/// (one hash tag: claims, lock, seen state, history) is SIGKILLed and its replica takes over;
/// a document added after that is submitted once by a later tick, the ticks between find
/// nothing new or fail while the master is gone; no tick runs twice, every batch is a run's,
/// and the seen state holds the three documents.
#[test]
fn two_schedulers_on_a_redis_cluster_run_each_tick_once_through_a_failover() {
    let docs = tempfile::tempdir().unwrap();
    write_file(docs.path(), "a.txt", b"first document");
    write_file(docs.path(), "b.txt", b"second document");
    let toml =
        pipeline_toml("on-cluster", 2, docs.path()).replace("only_new = false", "only_new = true");
    let Some(cluster) = Cluster::start_opts(
        "redis_cluster_pipelines",
        &[],
        Options {
            redis_cluster: true,
            extra_toml: toml,
            ..Options::default()
        },
    ) else {
        return;
    };
    let nodes = cluster.redis.cluster().expect("a redis cluster");
    let mut schedulers = Children((0..2).map(|n| spawn_scheduler(&cluster, n)).collect());
    let wait_for = |what: &str, done: &dyn Fn(&[Value]) -> bool| {
        let start = Instant::now();
        loop {
            let runs = history(&cluster, "on-cluster");
            if done(&runs) {
                return runs;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what} within 30 s: {runs:?}\n{}",
                nodes.log_tails()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("the first tick submitted both documents", &|runs| {
        submitted(runs, 2) == 1
    });
    let seen = "by:pipeline:{on-cluster}:seen";
    let (master, promoted, failover) = fail_over(nodes, seen);
    // Added whole (a rename), so no tick sees half of it.
    let staged = tempfile::tempdir().unwrap();
    let file = write_file(staged.path(), "c.txt", b"a later document");
    std::fs::rename(&file, docs.path().join("c.txt")).unwrap();
    wait_for(
        "the new document submitted, then a tick with nothing new",
        &|runs| submitted(runs, 1) == 1 && runs[0]["outcome"] == "nothing_new",
    );
    schedulers.assert_alive("a scheduler");
    for s in &mut schedulers.0 {
        terminate(s);
    }
    let runs = history(&cluster, "on-cluster");
    let failed = assert_each_tick_once(&cluster, &runs);
    let (owner, _) = nodes.owner_of(seen).expect("a master owns the seen state");
    let fields = nodes.cli(owner, &["HKEYS", seen]);
    let names: Vec<&str> = fields.lines().map(str::trim).collect();
    assert_eq!(
        names.len(),
        3,
        "the seen state holds every document: {fields}"
    );
    assert!(names.iter().all(|n| n.ends_with(".txt")), "{names:?}");
    let errors: Vec<&Value> = runs
        .iter()
        .map(|r| &r["error"])
        .filter(|e| !e.is_null())
        .collect();
    eprintln!(
        "pipelines on a redis cluster: {} runs, 2 batches, {failed} failed while {master} (the \
         pipeline's master) was down {errors:?}; replica {promoted} promoted after \
         {failover:.1?}",
        runs.len()
    );
}

/// Runs of `runs` that submitted a batch of `items` documents.
fn submitted(runs: &[Value], items: u64) -> usize {
    runs.iter()
        .filter(|r| r["outcome"] == "submitted" && r["items"] == items)
        .count()
}

/// Waits until the master that owns `key`'s slot has sent its replica everything, SIGKILLs it
/// and waits for the replica's promotion: (the old master, the new, how long that took).
fn fail_over(nodes: &TestCluster, key: &str) -> (u16, u16, Duration) {
    let (master, replicas) = nodes.owner_of(key).expect("a master owns the key");
    let offset = |port: u16, field: &str| -> Option<u64> {
        let info = nodes.cli(port, &["INFO", "replication"]);
        info.lines()
            .find_map(|l| l.trim().strip_prefix(field))
            .and_then(|v| v.parse().ok())
    };
    let started = Instant::now();
    // Nothing the schedulers wrote is lost with the master: the test is about the failover,
    // not about asynchronous replication (tests above cover a lost write).
    while offset(master, "master_repl_offset:") != offset(replicas[0], "slave_repl_offset:") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replica of {master} did not catch up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes.kill_node(master);
    let (promoted, took) = wait_promoted(nodes, key, master);
    (master, promoted, took)
}

/// Waits for a replica to take `key`'s slot over from the killed `master` (once the others
/// have missed it for the node timeout): the new master, and how long after the kill.
fn wait_promoted(nodes: &TestCluster, key: &str, master: u16) -> (u16, Duration) {
    let killed_at = Instant::now();
    loop {
        if let Some((now, _)) = nodes.owner_of(key).filter(|(now, _)| *now != master) {
            return (now, killed_at.elapsed());
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "no replica took over from {master}: {}",
            nodes.log_tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every run a scheduled tick, each tick once, each submitted run its own batch, and the ledger
/// holding exactly those batches; returns how many runs failed.
fn assert_each_tick_once(cluster: &Cluster, runs: &[Value]) -> usize {
    let mut ticks = BTreeSet::new();
    let mut batches = BTreeSet::new();
    let mut failed = 0;
    for r in runs {
        assert_eq!(r["trigger"], "schedule", "{r}");
        assert!(
            ticks.insert(r["tick"].to_string()),
            "a tick ran twice: {runs:?}"
        );
        match r["outcome"].as_str() {
            Some("submitted") => assert!(batches.insert(r["batch_id"].to_string())),
            Some("nothing_new") => assert!(r["batch_id"].is_null(), "{r}"),
            // A tick may fail while the master is gone, never because a slot moved.
            Some("failed") => {
                assert!(!r["error"].to_string().contains("Moved"), "{r}");
                failed += 1;
            }
            other => panic!("unexpected outcome {other:?}: {r}"),
        }
    }
    assert_eq!(
        (submitted(runs, 2), submitted(runs, 1), batches.len()),
        (1, 1, 2),
        "one batch per new set of documents: {runs:?}"
    );
    let out = run(cluster.cmd().args(["status", "--json"]));
    let in_ledger: BTreeSet<String> = support::last_json(&out)["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].to_string())
        .collect();
    assert_eq!(in_ledger, batches, "batches in the ledger vs runs");
    failed
}
