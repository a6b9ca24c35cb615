//! `batchyard retry` and `batchyard cancel`: the operator's levers on a batch.
//!
//! A retry reads the failures back from the batch's result segments (each failure keeps its
//! job there; of a job with two outcomes, the one that counts), reopens the batch in the
//! ledger, and re-enqueues the chosen items under their old job ids. Their new outcomes are
//! written later, so they win over the old ones, and the batch is finalized again: each custom
//! id still appears exactly once in `output.jsonl` ∪ `errors.jsonl`.

use batchyard_jobs::batch::{BatchRecord, BatchState};
use batchyard_jobs::job::{Job, Route};
use batchyard_jobs::ledger::Reopen;
use batchyard_jobs::ledger::SubmitStep;
use batchyard_jobs::outcome::codes;
use batchyard_jobs::queue::FairClass;
use batchyard_jobs::staging::{self, Lease};
use std::sync::Arc;

use batchyard_jobs::segments::read::{Index, PARALLEL, index, winners};
use futures::TryStreamExt;

use crate::app::App;
use crate::error::{ReplayBusy, UsageError};

const CHUNK: usize = 1000;

fn new_replay_id() -> String {
    batchyard_jobs::job::new_batch_id().replacen("batch_", "replay_", 1)
}

/// What a retry selects.
#[derive(Debug, Clone, Default)]
pub struct RetryFilter {
    pub code: Option<String>,
    pub model: Option<String>,
    /// What the retry may spend on top of what the batch has spent (a new budget).
    pub budget_usd: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Replayed {
    pub record: BatchRecord,
    pub retried: u64,
    /// Failures that matched but can't be replayed (invalid input has no request to send).
    pub not_replayable: u64,
    /// The replay that reopened the batch; `None` when nothing was replayed.
    pub replay_id: Option<String>,
}

async fn finished_batch(app: &App, batch_id: &str) -> anyhow::Result<BatchRecord> {
    match app.ledger.get(batch_id).await? {
        None => Err(UsageError(format!(
            "batch {batch_id} was not found; check the id with `batchyard status`"
        ))
        .into()),
        Some(r) if !r.state.is_terminal() => {
            let replay = app.ledger.last_replay(batch_id).await?;
            Err(ReplayBusy::new(batch_id, r.state, replay).into())
        }
        Some(r) => Ok(r),
    }
}

/// The batch's failures that match `filter`, as (job to replay, what it cost so far): each
/// job's one outcome (`index` holds every outcome of the batch). A failure with no job
/// (invalid input) comes as `None`. Streams: memory stays flat.
fn failures<'a>(
    app: &'a App,
    batch_id: &str,
    filter: &'a RetryFilter,
    index: &Arc<Index>,
) -> impl futures::Stream<Item = anyhow::Result<(Option<Job>, f64)>> + 'a {
    winners(&app.store, batch_id, Arc::clone(index), PARALLEL)
        .map_err(anyhow::Error::from)
        .try_filter_map(move |outcome| async move {
            let line = outcome.line;
            let Some(error) = &line.error else {
                return Ok(None);
            };
            if filter.code.as_ref().is_some_and(|c| c != &error.code) {
                return Ok(None);
            }
            if error.code == codes::INVALID_INPUT {
                return Ok(Some((None, 0.0)));
            }
            Ok(Some((line.job.map(|j| *j), line.batchyard.cost_usd)))
        })
}

