//! Uploaded files past `[retention] files`, unless a batch that has not ended reads one (or a
//! batch creation is reading it now, see [`Collector::remove_upload`]), and
//! result cache entries past `[retention] cache`. Both are found by listing, from where the
//! last pass stopped, a bounded number of objects per pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use batchyard_jobs::error::{QueueError, StoreError};
use batchyard_jobs::keys;
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::storage::ResultStore;
use futures::StreamExt;
use object_store::ObjectMeta;
use object_store::path::Path;

use super::batches::delete_all;
use super::{Collector, Report, Tally};

/// Objects listed per pass for each kind, per object the pass may remove.
const SCAN_FACTOR: usize = 10;
/// The live batches' inputs are found by reading the whole index: at most this many entries,
/// else no file is removed this pass.
const MAX_INDEX_SCAN: usize = 2_000_000;
const INDEX_SCAN_TIME: Duration = Duration::from_secs(30);

/// The listings the collector walks a page per pass.
#[derive(Clone, Copy)]
pub(super) enum Listing {
    Files,
    Cache,
    ApiRecords,
}

/// What a batch creation from uploaded file `file_id` does before reading it: registers as
/// its reader, then checks its metadata is still there. False (and nothing held) when the
/// file is gone: retention took it meanwhile. See [`Collector::remove_upload`] for the other
/// side.
pub async fn hold_upload(
    ledger: &dyn Ledger,
    store: &ResultStore,
    file_id: &str,
    batch_id: &str,
) -> Result<bool, HoldError> {
    ledger.claim_upload(file_id, batch_id).await?;
    match store
        .exists(&store.path_of(&keys::upload_meta(file_id)))
        .await
    {
        Ok(true) => Ok(true),
        Ok(false) => {
            ledger.release_upload(file_id, batch_id).await?;
            Ok(false)
        }
        Err(e) => {
            // Best effort: a registration left behind lapses by itself.
            let _ = ledger.release_upload(file_id, batch_id).await;
            Err(e.into())
        }
    }
}

