//! Each tenant's own batch index, in memory and on a real Redis: a tenant's listing holds its
//! own batches only, newest first; on Redis, a creation cut between its steps, an entry lost in
//! a failover, and batches created before the index existed (the one-time backfill).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use batchyard_jobs::batch::{BatchRecord, BatchState, now_secs};
use batchyard_jobs::keys;
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::ledger::memory::MemoryLedger;
use batchyard_jobs::ledger::redis::{DANGLING_GRACE_SECS, RedisLedger};
use batchyard_testkit::TestRedis;
use support::{batch_record, unique_name};

fn owned(id: &str, tenant: &str, created_at: u64) -> BatchRecord {
    BatchRecord {
        tenant: tenant.to_string(),
        created_at,
        ..batch_record(id)
    }
}

fn ids(records: &[BatchRecord]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

/// Two tenants' batches interleaved, and one of the `default` tenant: each listing holds its
/// tenant's own, newest first, cut at the limit.
async fn own_batches_only(ledger: Arc<dyn Ledger>, tag: &str) {
    let (a, b) = (format!("a{tag}"), format!("b{tag}"));
    let t0 = now_secs() - 1_000;
    let mut mine_a = Vec::new();
    for i in 0..6u64 {
        let tenant = if i % 2 == 0 { &a } else { &b };
        let id = format!("batch_{tag}_{i}");
        ledger.create(&owned(&id, tenant, t0 + i)).await.unwrap();
        if tenant == &a {
            mine_a.push(id);
        }
    }
    let plain = format!("batch_{tag}_default");
    ledger
        .create(&owned(&plain, "default", t0 + 10))
        .await
        .unwrap();
    mine_a.reverse();
    assert_eq!(ids(&ledger.list_tenant(&a, 10).await.unwrap()), mine_a);
    assert_eq!(ids(&ledger.list_tenant(&a, 2).await.unwrap()), mine_a[..2]);
    let of_b = ledger.list_tenant(&b, 10).await.unwrap();
    assert_eq!(of_b.len(), 3);
    assert!(of_b.iter().all(|r| r.tenant == b), "{of_b:?}");
    assert_eq!(
        ids(&ledger.list_tenant("default", 10).await.unwrap()),
        vec![plain]
    );
    assert!(ledger.list_tenant("nobody", 10).await.unwrap().is_empty());
    // Ties on the creation second: the greater id first, as `list` orders them.
    let (x, y) = (format!("batch_{tag}_tx"), format!("batch_{tag}_ty"));
    ledger.create(&owned(&x, &a, t0 + 100)).await.unwrap();
    ledger.create(&owned(&y, &a, t0 + 100)).await.unwrap();
    assert_eq!(ids(&ledger.list_tenant(&a, 2).await.unwrap()), vec![y, x]);
}

#[tokio::test]
async fn memory_ledger_lists_a_tenants_own_batches() {
    own_batches_only(Arc::new(MemoryLedger::new()), "m").await;
}

async fn redis_ledger(test: &str) -> Option<(TestRedis, RedisLedger)> {
    let redis = TestRedis::start_or_external(test)?;
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    Some((redis, RedisLedger::new(conn)))
}

#[tokio::test]
async fn redis_ledger_lists_a_tenants_own_batches() {
    let Some((_redis, ledger)) = redis_ledger("tenants_own").await else {
        return;
    };
    let tag = unique_name("own").replace('-', "");
    own_batches_only(Arc::new(ledger), &tag).await;
}

/// A crash between creation's steps leaves a tenant entry without a record: skipped, and
/// removed once older than the grace. A failover that loses the entry: put back at the end.
#[tokio::test]
async fn redis_tenant_index_repairs_dangling_and_lost_entries() {
    let Some((redis, ledger)) = redis_ledger("tenants_repair").await else {
        return;
    };
    let tenant = unique_name("rep");
    let key = keys::tenant_batches(&tenant);
    let mut raw = redis.raw().await;
    let (old, young) = (unique_name("cut-old"), unique_name("cut-young"));
    for (id, at) in [
        (&old, now_secs() - DANGLING_GRACE_SECS - 60),
        (&young, now_secs()),
    ] {
        let () = redis::cmd("ZADD")
            .arg(&key)
            .arg(at)
            .arg(id)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    // Whatever the server holds already is in the tenant indexes: listings read them.
    while !ledger.backfill_tenants(usize::MAX).await.unwrap() {}
    let whole = unique_name("whole");
    ledger
        .create(&owned(&whole, &tenant, now_secs() - 5))
        .await
        .unwrap();
    assert_eq!(
        ids(&ledger.list_tenant(&tenant, 10).await.unwrap()),
        vec![whole.clone()]
    );
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!members.contains(&old), "the old dangling entry goes");
    assert!(
        members.contains(&young),
        "a young one may be a creation under way"
    );

    let () = redis::cmd("ZREM")
        .arg(&key)
        .arg(&whole)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ledger.list_tenant(&tenant, 10).await.unwrap().is_empty());
    ledger
        .set_state(&whole, BatchState::Completed)
        .await
        .unwrap();
    assert_eq!(
        ids(&ledger.list_tenant(&tenant, 10).await.unwrap()),
        vec![whole.clone()],
        "an ended batch is put back in its tenant's index"
    );
    // Retention's step drops it.
    ledger.unindex_tenant(&whole, &tenant).await.unwrap();
    assert!(ledger.list_tenant(&tenant, 10).await.unwrap().is_empty());
}

