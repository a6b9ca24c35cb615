//! One ended provider batch's results back into the queue: each answer inside its job, for
//! the cascade to judge; each item the batch did not answer (expired, cancelled, a passing
//! fault) back to be parked again or run real-time.
//!
//! Ingesting twice is harmless: a job already released is not parked, so its line is skipped.
//! The answers of a provider batch whose items were given to real-time are paid for and
//! unused: their cost is counted all the same.

use std::collections::HashSet;

use batchyard_jobs::batch::{BatchRecord, usd_to_nanos};
use batchyard_jobs::job::Prefetched;
use batchyard_jobs::retry::Retryable as _;

use super::state::{self, ProviderBatch};
use super::{Coordinator, CrashPoint};
use crate::catalog::TokenCounts;
use crate::provider::ProviderError;
use crate::provider::batch::{BatchApi, ItemResult};

impl Coordinator {
    pub(super) async fn ingest(
        &self,
        record: &BatchRecord,
        pb: &ProviderBatch,
        api: &BatchApi<'_>,
        remote_id: &str,
    ) -> Result<(), ProviderError> {
        let ended = record.state.is_terminal();
        let mut lines = api.results(remote_id).await?;
        let mut answered = HashSet::new();
        let mut unused_nanos = 0i64;
        while let Some((job_id, result)) = lines.next().await? {
            let pre = match result {
                ItemResult::Answer(body) => Prefetched {
                    model: pb.model.clone(),
                    provider_batch: remote_id.to_owned(),
                    completion: Some(body),
                    error: None,
                },
                // Not this item's fault: it runs again.
                ItemResult::Error(e) if e.is_retryable() => continue,
                ItemResult::Error(e) => Prefetched {
                    model: pb.model.clone(),
                    provider_batch: remote_id.to_owned(),
                    completion: None,
                    error: Some((e.kind.code().to_owned(), e.message)),
                },
            };
            let parked = self
                .queue
                .parked_job(&record.id, &job_id)
                .await
                .map_err(store_error)?;
            match parked {
                // An ended batch (cancelled, expired) runs nothing more: its paid answers are
                // counted below instead of going to items that would only end unrun.
                Some(mut job) if !ended && job.offloaded_to.last() == Some(&pb.model) => {
                    job.prefetched = Some(Box::new(pre));
                    self.queue.release(&job).await.map_err(store_error)?;
                    answered.insert(job_id);
                    self.options.crash_point(CrashPoint::MidIngest);
                    if answered.len() % 1000 == 0
                        && !matches!(self.hold(&record.id).await, Ok(true))
                    {
                        return Err(ProviderError::new(
                            crate::provider::ProviderErrorKind::Transient,
                            "lost the offload lease while ingesting; the new holder goes on",
                        ));
                    }
                }
                // Real-time took the item over, or the batch ended: a paid answer nobody
                // uses still counts.
                _ if pb.given_back || ended => unused_nanos += self.cost_nanos(&pb.model, &pre),
                // Released by an earlier ingest of this batch (cut off midway): already there.
                _ => {}
            }
        }
        tracing::info!(key = %pb.key, remote_id, answered = answered.len(), unused_usd = batchyard_jobs::batch::nanos_to_usd(unused_nanos), given_back = pb.given_back, "offload: provider batch ingested");
        if pb.given_back || ended {
            // Also releases what a budget held for these answers (nothing without one).
            self.ledger
                .commit(&record.id, &super::money::offload_tag(pb), unused_nanos)
                .await
                .map_err(store_error)?;
        }
        self.give_back_except(record, pb, &answered, false).await;
        Ok(())
    }

    /// Puts every job of `pb` still parked for its model back into the queue: to be parked
    /// again (or, with `realtime`, to run real-time).
    pub(super) async fn give_back(&self, record: &BatchRecord, pb: &ProviderBatch, realtime: bool) {
        self.give_back_except(record, pb, &HashSet::new(), realtime)
            .await;
    }

    async fn give_back_except(
        &self,
        record: &BatchRecord,
        pb: &ProviderBatch,
        skip: &HashSet<String>,
        realtime: bool,
    ) {
        let ids = match state::load_jobs(&self.store, &record.id, &pb.key).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "offload: cannot read a provider batch's jobs");
                return;
            }
        };
        for id in ids.iter().filter(|id| !skip.contains(*id)) {
            let Ok(Some(mut job)) = self.queue.parked_job(&record.id, id).await else {
                continue;
            };
            if job.offloaded_to.last() != Some(&pb.model) {
                continue;
            }
            if realtime {
                self.release_realtime(job).await;
                continue;
            }
            job.offloaded_to.pop();
            if let Err(e) = self.queue.release(&job).await {
                tracing::warn!(job_id = %job.job_id, error = %e, "offload: cannot release a job");
            }
        }
    }

    fn cost_nanos(&self, model: &str, pre: &Prefetched) -> i64 {
        let (Some(spec), Some(body)) = (self.catalog.model(model), &pre.completion) else {
            return 0;
        };
        match crate::provider::openai::completion_from_body(body, &serde_json::Map::new()) {
            Ok(done) => usd_to_nanos(spec.batch_cost_usd(TokenCounts::of(&done))),
            Err(_) => 0,
        }
    }
}

fn store_error(e: batchyard_jobs::error::QueueError) -> ProviderError {
    ProviderError::new(
        crate::provider::ProviderErrorKind::Transient,
        format!("the queue refused while ingesting: {e}"),
    )
}
