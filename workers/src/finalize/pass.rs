//! The one pass over a batch's outcomes that writes `output.jsonl` and `errors.jsonl`.
//!
//! Segments (and a pre-segment batch's per-item objects) are read a bounded number at once
//! and written out as they come, each job's first outcome only. Should a job turn up twice
//! (a run whose worker died after its segment was written, then ran again), the files being
//! written are dropped unfinished and written once more from each job's winning outcome
//! (`batchyard_jobs::segments::read`): rare, and only then is everything read twice.

use std::sync::Arc;

use batchyard_jobs::error::StoreError;
use batchyard_jobs::outcome::OutputLine;
use batchyard_jobs::segments::read::{Index, PARALLEL, outcomes, winners};
use batchyard_jobs::storage::ResultStore;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;

use super::FinalizeError;
use super::tally::Tally;

/// The two files being written, and what their lines add up to.
struct Files {
    output: BufWriter,
    errors: BufWriter,
    output_path: Path,
    errors_path: Path,
    tally: Tally,
}

impl Files {
    fn open(store: &ResultStore, batch_id: &str) -> Self {
        let (output_path, errors_path) = (store.output_path(batch_id), store.errors_path(batch_id));
        Self {
            output: store.writer(&output_path),
            errors: store.writer(&errors_path),
            output_path,
            errors_path,
            tally: Tally::default(),
        }
    }

    async fn add(&mut self, mut line: OutputLine) -> Result<(), FinalizeError> {
        line.job = None;
        line.settle_nanos = None;
        let (writer, target) = if self.tally.add(&line) {
            (&mut self.output, &self.output_path)
        } else {
            (&mut self.errors, &self.errors_path)
        };
        let mut bytes = batchyard_jobs::jsonl::to_line(&line).map_err(|e| StoreError::Corrupt {
            path: format!("the outcome of {}", line.custom_id),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        writer
            .write_all(&bytes)
            .await
            .map_err(|e| FinalizeError::Write {
                path: target.to_string(),
                message: e.to_string(),
            })
    }

    async fn commit(mut self) -> Result<Tally, FinalizeError> {
        for (writer, path) in [
            (&mut self.output, &self.output_path),
            (&mut self.errors, &self.errors_path),
        ] {
            writer.shutdown().await.map_err(|e| FinalizeError::Write {
                path: path.to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(self.tally)
    }

    /// Drops the files unwritten (an upload in progress is aborted, so nothing is left).
    async fn abort(mut self) {
        for writer in [&mut self.output, &mut self.errors] {
            if let Err(e) = writer.abort().await {
                tracing::debug!(error = %e, "cannot abort an unfinished batch file");
            }
        }
    }
}

/// Writes the batch files from its outcomes, one line per job. Returns what they add up to
/// and the index of every outcome read (what is missing, for `lost`).
pub(super) async fn write_outcomes(
    store: &ResultStore,
    batch_id: &str,
    items: u64,
) -> Result<(Tally, Arc<Index>), FinalizeError> {
    let mut index = Index::new(items);
    let mut files = Some(Files::open(store, batch_id));
    let mut all = outcomes(store, batch_id, PARALLEL);
    while let Some(o) = all.try_next().await? {
        let first = index.note(&o)?;
        if !first && let Some(unfinished) = files.take() {
            unfinished.abort().await;
        }
        if let Some(files) = files.as_mut() {
            files.add(o.line).await?;
        }
    }
    if let Some(files) = files {
        return Ok((files.commit().await?, Arc::new(index)));
    }
    tracing::info!(
        batch_id,
        duplicates = index.duplicates(),
        "jobs with more than one outcome (runs taken over from stopped workers); writing each job's settled one"
    );
    let index = Arc::new(index);
    let mut files = Files::open(store, batch_id);
    let mut picked = winners(store, batch_id, Arc::clone(&index), PARALLEL);
    while let Some(o) = picked.try_next().await? {
        files.add(o.line).await?;
    }
    Ok((files.commit().await?, index))
}
