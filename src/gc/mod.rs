//! Retention: removing what ended batches, uploads and the result cache leave behind once
//! `[retention]` says it is old enough. Every worker runs [`Collector::run`] in the
//! background; a lease in Redis (`by:gc:lease`) lets one of them collect at a time, each
//! pass bounded in count (`max_per_pass`) and time ([`PASS_TIME`]). `batchyard gc` runs the
//! same passes once, or only reports them (`--dry-run`). Dead letters are dropped by the
//! queue's own housekeeping, at `[retention] dead_letters`.
//!
//! Nothing of a batch that has not ended is removed: the ledger's removal checks the state
//! and the end time in the same script that deletes the keys.
//!
//! - [`batches`]: ended batches: API record, Redis keys, `batches/<id>/…`, index entry, in
//!   that order; a pipeline's origin records are compacted into its snapshot first.
//! - [`orphans`]: batch folders the ledger no longer knows (Redis lost its data, or the
//!   batch ran in process), removed the same way once their newest object is old enough.
//! - [`records`]: API records (`api/batches/<id>.json`) of batches the ledger no longer
//!   knows (collected by an older build, or a removal cut short before this step existed).
//! - [`uploads`]: uploaded files not read by a live batch (nor by a creation under way), and
//!   expired cache entries.

pub mod batches;
pub mod orphans;
pub mod records;
#[cfg(test)]
mod tests;
pub mod uploads;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::queue::Queue;
use batchyard_jobs::storage::ResultStore;
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::retention::Retention;

/// One pass stops starting new work after this long.
pub const PASS_TIME: Duration = Duration::from_secs(60);
/// The lease outlives a pass that overruns a little; a collector that died frees it after.
const LEASE_TTL: Duration = Duration::from_secs(180);

pub const REMOVED_TOTAL: &str = "batchyard_gc_removed_total";
pub const REMOVED_BYTES: &str = "batchyard_gc_removed_bytes_total";
pub const PASSES_TOTAL: &str = "batchyard_gc_passes_total";
pub const LAST_PASS: &str = "batchyard_gc_last_pass_timestamp_seconds";

pub fn describe() {
    describe_counter!(
        REMOVED_TOTAL,
        Unit::Count,
        "Things retention removed, by kind (batches, objects, api_records, files, cache_entries, origin_records)"
    );
    describe_counter!(
        REMOVED_BYTES,
        Unit::Bytes,
        "Bytes of objects retention removed, by kind"
    );
    describe_counter!(
        PASSES_TOTAL,
        Unit::Count,
        "Retention passes of this process, by outcome"
    );
    describe_gauge!(
        LAST_PASS,
        Unit::Seconds,
        "Unix time this process last finished a retention pass"
    );
}

/// What one kind of thing came to in a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Removed (or, in a dry run, would be).
    pub removed: u64,
    /// Bytes of the objects among them, where the listing said.
    pub bytes: u64,
    /// Old enough but kept (a live batch reads the file), or failed this pass.
    pub kept: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.removed += other.removed;
        self.bytes += other.bytes;
        self.kept += other.kept;
    }
}

/// What a pass did, or in a dry run would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub batches: Tally,
    /// Objects under the removed batches' folders (and their API records).
    pub objects: Tally,
    /// API records left without a batch (no ledger record), removed on their own.
    pub api_records: Tally,
    pub files: Tally,
    pub cache_entries: Tally,
    /// Pipelines whose origin records were compacted into a snapshot first.
    pub pipelines_compacted: u64,
    /// Every listing reached its end (false: the count or time bound stopped it).
    pub complete: bool,
    pub errors: Vec<String>,
}

impl Report {
    pub fn merge(&mut self, other: Report) {
        self.batches.add(other.batches);
        self.objects.add(other.objects);
        self.api_records.add(other.api_records);
        self.files.add(other.files);
        self.cache_entries.add(other.cache_entries);
        self.pipelines_compacted += other.pipelines_compacted;
        self.complete = other.complete;
        self.errors.extend(other.errors);
    }

    /// Nothing removed, nothing failed, every listing done: another pass would find nothing.
    pub fn settled(&self) -> bool {
        self.complete
            && self.errors.is_empty()
            && (self.dry_run
                || self.batches.removed
                    + self.api_records.removed
                    + self.files.removed
                    + self.cache_entries.removed
                    == 0)
    }

    fn record_metrics(&self) {
        if self.dry_run {
            return;
        }
        for (kind, t) in [
            ("batches", self.batches),
            ("objects", self.objects),
            ("api_records", self.api_records),
            ("files", self.files),
            ("cache_entries", self.cache_entries),
        ] {
            counter!(REMOVED_TOTAL, "kind" => kind).increment(t.removed);
            counter!(REMOVED_BYTES, "kind" => kind).increment(t.bytes);
        }
        let outcome = if self.errors.is_empty() {
            "ok"
        } else {
            "errors"
        };
        counter!(PASSES_TOTAL, "outcome" => outcome).increment(1);
        gauge!(LAST_PASS).set(batchyard_jobs::batch::now_secs() as f64);
    }
}

