//! The distributed path: submit to real Redis, workers in other processes, results in a real
//! S3-compatible store, a fake provider over real HTTP. Plus kill -9 and SIGTERM of workers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::cluster::{Cluster, wait_exit};
use support::*;

fn assert_exactly_once(ok: &[serde_json::Value], errors: &[serde_json::Value], expected: usize) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in ok.iter().chain(errors) {
        *seen
            .entry(line["custom_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "custom ids in more than one line: {dups:?}"
    );
    assert_eq!(
        seen.len(),
        expected,
        "every item must end as exactly one line"
    );
}

#[test]
fn submit_workers_s3_and_results() {
    let Some(cluster) = Cluster::start("submit_workers_s3", &[], 30) else {
        return;
    };
    let docs = repo_root().join("examples/documents");
    let batch = cluster.submit(docs.to_str().unwrap(), &["--task", "summarize"]);
    let id = batch["id"].as_str().unwrap().to_string();
    assert_eq!(batch["status"], "in_progress");
    assert_eq!(batch["request_counts"]["total"], 25);
    let depth = cluster.depth();
    assert_eq!(depth["pending"], 25, "{depth}");

    let mut workers: Vec<_> = (0..2)
        .map(|_| cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]))
        .collect();
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    assert_eq!(done["status"], "completed");
    assert_eq!(done["request_counts"]["completed"], 25);
    assert!(
        done["output_file"]
            .as_str()
            .unwrap()
            .starts_with(&cluster.storage_url)
    );
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_exactly_once(&ok, &errors, 25);
    for line in &ok {
        assert_eq!(
            line["response"]["body"]["model"], "small-1",
            "the cheapest adequate model"
        );
        assert!(
            line["batchyard"].get("simulated").is_none(),
            "real HTTP, not the simulator"
        );
    }
    let depth = cluster.depth();
    for state in ["pending", "in_flight", "delayed", "dead"] {
        assert_eq!(depth[state], 0, "{state} after the batch: {depth}");
    }
    assert!(cluster.fake.stats()["requests"].as_u64().unwrap() >= 25);
}

#[test]
fn transient_provider_errors_are_retried_and_typed_errors_recorded() {
    let Some(cluster) = Cluster::start("provider_errors", &[], 30) else {
        return;
    };
    let lines = [
        request_line("ok", "plain"),
        request_line("flaky", "FAKE:429_ONCE please"),
        request_line("broken", "FAKE:500_ALWAYS please"),
        request_line("bad", "FAKE:CONTEXT please"),
    ];
    let input = write_file(
        cluster.dir.path(),
        "in.jsonl",
        (lines.join("\n") + "\n").as_bytes(),
    );
    let batch = cluster.submit(input.to_str().unwrap(), &[]);
    let id = batch["id"].as_str().unwrap().to_string();
    let mut worker = cluster.spawn_worker(&["--exit-when-idle", "3"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    wait_exit(&mut worker, Duration::from_secs(30));
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_exactly_once(&ok, &errors, 4);
    let ids: Vec<_> = ok
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"ok") && ids.contains(&"flaky"), "{ids:?}");
    let code_of = |cid: &str| {
        errors
            .iter()
            .find(|l| l["custom_id"] == cid)
            .map(|l| l["error"]["code"].as_str().unwrap().to_string())
    };
    assert_eq!(code_of("broken").as_deref(), Some("transient"));
    assert_eq!(code_of("bad").as_deref(), Some("context_overflow"));
    assert_eq!(done["request_counts"]["failed"], 2);
    let flaky = ok.iter().find(|l| l["custom_id"] == "flaky").unwrap();
    assert!(
        flaky["batchyard"]["attempts"].as_u64().unwrap() >= 2,
        "{flaky}"
    );
}