pub async fn retry(app: &App, batch_id: &str, filter: &RetryFilter) -> anyhow::Result<Replayed> {
    let record = finished_batch(app, batch_id).await?;
    if let Some(model) = &filter.model
        && app.settings.catalog.model(model).is_none()
    {
        let known: Vec<String> = app.settings.catalog.model_keys().into_iter().collect();
        return Err(UsageError(format!(
            "unknown model {model:?}; configured models: {}",
            known.join(", ")
        ))
        .into());
    }
    // Every outcome once, to know each job's one outcome (a job run twice has two).
    let index = Arc::new(index(&app.store, batch_id, record.counts.total).await?);
    // Pass 1: count, so the ledger is reopened for exactly the items that will run.
    let (mut retried, mut not_replayable) = (0u64, 0u64);
    let mut counting = std::pin::pin!(failures(app, batch_id, filter, &index));
    while let Some((job, _)) = counting.try_next().await? {
        match job {
            Some(_) => retried += 1,
            None => not_replayable += 1,
        }
    }
    if retried == 0 {
        return Ok(Replayed {
            record,
            retried,
            not_replayable,
            replay_id: None,
        });
    }
    // Checked before the batch is reopened, applied after: a refused replay changes nothing.
    // A tenant's `max_budget_usd` bounds what one replay may spend, as it bounds a batch.
    let cap = (app.settings.tenants.get(&record.tenant)).and_then(|t| t.max_budget_usd);
    let new_budget = match (filter.budget_usd, record.budget_usd) {
        (Some(more), _) => {
            if !more.is_finite() || more <= 0.0 {
                return Err(
                    UsageError(format!("--budget-usd must be more than 0, not {more}")).into(),
                );
            }
            if let Some(cap) = cap.filter(|cap| more > *cap) {
                return Err(UsageError(format!(
                    "--budget-usd {more} is above tenant {:?}'s max_budget_usd; pass at most {cap}",
                    record.tenant
                ))
                .into());
            }
            Some(record.cost_usd() + more)
        }
        (None, Some(budget))
            if record.budget_exhausted_at.is_some() || record.cost_usd() >= budget =>
        {
            return Err(UsageError(format!(
                "batch {batch_id} spent its budget (${:.4} of ${budget:.4}); pass --budget-usd USD to let the retry spend that much more",
                record.cost_usd()
            ))
            .into());
        }
        (None, None) => cap.map(|cap| record.cost_usd() + cap),
        (None, Some(_)) => None,
    };
    let replay_id = new_replay_id();
    // Pass 2: stage the jobs under this replay's own id, invisible to workers, so a replay
    // cut off here leaves the batch as it was (and a racing replay never touches them).
    let staging_id = format!("{batch_id}.{replay_id}");
    if let Err(e) = stage_replay(app, batch_id, &staging_id, filter, &index).await {
        discard(app, &staging_id).await;
        return Err(e);
    }
    // The finished-batch check above can race with another replay; this one can't.
    let reopened = app.ledger.reopen(batch_id, retried, &replay_id).await;
    let reopened = match reopened {
        Ok(r) => r,
        Err(e) => {
            discard(app, &staging_id).await;
            return Err(e.into());
        }
    };
    if let Reopen::Busy { state, replay } = reopened {
        discard(app, &staging_id).await;
        return Err(ReplayBusy::new(batch_id, state, replay).into());
    }
    if new_budget.is_some() {
        app.ledger.set_budget(batch_id, new_budget).await?;
    }
    // Reopened: the staged jobs are committed. If this process stops while moving them into
    // the queue, a worker's sweep finishes the move once the lease lapses.
    let mut lease = Lease::new(
        app.ledger.as_ref(),
        batch_id,
        app.settings.queue.submit_lease,
    );
    app.ledger
        .submit_step(
            batch_id,
            SubmitStep::Replaying {
                lease_until_ms: lease.until_ms(),
                staging: &staging_id,
            },
        )
        .await?;
    staging::publish(
        app.ledger.as_ref(),
        app.queue.as_ref(),
        batch_id,
        &staging_id,
        &FairClass {
            tenant: record.tenant.clone(),
            priority: record.priority,
            weight: app.settings.tenants.get(&record.tenant).map(|t| t.weight),
        },
        Some(&mut lease),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "batch {batch_id} is reopened for replay {replay_id} but not all of its jobs reached the queue yet: {e}; a running worker finishes moving them once Redis accepts writes"
        )
    })?;
    let record = app.ledger.get(batch_id).await?.unwrap_or(record);
    tracing::info!(batch_id, replay_id, retried, "failed items re-enqueued");
    Ok(Replayed {
        record,
        retried,
        not_replayable,
        replay_id: Some(replay_id),
    })
}

/// Stages the jobs a replay runs again under `staging_id`.
async fn stage_replay(
    app: &App,
    batch_id: &str,
    staging_id: &str,
    filter: &RetryFilter,
    index: &Arc<Index>,
) -> anyhow::Result<()> {
    let mut chunk_no = 0u64;
    let mut chunk: Vec<Job> = Vec::with_capacity(CHUNK);
    let mut replaying = std::pin::pin!(failures(app, batch_id, filter, index));
    while let Some((job, cost)) = replaying.try_next().await? {
        let Some(mut job) = job else { continue };
        job.attempt = 0;
        job.last_error = None;
        job.prior_cost_usd = cost;
        if let Some(model) = &filter.model {
            job.route = Route::Pinned {
                model: model.clone(),
            };
        }
        chunk.push(job);
        if chunk.len() >= CHUNK {
            app.queue.stage_chunk(staging_id, chunk_no, &chunk).await?;
            chunk_no += 1;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        app.queue.stage_chunk(staging_id, chunk_no, &chunk).await?;
    }
    Ok(())
}

async fn discard(app: &App, staging_id: &str) {
    if let Err(e) = app.queue.discard_staged(staging_id).await {
        tracing::warn!(staging_id, error = %e, "cannot drop a replay's staged jobs");
    }
}

pub async fn cancel(app: &App, batch_id: &str) -> anyhow::Result<BatchRecord> {
    let before = app.ledger.get(batch_id).await?.ok_or_else(|| {
        UsageError(format!(
            "batch {batch_id} was not found; check the id with `batchyard status`"
        ))
    })?;
    if before.state.is_terminal() || before.state == BatchState::Finalizing {
        return Err(UsageError(format!(
            "batch {batch_id} is already {}; only a running batch can be cancelled",
            before.state.as_str()
        ))
        .into());
    }
    let after = app.ledger.request_cancel(batch_id).await?;
    Ok(settle_cancel(app, &before, after).await?)
}

/// After a cancel is recorded: drops what a batch still being submitted staged, or, when
/// nothing is in flight anywhere (and no worker starts an item of it now, the cancel being
/// recorded), ends its unrun items at once rather than waiting for workers to drop each one.
pub async fn settle_cancel(
    app: &App,
    before: &BatchRecord,
    after: BatchRecord,
) -> Result<BatchRecord, batchyard_workers::finalize::FinalizeError> {
    let batch_id = before.id.as_str();
    if after.state == BatchState::Cancelled && before.submit.is_some() {
        // Cancelled while still being submitted: what it staged can never run.
        app.queue.discard_staged(batch_id).await?;
        return Ok(after);
    }
    if after.state == BatchState::Cancelling && app.queue.depth().await?.in_flight == 0 {
        let ended = app.finalizer().drain_cancelled(batch_id).await?;
        tracing::info!(batch_id, ended, "cancelled the batch's unrun items at once");
        return Ok(app.ledger.get(batch_id).await?.unwrap_or(after));
    }
    Ok(after)
}
