//! What `pipelines list` and `/api/pipelines` show, and a manual trigger, built once for both.

use chrono::Utc;
use serde_json::{Value, json};

use super::run::{Trigger, run_pipeline};
use super::state::{PipelineState, RunRecord};
use crate::app::App;
use crate::config::pipeline_spec::Pipeline;
use batchyard_jobs::job::new_batch_id;

/// One row per configured pipeline: its settings, next fire time in its timezone, and its
/// last run with the batch's state, items and cost.
pub async fn pipeline_rows(app: &App, state: &PipelineState) -> anyhow::Result<Vec<Value>> {
    let now = Utc::now();
    let mut rows = Vec::new();
    for p in app.settings.pipelines.values() {
        let next = p
            .enabled
            .then(|| p.next_after(now))
            .flatten()
            .map(|t| t.to_rfc3339());
        let last = match state.history(&p.name, 1).await?.into_iter().next() {
            None => Value::Null,
            Some(r) => run_row(app, &r).await?,
        };
        rows.push(json!({
            "name": p.name,
            "schedule": p.schedule_text,
            "timezone": p.timezone.name(),
            "input": p.input,
            "task": p.task,
            "budget_usd": p.budget_usd,
            "only_new": p.only_new,
            "catch_up": p.catch_up.as_str(),
            "enabled": p.enabled,
            "next_fire": next,
            "last_run": last,
        }));
    }
    Ok(rows)
}

/// One run as shown: the record plus its batch's current state and spend (null when the run
/// made no batch, or the batch is no longer in the ledger).
pub async fn run_row(app: &App, r: &RunRecord) -> anyhow::Result<Value> {
    let batch = match &r.batch_id {
        Some(id) => app.ledger.get(id).await?,
        None => None,
    };
    Ok(json!({
        "tick": r.tick,
        "tick_unix": r.tick_unix,
        "trigger": r.trigger,
        "outcome": r.outcome,
        "batch_id": r.batch_id,
        "state": batch.as_ref().map(|b| b.state.as_str()),
        "items": r.items,
        "cost_usd": batch.as_ref().map(|b| b.cost_usd()),
        "error": r.error,
        "at": r.at,
    }))
}

/// The newest `limit` runs of a pipeline, newest first, as [`run_row`]s.
pub async fn history_rows(
    app: &App,
    state: &PipelineState,
    pipeline: &str,
    limit: usize,
) -> anyhow::Result<Vec<Value>> {
    let limit = isize::try_from(limit).unwrap_or(super::state::HISTORY_LEN);
    let mut rows = Vec::new();
    for r in state.history(pipeline, limit).await? {
        rows.push(run_row(app, &r).await?);
    }
    Ok(rows)
}

/// Runs `pipeline` now, with the same only-new rule and exactly-once claim as a tick.
pub async fn trigger_now(
    app: &App,
    state: &PipelineState,
    pipeline: &Pipeline,
) -> anyhow::Result<RunRecord> {
    // A batch id is a ULID behind a prefix: unique and time-ordered, as a trigger id should be.
    let id = new_batch_id().trim_start_matches("batch_").to_string();
    let at = Utc::now().with_timezone(&pipeline.timezone);
    run_pipeline(app, state, pipeline, &Trigger::Manual { id, at })
        .await?
        // A fresh id is never claimed already; if it were, running it again would not be once.
        .ok_or_else(|| anyhow::anyhow!("this manual trigger was already claimed; run it again"))
}
