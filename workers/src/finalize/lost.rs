//! Results that went missing after their items were settled (a lifecycle rule, an operator,
//! a lost bucket). When the finalizer's pass finds fewer results than the batch has items, it
//! walks the batch's kept input (`batches/<id>/input/`) and writes a
//! `result_lost` failure for every job whose result is gone, with the job kept so that
//! `batchyard retry BATCH --code result_lost` runs it again, then writes the files once more.
//! What it can't name (the input
//! copy is gone too) is reported as a count: the batch then ends `failed`, never `completed`.

use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::{Extension, OutputLine, codes};
use batchyard_jobs::segments::read::Index;
use batchyard_jobs::segments::{self, Record};
use batchyard_jobs::storage::ResultStore;
use futures::TryStreamExt;

use super::FinalizeError;

/// Writes a `result_lost` failure for each job of the kept input without an outcome in
/// `index` (one segment per input chunk); returns how many it wrote.
pub(super) async fn record_lost(
    store: &ResultStore,
    batch_id: &str,
    index: &Index,
) -> Result<u64, FinalizeError> {
    let mut chunks: Vec<_> = store
        .list(&store.input_dir(batch_id))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    chunks.sort();
    let writer = segments::writer_name("lost");
    let mut recorded = 0u64;
    for (n, chunk) in chunks.into_iter().enumerate() {
        let bytes = store.get(&chunk).await?;
        let records: Vec<Record> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice::<Job>(l).ok())
            .filter(|job| !index.holds(job.seq, &job.job_id))
            .map(|job| {
                let mut line = OutputLine::failure(
                    &job.job_id,
                    &job.custom_id,
                    codes::RESULT_LOST,
                    format!(
                        "this item's stored result went missing from storage after it ran; run it again with `batchyard retry {batch_id} --code result_lost`"
                    ),
                    Extension::default(),
                );
                let (job_id, seq) = (job.job_id.clone(), job.seq);
                line.job = Some(Box::new(job));
                Record::new(&job_id, seq, 0, 0, line)
            })
            .collect();
        if records.is_empty() {
            continue;
        }
        segments::write_records(store, batch_id, &writer, n as u64, &records).await?;
        recorded += records.len() as u64;
    }
    Ok(recorded)
}
