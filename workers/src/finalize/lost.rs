//! Results that went missing after their items were settled (a lifecycle rule, an operator,
//! a lost bucket). When the finalizer's pass finds fewer results than the batch has items, it
//! walks the batch's kept input (`batches/<id>/input/`) and writes a
//! `result_lost` failure for every job whose result is gone, with the job kept so that
//! `batchyard retry BATCH --code result_lost` runs it again, then writes the files once more.
//! What it can't name (the input
//! copy is gone too) is reported as a count: the batch then ends `failed`, never `completed`.

use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::{Extension, OutputLine, codes};
use batchyard_jobs::storage::ResultStore;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::FinalizeError;

/// Results looked up at once while walking the input.
const LOOKUPS: usize = 32;

/// Writes a `result_lost` failure for each job of the kept input whose result is missing;
/// returns how many it wrote.
pub(super) async fn record_lost(store: &ResultStore, batch_id: &str) -> Result<u64, FinalizeError> {
    let mut chunks: Vec<_> = store
        .list(&store.input_dir(batch_id))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    chunks.sort();
    let mut recorded = 0u64;
    for chunk in chunks {
        let bytes = store.get(&chunk).await?;
        let jobs: Vec<Job> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let missing: Vec<Job> = futures::stream::iter(jobs)
            .map(|job| async move {
                let path = store.result_path(batch_id, &job.job_id);
                store.head(&path).await.map(|m| m.is_none().then_some(job))
            })
            .buffered(LOOKUPS)
            .try_filter_map(|job| async move { Ok(job) })
            .try_collect()
            .await?;
        for job in missing {
            let mut line = OutputLine::failure(
                &job.job_id,
                &job.custom_id,
                codes::RESULT_LOST,
                format!(
                    "this item's stored result went missing from storage after it ran; run it again with `batchyard retry {batch_id} --code result_lost`"
                ),
                Extension::default(),
            );
            line.job = Some(Box::new(job.clone()));
            let body = serde_json::to_vec(&line).map_err(|e| FinalizeError::Write {
                path: store.result_path(batch_id, &job.job_id).to_string(),
                message: e.to_string(),
            })?;
            store
                .put(&store.result_path(batch_id, &job.job_id), Bytes::from(body))
                .await?;
            recorded += 1;
        }
    }
    Ok(recorded)
}
