#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::outcome::{Extension, codes};
use crate::segments::{Record, write_records};

fn line(custom: &str, code: &str) -> OutputLine {
    OutputLine::failure(custom, custom, code, "m", Extension::default())
}

fn record(job: &str, seq: u64, at_ms: u64, code: &str) -> Record {
    Record {
        at_ms,
        ..Record::new(job, seq, 1, 0, line(job, code))
    }
}

/// Two segments hold job `b` twice; a legacy object holds `c` (beaten by a segment record)
/// and `d` (alone): each job comes out once, its latest record.
#[tokio::test]
async fn each_job_once_its_latest_record_and_legacy_objects_too() {
    let store = ResultStore::in_memory();
    let first = [record("a", 0, 10, "one"), record("b", 1, 10, "old")];
    let second = [record("b", 1, 20, "new"), record("c", 2, 30, "seg")];
    write_records(&store, "x", "w1", 0, &first).await.unwrap();
    write_records(&store, "x", "w2", 0, &second).await.unwrap();
    for (job, code) in [("c", "legacy"), ("d", "legacy")] {
        let body = serde_json::to_vec(&line(job, code)).unwrap();
        store
            .put(&store.result_path("x", job), Bytes::from(body))
            .await
            .unwrap();
    }
    let index = Arc::new(index(&store, "x", 4).await.unwrap());
    assert_eq!(index.duplicates(), 2, "b twice, c in both layouts");
    assert!(index.holds(0, "a") && index.holds(9, "d") && !index.holds(3, "e"));
    let mut got: Vec<(String, String)> = winners(&store, "x", index, 2)
        .map_ok(|o| (o.job_id, o.line.error.unwrap().code))
        .try_collect()
        .await
        .unwrap();
    got.sort();
    let want = [("a", "one"), ("b", "new"), ("c", "seg"), ("d", "legacy")];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_corrupt_segment_or_seq_is_named() {
    let store = ResultStore::in_memory();
    let path = store.path_of(&crate::keys::segment("y", "w", 1));
    store
        .put(&path, Bytes::from_static(b"{not json\n"))
        .await
        .unwrap();
    let err = index(&store, "y", 1).await.unwrap_err();
    assert!(err.to_string().contains("w-00000001"), "{err}");
    let mut idx = Index::new(2);
    let far = Outcome {
        job_id: "z".into(),
        seq: Some(u64::MAX / 2),
        rank: 1,
        line: line("z", codes::TRANSIENT),
    };
    assert!(idx.note(&far).is_err());
}
