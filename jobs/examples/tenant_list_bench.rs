//! Benchmark of a tenant's batch listing (BENCHMARKS.md, "Tenant listing"). Needs a
//! redis-server it may flush: `--redis redis://127.0.0.1:PORT`. Prints one JSON object.
//!
//! `--mine` batches of tenant `acme`, created first (the worst case for a scan: the newest are
//! everyone else's), then `--others` batches of other tenants. Timed, `--rounds` times each,
//! the median reported: the first page (21 records, as `GET /v1/batches` asks for a page of
//! 20) the old way (the newest records read and filtered, 4× more each round, as
//! `visible_records` did) and from the tenant's index; then the one-time backfill of the
//! tenant indexes over every batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use batchyard_jobs::batch::{BatchRecord, BatchState, now_secs};
use batchyard_jobs::keys;
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::ledger::redis::RedisLedger;
use futures::StreamExt;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(name: &str, default: usize) -> usize {
    arg(name).map_or(default, |v| v.parse().unwrap())
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// What listing a tenant's first page cost before its index.
async fn scan(ledger: &RedisLedger, tenant: &str, want: usize) -> Vec<BatchRecord> {
    let mut fetch = want;
    loop {
        let records = ledger.list(fetch).await.unwrap();
        let exhausted = records.len() < fetch || fetch >= 100_000;
        let mine: Vec<BatchRecord> = records.into_iter().filter(|r| r.tenant == tenant).collect();
        if mine.len() >= want || exhausted {
            return mine;
        }
        fetch = (fetch * 4).min(100_000);
    }
}

#[tokio::main]
async fn main() {
    let url = arg("--redis").expect("--redis redis://127.0.0.1:PORT");
    let (mine, others, rounds) = (
        num("--mine", 50),
        num("--others", 20_000),
        num("--rounds", 5),
    );
    let conn = batchyard_jobs::redis_conn::connect(&url).await.unwrap();
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    let ledger = RedisLedger::new(conn);
    let t0 = now_secs() - 100_000;
    let records = (0..mine + others).map(|i| {
        let tenant = if i < mine {
            "acme".to_string()
        } else {
            format!("team-{}", i % 7)
        };
        BatchRecord {
            state: BatchState::Completed,
            tenant,
            ..BatchRecord::new(
                format!("batch_{i:06}"),
                10,
                "file:///x".into(),
                t0 + i as u64,
            )
        }
    });
    let started = Instant::now();
    futures::stream::iter(records)
        .for_each_concurrent(64, |r| {
            let ledger = ledger.clone();
            async move { ledger.create(&r).await.unwrap() }
        })
        .await;
    let create_s = started.elapsed().as_secs_f64();

    let want = 21;
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let mut old = scan(&ledger, "acme", want).await;
        old.truncate(want);
        before.push(t.elapsed());
        let t = Instant::now();
        let new = ledger.list_tenant("acme", want).await.unwrap();
        after.push(t.elapsed());
        assert_eq!(
            old.iter().map(|r| &r.id).collect::<Vec<_>>(),
            new.iter().map(|r| &r.id).collect::<Vec<_>>()
        );
    }
    // The backfill, as after an upgrade: no tenant index, no mark.
    let mut del = redis::pipe();
    del.del(keys::TENANT_BACKFILL);
    for t in (0..7)
        .map(|i| format!("team-{i}"))
        .chain(["acme".to_string()])
    {
        del.del(keys::tenant_batches(&t));
    }
    let () = del.query_async(&mut raw).await.unwrap();
    let t = Instant::now();
    assert!(ledger.backfill_tenants(usize::MAX).await.unwrap());
    let backfill = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "mine": mine,
            "others": others,
            "page": want,
            "created_s": create_s,
            "scan_ms": median(before),
            "index_ms": median(after),
            "backfill_ms": backfill,
            "rounds": rounds,
        })
    );
}
