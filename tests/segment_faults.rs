//! Result segments under faults (issue 17, section 2), against real Redis, SeaweedFS S3 and
//! the fake provider over HTTP. Each batch ends with `support::invariants::assert_invariants`
//! (each custom id exactly once, nothing pending, manifest spend = the lines' costs, queue
//! back to zero).
//!
//! - The store refuses segment writes (`403`) for a few seconds: the jobs of a segment that can't be
//!   written are not acked; they run again and end once.
//! - A worker dies between its segment write and the acks (`BATCHYARD_TEST_CRASH_AT=
//!   after_segment` aborts it there, as a `kill -9` would): its jobs are in two segments, and
//!   the output holds each once, the run the ledger settled.
//!
//! `BATCHYARD_SKIP_LLAMA=1 scripts/test --test segment_faults`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::chaos_services::{settled, submit, wait_done, wait_settled};
use support::cluster::{Cluster, Options};
use support::invariants::assert_invariants;
use support::proxy::Proxy;

/// Every record of the batch's segments, as (segment key, job id, line).
fn records(cluster: &Cluster, id: &str) -> Vec<(String, String, Value)> {
    let keys = cluster.s3_list(&cluster.s3_key(&format!("batches/{id}/segments/")));
    let mut all = Vec::new();
    for key in keys {
        let body = cluster
            .s3_get_bytes(&key)
            .expect("a listed segment is there");
        for line in String::from_utf8(body).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            let job = record["job_id"].as_str().unwrap().to_owned();
            all.push((key.clone(), job, record));
        }
    }
    all
}

#[test]
fn a_refused_segment_write_sends_its_jobs_back_and_each_ends_once() {
    let started = Instant::now();
    let n = 300;
    let Some(mut cluster) = Cluster::start_opts(
        "segments_refused",
        &["--latency-ms", "20"],
        Options {
            visibility_secs: 10,
            ..Options::default()
        },
    ) else {
        return;
    };
    let proxy = Proxy::in_front_of_store(&mut cluster);
    let id = submit(&cluster, "seg", n);
    let mut worker = cluster.spawn_worker(&["--concurrency", "8"]);
    wait_settled(&cluster, &id, 60, Duration::from_secs(60));
    proxy.set_forbidding(true);
    // Segments already written may still settle for a moment; after that nothing may.
    std::thread::sleep(Duration::from_secs(1));
    let frozen = settled(&cluster, &id);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        settled(&cluster, &id),
        frozen,
        "items settled while their segment could not be written"
    );
    proxy.set_forbidding(false);
    let done = wait_done(&cluster, &id, Duration::from_secs(90));
    assert_eq!(done["status"], "completed", "{done}");
    assert_invariants(&cluster, &id, n);
    // The jobs of the refused segments went back to the queue and ran again.
    let calls = cluster.fake.stats()["requests"].as_u64().unwrap();
    assert!(
        calls > n as u64,
        "{calls} calls for {n} items: nothing ran again"
    );
    let log = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        log.contains("cannot write the result segment"),
        "the worker says why jobs run again"
    );
    support::terminate(&mut worker);
    eprintln!(
        "segments (refused): {n} items, {calls} calls, {frozen} settled before the cut; wall {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_worker_killed_between_segment_write_and_ack_counts_once_the_settled_run() {
    let started = Instant::now();
    let n = 40;
    let Some(cluster) = Cluster::start_opts(
        "segments_killed",
        &["--latency-ms", "5"],
        Options {
            visibility_secs: 2,
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = submit(&cluster, "kill", n);
    // It writes one segment of its outcomes, then dies before settling any.
    cluster.crash_worker_at("after_segment");
    let first = records(&cluster, &id);
    assert!(!first.is_empty(), "the dead worker's segment is there");
    assert_eq!(settled(&cluster, &id), 0, "it died before settling");
    let mut worker = cluster.spawn_worker(&["--concurrency", "8"]);
    let done = wait_done(&cluster, &id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, _) = assert_invariants(&cluster, &id, n);
    support::terminate(&mut worker);

    // Each job the dead worker wrote is in two segments; its line is the second run's.
    let mut by_job: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for (key, job, record) in records(&cluster, &id) {
        by_job.entry(job).or_default().push((key, record));
    }
    let first_keys: Vec<&String> = first.iter().map(|(k, _, _)| k).collect();
    let twice: Vec<_> = by_job.values().filter(|runs| runs.len() == 2).collect();
    assert_eq!(twice.len(), first.len(), "every dead run was run again");
    for runs in twice {
        let (dead, settled_run): (Vec<_>, Vec<_>) =
            runs.iter().partition(|(k, _)| first_keys.contains(&k));
        let (dead, settled_run) = (&dead[0].1["line"], &settled_run[0].1["line"]);
        let custom = settled_run["custom_id"].as_str().unwrap();
        let out: Vec<&Value> = ok.iter().filter(|l| l["custom_id"] == custom).collect();
        assert_eq!(out.len(), 1, "{custom} once in the output");
        let request = |l: &Value| l["response"]["request_id"].clone();
        assert_ne!(
            request(dead),
            request(settled_run),
            "two calls, two answers"
        );
        assert_eq!(
            request(out[0]),
            request(settled_run),
            "{custom}: the output holds the settled run"
        );
    }
    eprintln!(
        "segments (killed): {n} items, {} written twice; wall {:.1}s",
        first.len(),
        started.elapsed().as_secs_f64()
    );
}
