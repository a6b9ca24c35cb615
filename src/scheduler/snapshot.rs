//! A pipeline's origin records folded into one object, `pipelines/<name>/seen-snapshot.json`,
//! so retention can remove old batches (and their origin records) without the pipeline
//! forgetting what it took: a Redis loss after that rebuilds `seen` from the snapshot plus
//! the records still stored.
//!
//! The collector folds every record into the snapshot and writes it before it deletes any
//! record, and deletes only records the snapshot names. A reader takes the snapshot, the
//! records it does not name, then the snapshot again: a compaction in between (its
//! generation moved, or a listed record was gone) makes it read again.

use std::collections::{BTreeMap, BTreeSet};

use batchyard_jobs::batch::now_secs;
use batchyard_jobs::error::StoreError;
use batchyard_jobs::keys;
use batchyard_jobs::storage::ResultStore;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::recover::{Origin, latest_scheduled_tick};

/// What `seen-snapshot.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub pipeline: String,
    /// Bumped by every compaction, so a reader can tell one ran while it read.
    pub generation: u64,
    /// Document id -> fingerprint, as the `seen` hash held them.
    pub documents: BTreeMap<String, String>,
    /// The newest scheduled tick among the folded records (for catch-up).
    pub last_scheduled_tick: Option<i64>,
    /// Batch ids of the folded records still stored when it was written: these are not
    /// applied again over the snapshot, and only these may be deleted.
    pub compacted: BTreeSet<String>,
    pub written_at: u64,
}

/// A pipeline's seen-state as object storage holds it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub documents: BTreeMap<String, String>,
    pub last_scheduled_tick: Option<i64>,
    /// Records read, plus one for a snapshot.
    pub records: usize,
}

