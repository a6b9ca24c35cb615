//! Results that went missing after their items were settled (a lifecycle rule, an operator,
//! a lost bucket). When the finalizer's pass finds fewer results than the batch has items, it
//! walks the batch's kept input (`batches/<id>/input/`) and writes a
//! `result_lost` failure for every job whose result is gone, with the job kept so that
//! `batchyard retry BATCH --code result_lost` runs it again, then writes the files once more.
//! What it can't name (the input
//! copy is gone too) is reported as a count: the batch then ends `failed`, never `completed`.

use batchyard_jobs::error::StoreError;
use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::{Extension, OutputLine, codes};
use batchyard_jobs::segments::read::Index;
use batchyard_jobs::segments::{self, Record};
use batchyard_jobs::storage::ResultStore;
use futures::TryStreamExt;
use object_store::path::Path;

use super::FinalizeError;

/// The chunks of the batch's kept input, in order.
pub(super) async fn input_chunks(
    store: &ResultStore,
    batch_id: &str,
) -> Result<Vec<Path>, StoreError> {
    let mut chunks: Vec<_> = store
        .list(&store.input_dir(batch_id))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    chunks.sort();
    Ok(chunks)
}

/// The jobs of one kept input chunk that have no outcome in `index`, each as a failure record
/// with `code` (the job kept in it, so `retry` can run it again).
pub(super) fn without_outcome(
    chunk: &[u8],
    index: &Index,
    code: &str,
    message: &str,
) -> Vec<Record> {
    chunk
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<Job>(l).ok())
        .filter(|job| !index.holds(job.seq, &job.job_id))
        .map(|job| {
            let mut line = OutputLine::failure(
                &job.job_id,
                &job.custom_id,
                code,
                message,
                Extension::default(),
            );
            line.settle_nanos = Some(0);
            let (job_id, seq) = (job.job_id.clone(), job.seq);
            line.job = Some(Box::new(job));
            Record::new(&job_id, seq, 0, 0, line)
        })
        .collect()
}

/// Writes a `result_lost` failure for each job of the kept input without an outcome in
/// `index` (one segment per input chunk); returns how many it wrote.
pub(super) async fn record_lost(
    store: &ResultStore,
    batch_id: &str,
    index: &Index,
) -> Result<u64, FinalizeError> {
    let writer = segments::writer_name("lost");
    let message = format!(
        "this item's stored result went missing from storage after it ran; run it again with `batchyard retry {batch_id} --code result_lost`"
    );
    let mut recorded = 0u64;
    for (n, chunk) in input_chunks(store, batch_id).await?.into_iter().enumerate() {
        let bytes = store.get(&chunk).await?;
        let records = without_outcome(&bytes, index, codes::RESULT_LOST, &message);
        if records.is_empty() {
            continue;
        }
        segments::write_records(store, batch_id, &writer, n as u64, &records).await?;
        recorded += records.len() as u64;
    }
    Ok(recorded)
}
