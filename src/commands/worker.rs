//! `batchyard worker`: process jobs from Redis until stopped (or idle, if asked).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use batchyard_workers::pool::{PoolOptions, run_pool};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::cli::WorkerArgs;
use crate::exit::UsageError;

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
    let app = App::connect(settings, None, false, "worker").await?;
    let options = PoolOptions {
        concurrency: app.settings.concurrency,
        exit_when_idle,
        drain_timeout: app.settings.drain_timeout,
        consumer: app.consumer.clone(),
        claim_block: Duration::from_millis(500),
    };
    tracing::info!(consumer = %app.consumer, concurrency = options.concurrency, queue = %app.settings.queue.name, "worker starting");
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let pool = run_pool(
        Arc::clone(&app.queue),
        Arc::new(app.runner()),
        options,
        cancel.clone(),
    );
    let listener = tokio::spawn(async move {
        super::shutdown_signal().await;
        tracing::info!("signal received; stopping claims and draining in-flight jobs");
        on_signal.cancel();
    });
    let stats = pool.await;
    listener.abort();
    let stats = stats?;
    tracing::info!(
        handled = stats.handled,
        claim_errors = stats.claim_errors,
        "worker stopped"
    );
    Ok(())
}
