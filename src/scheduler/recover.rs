//! Object storage as the durable record of what a pipeline took, so a Redis that lost its data
//! doesn't make the next run submit every document again.
//!
//! Each submitted run writes its origin twice: `batches/<id>/pipeline.json`, next to the batch
//! it explains, and `pipelines/<name>/batches/<id>.json`, so a pipeline's own records can be
//! listed without walking every batch. When Redis holds no `seen` hash for a pipeline, the run
//! reads those records back before it picks documents, over the snapshot retention folds old
//! records into before it removes them (see [`super::snapshot`]).

use std::collections::BTreeMap;

use batchyard_jobs::storage::ResultStore;
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

/// Writes the origin record in both places. Errors are returned so the caller can log them;
/// the batch is enqueued either way.
pub async fn write_origin(
    store: &ResultStore,
    pipeline: &str,
    batch_id: &str,
    origin: &serde_json::Value,
) -> Result<(), String> {
    let bytes = bytes::Bytes::from(serde_json::to_vec(origin).map_err(|e| e.to_string())?);
    let next_to_batch = store.path_of(&batchyard_jobs::keys::batch_pipeline_origin(batch_id));
    store
        .put(&next_to_batch, bytes.clone())
        .await
        .map_err(|e| e.to_string())?;
    let indexed = store.path_of(&batchyard_jobs::keys::pipeline_record(pipeline, batch_id));
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

/// The newest scheduled (not manual) tick among the records.
pub fn latest_scheduled_tick<'a>(origins: impl Iterator<Item = &'a Origin>) -> Option<i64> {
    origins
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
    let stored = super::snapshot::load(store, pipeline).await?;
    if stored.records == 0 {
        return Ok(Recovered::default());
    }
    let pairs: Vec<(String, String)> = stored.documents.into_iter().collect();
    state.mark_seen(pipeline, &pairs).await?;
    let last_tick = stored.last_scheduled_tick;
    if let Some(t) = last_tick {
        state.note_tick(pipeline, t).await?;
    }
    let recovered = Recovered {
        records: stored.records,
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