#[test]
fn a_killed_worker_loses_nothing() {
    let Some(cluster) = Cluster::start("kill9", &["--latency-ms", "30"], 2) else {
        return;
    };
    let total = 600;
    let body: String = (0..total)
        .map(|i| request_line(&format!("item-{i}"), &format!("document number {i}")) + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let batch = cluster.submit(input.to_str().unwrap(), &[]);
    let id = batch["id"].as_str().unwrap().to_string();

    let mut victim = cluster.spawn_worker(&["--concurrency", "8"]);
    let start = Instant::now();
    loop {
        let status = cluster.status(&id);
        let settled = status["request_counts"]["completed"].as_u64().unwrap()
            + status["request_counts"]["failed"].as_u64().unwrap();
        if settled >= 60 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL: no drain, no acks for what it held.
    victim.kill().unwrap();
    victim.wait().unwrap();
    let depth = cluster.depth();
    assert!(
        depth["in_flight"].as_u64().unwrap() > 0,
        "the victim held jobs: {depth}"
    );

    let mut rescuer = cluster.spawn_worker(&["--concurrency", "16", "--exit-when-idle", "4"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(120));
    assert!(wait_exit(&mut rescuer, Duration::from_secs(30)).success());
    assert_eq!(done["status"], "completed", "{done}");
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_exactly_once(&ok, &errors, total);
    assert_eq!(ok.len(), total, "errors: {:?}", errors.first());
    let depth = cluster.depth();
    for state in ["pending", "in_flight", "delayed"] {
        assert_eq!(depth[state], 0, "{state}: {depth}");
    }
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let Some(cluster) = Cluster::start("sigterm", &["--latency-ms", "300"], 30) else {
        return;
    };
    let body: String = (0..40)
        .map(|i| request_line(&format!("s-{i}"), "slow") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut worker = cluster.spawn_worker(&["--concurrency", "4"]);
    let start = Instant::now();
    while cluster.depth()["in_flight"].as_u64().unwrap_or(0) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker never claimed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(&mut worker);
    // What it finished is counted; the rest is still queued for another worker.
    let batch = cluster.status(&id);
    let settled = batch["request_counts"]["completed"].as_u64().unwrap();
    let depth = cluster.depth();
    assert_eq!(
        depth["in_flight"].as_u64().unwrap() + depth["pending"].as_u64().unwrap() + settled,
        40,
        "{depth} {batch}"
    );
}

#[test]
fn a_worker_survives_a_redis_restart() {
    let Some(mut cluster) = Cluster::start_with("redis_restart", &["--latency-ms", "20"], 5, true)
    else {
        return;
    };
    let total = 300;
    let body: String = (0..total)
        .map(|i| request_line(&format!("r-{i}"), &format!("text {i}")) + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "6"]);
    let start = Instant::now();
    loop {
        let c = &cluster.status(&id)["request_counts"];
        if c["completed"].as_u64().unwrap() >= 30 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A crash of Redis: the worker must log, back off, reconnect and carry on.
    cluster.redis.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker died with Redis"
    );
    let done = cluster.wait_terminal(&id, Duration::from_secs(120));
    assert!(wait_exit(&mut worker, Duration::from_secs(60)).success());
    assert_eq!(done["status"], "completed", "{done}");
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_exactly_once(&ok, &errors, total);
}

#[test]
fn an_s3_prefix_is_an_input() {
    let Some(cluster) = Cluster::start("s3_prefix_input", &[], 30) else {
        return;
    };
    let prefix = cluster.s3.unique_prefix("inbox");
    cluster.s3_put(&format!("{prefix}/a.txt"), "first document");
    cluster.s3_put(&format!("{prefix}/sub/b.md"), "# second\n\ndocument");
    cluster.s3_put(&format!("{prefix}/skip.pdf"), "not a document");
    let url = format!("s3://{}/{prefix}/", cluster.s3.bucket);
    let out = run(cluster
        .cmd()
        .args(["run", &url, "--task", "summarize", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let batch = last_json(&out);
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["total"], 2);
    assert!(
        text(&out.stderr).contains("skipped 1 file"),
        "{}",
        text(&out.stderr)
    );
    let ok = cluster.results(batch["id"].as_str().unwrap(), false);
    let ids: std::collections::BTreeSet<_> = ok
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        ["a.txt".to_string(), "sub/b.md".to_string()]
            .into_iter()
            .collect()
    );
}
