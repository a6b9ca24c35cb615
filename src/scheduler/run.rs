//! One run of a pipeline: claim the trigger, list the input, pick the new documents, submit
//! them as one batch, then remember them as seen and record the run.

use std::collections::BTreeSet;

use batchyard_jobs::batch::now_secs;
use batchyard_jobs::job::new_batch_id;
use chrono::DateTime;
use chrono_tz::Tz;

use super::listing::list_input;
use super::recover;
use super::state::{LOCK_RENEW_EVERY, PERSIST_FOR, PipelineState, RunRecord, retrying};
use crate::app::App;
use crate::config::pipeline_spec::Pipeline;
use crate::submission::{SubmitRequest, submit_selected};

/// What set a run off.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A schedule tick: its claim key is the tick's unix time, the same in every replica.
    Schedule(DateTime<Tz>),
    /// A tick missed while no scheduler ran, run at start (`catch_up = "latest"`). Its claim
    /// key is the tick's, so a replica that did run it wins and this one does nothing.
    CatchUp(DateTime<Tz>),
    /// `pipelines run`: its own id, so each manual trigger runs once.
    Manual { id: String, at: DateTime<Tz> },
}

impl Trigger {
    fn claim_key(&self) -> String {
        match self {
            Self::Schedule(tick) | Self::CatchUp(tick) => {
                batchyard_jobs::keys::pipeline_tick(tick.timestamp())
            }
            Self::Manual { id, .. } => batchyard_jobs::keys::pipeline_manual(id),
        }
    }

    fn when(&self) -> &DateTime<Tz> {
        match self {
            Self::Schedule(tick) | Self::CatchUp(tick) | Self::Manual { at: tick, .. } => tick,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Schedule(_) => "schedule",
            Self::CatchUp(_) => "catch_up",
            Self::Manual { .. } => "manual",
        }
    }
}

/// Runs `trigger` if this caller wins its claim. `None`: another replica has it.
pub async fn run_pipeline(
    app: &App,
    state: &PipelineState,
    pipeline: &Pipeline,
    trigger: &Trigger,
) -> anyhow::Result<Option<RunRecord>> {
    if !state.claim(&pipeline.name, &trigger.claim_key()).await? {
        tracing::debug!(pipeline = %pipeline.name, trigger = %trigger.claim_key(), "claimed by another scheduler");
        return Ok(None);
    }
    if let Trigger::Schedule(tick) | Trigger::CatchUp(tick) = trigger {
        state.note_tick(&pipeline.name, tick.timestamp()).await?;
    }
    let mut record = RunRecord {
        tick: trigger.when().to_rfc3339(),
        tick_unix: trigger.when().timestamp(),
        trigger: trigger.kind().into(),
        batch_id: None,
        items: 0,
        outcome: "failed".into(),
        error: None,
        at: 0,
    };
    match locked_submit(app, state, pipeline, trigger).await {
        Ok(Some((batch_id, items))) => {
            record.batch_id = Some(batch_id);
            record.items = items;
            record.outcome = "submitted".into();
        }
        Ok(None) => {
            tracing::info!(pipeline = %pipeline.name, tick = %record.tick, "nothing new; no batch created");
            record.outcome = "nothing_new".into();
        }
        Err(e) => {
            tracing::error!(pipeline = %pipeline.name, tick = %record.tick, "pipeline run failed: {e:#}");
            record.error = Some(format!("{e:#}"));
        }
    }
    record.at = now_secs();
    super::metrics::run_finished(&pipeline.name, &record.outcome);
    if record.error.is_none() {
        super::metrics::last_success(&pipeline.name, record.at);
        retrying("note the pipeline's last success", PERSIST_FOR, || {
            state.note_success(&pipeline.name, record.at)
        })
        .await?;
    }
    retrying("record the pipeline run", PERSIST_FOR, || {
        state.record(&pipeline.name, &record)
    })
    .await?;
    Ok(Some(record))
}

