//! `batchyard worker`: process jobs from Redis until stopped (or idle, if asked).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use batchyard_workers::job::pool::{ClaimGate, DeliveryHandler, PoolOptions, run_pool};
use batchyard_workers::metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::cli::WorkerArgs;
use crate::error::UsageError;

pub async fn worker(
    config: Option<&Path>,
    args: &WorkerArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let mut settings = super::load_settings(config, env)?;
    if let Some(c) = args.concurrency {
        if c == 0 {
            return Err(UsageError("--concurrency must be at least 1".into()).into());
        }
        settings.concurrency = c;
    }
    let exit_when_idle = match args.exit_when_idle {
        Some(s) if !(s.is_finite() && s >= 0.0) => {
            return Err(UsageError(format!(
                "--exit-when-idle must be 0 or more seconds, not {s}"
            ))
            .into());
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    // Bind before connecting, so a taken or malformed address fails at once.
    let metrics_listener = match &args.metrics_addr {
        Some(addr) => Some(crate::metrics_http::bind(addr).await?),
        None => None,
    };
    let app = App::connect(settings, None, false, "worker").await?;
    let runner = Arc::new(app.runner());
    // Metrics outlive the pool's drain (a draining worker is worth watching); they stop after.
    let background = CancellationToken::new();
    let tracker = TaskTracker::new();
    if let Some(listener) = metrics_listener {
        let handle = crate::metrics_http::install()?;
        let gate = runner.claim_gate();
        crate::metrics_http::spawn_with(
            &tracker,
            listener,
            handle,
            readyz(gate),
            background.clone(),
        );
        tracker.spawn(metrics::sample(
            Arc::clone(&app.queue),
            Arc::clone(&app.ledger),
            metrics::SAMPLE_EVERY,
            background.clone(),
        ));
    }
    // Batches with a deadline have their provider batches led by one worker at a time.
    let coordinator = app.coordinator();
    let stop_lane = background.clone();
    tracker.spawn(async move { coordinator.run(stop_lane).await });
    // Ended batches are announced to their webhooks by whichever worker claims the attempt.
    let notifier = app.notifier();
    let stop_notify = background.clone();
    tracker.spawn(async move { notifier.run(stop_notify).await });
    // What [retention] says is old enough goes, collected by one worker at a time.
    let collector = crate::gc::Collector::new(&app);
    tracker.spawn(collector.run(background.clone()));
    // Batches whose finalizer was killed mid-write are finished by whichever worker looks next.
    tracker.spawn(batchyard_workers::finalize::sweep::sweep(
        app.finalizer(),
        Arc::clone(&app.queue),
        batchyard_workers::finalize::sweep::SWEEP_EVERY,
        background.clone(),
    ));
    tracker.close();
    let options = PoolOptions {
        concurrency: app.settings.concurrency,
        exit_when_idle,
        drain_timeout: app.settings.drain_timeout,
        consumer: app.consumer.clone(),
        claim_block: Duration::from_millis(500),
        heartbeat: Some(app.settings.queue.visibility_timeout / 3),
    };
    tracing::info!(consumer = %app.consumer, concurrency = options.concurrency, queue = %app.settings.queue.name, "worker starting");
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let pool = run_pool(Arc::clone(&app.queue), runner, options, cancel.clone());
    let listener = tokio::spawn(async move {
        super::shutdown_signal().await;
        tracing::info!("signal received; stopping claims and draining in-flight jobs");
        on_signal.cancel();
    });
    let stats = pool.await;
    listener.abort();
    background.cancel();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "the metrics server or the finalize sweep did not stop within 5 s; leaving it"
        );
    }
    let stats = stats?;
    tracing::info!(
        handled = stats.handled,
        claim_errors = stats.claim_errors,
        "worker stopped"
    );
    Ok(())
}

/// `GET /readyz`: 503 while this worker holds jobs Redis would not settle (it claims nothing
/// new then), 200 otherwise.
fn readyz(gate: Option<Arc<ClaimGate>>) -> axum::Router {
    axum::Router::new().route(
        "/readyz",
        axum::routing::get(move || {
            let held = gate.as_ref().map_or(0, |g| g.held());
            async move {
                if held > 0 {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {held} job(s) wait for Redis to accept their settlement; claiming is paused\n"),
                    )
                } else {
                    (axum::http::StatusCode::OK, "ready\n".to_string())
                }
            }
        }),
    )
}