/// Where each listing of the collector stopped, so the next pass goes on from there.
#[derive(Debug, Default)]
struct Cursors {
    /// Index entries skipped (kept) so far: the next page starts after them.
    batches: usize,
    files: Option<String>,
    cache: Option<String>,
    api_records: Option<String>,
    /// The last batch folder looked at for a batch the ledger no longer knows.
    folders: Option<String>,
}

/// The collector of one process.
#[derive(Clone)]
pub struct Collector {
    ledger: Arc<dyn Ledger>,
    queue: Arc<dyn Queue>,
    store: ResultStore,
    env: BTreeMap<String, String>,
    retention: Retention,
    owner: String,
    cursors: Arc<Mutex<Cursors>>,
    /// Stores of batches written under another storage URL, opened once.
    others: Arc<Mutex<HashMap<String, ResultStore>>>,
}

impl Collector {
    pub fn new(app: &App) -> Self {
        Self {
            ledger: Arc::clone(&app.ledger),
            queue: Arc::clone(&app.queue),
            store: app.store.clone(),
            env: app.settings.env.clone(),
            retention: app.settings.retention.clone(),
            owner: app.consumer.clone(),
            cursors: Arc::default(),
            others: Arc::default(),
        }
    }

    fn cursors(&self) -> std::sync::MutexGuard<'_, Cursors> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes (or keeps) the lease: false while another process collects.
    pub async fn lease(&self) -> anyhow::Result<bool> {
        Ok(self.ledger.try_lock_gc(&self.owner, LEASE_TTL).await?)
    }

    /// Gives the lease up, so `batchyard gc` or another worker may collect at once.
    pub async fn release(&self) {
        if let Err(e) = self.ledger.release_gc(&self.owner).await {
            tracing::debug!(error = %e, "retention: cannot release the lease; it lapses by itself");
        }
    }

    /// One pass over batches, uploads and the cache, as of `now` (Unix seconds), bounded by
    /// `max_per_pass` per kind and [`PASS_TIME`]. Call it holding the lease.
    pub async fn pass(&self, now: u64, dry_run: bool) -> Report {
        let until = Instant::now() + PASS_TIME;
        let mut report = Report {
            dry_run,
            complete: true,
            ..Report::default()
        };
        if let Some(keep) = self.retention.batches {
            let cutoff = now.saturating_sub(keep.as_secs());
            self.collect_batches(cutoff, now, until, &mut report).await;
            self.collect_orphan_folders(cutoff, now, until, &mut report)
                .await;
            self.collect_api_records(cutoff, until, &mut report).await;
        }
        if let Some(keep) = self.retention.files {
            self.collect_files(now.saturating_sub(keep.as_secs()), until, &mut report)
                .await;
        }
        let cache_cutoff = now.saturating_sub(self.retention.cache.as_secs());
        self.collect_cache(cache_cutoff, until, &mut report).await;
        report.record_metrics();
        report
    }

    /// Every `interval`, a pass when this process holds the lease, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.retention.interval) => {}
            }
            match self.lease().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "retention: cannot take the collector's lease; trying again later");
                    continue;
                }
            }
            let now = batchyard_jobs::batch::now_secs();
            let report = tokio::select! {
                () = cancel.cancelled() => return,
                report = self.pass(now, false) => report,
            };
            self.release().await;
            if report.batches.removed
                + report.api_records.removed
                + report.files.removed
                + report.cache_entries.removed
                > 0
                || !report.errors.is_empty()
            {
                tracing::info!(
                    batches = report.batches.removed,
                    objects = report.objects.removed,
                    api_records = report.api_records.removed,
                    bytes = report.objects.bytes + report.files.bytes + report.cache_entries.bytes,
                    files = report.files.removed,
                    cache_entries = report.cache_entries.removed,
                    errors = report.errors.len(),
                    "retention pass"
                );
            }
            for e in report.errors.iter().take(5) {
                tracing::warn!("retention: {e}");
            }
        }
    }

    /// The store a batch's objects live in: this process's, or the one its record names.
    fn store_for(&self, url: Option<&str>) -> Result<ResultStore, String> {
        let Some(url) = url.filter(|u| !u.is_empty() && *u != self.store.url()) else {
            return Ok(self.store.clone());
        };
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = others.get(url) {
            return Ok(s.clone());
        }
        let opened = ResultStore::open(url, &self.env).map_err(|e| e.to_string())?;
        others.insert(url.to_string(), opened.clone());
        Ok(opened)
    }
}
