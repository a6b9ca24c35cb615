//! Ended batches past `[retention] batches`: each goes in an order a crash can stop at any
//! step without leaving a state that breaks `status`, `list` or the API:
//!
//! 1. a pipeline's origin records are folded into its snapshot (if the batch came from one);
//! 2. its API record (`api/batches/<id>.json`): the batch still shows, without its metadata;
//!    then its entry in its tenant's index (the record names the tenant, so this comes before
//!    the record goes; a batch reopened by `retry` at this very moment is indexed again when
//!    it ends);
//! 3. its Redis keys, in one script that checks it ended before the cutoff: from here on it
//!    is gone for every reader (the index entry alone names nothing a reader shows);
//! 4. every object under `batches/<id>/` (by prefix, whatever the result layout) and its
//!    origin record under `pipelines/`;
//! 5. its index entry. An entry whose record is gone is a removal cut short: the next pass
//!    picks it up at step 4.

use std::collections::BTreeMap;
use std::time::Instant;

use batchyard_jobs::keys;
use batchyard_jobs::ledger::{IndexEntry, Removal};
use batchyard_jobs::storage::ResultStore;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use tokio::sync::Mutex;

use super::{Collector, Report};
use crate::scheduler::snapshot::{self, Snapshot};

/// Index entries read per page.
const PAGE: usize = 200;
/// Batches removed at once.
const PARALLEL: usize = 8;
/// An index entry without a record is only taken for a removal cut short once it is this
/// old, so a batch being created (record and index written apart) is never mistaken for one.
const ORPHAN_GRACE_SECS: u64 = 600;

/// How one batch went.
pub(super) enum Outcome {
    Removed {
        objects: u64,
        bytes: u64,
        compacted: bool,
    },
    /// It was not removable after all (reopened by a retry meanwhile).
    Kept,
}

/// Tests stop a removal after one of its steps (`api_record`, `redis`, `objects`) for one
/// batch, as a crash there would.
#[cfg(test)]
pub(super) static FAIL_AFTER: std::sync::Mutex<Vec<(String, &'static str)>> =
    std::sync::Mutex::new(Vec::new());

/// Tests hold a removal after one of its steps (`file_meta` for an upload) until they have
/// done what another process could do meanwhile: the first wait says it got there, the
/// second lets it go on.
#[cfg(test)]
pub(super) static PAUSE_AT: std::sync::Mutex<
    Vec<(String, &'static str, std::sync::Arc<tokio::sync::Barrier>)>,
> = std::sync::Mutex::new(Vec::new());

pub(super) async fn pause_at(_id: &str, _step: &'static str) {
    #[cfg(test)]
    {
        let barrier = PAUSE_AT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(id, step, _)| id == _id && *step == _step)
            .map(|(_, _, b)| std::sync::Arc::clone(b));
        if let Some(b) = barrier {
            b.wait().await;
            b.wait().await;
        }
    }
}

pub(super) fn step_done(_batch_id: &str, _step: &'static str) -> Result<(), String> {
    #[cfg(test)]
    if FAIL_AFTER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(id, step)| id == _batch_id && *step == _step)
    {
        return Err(format!("stopped after step {_step} (test)"));
    }
    Ok(())
}

fn due(entry: &IndexEntry, cutoff: u64, now: u64) -> bool {
    match entry.state {
        None => entry.created_at <= now.saturating_sub(ORPHAN_GRACE_SECS),
        Some(s) => s.is_terminal() && entry.ended_at.unwrap_or(entry.created_at) <= cutoff,
    }
}