/// Batches created before the index existed (their records, some without a `tenant` field:
/// the `default` tenant's, and the index `by:batches`, nothing else): the first listings
/// fill the tenant indexes in bounded steps, answering by the old scan until done.
#[tokio::test]
async fn redis_tenant_index_backfills_batches_from_before_it() {
    // A server of its own: its whole keyspace is "before the upgrade".
    let Some(redis) = TestRedis::start("tenants_backfill") else {
        return;
    };
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    let ledger = RedisLedger::new(conn).with_backfill_per_call(500);
    let mut raw = redis.raw().await;
    let t0 = now_secs() - 10_000;
    let mut of_a = Vec::new();
    for i in 0..1_500u64 {
        let tenant = match i % 5 {
            0 => "acme",
            1 => "default",
            _ => "globex",
        };
        let id = format!("batch_old_{i:05}");
        ledger.create(&owned(&id, tenant, t0 + i)).await.unwrap();
        if tenant == "acme" {
            of_a.push(id);
        }
    }
    // What an older build wrote: no tenant index, no backfill mark, no tenant field for the
    // default tenant (it never wrote one).
    for tenant in ["acme", "default", "globex"] {
        let () = redis::cmd("DEL")
            .arg(keys::tenant_batches(tenant))
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    of_a.reverse();
    // Bounded steps of 500 entries (a `ZSCAN` page is about 1,000): until done, the old scan answers, and whole.
    let mark = || {
        let mut raw = raw.clone();
        async move {
            redis::cmd("GET")
                .arg(keys::TENANT_BACKFILL)
                .query_async::<Option<String>>(&mut raw)
                .await
                .unwrap()
        }
    };
    assert_eq!(mark().await, None);
    let mut listings = 0;
    while mark().await.as_deref() != Some("done") {
        listings += 1;
        assert!(listings <= 5, "the backfill does not end");
        let listed = ledger.list_tenant("acme", 400).await.unwrap();
        assert_eq!(ids(&listed), of_a, "listing {listings}");
    }
    assert!(listings >= 2, "1,500 entries in steps of 500: {listings}");
    let indexed: u64 = redis::cmd("ZCARD")
        .arg(keys::tenant_batches("acme"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(indexed, 300);
    assert_eq!(
        ids(&ledger.list_tenant("acme", 3).await.unwrap()),
        of_a[..3]
    );
    let plain = ledger.list_tenant("default", 1_000).await.unwrap();
    assert_eq!(plain.len(), 300);
    assert!(plain.iter().all(|r| r.tenant == "default"));
    assert_eq!(
        ledger.list_tenant("globex", 2_000).await.unwrap().len(),
        900
    );
}
