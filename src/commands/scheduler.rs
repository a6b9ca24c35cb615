//! `batchyard scheduler`: fires every enabled pipeline on its schedule until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::cli::SchedulerArgs;
use crate::config::pipeline_spec::Pipeline;
use crate::error::UsageError;
use crate::scheduler::{check_inputs, connect_state, drive};

pub async fn scheduler(
    config: Option<&Path>,
    args: &SchedulerArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let pipelines: Vec<Pipeline> = settings
        .pipelines
        .values()
        .filter(|p| p.enabled)
        .cloned()
        .collect();
    if pipelines.is_empty() {
        let file = settings
            .source
            .as_ref()
            .map_or("(built-in defaults)".into(), |p| p.display().to_string());
        return Err(UsageError(format!(
            "config {file}: pipelines: no enabled [pipelines.<name>] table; add one to schedule"
        ))
        .into());
    }
    // Bind before connecting, so a taken or malformed address fails at once.
    let metrics_listener = match &args.metrics_addr {
        Some(addr) => Some(crate::metrics_http::bind(addr).await?),
        None => None,
    };
    let drain = settings.drain_timeout;
    let app = Arc::new(App::connect(settings, None, false, "scheduler").await?);
    let state = connect_state(&app).await?;
    check_inputs(&app, &pipelines).await?;

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Metrics outlive the runs' drain; they stop after.
    let background = CancellationToken::new();
    let background_tracker = TaskTracker::new();
    if let Some(listener) = metrics_listener {
        let handle = crate::metrics_http::install()?;
        crate::metrics_http::spawn(&background_tracker, listener, handle, background.clone());
        background_tracker.spawn(crate::scheduler::metrics::refresh(
            state.clone(),
            pipelines.iter().map(|p| p.name.clone()).collect(),
            background.clone(),
        ));
    }
    background_tracker.close();
    for p in pipelines {
        tracing::info!(pipeline = %p.name, schedule = %p.schedule_text, timezone = %p.timezone, "pipeline scheduled");
        tracker.spawn(drive(
            app.clone(),
            state.clone(),
            p,
            cancel.clone(),
            tracker.clone(),
        ));
    }
    super::shutdown_signal().await;
    tracing::info!("stopping the scheduler; runs in progress finish first");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("runs still in progress after {drain:?}; their triggers stay claimed");
    }
    background.cancel();
    background_tracker.wait().await;
    Ok(())
}
