//! `batchyard serve`: the OpenAI-compatible Batch API over HTTP.
//!
//! It needs Redis (workers in other processes do the work) and at least one bearer token in
//! `BATCHYARD_API_TOKENS`: the API writes to storage and spends money through the workers,
//! so it never runs open, not even on loopback.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::native::QueueHistory;
use crate::api::{self, ApiState, Tokens};
use crate::app::App;
use crate::cli::ServeArgs;
use crate::error::UsageError;
use crate::scheduler::state::PipelineState;

/// How long shutdown waits for submissions that outlived their requests.
const DRAIN: Duration = Duration::from_secs(60);

/// What the environment sets for `serve`, checked before anything connects.
struct ServeEnv {
    tokens: Tokens,
    max_file_bytes: u64,
    completion_window: Duration,
    body_timeout: Duration,
    limits: api::listen::Limits,
}

impl ServeEnv {
    fn from_env(
        env: &BTreeMap<String, String>,
        settings: &crate::config::Settings,
    ) -> Result<Self, UsageError> {
        let (tenants, token_envs) = tenant_token_sources(settings);
        let tenants: Vec<&str> = tenants.iter().map(String::as_str).collect();
        let token_envs: Vec<(&str, &str)> = token_envs
            .iter()
            .map(|(t, e)| (t.as_str(), e.as_str()))
            .collect();
        let tokens = Tokens::from_env(env, &tenants, &token_envs).map_err(UsageError)?;
        let tokens = tokens.ok_or_else(|| {
            UsageError(format!(
                "{} is not set; set it to one or more comma-separated bearer tokens (e.g. `export {}=$(openssl rand -hex 32)`)",
                api::TOKENS_ENV,
                api::TOKENS_ENV
            ))
        })?;
        let max_file_bytes = match env.get(api::MAX_FILE_BYTES_ENV) {
            None => api::DEFAULT_MAX_FILE_BYTES,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    UsageError(format!(
                        "{} must be a whole number of bytes above 0, not {v:?}",
                        api::MAX_FILE_BYTES_ENV
                    ))
                })?,
        };
        let completion_window = match env.get(api::WINDOW_SECS_ENV) {
            None => Duration::from_secs(api::batches::WINDOW_SECS),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    UsageError(format!(
                        "{} must be a whole number of seconds above 0, not {v:?}; leave it unset for OpenAI's 24 h",
                        api::WINDOW_SECS_ENV
                    ))
                })?,
        };
        let secs = |name: &str, default: Duration| -> Result<Duration, UsageError> {
            match env.get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        UsageError(format!(
                            "{name} must be a whole number of seconds above 0, not {v:?}"
                        ))
                    }),
            }
        };
        let body_timeout = secs(
            api::limits::BODY_TIMEOUT_ENV,
            api::limits::DEFAULT_BODY_TIMEOUT,
        )?;
        let header_timeout = secs(
            api::limits::HEADER_TIMEOUT_ENV,
            api::limits::DEFAULT_HEADER_TIMEOUT,
        )?;
        let max_connections = match env.get(api::limits::MAX_CONNECTIONS_ENV) {
            None => api::limits::DEFAULT_MAX_CONNECTIONS,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    UsageError(format!(
                        "{} must be a whole number above 0, not {v:?}",
                        api::limits::MAX_CONNECTIONS_ENV
                    ))
                })?,
        };
        let limits = api::listen::Limits {
            header_timeout,
            body_timeout,
            max_connections,
        }
        .within_fd_limit();
        Ok(Self {
            tokens,
            max_file_bytes,
            completion_window,
            body_timeout,
            limits,
        })
    }
}

/// The configured tenants' names, and the env vars that hold each one's tokens.
fn tenant_token_sources(
    settings: &crate::config::Settings,
) -> (Vec<String>, Vec<(String, String)>) {
    let names = settings.tenants.all().map(|t| t.name.clone()).collect();
    let envs = settings
        .tenants
        .all()
        .filter_map(|t| Some((t.name.clone(), t.tokens_env.clone()?)))
        .collect();
    (names, envs)
}

