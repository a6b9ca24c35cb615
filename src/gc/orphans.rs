//! Batch folders no ledger record names: left by a Redis that lost its data, or by
//! `batchyard run` in process. They are found by listing the folders of `batches/` and
//! looking at a bounded number per pass, from where the last pass stopped, and removed like
//! any batch once their newest object is older than the cutoff (and at least
//! an hour old, so a submission that writes objects before its record is never taken).

use std::collections::BTreeMap;
use std::time::Instant;

use batchyard_jobs::ledger::IndexEntry;
use futures::TryStreamExt;
use object_store::ObjectMeta;
use tokio::sync::Mutex;

use super::batches::Outcome;
use super::{Collector, Report};

/// Folders looked at per pass, per batch the pass may remove.
const SCAN_FACTOR: usize = 2;
const MIN_AGE_SECS: u64 = 3600;

impl Collector {
    /// The ids of every folder under `batches/`, sorted (one listing request per thousand
    /// folders on a cloud store; one folder read on `file://`).
    async fn folders(&self) -> Result<Vec<String>, String> {
        let prefix = self.store.path_of("batches");
        let listed = self
            .store
            .inner()
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| format!("cannot list batches/: {e}"))?;
        let mut ids: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub(super) async fn collect_orphan_folders(
        &self,
        cutoff: u64,
        now: u64,
        until: Instant,
        report: &mut Report,
    ) {
        let cutoff = cutoff.min(now.saturating_sub(MIN_AGE_SECS));
        let budget = self.retention.max_per_pass * SCAN_FACTOR;
        let snapshots = Mutex::new(BTreeMap::new());
        let cursor = self.cursors().folders.clone();
        let ids = match self.folders().await {
            Ok(ids) => ids,
            Err(e) => {
                report.errors.push(e);
                report.complete = false;
                return;
            }
        };
        let start = cursor.map_or(0, |c| ids.partition_point(|id| *id <= c));
        let mut next = None;
        for id in ids.iter().skip(start).take(budget) {
            if Instant::now() >= until
                || report.batches.removed >= self.retention.max_per_pass as u64
            {
                break;
            }
            next = Some(id.clone());
            match self.orphan(id, cutoff, report.dry_run, &snapshots).await {
                Ok(Some(Outcome::Removed { objects, bytes, .. })) => {
                    report.batches.removed += 1;
                    report.objects.removed += objects;
                    report.objects.bytes += bytes;
                }
                Ok(_) => {}
                Err(e) => report.errors.push(format!("batch folder {id}: {e}")),
            }
        }
        // Reached the last folder: the next pass starts over.
        if next.as_ref() == ids.last() {
            next = None;
        } else {
            report.complete = false;
        }
        self.cursors().folders = next;
    }

    /// Removes the folder of `id` if no record names it and nothing in it is newer than
    /// `cutoff`; `None` when it stays.
    async fn orphan(
        &self,
        id: &str,
        cutoff: u64,
        dry_run: bool,
        snapshots: &Mutex<BTreeMap<String, crate::scheduler::snapshot::Snapshot>>,
    ) -> Result<Option<Outcome>, String> {
        if self
            .ledger
            .get(id)
            .await
            .map_err(|e| format!("cannot read its record: {e}"))?
            .is_some()
        {
            return Ok(None);
        }
        let objects: Vec<ObjectMeta> = self
            .store
            .list(&self.store.batch_dir(id))
            .try_collect()
            .await
            .map_err(|e| format!("cannot list it: {e}"))?;
        // An empty folder (some stores keep them as prefixes) holds nothing to remove.
        if objects.is_empty() {
            return Ok(None);
        }
        let newest = objects
            .iter()
            .map(|m| u64::try_from(m.last_modified.timestamp()).unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0);
        if newest > cutoff {
            return Ok(None);
        }
        let entry = IndexEntry {
            id: id.to_string(),
            created_at: 0,
            state: None,
            ended_at: None,
            storage_url: None,
            tenant: None,
        };
        self.remove_batch(&entry, cutoff, dry_run, snapshots)
            .await
            .map(Some)
    }
}