impl Collector {
    pub(super) async fn collect_batches(
        &self,
        cutoff: u64,
        now: u64,
        until: Instant,
        report: &mut Report,
    ) {
        let max = self.retention.max_per_pass as u64;
        let mut skip = self.cursors().batches;
        let snapshots: Mutex<BTreeMap<String, Snapshot>> = Mutex::default();
        loop {
            if report.batches.removed + report.batches.kept >= max || Instant::now() >= until {
                report.complete = false;
                break;
            }
            let page = match self.ledger.index_page(cutoff, skip, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    report
                        .errors
                        .push(format!("cannot read the batch index: {e}"));
                    report.complete = false;
                    break;
                }
            };
            if page.is_empty() {
                // The end of what is old enough: the next pass starts over.
                skip = 0;
                break;
            }
            let room = usize::try_from(max - report.batches.removed - report.batches.kept)
                .unwrap_or(usize::MAX);
            let mut chosen = Vec::new();
            let mut full = false;
            for entry in page {
                if !due(&entry, cutoff, now) {
                    skip += 1;
                } else if chosen.len() < room {
                    chosen.push(entry);
                } else {
                    full = true;
                }
            }
            let dry_run = report.dry_run;
            let outcomes: Vec<(String, Result<Outcome, String>)> = futures::stream::iter(chosen)
                .map(|entry| {
                    let snapshots = &snapshots;
                    async move {
                        let outcome = self.remove_batch(&entry, cutoff, dry_run, snapshots).await;
                        (entry.id, outcome)
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            for (id, outcome) in outcomes {
                match outcome {
                    Ok(Outcome::Removed {
                        objects,
                        bytes,
                        compacted,
                    }) => {
                        report.batches.removed += 1;
                        report.objects.removed += objects;
                        report.objects.bytes += bytes;
                        report.pipelines_compacted += u64::from(compacted);
                        if report.dry_run {
                            skip += 1;
                        }
                    }
                    Ok(Outcome::Kept) => {
                        report.batches.kept += 1;
                        skip += 1;
                    }
                    Err(e) => {
                        report.batches.kept += 1;
                        report.errors.push(format!("batch {id}: {e}"));
                        skip += 1;
                    }
                }
            }
            if full {
                report.complete = false;
                break;
            }
        }
        self.cursors().batches = skip;
    }

    pub(super) async fn remove_batch(
        &self,
        entry: &IndexEntry,
        cutoff: u64,
        dry_run: bool,
        snapshots: &Mutex<BTreeMap<String, Snapshot>>,
    ) -> Result<Outcome, String> {
        let id = entry.id.as_str();
        let store = self.store_for(entry.storage_url.as_deref())?;
        let objects: Vec<ObjectMeta> = store
            .list(&store.batch_dir(id))
            .try_collect()
            .await
            .map_err(|e| format!("cannot list its objects: {e}"))?;
        let bytes: u64 = objects.iter().map(|m| m.size).sum();
        let origin_path = store.path_of(&keys::batch_pipeline_origin(id));
        let pipeline = if objects.iter().any(|m| m.location == origin_path) {
            Some(pipeline_of(&store, id).await?)
        } else {
            None
        };
        let count = objects.len() as u64;
        if dry_run {
            return Ok(Outcome::Removed {
                objects: count,
                bytes,
                compacted: false,
            });
        }
        let mut compacted = false;
        if let Some(name) = &pipeline {
            compacted = self.fold_origin(&store, name, id, snapshots).await?;
        }
        store
            .delete(&store.path_of(&keys::api_batch(id)))
            .await
            .map_err(|e| format!("cannot delete its API record: {e}"))?;
        step_done(id, "api_record")?;
        // Before its keys: once they are gone nothing names the tenant any more.
        if let Some(tenant) = &entry.tenant {
            self.ledger
                .unindex_tenant(id, tenant)
                .await
                .map_err(|e| format!("cannot drop its tenant index entry: {e}"))?;
        }
        match self.ledger.remove_ended(id, cutoff).await {
            Ok(Removal::Kept) => return Ok(Outcome::Kept),
            Ok(Removal::Removed | Removal::Missing) => {}
            Err(e) => return Err(format!("cannot remove its redis keys: {e}")),
        }
        step_done(id, "redis")?;
        delete_all(&store, objects.into_iter().map(|m| m.location)).await?;
        if let Some(name) = &pipeline {
            store
                .delete(&store.path_of(&keys::pipeline_record(name, id)))
                .await
                .map_err(|e| format!("cannot delete its origin record: {e}"))?;
        }
        prune_empty_dirs(&store, id).await;
        step_done(id, "objects")?;
        self.queue
            .discard_staged(id)
            .await
            .map_err(|e| format!("cannot drop its queue state: {e}"))?;
        self.ledger
            .unindex(id)
            .await
            .map_err(|e| format!("cannot drop its index entry: {e}"))?;
        Ok(Outcome::Removed {
            objects: count,
            bytes,
            compacted,
        })
    }

    /// Makes sure the pipeline's snapshot holds this batch's origin record before anything
    /// of it is deleted: compacts once per pass, and again if the record came later. True
    /// when this call compacted.
    async fn fold_origin(
        &self,
        store: &ResultStore,
        pipeline: &str,
        batch_id: &str,
        snapshots: &Mutex<BTreeMap<String, Snapshot>>,
    ) -> Result<bool, String> {
        let mut done = snapshots.lock().await;
        if done
            .get(pipeline)
            .is_some_and(|s| s.compacted.contains(batch_id))
        {
            return Ok(false);
        }
        let snap = snapshot::compact(store, pipeline)
            .await
            .map_err(|e| format!("cannot compact pipeline {pipeline}'s origin records: {e:#}"))?;
        let held = snap.compacted.contains(batch_id);
        done.insert(pipeline.to_string(), snap);
        if !held {
            let record = store.path_of(&keys::pipeline_record(pipeline, batch_id));
            if store.exists(&record).await.map_err(|e| e.to_string())? {
                return Err(format!(
                    "pipeline {pipeline}'s snapshot does not hold its origin record yet; kept"
                ));
            }
        }
        Ok(true)
    }
}

/// The pipeline named in the batch's `pipeline.json`.
async fn pipeline_of(store: &ResultStore, batch_id: &str) -> Result<String, String> {
    let path = store.path_of(&keys::batch_pipeline_origin(batch_id));
    let bytes = store
        .get(&path)
        .await
        .map_err(|e| format!("cannot read its pipeline.json: {e}"))?;
    let origin: crate::scheduler::recover::Origin = serde_json::from_slice(&bytes)
        .map_err(|e| format!("its pipeline.json is not an origin record ({e}); kept"))?;
    Ok(origin.pipeline)
}

/// Deletes objects, a few at a time.
pub(super) async fn delete_all(
    store: &ResultStore,
    paths: impl Iterator<Item = object_store::path::Path>,
) -> Result<(), String> {
    let results: Vec<Result<(), String>> = futures::stream::iter(paths)
        .map(|p| async move { store.delete(&p).await.map_err(|e| e.to_string()) })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A `file://` store leaves the batch's folders behind, empty: remove them.
async fn prune_empty_dirs(store: &ResultStore, batch_id: &str) {
    let Some(dir) = store.local_path(&store.batch_dir(batch_id)) else {
        return;
    };
    let _ = tokio::task::spawn_blocking(move || remove_empty(&dir, 0)).await;
}

/// Removes `dir` and the folders below it that hold no file; a folder that holds one stays.
fn remove_empty(dir: &std::path::Path, depth: usize) {
    if depth > 8 {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty(&e.path(), depth + 1);
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
