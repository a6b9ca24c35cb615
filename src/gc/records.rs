//! API records (`api/batches/<id>.json`) no batch has any more: the ledger has no record of
//! it and `batches/<id>/` holds nothing (a batch collected by a build from before the API
//! record was a step of the removal, a Redis that lost its data, or a removal cut short
//! whose folder the orphan pass already took). Each goes once it is older than
//! `[retention] batches`, found by listing `api/batches/` a bounded page per pass from where
//! the last pass stopped. A record whose batch still has a folder is left to the batch's own
//! removal (or the orphan pass), which deletes it in order.

use std::time::Instant;

use futures::StreamExt;

use super::uploads::Listing;
use super::{Collector, Report, Tally};

impl Collector {
    pub(super) async fn collect_api_records(
        &self,
        cutoff: u64,
        until: Instant,
        report: &mut Report,
    ) {
        let max = self.retention.max_per_pass;
        let Some(listed) = self.next_page(Listing::ApiRecords, until, report).await else {
            return;
        };
        let old: Vec<(String, object_store::ObjectMeta)> = listed
            .into_iter()
            .filter(|m| u64::try_from(m.last_modified.timestamp()).unwrap_or(u64::MAX) <= cutoff)
            .filter_map(|m| {
                let id = m.location.filename()?.strip_suffix(".json")?.to_string();
                Some((id, m))
            })
            .take(max)
            .collect();
        for (id, meta) in old {
            if Instant::now() >= until {
                report.complete = false;
                break;
            }
            match self
                .orphan_record(&id, &meta.location, report.dry_run)
                .await
            {
                Ok(true) => report.api_records.add(Tally {
                    removed: 1,
                    bytes: meta.size,
                    kept: 0,
                }),
                Ok(false) => {}
                Err(e) => {
                    report.api_records.kept += 1;
                    report.errors.push(format!("API record of {id}: {e}"));
                }
            }
        }
    }

    /// Deletes the API record at `path` if batch `id` is gone; true when it did (or would).
    async fn orphan_record(
        &self,
        id: &str,
        path: &object_store::path::Path,
        dry_run: bool,
    ) -> Result<bool, String> {
        let record = self
            .ledger
            .get(id)
            .await
            .map_err(|e| format!("cannot read its ledger record: {e}"))?;
        if record.is_some() {
            return Ok(false);
        }
        let folder = self.store.batch_dir(id);
        if let Some(first) = self.store.list(&folder).next().await {
            first.map_err(|e| format!("cannot list its batch folder: {e}"))?;
            return Ok(false);
        }
        if !dry_run {
            self.store
                .delete(path)
                .await
                .map_err(|e| format!("cannot delete it: {e}"))?;
        }
        Ok(true)
    }
}
