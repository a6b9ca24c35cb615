//! Pipeline metrics, so a pipeline that stopped producing batches can be alerted on:
//!
//! - `batchyard_pipeline_runs_total{pipeline,outcome}`: runs this process made, by outcome
//!   (`submitted`, `nothing_new`, `failed`). Sum across scheduler replicas: each tick is run
//!   by exactly one of them.
//! - `batchyard_pipeline_last_success_timestamp_seconds{pipeline}`: when a run of the pipeline
//!   last ended without failing, by any replica (read from Redis), e.g.
//!   `time() - max by (pipeline) (batchyard_pipeline_last_success_timestamp_seconds) > 2 * 86400`.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use tokio_util::sync::CancellationToken;

use super::state::PipelineState;

pub const RUNS_TOTAL: &str = "batchyard_pipeline_runs_total";
pub const LAST_SUCCESS: &str = "batchyard_pipeline_last_success_timestamp_seconds";

/// How often each process re-reads the last successes, so replicas that did not run a tick
/// still report it.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15);

pub fn describe() {
    describe_counter!(
        RUNS_TOTAL,
        Unit::Count,
        "Pipeline runs made by this process, by pipeline and outcome"
    );
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "Unix time a run of the pipeline last ended without failing (any replica)"
    );
}

pub fn run_finished(pipeline: &str, outcome: &str) {
    counter!(RUNS_TOTAL, "pipeline" => pipeline.to_string(), "outcome" => outcome.to_string())
        .increment(1);
}

pub fn last_success(pipeline: &str, at: u64) {
    #[allow(clippy::cast_precision_loss)] // unix seconds are exact in an f64 for ages
    gauge!(LAST_SUCCESS, "pipeline" => pipeline.to_string()).set(at as f64);
}

/// Reads every pipeline's last success from Redis into the gauge, now and every
/// [`REFRESH_EVERY`], until `cancel`. A pipeline that never succeeded has no series, which an
/// `absent()` alert can catch.
pub async fn refresh(state: PipelineState, pipelines: Vec<String>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for name in &pipelines {
            match state.last_success(name).await {
                Ok(Some(at)) => last_success(name, at),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(pipeline = %name, error = %e, "cannot read the last success");
                }
            }
        }
    }
}
