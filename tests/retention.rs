//! Retention end to end: Redis memory back to its empty baseline after 10,000 ended batches
//! are collected, and a pipeline that never pays twice for a document after retention removed
//! its old batches and Redis lost everything. Real redis-server, the real S3-compatible
//! server, the batchyard binary. The order of a batch's removal under faults between its
//! steps is tested in src/gc/tests.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use batchyard_jobs::batch::{BatchRecord, BatchState, now_secs};
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::ledger::redis::RedisLedger;
use batchyard_testkit::TestRedis;
use support::scheduler::{cluster_with, pipeline_run};
use support::*;

async fn dbsize(conn: &mut batchyard_testkit::redis::RawConn) -> u64 {
    redis::cmd("DBSIZE").query_async(conn).await.unwrap()
}

async fn zcard(conn: &mut batchyard_testkit::redis::RawConn) -> u64 {
    redis::cmd("ZCARD")
        .arg(batchyard_jobs::keys::BATCH_INDEX)
        .query_async(conn)
        .await
        .unwrap()
}

async fn memory_info(conn: &mut batchyard_testkit::redis::RawConn) -> String {
    redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap()
}

async fn used_memory(conn: &mut batchyard_testkit::redis::RawConn) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Ended batches as the ledger keeps them: record, index entry, an end notification.
async fn ended_batches(ledger: &RedisLedger, prefix: &str, n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("batch_{prefix}{i:06}")).collect();
    for chunk in ids.chunks(200) {
        futures::future::join_all(chunk.iter().map(|id| async move {
            let record = BatchRecord::new(id.clone(), 3, "file://x".into(), now_secs() - 3600);
            ledger.create(&record).await.unwrap();
            ledger.set_state(id, BatchState::Completed).await.unwrap();
            ledger
                .claim_notification(id, now_secs(), now_secs(), Duration::from_secs(30))
                .await
                .unwrap();
        }))
        .await;
    }
}

/// `status --json` must work (it lists batches, reading the index).
fn status(dir: &std::path::Path, config: &std::path::Path) {
    let out = run(batchyard(dir)
        .arg("--config")
        .arg(config)
        .args(["status", "--json"]));
    assert!(out.status.success(), "status failed: {}", text(&out.stderr));
}

