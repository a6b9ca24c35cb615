//! Scheduled pipelines: `[pipelines.<name>]` turns new documents under a folder or prefix into
//! one batch per cron tick, exactly once across scheduler replicas.
//!
//! Timing uses apalis-cron's `CronScheduler` as a stream of ticks, fed by our own schedule
//! ([`PipelineSchedule`]): the `cron` crate's fire times in the pipeline's IANA timezone, with
//! a defined answer for DST gaps (see [`crate::config::pipeline_spec::Pipeline::next_after`]).
//! What apalis-cron doesn't do is the decisive part: every replica wakes at the same tick, and
//! a claim, `SET by:pipeline:{<name>}:tick:<unix secs> NX`, lets exactly one of them submit.
//!
//! - [`listing`]: what an input holds, with a fingerprint per document.
//! - [`state`]: claims, seen documents and run history in Redis.
//! - [`run`]: one run: claim, list, pick the new documents, submit, record.
//! - [`recover`]: the origin records in object storage that rebuild a lost `seen` hash.
//! - [`snapshot`]: origin records folded into one object before retention removes them.
//! - [`view`]: the rows `pipelines list` and `/api/pipelines` show, and a manual trigger.
//! - [`metrics`]: runs per outcome and the last success, for alerts on a stale pipeline.

pub mod listing;
pub mod metrics;
pub mod recover;
pub mod run;
pub mod snapshot;
pub mod state;
pub mod view;

use std::sync::Arc;

use anyhow::Context;
use apalis_cron::{CronScheduler, Schedule, Tick};
use batchyard_jobs::storage::ResultStore;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::config::pipeline_spec::{CatchUp, Pipeline};
use crate::error::UsageError;
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
        listing::list_input(&p.input, p.follow_symlinks, &app.settings.env)
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
        None => match snapshot::load(store, &pipeline.name).await {
            Ok(stored) => match stored.last_scheduled_tick {
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
    let now = Utc::now();
    if pipeline.catch_up == CatchUp::Latest {
        match missed_tick(&app.store, &state, &pipeline, now).await {
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
        // apalis-cron times the ticks; a stream that reports an error (a tick already in the
        // past when its delay was set, e.g. after the host was suspended) is rebuilt from now.
        let mut ticks = Box::pin(
            CronScheduler::new(PipelineSchedule::new(pipeline.clone()))
                .with_timezone(pipeline.timezone)
                .into_stream(),
        );
        loop {
            let tick = tokio::select! {
                () = cancel.cancelled() => return,
                tick = ticks.next() => tick,
            };
            let tick = match tick {
                Some(Ok(tick)) => tick,
                Some(Err(e)) => {
                    tracing::warn!(pipeline = %pipeline.name, error = %e, "the cron timer skipped a tick; timing from now");
                    break;
                }
                None => {
                    tracing::warn!(pipeline = %pipeline.name, "the schedule has no more fire times");
                    return;
                }
            };
            let Some(next) = i64::try_from(tick.get_timestamp())
                .ok()
                .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
                .map(|t| t.with_timezone(&pipeline.timezone))
            else {
                continue;
            };
            let (app, state, pipeline) = (app.clone(), state.clone(), pipeline.clone());
            tracker.spawn(async move {
                if let Err(e) =
                    run_pipeline(&app, &state, &pipeline, &Trigger::Schedule(next)).await
                {
                    tracing::error!(pipeline = %pipeline.name, "pipeline tick failed: {e:#}");
                }
            });
        }
    }
}

/// A pipeline's fire times as an apalis-cron schedule: the wall clock of its own timezone, with
/// [`Pipeline::next_after`]'s answers for DST gaps and repeats.
struct PipelineSchedule {
    pipeline: Arc<Pipeline>,
    last: Option<DateTime<Utc>>,
}

impl PipelineSchedule {
    fn new(pipeline: Arc<Pipeline>) -> Self {
        Self {
            pipeline,
            last: None,
        }
    }
}

impl Schedule<Tz> for PipelineSchedule {
    fn next_tick(&mut self, _tz: &Tz) -> Option<Tick<Tz>> {
        // From now, so a tick missed while the host was suspended is not replayed here
        // (catch-up covers downtime), and never at or before the last tick, in case a timer
        // fires a hair early.
        let now = Utc::now();
        let from = self.last.map_or(now, |last| last.max(now));
        let next = self.pipeline.next_after(from)?.with_timezone(&Utc);
        self.last = Some(next);
        u64::try_from(next.timestamp()).ok().map(Tick::new)
    }
}
