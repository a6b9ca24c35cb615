//! The collector against a real redis-server and a `file://` store: what is due goes, what
//! is live stays, and a removal stopped after any of its steps leaves nothing that breaks a
//! reader and is finished by the next pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use batchyard_jobs::batch::{BatchRecord, BatchState, now_secs};
use batchyard_jobs::keys;
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::ledger::redis::RedisLedger;
use batchyard_jobs::queue::QueueOptions;
use batchyard_jobs::queue::redis::RedisQueue;
use batchyard_jobs::storage::ResultStore;
use batchyard_testkit::TestRedis;
use bytes::Bytes;

use super::Collector;
use super::batches::FAIL_AFTER;
use crate::config::retention::{DAY, Retention};

async fn put(store: &ResultStore, rel: &str, body: &str) {
    store
        .put(&store.path_of(rel), Bytes::from(body.to_string()))
        .await
        .unwrap();
}

async fn batch(
    ledger: &RedisLedger,
    store: &ResultStore,
    id: &str,
    state: BatchState,
    input: &str,
) {
    let record = BatchRecord::new(id.into(), 1, store.url().into(), now_secs() - 7200);
    ledger.create(&record).await.unwrap();
    ledger.set_state(id, state).await.unwrap();
    put(store, &keys::output(id), "{}\n").await;
    put(store, &keys::result(id, "j1"), "{}").await;
    put(store, &keys::manifest(id), "{}").await;
    let api = format!(r#"{{"id":"{id}","input_file_id":"{input}"}}"#);
    put(store, &keys::api_batch(id), &api).await;
}

async fn exists(store: &ResultStore, rel: &str) -> bool {
    store.exists(&store.path_of(rel)).await.unwrap()
}

async fn indexed(ledger: &RedisLedger) -> Vec<String> {
    let page = ledger.index_page(u64::MAX, 0, 100).await.unwrap();
    page.into_iter().map(|e| e.id).collect()
}

/// A collector over the test Redis and a `file://` store in a temporary folder.
async fn setup(redis: &TestRedis) -> (RedisLedger, ResultStore, tempfile::TempDir, Collector) {
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    let ledger = RedisLedger::new(conn.clone());
    let queue = RedisQueue::new(conn, QueueOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ResultStore::open(
        &format!("file://{}", dir.path().display()),
        &BTreeMap::new(),
    )
    .unwrap();
    let collector = Collector {
        ledger: Arc::new(ledger.clone()),
        queue: Arc::new(queue),
        store: store.clone(),
        env: BTreeMap::new(),
        retention: Retention::default(),
        owner: "test".into(),
        cursors: Arc::default(),
        others: Arc::default(),
    };
    (ledger, store, dir, collector)
}

#[tokio::test]
async fn one_collector_of_a_fleet_holds_the_lease_at_a_time() {
    let Some(redis) = TestRedis::start("gc_lease") else {
        return;
    };
    let (_, _, _dir, collector) = setup(&redis).await;
    let other = Collector {
        owner: "other".into(),
        ..collector.clone()
    };
    assert!(collector.lease().await.unwrap());
    assert!(collector.lease().await.unwrap(), "its holder extends it");
    assert!(!other.lease().await.unwrap());
    // Released, it is free at once (not after its time to live).
    collector.release().await;
    assert!(other.lease().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_things_go_live_ones_stay_and_a_cut_short_removal_is_finished() {
    let Some(redis) = TestRedis::start("gc_steps") else {
        return;
    };
    let (ledger, store, dir, collector) = setup(&redis).await;
    // a and b end; c still runs and reads the uploaded file-live.
    batch(&ledger, &store, "batch_a", BatchState::Completed, "file-x").await;
    batch(&ledger, &store, "batch_b", BatchState::Failed, "file-x").await;
    batch(
        &ledger,
        &store,
        "batch_c",
        BatchState::InProgress,
        "file-live",
    )
    .await;
    for f in ["file-live", "file-old"] {
        put(&store, &keys::upload_meta(f), "{}").await;
        put(&store, &keys::upload_content(f), "{}\n").await;
    }
    put(&store, &keys::cache_entry("abcd").join("/"), "{}").await;
    // A folder no record names (Redis lost it, or `run` wrote it).
    put(&store, &keys::output("batch_x"), "{}\n").await;

    // Today nothing is 30 days old.
    let report = collector.pass(now_secs(), false).await;
    assert_eq!(report.batches.removed, 0, "{report:?}");
    assert_eq!(
        report.files.removed + report.cache_entries.removed,
        0,
        "{report:?}"
    );
    assert!(
        exists(&store, &keys::output("batch_x")).await,
        "too new to be taken"
    );

    // 31 days on: a stops after its API record, b after its Redis keys.
    *FAIL_AFTER.lock().unwrap() = vec![
        ("batch_a".into(), "api_record"),
        ("batch_b".into(), "redis"),
    ];
    let later = now_secs() + 31 * DAY.as_secs();
    let report = collector.pass(later, false).await;
    // b twice: the index names it, and its folder has no record any more.
    assert_eq!(report.errors.len(), 3, "{report:?}");
    assert_eq!(
        report.batches.removed, 1,
        "only the orphan folder: {report:?}"
    );
    assert!(!exists(&store, &keys::output("batch_x")).await);
    // a still shows (without its API record), b shows nowhere, and listing works.
    assert!(ledger.get("batch_a").await.unwrap().is_some());
    assert!(ledger.get("batch_b").await.unwrap().is_none());
    let listed: Vec<String> = ledger
        .list(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!listed.contains(&"batch_b".to_string()), "{listed:?}");
    assert!(!exists(&store, &keys::api_batch("batch_a")).await);
    assert!(
        exists(&store, &keys::output("batch_b")).await,
        "b's objects go after its keys"
    );
    // b's index entry is the mark of an unfinished removal; `list` may already have dropped
    // it as an entry without a record (the Redis Cluster repair), and then b's folder goes as
    // one no record names. Either way the next pass finishes b.
    let left = indexed(&ledger).await.len();
    assert!(left == 2 || left == 3, "{left}");
    // The live batch, its input, and nothing else of the rest stay.
    assert!(exists(&store, &keys::output("batch_c")).await);
    assert!(exists(&store, &keys::api_batch("batch_c")).await);
    assert!(exists(&store, &keys::upload_content("file-live")).await);
    assert!(!exists(&store, &keys::upload_meta("file-old")).await);
    assert!(!exists(&store, &keys::upload_content("file-old")).await);
    assert_eq!(
        (report.files.removed, report.files.kept),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(report.cache_entries.removed, 1, "{report:?}");

    // The next pass finishes both.
    FAIL_AFTER.lock().unwrap().clear();
    let report = collector.pass(later, false).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.batches.removed, 2, "{report:?}");
    assert_eq!(report.objects.removed, 6, "{report:?}");
    assert_eq!(indexed(&ledger).await, vec!["batch_c".to_string()]);
    for id in ["batch_a", "batch_b"] {
        assert!(
            !dir.path().join(keys::batch_dir(id)).exists(),
            "{id}'s folder is left"
        );
        assert!(ledger.get(id).await.unwrap().is_none());
    }
    let mut raw = redis.raw().await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("by:batch:{batch_[ab]}*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(exists(&store, &keys::manifest("batch_c")).await);
    let report = collector.pass(later, false).await;
    assert!(report.settled(), "{report:?}");
}

/// A tenant's batch leaves its tenant's index with it; an API record whose batch is gone
/// (no ledger record, no folder) goes once old enough, and one whose batch lives stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_entries_and_api_records_without_a_batch_go() {
    let Some(redis) = TestRedis::start("gc_tenant") else {
        return;
    };
    let (ledger, store, _dir, collector) = setup(&redis).await;
    let record = BatchRecord {
        tenant: "acme".into(),
        ..BatchRecord::new("batch_t".into(), 1, store.url().into(), now_secs() - 7200)
    };
    ledger.create(&record).await.unwrap();
    ledger
        .set_state("batch_t", BatchState::Completed)
        .await
        .unwrap();
    put(&store, &keys::output("batch_t"), "{}\n").await;
    batch(&ledger, &store, "batch_live", BatchState::InProgress, "f").await;
    // Left by a batch an older build collected: the API record alone.
    put(
        &store,
        &keys::api_batch("batch_gone"),
        r#"{"id":"batch_gone"}"#,
    )
    .await;
    assert_eq!(ledger.list_tenant("acme", 10).await.unwrap().len(), 1);

    let today = collector.pass(now_secs(), false).await;
    assert_eq!(today.api_records.removed, 0, "too new: {today:?}");
    let later = now_secs() + 31 * DAY.as_secs();
    let dry = collector.pass(later, true).await;
    assert_eq!(dry.api_records.removed, 1, "{dry:?}");
    assert!(exists(&store, &keys::api_batch("batch_gone")).await);
    let report = collector.pass(later, false).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.batches.removed, 1, "{report:?}");
    assert_eq!(report.api_records.removed, 1, "{report:?}");
    assert!(!exists(&store, &keys::api_batch("batch_gone")).await);
    assert!(exists(&store, &keys::api_batch("batch_live")).await);
    assert!(ledger.list_tenant("acme", 10).await.unwrap().is_empty());
    let mut raw = redis.raw().await;
    let left: u64 = redis::cmd("EXISTS")
        .arg(keys::tenant_batches("acme"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, 0, "the tenant's index is empty, so gone");
    let report = collector.pass(later, false).await;
    assert!(report.settled(), "{report:?}");
}

/// Holds the collector at `step` of file `id` until the test has acted; returns the pass.
async fn pass_held_at(
    collector: &Collector,
    id: &str,
    step: &'static str,
    at: u64,
) -> (
    Arc<tokio::sync::Barrier>,
    tokio::task::JoinHandle<super::Report>,
) {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    // One hold at a time: a file held before may come round again in this pass.
    *super::batches::PAUSE_AT.lock().unwrap() = vec![(id.to_string(), step, Arc::clone(&barrier))];
    let c = collector.clone();
    let pass = tokio::spawn(async move { c.pass(at, false).await });
    tokio::time::timeout(std::time::Duration::from_secs(20), barrier.wait())
        .await
        .expect("the collector reaches the step");
    (barrier, pass)
}

/// An upload past retention meets a batch creation from it, in both orders. The collector
/// deletes its metadata, then looks for a reader; the creation registers, then looks for the
/// metadata. Whichever goes second sees the other: the creation is refused (404, nothing
/// read) or the file stays whole until it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_never_deleted_under_a_creation_reading_it() {
    use super::uploads::hold_upload;
    let Some(redis) = TestRedis::start("gc_upload_race") else {
        return;
    };
    let (ledger, store, _dir, collector) = setup(&redis).await;
    let later = now_secs() + 31 * DAY.as_secs();
    let upload = |f: &'static str| {
        let store = store.clone();
        async move {
            put(&store, &keys::upload_meta(f), "{}").await;
            put(&store, &keys::upload_content(f), "{}\n").await;
        }
    };
    upload("file-first").await;
    let whole = |f: &'static str| {
        let store = store.clone();
        async move {
            exists(&store, &keys::upload_meta(f)).await
                && exists(&store, &keys::upload_content(f)).await
        }
    };

    // The creation comes while the collector has looked for readers but not yet deleted:
    // it finds the file and goes on; the collector then sees it and keeps the file whole.
    let (go, pass) = pass_held_at(&collector, "file-first", "file_checked", later).await;
    assert!(
        hold_upload(&ledger, &store, "file-first", "batch_1")
            .await
            .unwrap()
    );
    go.wait().await;
    let report = pass.await.unwrap();
    assert!(whole("file-first").await, "{report:?}");
    assert_eq!(report.files.kept, 1, "its metadata put back: {report:?}");
    // Done reading: the next pass takes it.
    ledger
        .release_upload("file-first", "batch_1")
        .await
        .unwrap();

    // The creation comes after the collector deleted the metadata: it is refused and holds
    // nothing, and the collector finishes the removal.
    upload("file-second").await;
    let (go, pass) = pass_held_at(&collector, "file-second", "file_meta", later).await;
    assert!(
        !hold_upload(&ledger, &store, "file-second", "batch_2")
            .await
            .unwrap()
    );
    assert!(!ledger.upload_in_use("file-second").await.unwrap());
    go.wait().await;
    let report = pass.await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(!exists(&store, &keys::upload_content("file-second")).await);
    assert!(
        !whole("file-first").await,
        "released, so removed: {report:?}"
    );
    super::batches::PAUSE_AT.lock().unwrap().clear();

    // A creation that registers and dies: its hold lapses, it does not keep the file forever.
    put(&store, &keys::upload_meta("file-x"), "{}").await;
    assert!(
        hold_upload(&ledger, &store, "file-x", "batch_3")
            .await
            .unwrap()
    );
    let mut raw = redis.raw().await;
    let () = redis::cmd("ZADD")
        .arg(keys::upload_readers("file-x"))
        .arg(now_secs() - batchyard_jobs::ledger::UPLOAD_READ_SECS - 1)
        .arg("batch_3")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!ledger.upload_in_use("file-x").await.unwrap());
}
