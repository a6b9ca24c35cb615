#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use batchyard_jobs::outcome::{Extension, OutputLine, codes};
use batchyard_jobs::segments::Record;
use futures::TryStreamExt;

fn encoded(job: &str, seq: u64) -> Vec<u8> {
    let line = OutputLine::failure(job, job, codes::TRANSIENT, "m", Extension::default());
    Record::new(job, seq, 1, 0, line).encode().unwrap()
}

async fn segments(store: &ResultStore, batch: &str) -> Vec<object_store::ObjectMeta> {
    store
        .list(&store.path_of(&batchyard_jobs::keys::segments_dir(batch)))
        .try_collect()
        .await
        .unwrap()
}

/// 40 jobs hand over one outcome each at once: a few segments hold them all, each outcome
/// once, and every caller hears back only after its segment is there (well before `max_wait`).
#[tokio::test]
async fn many_slots_share_few_segments() {
    let store = ResultStore::in_memory();
    let options = SegmentOptions {
        max_items: 16,
        max_wait: Duration::from_secs(5),
        // A pool of 2 slots holds up to 32 waiting jobs: a segment at every 8 of them.
        slots: 2,
        ..SegmentOptions::default()
    };
    let writer = Arc::new(SegmentWriter::new(store.clone(), options));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40u64 {
        let writer = Arc::clone(&writer);
        tasks.spawn(async move { writer.append("b", encoded(&format!("j{i}"), i)).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let listed = segments(&store, "b").await;
    assert!((3..=6).contains(&listed.len()), "{} segments", listed.len());
    let index = batchyard_jobs::segments::read::index(&store, "b", 40)
        .await
        .unwrap();
    assert_eq!(index.duplicates(), 0);
    assert!((0..40).all(|i| index.holds(i, "")));
}

/// One slot alone waits at most `max_wait`; a store that refuses fails its outcome, so the
/// job is not acked.
#[tokio::test]
async fn a_lone_outcome_waits_briefly_and_a_refused_segment_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = ResultStore::open(&url, &Default::default()).unwrap();
    let options = SegmentOptions {
        max_items: 100,
        max_wait: Duration::from_millis(50),
        slots: 64,
        ..SegmentOptions::default()
    };
    let writer = SegmentWriter::new(store.clone(), options);
    let started = Instant::now();
    writer.append("ok", encoded("a", 0)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(segments(&store, "ok").await.len(), 1);
    // A file where the batch folder should be: every try fails, the caller hears it.
    std::fs::create_dir_all(dir.path().join("batches")).unwrap();
    std::fs::write(dir.path().join("batches/blocked"), b"not a folder").unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        writer.append("blocked", encoded("b", 0)),
    )
    .await
    .expect("a refused segment must answer")
    .unwrap_err();
    assert!(err.to_string().contains("blocked"), "{err}");
}