/// Why a creation could not hold its input file.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(transparent)]
    Ledger(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Collector {
    /// Up to `limit` objects under `rel`, after `offset` (a key relative to the store root).
    /// The bool is true when the listing reached its end.
    async fn list_from(
        &self,
        rel: &str,
        offset: Option<&str>,
        limit: usize,
        until: Instant,
    ) -> Result<(Vec<ObjectMeta>, bool), String> {
        let prefix = self.store.path_of(rel);
        let inner = self.store.inner();
        let mut listing = match offset {
            Some(o) => inner.list_with_offset(Some(&prefix), &self.store.path_of(o)),
            None => inner.list(Some(&prefix)),
        };
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            out.push(meta.map_err(|e| format!("cannot list {rel}: {e}"))?);
            if out.len() >= limit || Instant::now() >= until {
                return Ok((out, false));
            }
        }
        Ok((out, true))
    }

    /// The key relative to the store's root, for the cursors.
    pub(super) fn relative(&self, path: &Path) -> String {
        let root = self.store.path_of("x");
        let root = root.as_ref().strip_suffix('x').unwrap_or("");
        path.as_ref()
            .strip_prefix(root)
            .unwrap_or(path.as_ref())
            .to_string()
    }

    /// The next page of a listing from where the last pass stopped; moves the cursor on.
    /// `None` (the error noted) when the store refused.
    pub(super) async fn next_page(
        &self,
        which: Listing,
        until: Instant,
        report: &mut Report,
    ) -> Option<Vec<ObjectMeta>> {
        let rel = match which {
            Listing::Files => "files".to_string(),
            Listing::Cache => format!("cache/{}", keys::CACHE_VERSION),
            Listing::ApiRecords => keys::api_batches_dir().to_string(),
        };
        let offset = match which {
            Listing::Files => self.cursors().files.clone(),
            Listing::Cache => self.cursors().cache.clone(),
            Listing::ApiRecords => self.cursors().api_records.clone(),
        };
        let limit = self.retention.max_per_pass * SCAN_FACTOR;
        let (listed, end) = match self.list_from(&rel, offset.as_deref(), limit, until).await {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(e);
                report.complete = false;
                return None;
            }
        };
        let next = if end {
            None
        } else {
            listed.last().map(|m| self.relative(&m.location))
        };
        match which {
            Listing::Files => self.cursors().files = next,
            Listing::Cache => self.cursors().cache = next,
            Listing::ApiRecords => self.cursors().api_records = next,
        }
        report.complete &= end;
        Some(listed)
    }

    pub(super) async fn collect_files(&self, cutoff: u64, until: Instant, report: &mut Report) {
        let max = self.retention.max_per_pass;
        let Some(listed) = self.next_page(Listing::Files, until, report).await else {
            return;
        };
        // An upload is its content (`<id>.jsonl`) and its metadata (`<id>.json`).
        let mut uploads: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for m in &listed {
            let Some(name) = m.location.filename() else {
                continue;
            };
            let Some(id) = name
                .strip_suffix(".jsonl")
                .or_else(|| name.strip_suffix(".json"))
            else {
                continue;
            };
            let at = u64::try_from(m.last_modified.timestamp()).unwrap_or(0);
            let e = uploads.entry(id.to_string()).or_default();
            e.0 = e.0.max(at);
            e.1 += m.size;
        }
        let old: Vec<(String, u64)> = uploads
            .into_iter()
            .filter(|(_, (at, _))| *at <= cutoff)
            .map(|(id, (_, bytes))| (id, bytes))
            .take(max)
            .collect();
        if old.is_empty() {
            return;
        }
        let live = match self.live_inputs().await {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(format!("uploaded files kept: {e}"));
                report.files.kept += old.len() as u64;
                return;
            }
        };
        for (id, bytes) in old {
            if live.contains(&id) {
                report.files.kept += 1;
                continue;
            }
            match self.remove_upload(&id, report.dry_run).await {
                Ok(true) => report.files.add(Tally {
                    removed: 1,
                    bytes,
                    kept: 0,
                }),
                Ok(false) => report.files.kept += 1,
                Err(e) => {
                    report.errors.push(format!("file {id}: {e}"));
                    report.files.kept += 1;
                }
            }
        }
    }

    /// Removes one upload unless a batch creation reads it; false when it stays. A creation
    /// registers as a reader, then checks the metadata is there; this deletes the metadata,
    /// then checks for a reader (and puts the metadata back if there is one). Whichever goes
    /// second sees the other, so a file is never deleted under a creation that goes on.
    async fn remove_upload(&self, id: &str, dry_run: bool) -> Result<bool, String> {
        let in_use = || async {
            self.ledger
                .upload_in_use(id)
                .await
                .map_err(|e| format!("cannot see whether a batch creation reads it: {e}"))
        };
        if in_use().await? {
            return Ok(false);
        }
        super::batches::pause_at(id, "file_checked").await;
        if dry_run {
            return Ok(true);
        }
        // Metadata first: without it the API no longer shows the file, and the content left
        // by a crash here is listed (and removed) by the next pass.
        let meta_path = self.store.path_of(&keys::upload_meta(id));
        let meta = match self.store.get(&meta_path).await {
            Ok(bytes) => Some(bytes),
            Err(batchyard_jobs::error::StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.to_string()),
        };
        self.store
            .delete(&meta_path)
            .await
            .map_err(|e| e.to_string())?;
        super::batches::step_done(id, "file_meta")?;
        super::batches::pause_at(id, "file_meta").await;
        if in_use().await? {
            if let Some(bytes) = meta {
                self.store
                    .put(&meta_path, bytes)
                    .await
                    .map_err(|e| format!("cannot put back the metadata a creation reads: {e}"))?;
            }
            return Ok(false);
        }
        self.store
            .delete(&self.store.path_of(&keys::upload_content(id)))
            .await
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// The uploaded files that batches not yet ended read: their API records name them.
    async fn live_inputs(&self) -> Result<BTreeSet<String>, String> {
        let started = Instant::now();
        let mut live = Vec::new();
        let mut skip = 0;
        loop {
            let page = self
                .ledger
                .index_page(u64::MAX, skip, 1000)
                .await
                .map_err(|e| format!("cannot read the batch index: {e}"))?;
            if page.is_empty() {
                break;
            }
            skip += page.len();
            live.extend(
                page.into_iter()
                    .filter(|e| e.state.is_some_and(|s| !s.is_terminal()))
                    .map(|e| e.id),
            );
            if skip >= MAX_INDEX_SCAN || started.elapsed() > INDEX_SCAN_TIME {
                return Err(format!(
                    "the batch index is too long to read in one pass ({skip} entries read)"
                ));
            }
        }
        let mut inputs = BTreeSet::new();
        for id in live {
            let path = self.store.path_of(&keys::api_batch(&id));
            match self.store.get(&path).await {
                Ok(bytes) => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
                        && let Some(f) = v["input_file_id"].as_str()
                    {
                        inputs.insert(f.to_string());
                    }
                }
                Err(batchyard_jobs::error::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(format!("cannot read batch {id}'s API record: {e}")),
            }
        }
        Ok(inputs)
    }

    pub(super) async fn collect_cache(&self, cutoff: u64, until: Instant, report: &mut Report) {
        let max = self.retention.max_per_pass;
        let Some(listed) = self.next_page(Listing::Cache, until, report).await else {
            return;
        };
        let old: Vec<ObjectMeta> = listed
            .into_iter()
            .filter(|m| u64::try_from(m.last_modified.timestamp()).unwrap_or(0) <= cutoff)
            .take(max)
            .collect();
        let bytes = old.iter().map(|m| m.size).sum();
        let n = old.len() as u64;
        if !report.dry_run
            && let Err(e) = delete_all(&self.store, old.into_iter().map(|m| m.location)).await
        {
            report.errors.push(format!("cache: {e}"));
            return;
        }
        report.cache_entries.add(Tally {
            removed: n,
            bytes,
            kept: 0,
        });
    }
}