/// The background work of the server, all stopped by `stop`: metrics upkeep, queue depth
/// sampling and its history, and the pipelines' last successes when there are pipelines.
async fn start_upkeep(
    app: &App,
    tasks: &TaskTracker,
    metrics: PrometheusHandle,
    stop: &CancellationToken,
) -> anyhow::Result<(QueueHistory, Option<PipelineState>)> {
    crate::metrics_http::spawn_upkeep(tasks, metrics, stop.clone());
    // Queue depth on the API's /metrics too, so a deployment without worker metrics sees it.
    tasks.spawn(batchyard_workers::metrics::sample(
        Arc::clone(&app.queue),
        Arc::clone(&app.ledger),
        batchyard_workers::metrics::SAMPLE_EVERY,
        stop.clone(),
    ));
    // The last hour of queue depth for `/api/queues/history`, stopped with the upkeep.
    let mut history = QueueHistory::default();
    if let Some(url) = app.settings.redis_url.as_deref() {
        let conn = batchyard_jobs::redis_conn::connect(url)
            .await
            .context("cannot connect to redis")?;
        history = history.persisted(api::native::history::Persist::new(conn, app.queue.name()));
    }
    tasks.spawn(api::native::history::sample(
        Arc::clone(&app.queue),
        history.clone(),
        api::native::history::EVERY,
        stop.clone(),
    ));
    let pipelines = if app.settings.pipelines.is_empty() || app.settings.redis_url.is_none() {
        None
    } else {
        let pipeline_state = crate::scheduler::connect_state(app).await?;
        // The last successes on the API's /metrics too, for alerts without scheduler metrics.
        tasks.spawn(crate::scheduler::metrics::refresh(
            pipeline_state.clone(),
            app.settings.pipelines.keys().cloned().collect(),
            stop.clone(),
        ));
        Some(pipeline_state)
    };
    Ok((history, pipelines))
}

pub async fn serve(
    config: Option<&Path>,
    args: &ServeArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let ServeEnv {
        tokens,
        max_file_bytes,
        completion_window,
        body_timeout,
        limits,
    } = ServeEnv::from_env(env, &settings)?;
    let addr: std::net::SocketAddr = args.addr.parse().map_err(|e| {
        UsageError(format!(
            "--addr {:?} is not an address: {e}; use HOST:PORT, e.g. 127.0.0.1:8080",
            args.addr
        ))
    })?;
    let app = App::connect(settings, None, false, "serve").await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {addr}: {e}; pick another --addr")))?;
    let local = listener
        .local_addr()
        .context("cannot read the address the server is bound to")?;
    let tasks = TaskTracker::new();
    let metrics = crate::metrics_http::install()?;
    let stop_upkeep = CancellationToken::new();
    let (history, pipelines) = start_upkeep(&app, &tasks, metrics.clone(), &stop_upkeep).await?;
    let state = ApiState {
        app: Arc::new(app),
        tasks: tasks.clone(),
        max_file_bytes,
        body_timeout,
        tokens,
        completion_window,
        history,
        pipelines,
    };
    // Tests and scripts that pass port 0 read the real address from this line.
    println!("listening on http://{local}");
    tracing::info!(
        addr = %local,
        max_connections = limits.max_connections,
        header_timeout_secs = limits.header_timeout.as_secs(),
        body_timeout_secs = limits.body_timeout.as_secs(),
        "serving the batch api"
    );
    // `/metrics` is open like `/healthz`: Prometheus scrapes it without a token.
    let routes = api::router(state).merge(crate::metrics_http::router(metrics));
    api::listen::serve(listener, routes, limits, async {
        super::shutdown_signal().await;
        tracing::info!("signal received; finishing requests in flight");
    })
    .await;
    stop_upkeep.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!("submissions still running after {DRAIN:?}; stopping anyway");
    }
    tracing::info!("server stopped");
    Ok(())
}
