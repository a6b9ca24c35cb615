//! One module per subcommand, and what they share: loading the settings, a submit request
//! from the input flags, and the shutdown signal.
//!
//! - [`run`]: `run`, submit and process one batch in this process.
//! - [`submit`]: `submit`, validate and enqueue to Redis (or `--dry-run`, an estimate).
//! - [`worker`]: `worker`, process jobs from Redis until stopped.
//! - [`status`]: `status`, the queue's depth and batches, or one batch.
//! - [`results`]: `results`, stream a batch's output or errors.
//! - [`check`]: `check`, the config, catalog price age, Redis and the store, before a batch.
//! - [`batch_ops`]: `cancel` and `retry`.
//! - [`models`]: `models`, the catalog with live health; pause or resume a model.
//! - [`model_catalog`]: `models catalog`, the shipped model catalog and the age of its prices.
//! - [`estimate_route`]: `estimate` and `route`, look before you spend.
//! - [`serve`]: `serve`, the HTTP API.
//! - [`watch`]: `watch`, follow one batch until it ends.
//! - [`scheduler`]: `scheduler`, fire the pipelines on their schedules.
//! - [`pipelines`]: `pipelines list|run|history`.
//! - [`gc`]: `gc`, retention's passes run now (or `--dry-run`).
//! - [`usage`]: `usage`, batches, items and spend per tenant over a period.

pub mod batch_ops;
pub mod check;
pub mod estimate_route;
pub mod gc;
pub mod model_catalog;
pub mod models;
pub mod pipelines;
pub mod results;
pub mod run;
pub mod scheduler;
pub mod serve;
pub mod status;
pub mod submit;
pub mod usage;
pub mod watch;
pub mod worker;

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Settings;
use crate::submission::SubmitRequest;

/// Loads settings and prints their warnings once.
pub fn load_settings(
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Settings> {
    let settings = Settings::load(config, env)?;
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    Ok(settings)
}

pub fn submit_request(args: &crate::cli::InputArgs) -> SubmitRequest {
    SubmitRequest {
        input: args.input.clone(),
        task: args.task.clone(),
        budget_usd: args.budget_usd,
        skip_invalid: args.skip_invalid,
        no_cache: args.no_cache,
        completion_window: None,
        resume: None,
        follow_symlinks: args.follow_symlinks,
        deadline_at: args
            .deadline
            .map(|d| d.unix(batchyard_jobs::batch::now_secs())),
        notify_url: args.notify.clone(),
        tenant: args.tenant.clone(),
        priority: args.priority,
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