fn gc(dir: &std::path::Path, config: &std::path::Path) -> serde_json::Value {
    let out = run(batchyard(dir)
        .arg("--config")
        .arg(config)
        .args(["gc", "--json"]));
    assert!(out.status.success(), "gc failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_memory_returns_to_its_empty_baseline_after_ten_thousand_batches() {
    let Some(redis) = TestRedis::start("retention_memory") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("batchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[queue]\nredis_url = \"{}\"\n[storage]\nurl = \"file://{}\"\n[retention]\nbatches = \"1s\"\nmax_per_pass = 2000\ninterval = \"1s\"\n",
            redis.url(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let ledger = RedisLedger::new(
        batchyard_jobs::redis_conn::connect(redis.url())
            .await
            .unwrap(),
    );
    let mut conn = redis.raw().await;
    // The baseline: after one batch went through gc and status, so the queue's stream and
    // the scripts Redis caches are there before and after.
    ended_batches(&ledger, "warm", 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gc(dir.path(), &config)["batches"]["removed"], 1);
    status(dir.path(), &config);
    let base_keys = dbsize(&mut conn).await;
    let base_mem = used_memory(&mut conn).await;

    ended_batches(&ledger, "", 10_000).await;
    let full_keys = dbsize(&mut conn).await;
    let full_mem = used_memory(&mut conn).await;
    assert_eq!(
        full_keys,
        base_keys + 20_002,
        "a record and a notification each, the index and the tenant's index"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A collector killed part way: readers are fine, and the next one finishes the job.
    let mut killed = batchyard(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("gc")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while zcard(&mut conn).await > 7_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(killed.id(), "KILL");
    let _ = killed.wait();
    let left = zcard(&mut conn).await;
    assert!((1..10_000).contains(&left), "killed with {left} left");
    status(dir.path(), &config);
    // The dead collector's lease would lapse in 3 minutes; drop it as that would.
    let () = redis::cmd("DEL")
        .arg(batchyard_jobs::keys::GC_LEASE)
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    let report = gc(dir.path(), &config);
    let took = started.elapsed();
    assert_eq!(report["batches"]["removed"], left, "{report}");
    assert_eq!(report["batches"]["kept"], 0, "{report}");
    assert_eq!(dbsize(&mut conn).await, base_keys, "keys left behind");
    // Redis shrinks its emptied key tables in the background (serverCron): give it a moment.
    let margin = 64 * 1024;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = used_memory(&mut conn).await;
    while after > base_mem + margin && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = used_memory(&mut conn).await;
    }
    eprintln!(
        "retention: {base_keys} keys / {base_mem} B empty, {full_keys} keys / {full_mem} B with 10,000 ended batches, {} keys / {after} B after a gc killed with {left} left and one more gc ({took:?})",
        dbsize(&mut conn).await
    );
    assert!(
        after <= base_mem + margin,
        "used_memory {after} B after gc vs {base_mem} B empty (with the batches: {full_mem} B): {}",
        memory_info(&mut conn).await
    );

    // A worker collects by itself, every `interval`.
    ended_batches(&ledger, "bg", 50).await;
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let mut worker = batchyard(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("worker")
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left = 50;
    while left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = zcard(&mut conn).await;
    }
    terminate(&mut worker);
    assert_eq!(
        left,
        0,
        "the worker's collector left batches: {}",
        std::fs::read_to_string(dir.path().join("worker.log")).unwrap()
    );
}

fn gc_cluster(cluster: &support::cluster::Cluster, dry_run: bool) -> serde_json::Value {
    let mut cmd = cluster.cmd();
    cmd.args(["gc", "--json"]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "gc failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_pipeline_never_pays_twice_after_retention_removed_its_batches_and_redis_lost_its_data() {
    let inbox = tempfile::tempdir().unwrap();
    write_file(inbox.path(), "a.txt", b"first document");
    write_file(inbox.path(), "b.md", b"second document");
    let extra = format!(
        "[pipelines.inbox]\nschedule = \"0 2 * * *\"\ninput = \"file://{}\"\ntask = \"summarize\"\n\
         [retention]\nbatches = \"1s\"\n",
        inbox.path().display()
    );
    let Some(cluster) = cluster_with("retention_pipeline", extra) else {
        return;
    };
    // Two batches run to their end; a third is submitted and never runs.
    let mut ended = Vec::new();
    for doc in ["", "c.txt"] {
        if !doc.is_empty() {
            write_file(inbox.path(), doc, b"third document");
        }
        let run = pipeline_run(&cluster, "inbox");
        assert_eq!(run["outcome"], "submitted", "{run}");
        let id = run["batch_id"].as_str().unwrap().to_string();
        let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "1"]);
        let done = cluster.wait_terminal(&id, Duration::from_secs(60));
        assert!(support::cluster::wait_exit(&mut worker, Duration::from_secs(30)).success());
        assert_eq!(done["status"], "completed", "{done}");
        ended.push(id);
    }
    write_file(inbox.path(), "d.txt", b"fourth document");
    let live = pipeline_run(&cluster, "inbox");
    assert_eq!(live["items"], 1, "{live}");
    let live_id = live["batch_id"].as_str().unwrap().to_string();
    let paid = cluster.fake.stats()["requests"].as_u64().unwrap();
    assert_eq!(paid, 3, "a, b and c were called once each");
    std::thread::sleep(Duration::from_millis(1100));

    // A dry run only says what would go.
    let would = gc_cluster(&cluster, true);
    assert_eq!(would["batches"]["removed"], 2, "{would}");
    assert_eq!(cluster.status(&ended[0])["status"], "completed");

    let report = gc_cluster(&cluster, false);
    assert_eq!(report["batches"]["removed"], 2, "{report}");
    assert_eq!(report["pipelines_compacted"], 1, "{report}");
    assert!(
        report["objects"]["removed"].as_u64().unwrap() >= 2 * 4,
        "{report}"
    );
    for id in &ended {
        let out = run(cluster.cmd().args(["status", id, "--json"]));
        assert!(!out.status.success(), "{id} is still shown");
        assert!(
            cluster
                .s3_get_bytes(&cluster.s3_key(&format!("batches/{id}/manifest.json")))
                .is_none()
        );
        assert!(
            cluster
                .s3_get_bytes(&cluster.s3_key(&format!("pipelines/inbox/batches/{id}.json")))
                .is_none()
        );
    }
    // The live batch and its origin record stay; the snapshot holds the others' documents.
    assert_eq!(cluster.status(&live_id)["status"], "in_progress");
    let snapshot = cluster.s3_get(&cluster.s3_key("pipelines/inbox/seen-snapshot.json"));
    let docs = snapshot["documents"].as_object().unwrap();
    assert!(
        ["a.txt", "b.md", "c.txt"]
            .iter()
            .all(|d| docs.contains_key(*d)),
        "{snapshot}"
    );

    // Redis loses everything: the next run takes nothing it took before.
    let client = redis::Client::open(cluster.redis.url.as_str()).unwrap();
    let () = redis::cmd("FLUSHALL")
        .query(&mut client.get_connection().unwrap())
        .unwrap();
    let after = pipeline_run(&cluster, "inbox");
    assert_eq!(after["outcome"], "nothing_new", "{after}");
    write_file(inbox.path(), "e.txt", b"fifth document");
    let next = pipeline_run(&cluster, "inbox");
    assert_eq!(next["items"], 1, "only the new document: {next}");
    assert_eq!(cluster.fake.stats()["requests"].as_u64().unwrap(), paid);
}
