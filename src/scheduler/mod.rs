//! Scheduled pipelines: `[pipelines.<name>]` turns new documents under a folder or prefix into
//! one batch per cron tick, exactly once across scheduler replicas.
//!
//! Timing uses the `cron` crate with tokio timers rather than apalis-cron: apalis-cron 1.0
//! fires each schedule in one fixed timezone per stream and pushes ticks through its own
//! worker/backend machinery, while a pipeline needs its own IANA timezone (with a defined
//! answer for DST gaps, see [`crate::config::pipelines::Pipeline::next_after`]) and a claim in
//! Redis before anything runs. The claim is the decisive part: every replica wakes at the same
//! tick, and `SET by:pipeline:{<name>}:tick:<unix secs> NX` lets exactly one of them submit.
//!
//! - [`listing`]: what an input holds, with a fingerprint per document.
//! - [`state`]: claims, seen documents and run history in Redis.
//! - [`run`]: one run: claim, list, pick the new documents, submit, record.
//! - [`recover`]: the origin records in object storage that rebuild a lost `seen` hash.
//! - [`view`]: the rows `pipelines list` and `/api/pipelines` show, and a manual trigger.
//! - [`metrics`]: runs per outcome and the last success, for alerts on a stale pipeline.

pub mod listing;
pub mod metrics;
pub mod recover;
pub mod run;
pub mod state;
pub mod view;

use std::sync::Arc;

use anyhow::Context;
use batchyard_jobs::storage::ResultStore;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::config::pipelines::{CatchUp, Pipeline};
use crate::exit::UsageError;
use run::{Trigger, run_pipeline};
use state::PipelineState;

/// Opens the Redis connection pipelines keep their state in.
pub async fn connect_state(app: &App) -> anyhow::Result<PipelineState> {
    let url = app.settings.redis_url.as_deref().ok_or_else(|| {
        UsageError(
            "pipelines need redis; set BATCHYARD_REDIS_URL or [queue] redis_url in the config"
                .into(),
        )
    })?;
    let conn = batchyard_jobs::redis_conn::connect(url)
        .await
        .context("cannot connect to redis")?;
    Ok(PipelineState::new(conn, app.consumer.clone()))
}

/// Fails (exit 2) naming the first pipeline whose input can't be listed.
pub async fn check_inputs(app: &App, pipelines: &[Pipeline]) -> anyhow::Result<()> {
    for p in pipelines {
        listing::list_input(&p.input, &app.settings.env)
            .await
            .map_err(|e| {
                UsageError(format!(
                    "pipeline {name}: pipelines.{name}.input: cannot list {input}: {e}; check the path, bucket and credentials",
                    name = p.name,
                    input = p.input
                ))
            })?;
    }
    Ok(())
}

/// The newest fire time after the last tick that ran and at or before `now`. `None` when nothing
/// was missed, or when the pipeline never ran (a new pipeline starts at its next tick).
async fn missed_tick(
    store: &ResultStore,
    state: &PipelineState,
    pipeline: &Pipeline,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<DateTime<Tz>>> {
    let last = match state.last_tick(&pipeline.name).await? {
        Some(t) => t,
        // Redis may have lost its data: the origin records in object storage still know.
        None => match recover::read_records(store, &pipeline.name).await {
            Ok(records) => match recover::latest_scheduled_tick(&records) {
                Some(t) => t,
                None => return Ok(None),
            },
            Err(e) => {
                tracing::warn!(pipeline = %pipeline.name, "cannot read the origin records: {e:#}");
                return Ok(None);
            }
        },
    };
    let Some(last) = DateTime::<Utc>::from_timestamp(last, 0) else {
        return Ok(None);
    };
    // Walking a per-second schedule through a long outage would take long: start a day back
    // when that is later than the last run and still finds a tick.
    let day_back = now - chrono::Duration::days(1);
    let mut from = last;
    if day_back > last
        && pipeline
            .next_after(day_back)
            .is_some_and(|t| t.with_timezone(&Utc) <= now)
    {
        from = day_back;
    }
    let mut latest = None;
    let mut cursor = from;
    for _ in 0..200_000 {
        match pipeline.next_after(cursor) {
            Some(t) if t.with_timezone(&Utc) <= now => {
                cursor = t.with_timezone(&Utc);
                latest = Some(t);
            }
            _ => break,
        }
    }
    Ok(latest)
}

/// Fires one pipeline's ticks until `cancel`. Each run is its own task on `tracker`, so a slow
/// submission never delays the next tick.
pub async fn drive(
    app: Arc<App>,
    state: PipelineState,
    pipeline: Pipeline,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let pipeline = Arc::new(pipeline);
    let mut after = Utc::now();
    if pipeline.catch_up == CatchUp::Latest {
        match missed_tick(&app.store, &state, &pipeline, after).await {
            Ok(Some(tick)) => {
                tracing::info!(pipeline = %pipeline.name, tick = %tick, "running the latest tick missed while no scheduler ran");
                let (app, state, pipeline) = (app.clone(), state.clone(), pipeline.clone());
                tracker.spawn(async move {
                    if let Err(e) =
                        run_pipeline(&app, &state, &pipeline, &Trigger::CatchUp(tick)).await
                    {
                        tracing::error!(pipeline = %pipeline.name, "catch-up run failed: {e:#}");
                    }
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(pipeline = %pipeline.name, "cannot check for missed ticks: {e:#}")
            }
        }
    }
    loop {
        let Some(next) = pipeline.next_after(after) else {
            tracing::warn!(pipeline = %pipeline.name, "the schedule has no more fire times");
            return;
        };
        let next_utc = next.with_timezone(&Utc);
        let wait = (next_utc - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        // A tick that was late by more than a period (a suspended host) is not replayed here:
        // the next tick is counted from now.
        after = next_utc.max(Utc::now());
        let (app, state, pipeline) = (app.clone(), state.clone(), pipeline.clone());
        tracker.spawn(async move {
            if let Err(e) = run_pipeline(&app, &state, &pipeline, &Trigger::Schedule(next)).await {
                tracing::error!(pipeline = %pipeline.name, "pipeline tick failed: {e:#}");
            }
        });
    }
}
