//! Finalization: once every job of a batch is settled, one worker reads the batch's result
//! segments back into `output.jsonl` and `errors.jsonl` (one line per job) and writes
//! `manifest.json`, streaming.
//!
//! - [`Finalizer`] (here): the lease, the files, the end state.
//! - `pass`: the pass over the outcomes (segments, and per-item objects of batches from
//!   before segments) that writes the two files, one outcome per job.
//! - `tally`: what the lines add up to, the end state the files show, the manifest.
//! - `manifest`: `manifest.json` and the reports in it.
//! - `lost`: results missing from storage, named from the kept input as `result_lost`.
//! - `drain`: a cancelled batch with nothing in flight ends at once.
//! - [`sweep`]: finishes what stopped workers and submits left (expired leases).
//!
//! May use: nothing else in this crate (only `batchyard_jobs`). Used by: `job`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchyard_jobs::error::{QueueError, StoreError};
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::storage::ResultStore;
use bytes::Bytes;

mod drain;
mod lost;
mod manifest;
mod pass;
pub mod sweep;
mod tally;

pub use self::manifest::{BudgetReport, EstimateReport, Manifest, ModelSpend};

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error(transparent)]
    Ledger(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

impl batchyard_jobs::retry::Retryable for FinalizeError {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Ledger(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
            Self::Write { .. } => true,
        }
    }
}

/// What one pass over the results did.
enum Pass {
    Done(Option<Box<Manifest>>),
    /// Missing results were written as `result_lost`: the files must be written again.
    Repaired,
}

/// How long a finalization lease lasts unless renewed. The holder renews it every third of
/// that; a killed holder's batch is taken over by [`sweep`] once it lapses.
pub const LEASE: Duration = Duration::from_secs(15);

/// Writes the batch files. Safe to run twice: every object is rewritten whole.
#[derive(Clone)]
pub struct Finalizer {
    ledger: Arc<dyn Ledger>,
    store: ResultStore,
    owner: String,
}

/// (owner, batch) pairs being finalized in this process now. The lease is the owner's, so
/// without this the sweep of the same process would take it again and write the same files
/// alongside (each `App::finalizer()` is a new `Finalizer`, hence a process-wide set).
static ACTIVE: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);

/// Holds its pair in [`ACTIVE`] until dropped.
struct Active {
    key: (String, String),
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Ok(mut set) = ACTIVE.lock()
            && let Some(set) = set.as_mut()
        {
            set.remove(&self.key);
        }
    }
}

impl Finalizer {
    pub fn new(ledger: Arc<dyn Ledger>, store: ResultStore, owner: String) -> Self {
        Self {
            ledger,
            store,
            owner,
        }
    }

    /// Marks `batch_id` as being finalized here; `None` when it already is.
    fn begin(&self, batch_id: &str) -> Option<Active> {
        let key = (self.owner.clone(), batch_id.to_owned());
        let fresh = ACTIVE
            .lock()
            .ok()?
            .get_or_insert_with(HashSet::new)
            .insert(key.clone());
        // Made only once the lock is released: an `Active` dropped under it would deadlock.
        fresh.then(|| Active { key })
    }

    /// Writes the batch files under the finalization lease, renewing it while it writes. `None`
    /// when another worker holds the lease or the batch is already finished.
    pub async fn finalize(&self, batch_id: &str) -> Result<Option<Manifest>, FinalizeError> {
        let Some(_active) = self.begin(batch_id) else {
            tracing::debug!(batch_id, "this process is finalizing this batch already");
            return Ok(None);
        };
        if !self
            .ledger
            .try_lock_finalize(batch_id, &self.owner, LEASE)
            .await?
        {
            tracing::info!(batch_id, "another worker is finalizing this batch");
            return Ok(None);
        }
        let write = self.write_files(batch_id);
        tokio::pin!(write);
        loop {
            tokio::select! {
                written = &mut write => return written,
                () = tokio::time::sleep(LEASE / 3) => {
                    match self.ledger.try_lock_finalize(batch_id, &self.owner, LEASE).await {
                        Ok(true) => {}
                        // Writing twice is safe (every object is rewritten whole), so carry on.
                        Ok(false) => tracing::warn!(batch_id, "lost the finalization lease; another worker may write the same files"),
                        Err(e) => tracing::warn!(batch_id, error = %e, "cannot renew the finalization lease"),
                    }
                }
            }
        }
    }