/// How long a run waits for an earlier run of the same pipeline before it gives up as failed.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// [`submit_new`] under the pipeline's run lock.
async fn locked_submit(
    app: &App,
    state: &PipelineState,
    pipeline: &Pipeline,
    trigger: &Trigger,
) -> anyhow::Result<Option<(String, u64)>> {
    let token = format!("{}:{}", state_owner(app), trigger.claim_key());
    let started = std::time::Instant::now();
    while !state.lock(&pipeline.name, &token).await? {
        if started.elapsed() > LOCK_WAIT {
            anyhow::bail!(
                "an earlier run of pipeline {} held its lock for over {LOCK_WAIT:?}; this run was skipped, the next tick tries again",
                pipeline.name
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let work = submit_new(app, state, pipeline, trigger);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            () = tokio::time::sleep(LOCK_RENEW_EVERY) => {
                match state.renew_lock(&pipeline.name, &token).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(pipeline = %pipeline.name, "the run lock lapsed while this run went on"),
                    Err(e) => tracing::warn!(pipeline = %pipeline.name, error = %e, "cannot renew the run lock"),
                }
            }
        }
    };
    // A lock left behind would hold back every later run until it lapses: keep trying.
    if let Err(e) = retrying("release the run lock", LOCK_WAIT, || {
        state.unlock(&pipeline.name, &token)
    })
    .await
    {
        tracing::warn!(pipeline = %pipeline.name, "cannot release the run lock (it lapses by itself within a minute): {e}");
    }
    result
}

fn state_owner(app: &App) -> &str {
    &app.consumer
}

/// Submits the documents not yet seen (all of them unless `only_new`); `None` if there are none.
async fn submit_new(
    app: &App,
    state: &PipelineState,
    pipeline: &Pipeline,
    trigger: &Trigger,
) -> anyhow::Result<Option<(String, u64)>> {
    let listing = list_input(&pipeline.input, pipeline.follow_symlinks, &app.settings.env)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "pipelines.{}.input: cannot list {}: {e}",
                pipeline.name,
                pipeline.input
            )
        })?;
    let seen = if pipeline.only_new {
        recover::rebuild_if_lost(&app.store, state, &pipeline.name).await?;
        state.seen(&pipeline.name).await?
    } else {
        Default::default()
    };
    let chosen: Vec<(String, String)> = listing
        .into_iter()
        .filter(|(id, fp)| seen.get(id) != Some(fp))
        .collect();
    if chosen.is_empty() {
        return Ok(None);
    }
    let keep: BTreeSet<String> = chosen.iter().map(|(id, _)| id.clone()).collect();
    let req = SubmitRequest {
        input: pipeline.input.clone(),
        task: Some(pipeline.task.clone()),
        budget_usd: pipeline.budget_usd,
        // One unreadable document must not hold back every other new one: it is recorded in
        // the batch's errors.jsonl instead.
        skip_invalid: true,
        no_cache: false,
        completion_window: None,
        resume: None,
        follow_symlinks: pipeline.follow_symlinks,
        deadline_at: None,
        notify_url: None,
        tenant: pipeline.tenant.clone(),
        priority: pipeline.priority,
    };
    let submitted = submit_selected(app, &req, new_batch_id(), Some(&keep)).await?;
    write_origin(app, pipeline, trigger, &submitted.record.id, &chosen).await;
    // Only now: had the submission failed, the next run would pick these up again. Once the
    // batch exists, losing this write would submit the documents twice: keep trying.
    retrying("mark the documents seen", PERSIST_FOR, || {
        state.mark_seen(&pipeline.name, &chosen)
    })
    .await?;
    tracing::info!(
        pipeline = %pipeline.name,
        batch_id = %submitted.record.id,
        items = submitted.record.counts.total,
        "pipeline batch submitted"
    );
    Ok(Some((submitted.record.id, submitted.record.counts.total)))
}

/// Writes the batch's origin record (see [`recover`]): which pipeline and tick made the batch,
/// and every document it took with its fingerprint, so object storage holds what the `seen`
/// hash in Redis holds. A failed write is logged, not fatal: the batch is already enqueued.
async fn write_origin(
    app: &App,
    pipeline: &Pipeline,
    trigger: &Trigger,
    batch_id: &str,
    chosen: &[(String, String)],
) {
    let origin = serde_json::json!({
        "pipeline": pipeline.name,
        "batch_id": batch_id,
        "tick": trigger.when().to_rfc3339(),
        "tick_unix": trigger.when().timestamp(),
        "trigger": trigger.kind(),
        "input": pipeline.input,
        "documents": chosen.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
    });
    if let Err(e) = recover::write_origin(&app.store, &pipeline.name, batch_id, &origin).await {
        tracing::warn!(pipeline = %pipeline.name, batch_id, "cannot write the pipeline's origin record: {e}");
    }
}