pub async fn read_snapshot(
    store: &ResultStore,
    pipeline: &str,
) -> anyhow::Result<Option<Snapshot>> {
    match store
        .get(&store.path_of(&keys::pipeline_snapshot(pipeline)))
        .await
    {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The batch ids of the pipeline's stored origin records, sorted (ULIDs: submission order).
async fn record_ids(store: &ResultStore, pipeline: &str) -> anyhow::Result<Vec<String>> {
    let mut listing = store.list_relative(&keys::pipeline_records_dir(pipeline));
    let mut ids = Vec::new();
    while let Some(entry) = listing.next().await {
        let (key, _) = entry?;
        if let Some(id) = key
            .rsplit('/')
            .next()
            .and_then(|name| name.strip_suffix(".json"))
        {
            ids.push(id.to_string());
        }
    }
    ids.sort();
    Ok(ids)
}

/// Reads the records of `ids` not in `skip`, oldest tick first. `None`: one was gone (a
/// compaction deleted it meanwhile).
async fn read_origins(
    store: &ResultStore,
    pipeline: &str,
    ids: &[String],
    skip: &BTreeSet<String>,
) -> anyhow::Result<Option<Vec<(String, Origin)>>> {
    let mut origins = Vec::new();
    for id in ids.iter().filter(|id| !skip.contains(*id)) {
        let path = store.path_of(&keys::pipeline_record(pipeline, id));
        let bytes = match store.get(&path).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match serde_json::from_slice::<Origin>(&bytes) {
            Ok(o) if o.pipeline == pipeline => origins.push((id.clone(), o)),
            Ok(_) => {}
            Err(e) => tracing::warn!(pipeline, id, "skipping an unreadable origin record: {e}"),
        }
    }
    // Stable: records of one tick stay in submission order.
    origins.sort_by_key(|(_, o)| o.tick_unix);
    Ok(Some(origins))
}

/// Applies records over a snapshot's state: a document taken again keeps its newest print.
fn fold(base: Option<&Snapshot>, origins: &[(String, Origin)]) -> Stored {
    let mut documents = base.map(|s| s.documents.clone()).unwrap_or_default();
    for (_, o) in origins {
        documents.extend(o.documents.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let plain: Vec<&Origin> = origins.iter().map(|(_, o)| o).collect();
    let last = latest_scheduled_tick(plain.into_iter());
    Stored {
        documents,
        last_scheduled_tick: last.max(base.and_then(|s| s.last_scheduled_tick)),
        records: origins.len() + usize::from(base.is_some()),
    }
}

/// How often a reader starts over when compactions keep landing while it reads.
const READ_ATTEMPTS: usize = 5;

/// The pipeline's seen-state from its snapshot and the records it does not hold.
pub async fn load(store: &ResultStore, pipeline: &str) -> anyhow::Result<Stored> {
    for _ in 0..READ_ATTEMPTS {
        let before = read_snapshot(store, pipeline).await?;
        let skip = before
            .as_ref()
            .map(|s| s.compacted.clone())
            .unwrap_or_default();
        let ids = record_ids(store, pipeline).await?;
        let Some(origins) = read_origins(store, pipeline, &ids, &skip).await? else {
            continue;
        };
        let after = read_snapshot(store, pipeline).await?;
        if after.as_ref().map(|s| s.generation) != before.as_ref().map(|s| s.generation) {
            continue;
        }
        return Ok(fold(before.as_ref(), &origins));
    }
    anyhow::bail!(
        "the origin records of pipeline {pipeline} kept changing while they were read (a compaction ran {READ_ATTEMPTS} times); the next run tries again"
    )
}

/// Folds every stored record into the snapshot and writes it. Only the retention collector
/// calls this, under its lease, so compactions never overlap. Returns what it wrote.
pub async fn compact(store: &ResultStore, pipeline: &str) -> anyhow::Result<Snapshot> {
    let old = read_snapshot(store, pipeline).await?;
    let skip = old
        .as_ref()
        .map(|s| s.compacted.clone())
        .unwrap_or_default();
    let ids = record_ids(store, pipeline).await?;
    let origins = read_origins(store, pipeline, &ids, &skip)
        .await?
        .ok_or_else(|| anyhow::anyhow!("an origin record of pipeline {pipeline} vanished while it was compacted; the next pass tries again"))?;
    let stored = fold(old.as_ref(), &origins);
    let listed: BTreeSet<&String> = ids.iter().collect();
    let mut compacted: BTreeSet<String> =
        skip.into_iter().filter(|id| listed.contains(id)).collect();
    compacted.extend(origins.into_iter().map(|(id, _)| id));
    let snapshot = Snapshot {
        pipeline: pipeline.to_string(),
        generation: old.map_or(1, |s| s.generation + 1),
        documents: stored.documents,
        last_scheduled_tick: stored.last_scheduled_tick,
        compacted,
        written_at: now_secs(),
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&snapshot)?);
    store
        .put(&store.path_of(&keys::pipeline_snapshot(pipeline)), body)
        .await?;
    Ok(snapshot)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::scheduler::recover::write_origin;

    async fn origin(
        store: &ResultStore,
        id: &str,
        tick: i64,
        trigger: &str,
        docs: &[(&str, &str)],
    ) {
        let docs: BTreeMap<&str, &str> = docs.iter().copied().collect();
        let body = serde_json::json!({
            "pipeline": "p", "batch_id": id, "tick_unix": tick, "trigger": trigger, "documents": docs,
        });
        write_origin(store, "p", id, &body).await.unwrap();
    }

    #[tokio::test]
    async fn compaction_keeps_every_document_and_later_records_apply_over_it() {
        let store = ResultStore::in_memory();
        origin(
            &store,
            "batch_1",
            100,
            "schedule",
            &[("a", "1"), ("b", "1")],
        )
        .await;
        origin(&store, "batch_2", 200, "schedule", &[("a", "2")]).await;
        let snap = compact(&store, "p").await.unwrap();
        assert_eq!(snap.generation, 1);
        assert_eq!(snap.last_scheduled_tick, Some(200));
        assert_eq!(snap.compacted.len(), 2);
        // Retention removes batch_1's record; a manual run records batch_3 after.
        store
            .delete(&store.path_of(&keys::pipeline_record("p", "batch_1")))
            .await
            .unwrap();
        origin(&store, "batch_3", 50, "manual", &[("b", "2"), ("c", "1")]).await;
        let stored = load(&store, "p").await.unwrap();
        let want: BTreeMap<String, String> = [("a", "2"), ("b", "2"), ("c", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(stored.documents, want);
        assert_eq!(
            stored.last_scheduled_tick,
            Some(200),
            "a manual run is no tick"
        );
        assert_eq!(stored.records, 2, "the snapshot and batch_3");
        // The next compaction forgets the deleted record's id and folds batch_3 in.
        let again = compact(&store, "p").await.unwrap();
        assert_eq!(again.generation, 2);
        assert_eq!(again.documents, want);
        let ids: Vec<&str> = again.compacted.iter().map(String::as_str).collect();
        assert_eq!(ids, ["batch_2", "batch_3"]);
        assert_eq!(load(&store, "p").await.unwrap().documents, want);
        // A pipeline with nothing stored loads empty.
        assert_eq!(load(&store, "q").await.unwrap(), Stored::default());
    }
}