    /// Writes the batch files; if results turn out to be missing, names them from the kept
    /// input (`result_lost`) and writes the files once more.
    async fn write_files(&self, batch_id: &str) -> Result<Option<Manifest>, FinalizeError> {
        match self.write_files_once(batch_id, false).await? {
            Pass::Done(manifest) => Ok(manifest.map(|m| *m)),
            Pass::Repaired => match self.write_files_once(batch_id, true).await? {
                Pass::Done(manifest) => Ok(manifest.map(|m| *m)),
                Pass::Repaired => Ok(None),
            },
        }
    }

    async fn write_files_once(
        &self,
        batch_id: &str,
        repaired: bool,
    ) -> Result<Pass, FinalizeError> {
        let record = self
            .ledger
            .get(batch_id)
            .await?
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        if record.state.is_terminal() {
            return Ok(Pass::Done(None));
        }
        let output_path = self.store.output_path(batch_id);
        let errors_path = self.store.errors_path(batch_id);
        let (tally, index) =
            pass::write_outcomes(&self.store, batch_id, record.counts.total).await?;
        let written = tally.written();
        if !repaired && written < record.counts.total {
            // Results deleted after their items settled: name them from the kept input.
            let named = lost::record_lost(&self.store, batch_id, &index).await?;
            tracing::error!(
                batch_id,
                missing = record.counts.total - written,
                named,
                "results of settled items are missing from storage; they end as result_lost"
            );
            if named > 0 {
                return Ok(Pass::Repaired);
            }
        }
        let (ok, failed) = tally.counts();
        let (lost, state) = (tally.lost(&record), tally.state(&record));
        let manifest = tally.into_manifest(
            &record,
            self.store.display_location(&output_path),
            self.store.display_location(&errors_path),
        );
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| FinalizeError::Write {
            path: self.store.manifest_path(batch_id).to_string(),
            message: e.to_string(),
        })?;
        self.store
            .put(&self.store.manifest_path(batch_id), Bytes::from(json))
            .await?;
        let failure = (lost > 0).then(|| batchyard_jobs::batch::BatchFailure {
            code: batchyard_jobs::batch::failure_codes::RESULT_LOST.into(),
            message: format!(
                "{lost} of {} results went missing from storage after their items ran; {} are in errors.jsonl as result_lost (`batchyard retry {batch_id} --code result_lost` runs them again){}",
                record.counts.total,
                lost - record.counts.total.saturating_sub(written),
                match record.counts.total.saturating_sub(written) {
                    0 => String::new(),
                    n => format!("; {n} could not be named (the batch's kept input is gone too)"),
                }
            ),
        });
        // The counts say what the files hold.
        self.ledger
            .set_counts(batch_id, ok, failed, failure.as_ref())
            .await?;
        self.ledger.set_state(batch_id, state).await?;
        tracing::info!(
            batch_id,
            ok,
            failed,
            cost_usd = manifest.cost_usd,
            "batch finalized"
        );
        Ok(Pass::Done(Some(Box::new(manifest))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use batchyard_jobs::batch::{BatchRecord, BatchState};
    use batchyard_jobs::ledger::memory::MemoryLedger;
    use batchyard_jobs::outcome::{Extension, OutputLine, Response, codes};
    use batchyard_jobs::segments::{Record, write_records};

    fn success(job_id: &str) -> OutputLine {
        OutputLine {
            id: format!("batch_req_{job_id}"),
            custom_id: job_id.to_string(),
            response: Some(Response {
                status_code: 200,
                request_id: "r".into(),
                body: serde_json::json!({}),
            }),
            error: None,
            batchyard: Extension::default(),
            job: None,
            settle_nanos: None,
        }
    }

    /// Finalizes a batch of these lines; returns the state it ended in.
    async fn end_state(lines: &[OutputLine], cancelled: bool) -> BatchState {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = ResultStore::open(&url, &Default::default()).unwrap();
        let ledger = Arc::new(MemoryLedger::new());
        let record = BatchRecord {
            state: BatchState::Finalizing,
            in_progress_at: Some(1),
            finalizing_at: Some(2),
            cancel_requested_at: cancelled.then_some(2),
            expires_at: Some(2),
            ..BatchRecord::new("batch_x".into(), lines.len() as u64, url, 1)
        };
        ledger.create(&record).await.unwrap();
        // Half as per-item objects of a batch from before segments, half in a segment: a
        // batch live during the upgrade.
        for (i, line) in lines.iter().enumerate() {
            let job = format!("job{i}");
            if i % 2 == 0 {
                let path = store.result_path("batch_x", &job);
                let bytes = Bytes::from(serde_json::to_vec(line).unwrap());
                store.put(&path, bytes).await.unwrap();
            } else {
                let record = Record::new(&job, i as u64, 1, 0, line.clone());
                write_records(&store, "batch_x", "w", i as u64, &[record])
                    .await
                    .unwrap();
            }
        }
        let finalizer = Finalizer::new(ledger.clone(), store, "me".into());
        let manifest = finalizer.finalize("batch_x").await.unwrap().unwrap();
        let state = ledger.get("batch_x").await.unwrap().unwrap().state;
        assert_eq!(manifest.status, state.as_str());
        state
    }

    #[tokio::test]
    async fn expired_lines_expire_the_batch_unless_it_was_cancelled() {
        let expired =
            |id: &str| OutputLine::failure(id, id, codes::EXPIRED, "late", Extension::default());
        let partial = [success("a"), expired("b")];
        assert_eq!(end_state(&partial, false).await, BatchState::Expired);
        assert_eq!(end_state(&partial, true).await, BatchState::Cancelled);
        // Nothing ran in time: still expired, not failed.
        assert_eq!(end_state(&[expired("c")], false).await, BatchState::Expired);
        assert_eq!(
            end_state(&[success("d")], false).await,
            BatchState::Completed
        );
    }

    /// A job in two segments (its first run's worker died before the settle; the second run
    /// was settled) and in a per-item object from before the upgrade: one line, the last run's.
    #[tokio::test]
    async fn a_job_written_twice_is_in_the_output_once_the_last_run() {
        let store = ResultStore::in_memory();
        let ledger = Arc::new(MemoryLedger::new());
        let record = BatchRecord {
            state: BatchState::Finalizing,
            ..BatchRecord::new("batch_d".into(), 2, "memory://".into(), 1)
        };
        ledger.create(&record).await.unwrap();
        let mut first = success("a");
        first.batchyard.model = Some("first".into());
        let mut second = success("a");
        second.batchyard.model = Some("second".into());
        let old = Bytes::from(serde_json::to_vec(&success("a")).unwrap());
        store
            .put(&store.result_path("batch_d", "a"), old)
            .await
            .unwrap();
        let runs = [
            Record::new("a", 0, 1, 0, first),
            Record {
                at_ms: 0,
                ..Record::new("b", 1, 1, 0, success("b"))
            },
        ];
        write_records(&store, "batch_d", "w1", 1, &runs)
            .await
            .unwrap();
        let later = Record {
            at_ms: runs[0].at_ms + 1,
            ..Record::new("a", 0, 2, 0, second)
        };
        write_records(&store, "batch_d", "w2", 1, &[later])
            .await
            .unwrap();
        let finalizer = Finalizer::new(ledger.clone(), store.clone(), "me".into());
        let manifest = finalizer.finalize("batch_d").await.unwrap().unwrap();
        assert_eq!(manifest.lines_written, 2);
        let output = store.get(&store.output_path("batch_d")).await.unwrap();
        let lines: Vec<OutputLine> = output
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let a: Vec<_> = lines.iter().filter(|l| l.custom_id == "a").collect();
        assert_eq!(a.len(), 1, "{lines:?}");
        assert_eq!(a[0].batchyard.model.as_deref(), Some("second"));
    }

    /// The sweep of the process that is finalizing a batch leaves it alone (its lease is the
    /// same owner's, so the ledger would let it in).
    #[tokio::test]
    async fn one_process_finalizes_a_batch_once_at_a_time() {
        let ledger = Arc::new(MemoryLedger::new());
        let finalizer = Finalizer::new(ledger, ResultStore::in_memory(), "me".into());
        let held = finalizer.begin("b").expect("first");
        assert!(
            finalizer.clone().begin("b").is_none(),
            "a clone shares the set"
        );
        assert!(finalizer.finalize("b").await.unwrap().is_none());
        drop(held);
        assert!(finalizer.begin("b").is_some(), "free again once done");
    }
}
