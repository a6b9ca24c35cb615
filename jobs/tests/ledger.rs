//! The ledger, in memory and on a real Redis: exactly-once settlement, exactly one finalizer,
//! the offload lane's deadline and enqueued-token accounts, webhook attempts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use batchyard_jobs::batch::{BatchRecord, BatchState, RequestCounts, now_secs};
use batchyard_jobs::ledger::memory::MemoryLedger;
use batchyard_jobs::ledger::redis::RedisLedger;
use batchyard_jobs::ledger::{Enqueued, Ledger, Reservation, Settlement};
use batchyard_testkit::TestRedis;
use support::{batch_record, unique_name};

fn record(id: &str, total: u64) -> BatchRecord {
    BatchRecord {
        counts: RequestCounts {
            total,
            completed: 0,
            failed: 0,
        },
        budget_usd: Some(1.5),
        task: Some("summarize".into()),
        in_progress_at: Some(now_secs()),
        ..batch_record(id)
    }
}

/// Settles every job of a 400-job batch from 8 tasks at once, each job twice (as if every job
/// ran twice after reclaims): counts are exact and exactly one settlement says finalize.
async fn exactly_once(ledger: Arc<dyn Ledger>, id: &str) {
    let total = 400u64;
    ledger.create(&record(id, total)).await.unwrap();
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let ledger = Arc::clone(&ledger);
        let id = id.to_string();
        tasks.push(tokio::spawn(async move {
            let mut finalizers = 0;
            for round in 0..2u64 {
                for seq in (0..total).filter(|s| s % 4 == worker % 4) {
                    let ok = seq % 10 != 0;
                    let s = ledger.settle(&id, seq, ok, 1_000).await.unwrap();
                    if matches!(s, Settlement::Counted { finalize: true }) {
                        finalizers += 1;
                    }
                    let _ = round;
                }
            }
            finalizers
        }));
    }
    let mut finalizers = 0;
    for t in tasks {
        finalizers += t.await.unwrap();
    }
    assert_eq!(
        finalizers, 1,
        "exactly one settlement triggers finalization"
    );
    let r = ledger.get(id).await.unwrap().unwrap();
    assert_eq!(r.counts.completed, 360);
    assert_eq!(r.counts.failed, 40);
    assert_eq!(r.spent_nanos, 400_000, "each job's cost counted once");
    assert_eq!(r.state, BatchState::Finalizing);
    assert!(r.finalizing_at.is_some());

    // A late duplicate while finalizing asks the caller to (re)try finalization.
    assert_eq!(
        ledger.settle(id, 3, true, 5).await.unwrap(),
        Settlement::Duplicate { finalize: true }
    );
    // Exactly one lease holder.
    assert!(
        ledger
            .try_lock_finalize(id, "a", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !ledger
            .try_lock_finalize(id, "b", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        ledger
            .try_lock_finalize(id, "a", Duration::from_secs(30))
            .await
            .unwrap()
    );

    // A reservation still held when the batch ends must not outlive it.
    assert_eq!(
        ledger.reserve(id, "straggler", 1_000).await.unwrap(),
        Reservation::Granted
    );
    ledger.set_state(id, BatchState::Completed).await.unwrap();
    let r = ledger.get(id).await.unwrap().unwrap();
    assert_eq!(r.reserved_nanos, 0);
    assert_eq!(r.state, BatchState::Completed);
    assert!(r.completed_at.is_some());
    // After the end, a straggler changes nothing.
    assert_eq!(
        ledger.settle(id, 3, true, 5).await.unwrap(),
        Settlement::Duplicate { finalize: false }
    );
    assert_eq!(ledger.get(id).await.unwrap().unwrap().spent_nanos, 400_000);
    let listed = ledger.list(10).await.unwrap();
    assert!(listed.iter().any(|b| b.id == id));
    assert!(ledger.settle("nope", 0, true, 0).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_ledger_settles_exactly_once() {
    exactly_once(Arc::new(MemoryLedger::new()), "b-mem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ledger_settles_exactly_once_and_cleans_up() {
    let Some(redis) = TestRedis::start_or_external("ledger") else {
        return;
    };
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    let id = unique_name("batch");
    exactly_once(Arc::new(RedisLedger::new(conn)), &id).await;
    // Only the small batch hash and the index remain: no bitmap, no lease, no reservations.
    let mut raw = redis.raw().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("by:batch:{{{id}}}*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys, vec![format!("by:batch:{{{id}}}")]);
}

/// A deadline survives the round trip, and the switch to real-time happens once.
async fn deadline_and_switch(ledger: Arc<dyn Ledger>, id: &str) {
    let deadline = now_secs() + 3600;
    ledger
        .create(&BatchRecord {
            deadline_at: Some(deadline),
            ..record(id, 10)
        })
        .await
        .unwrap();
    let r = ledger.get(id).await.unwrap().unwrap();
    assert_eq!(r.deadline_at, Some(deadline));
    assert!(r.offloading());
    assert!(ledger.to_realtime(id).await.unwrap());
    assert!(
        !ledger.to_realtime(id).await.unwrap(),
        "only the first switch counts"
    );
    let r = ledger.get(id).await.unwrap().unwrap();
    assert!(r.realtime_at.is_some());
    assert!(!r.offloading());
    assert!(ledger.to_realtime("no-such-batch").await.is_err());
}

#[tokio::test]
async fn memory_ledger_keeps_the_deadline_and_switches_once() {
    deadline_and_switch(Arc::new(MemoryLedger::new()), "b-deadline").await;
}

#[tokio::test]
async fn redis_ledger_keeps_the_deadline_and_switches_once() {
    let Some(redis) = TestRedis::start_or_external("ledger_deadline") else {
        return;
    };
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    deadline_and_switch(Arc::new(RedisLedger::new(conn)), &unique_name("deadline")).await;
}

async fn enqueued_account(ledger: Arc<dyn Ledger>, model: &str) {
    assert_eq!(ledger.enqueued(model).await.unwrap(), Enqueued::default());
    ledger
        .set_enqueued(model, "b1/w1-m-0", Some(300))
        .await
        .unwrap();
    ledger
        .set_enqueued(model, "b2/w1-m-0", Some(200))
        .await
        .unwrap();
    // Setting a share again replaces it: a retried step never counts twice.
    ledger
        .set_enqueued(model, "b2/w1-m-0", Some(200))
        .await
        .unwrap();
    assert_eq!(ledger.enqueued(model).await.unwrap().tokens, 500);
    ledger
        .hold_enqueued(model, now_secs() + 60, None)
        .await
        .unwrap();
    ledger.hold_enqueued(model, 0, Some(450)).await.unwrap();
    let account = ledger.enqueued(model).await.unwrap();
    assert!(account.held_until > now_secs());
    assert_eq!(account.learned_limit, 450);
    // A share that ends lifts the hold; the learned limit stays.
    ledger.set_enqueued(model, "b1/w1-m-0", None).await.unwrap();
    ledger.set_enqueued(model, "b1/w1-m-0", None).await.unwrap();
    let account = ledger.enqueued(model).await.unwrap();
    assert_eq!(
        account,
        Enqueued {
            tokens: 200,
            held_until: 0,
            learned_limit: 450
        }
    );
    // Accounts are per model.
    assert_eq!(ledger.enqueued("other-model").await.unwrap().tokens, 0);
}

#[tokio::test]
async fn memory_ledger_keeps_enqueued_token_accounts() {
    enqueued_account(Arc::new(MemoryLedger::new()), "m").await;
}

#[tokio::test]
async fn redis_ledger_keeps_enqueued_token_accounts() {
    let Some(redis) = TestRedis::start_or_external("ledger_enqueued") else {
        return;
    };
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    enqueued_account(Arc::new(RedisLedger::new(conn)), &unique_name("m")).await;
}

async fn notification_claims(ledger: Arc<dyn Ledger>, id: &str) {
    let hold = Duration::from_secs(30);
    let now = now_secs();
    assert_eq!(
        ledger.claim_notification(id, 100, now, hold).await.unwrap(),
        Some(1)
    );
    // Held while attempt 1 is tried: nobody else claims it.
    assert_eq!(
        ledger.claim_notification(id, 100, now, hold).await.unwrap(),
        None
    );
    ledger.settle_notification(id, Some(now + 5)).await.unwrap();
    assert_eq!(
        ledger.claim_notification(id, 100, now, hold).await.unwrap(),
        None
    );
    assert_eq!(
        ledger
            .claim_notification(id, 100, now + 5, hold)
            .await
            .unwrap(),
        Some(2)
    );
    ledger.settle_notification(id, None).await.unwrap();
    assert_eq!(
        ledger
            .claim_notification(id, 100, now + 3600, hold)
            .await
            .unwrap(),
        None,
        "delivered: never again"
    );
    // The batch reopened and ended again: a new end, announced anew.
    assert_eq!(
        ledger
            .claim_notification(id, 200, now + 3600, hold)
            .await
            .unwrap(),
        Some(1)
    );
}

#[tokio::test]
async fn memory_ledger_hands_each_notification_attempt_out_once() {
    notification_claims(Arc::new(MemoryLedger::new()), "b-notify").await;
}

#[tokio::test]
async fn redis_ledger_hands_each_notification_attempt_out_once() {
    let Some(redis) = TestRedis::start_or_external("ledger_notify") else {
        return;
    };
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    notification_claims(Arc::new(RedisLedger::new(conn)), &unique_name("notify")).await;
}

/// `create` writes the index entry, then the record (they live in different cluster slots).
/// A crash between the two leaves an entry without a record: `list` skips it, and removes it
/// once it is older than the grace period; a young one may be a creation under way and stays.
/// A failover can lose the entry instead: the batch is indexed again when it ends.
#[tokio::test]
async fn redis_ledger_repairs_a_creation_cut_between_index_and_record() {
    use batchyard_jobs::ledger::redis::DANGLING_GRACE_SECS;
    let Some(redis) = TestRedis::start_or_external("ledger_split_create") else {
        return;
    };
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    let ledger = RedisLedger::new(conn);
    let mut raw = redis.raw().await;
    let index = batchyard_jobs::keys::BATCH_INDEX;
    let reader = raw.clone();
    let score = |id: String| {
        let mut raw = reader.clone();
        async move {
            redis::cmd("ZSCORE")
                .arg(index)
                .arg(id)
                .query_async::<Option<f64>>(&mut raw)
                .await
                .unwrap()
        }
    };
    // What a crash after step 1 leaves: one creation long ago, one a moment ago.
    let (old, young) = (unique_name("cut-old"), unique_name("cut-young"));
    let long_ago = now_secs() - DANGLING_GRACE_SECS - 60;
    for (id, at) in [(&old, long_ago), (&young, now_secs())] {
        let () = redis::cmd("ZADD")
            .arg(index)
            .arg(at)
            .arg(id)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let whole = unique_name("whole");
    ledger.create(&record(&whole, 3)).await.unwrap();
    let listed: Vec<String> = ledger
        .list(10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(listed.contains(&whole), "{listed:?}");
    assert!(!listed.contains(&old) && !listed.contains(&young));
    assert_eq!(
        score(old.clone()).await,
        None,
        "the old dangling entry is gone"
    );
    assert!(score(young.clone()).await.is_some(), "a young one stays");

    // The reverse: the index entry lost (as a failover can), the record kept.
    let () = redis::cmd("ZREM")
        .arg(index)
        .arg(&whole)
        .query_async(&mut raw)
        .await
        .unwrap();
    ledger
        .set_state(&whole, BatchState::Completed)
        .await
        .unwrap();
    let created = ledger.get(&whole).await.unwrap().unwrap().created_at;
    assert_eq!(score(whole.clone()).await, Some(created as f64));
    let () = redis::cmd("ZREM")
        .arg(index)
        .arg(&young)
        .query_async(&mut raw)
        .await
        .unwrap();
}
