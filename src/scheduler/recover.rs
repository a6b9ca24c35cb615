//! Object storage as the durable record of what a pipeline took, so a Redis that lost its data
//! doesn't make the next run submit every document again.
//!
//! Each submitted run writes its origin twice: `batches/<id>/pipeline.json`, next to the batch
//! it explains, and `pipelines/<name>/batches/<id>.json`, so a pipeline's own records can be
//! listed without walking every batch. When Redis holds no `seen` hash for a pipeline, the run
//! reads those records back before it picks documents.

use std::collections::BTreeMap;

use batchyard_jobs::storage::ResultStore;
use futures::StreamExt;
use serde::Deserialize;

use super::state::PipelineState;

/// What `pipeline.json` holds (the fields recovery needs).
#[derive(Debug, Deserialize)]
pub struct Origin {
    pub pipeline: String,
    #[serde(default)]
    pub tick_unix: i64,
    #[serde(default)]
    pub trigger: String,
    #[serde(default)]
    pub documents: BTreeMap<String, String>,
}

/// The folder of one pipeline's origin records.
pub fn records_dir(pipeline: &str) -> String {
    format!("pipelines/{pipeline}/batches")
}

/// Writes the origin record in both places. Errors are returned so the caller can log them;
/// the batch is enqueued either way.
pub async fn write_origin(
    store: &ResultStore,
    pipeline: &str,
    batch_id: &str,
    origin: &serde_json::Value,
) -> Result<(), String> {
    let bytes = bytes::Bytes::from(serde_json::to_vec(origin).map_err(|e| e.to_string())?);
    let next_to_batch = store.batch_dir(batch_id).join("pipeline.json");
    store
        .put(&next_to_batch, bytes.clone())
        .await
        .map_err(|e| e.to_string())?;
    let indexed = store.path_of(&format!("{}/{batch_id}.json", records_dir(pipeline)));
    store.put(&indexed, bytes).await.map_err(|e| e.to_string())
}

/// What recovery found: documents marked seen again, records read, and the newest scheduled
/// tick among them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub records: usize,
    pub documents: usize,
    pub last_tick: Option<i64>,
}

/// Reads a pipeline's origin records, oldest first (by tick, then by batch id).
pub async fn read_records(store: &ResultStore, pipeline: &str) -> anyhow::Result<Vec<Origin>> {
    let mut listing = store.list_relative(&records_dir(pipeline));
    let mut keys = Vec::new();
    while let Some(entry) = listing.next().await {
        let (key, _) = entry?;
        if key.ends_with(".json") {
            keys.push(key);
        }
    }
    // Batch ids are ULIDs: sorted keys are in submission order, which the stable sort by tick
    // below keeps among records of one tick.
    keys.sort();
    let mut origins = Vec::with_capacity(keys.len());
    for key in &keys {
        let bytes = store.get(&store.path_of(key)).await?;
        match serde_json::from_slice::<Origin>(&bytes) {
            Ok(o) if o.pipeline == pipeline => origins.push(o),
            Ok(_) => {}
            Err(e) => tracing::warn!(pipeline, key, "skipping an unreadable origin record: {e}"),
        }
    }
    origins.sort_by_key(|o| o.tick_unix);
    Ok(origins)
}

/// The newest scheduled (not manual) tick among the records.
pub fn latest_scheduled_tick(origins: &[Origin]) -> Option<i64> {
    origins
        .iter()
        .filter(|o| o.trigger != "manual")
        .map(|o| o.tick_unix)
        .max()
}

/// Rebuilds the `seen` hash (and the last scheduled tick, for catch-up) from the pipeline's
/// origin records when Redis has no `seen` hash. Records are applied oldest first, so a
/// document taken twice (it changed in between) keeps its newest fingerprint. Call it under
/// the pipeline's run lock, so no run marks documents meanwhile.
pub async fn rebuild_if_lost(
    store: &ResultStore,
    state: &PipelineState,
    pipeline: &str,
) -> anyhow::Result<Recovered> {
    if !state.seen_is_empty(pipeline).await? {
        return Ok(Recovered::default());
    }
    let origins = read_records(store, pipeline).await?;
    if origins.is_empty() {
        return Ok(Recovered::default());
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for o in &origins {
        seen.extend(o.documents.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let pairs: Vec<(String, String)> = seen.into_iter().collect();
    state.mark_seen(pipeline, &pairs).await?;
    let last_tick = latest_scheduled_tick(&origins);
    if let Some(t) = last_tick {
        state.note_tick(pipeline, t).await?;
    }
    let recovered = Recovered {
        records: origins.len(),
        documents: pairs.len(),
        last_tick,
    };
    tracing::warn!(
        pipeline,
        records = recovered.records,
        documents = recovered.documents,
        "redis had no seen-state for this pipeline; rebuilt it from the origin records in object storage"
    );
    Ok(recovered)
}
