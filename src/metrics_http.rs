//! The Prometheus endpoint: `GET /metrics` in the text exposition format.
//!
//! [`install`] puts the process-wide recorder in place (once; later calls return the same
//! handle), [`router`] serves it, so `batchyard worker --metrics-addr` and `batchyard serve`
//! can share it. The exporter is built without its own HTTP listener (default features off), so
//! the serving is ours, with axum, under the command's shutdown token. Upkeep (draining
//! histogram samples into their buckets) is ours too: [`spawn`] (or [`spawn_upkeep`], for a
//! process that merges [`router`] into its own server) runs it, because without it a busy
//! worker that nobody scrapes would keep every sample in memory.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::UsageError;

/// The installed recorder's handle; `None` until [`install`] first succeeds.
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// How often histogram samples are drained into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The text format's content type, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Installs the Prometheus recorder for this process, once, and describes batchyard's metrics.
/// Every call returns a handle to the same recorder.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let mut slot = HANDLE
        .lock()
        .map_err(|_| anyhow::anyhow!("the metrics recorder's lock is poisoned"))?;
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in batchyard_workers::metrics::HISTOGRAMS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .with_context(|| format!("cannot set the buckets of {name}"))?;
    }
    let handle = builder
        .install_recorder()
        .context("cannot install the Prometheus metrics recorder")?;
    batchyard_workers::metrics::describe();
    crate::scheduler::metrics::describe();
    crate::gc::describe();
    *slot = Some(handle.clone());
    Ok(handle)
}

/// `GET /metrics`, for merging into another router.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { render(&handle) }
        }),
    )
}

fn render(handle: &PrometheusHandle) -> Response {
    let mut body = handle.render();
    batchyard_workers::metrics::render_batch_etas(&mut body);
    batchyard_workers::metrics::render_cost_usd(&mut body);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// Binds the metrics address, with an error that names it.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(UsageError(format!(
            "--metrics-addr {addr:?} is not an address to listen on (HOST:PORT, e.g. 127.0.0.1:9090): {e}"
        ))
        .into()),
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("cannot serve metrics on {addr}: binding the address failed"))),
    }
}

/// Serves `/metrics` on `listener` and runs the recorder's upkeep, both on `tracker`, until
/// `cancel`. Logs the bound address (`metrics on http://ADDR/metrics`), so port 0 works.
pub fn spawn(
    tracker: &TaskTracker,
    listener: TcpListener,
    handle: PrometheusHandle,
    cancel: CancellationToken,
) {
    spawn_with(tracker, listener, handle, Router::new(), cancel);
}

/// As [`spawn`], serving the routes of `extra` (e.g. a worker's `/readyz`) beside `/metrics`.
pub fn spawn_with(
    tracker: &TaskTracker,
    listener: TcpListener,
    handle: PrometheusHandle,
    extra: Router,
    cancel: CancellationToken,
) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!("metrics on http://{addr}/metrics"),
        Err(e) => tracing::warn!(error = %e, "metrics listener has no local address"),
    }
    spawn_upkeep(tracker, handle.clone(), cancel.clone());
    tracker.spawn(async move {
        let served = axum::serve(listener, router(handle).merge(extra))
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
}

/// Drains histogram samples into their buckets every [`UPKEEP_EVERY`] until `cancel`. A
/// process that merges [`router`] into its own server (`serve`) runs this once.
pub fn spawn_upkeep(tracker: &TaskTracker, handle: PrometheusHandle, cancel: CancellationToken) {
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_histograms_render_as_histograms() {
        let first = install().unwrap();
        let second = install().unwrap();
        batchyard_workers::metrics::job_finished(
            "success".into(),
            "small".into(),
            "default".into(),
            Duration::from_millis(20),
        );
        let text = second.render();
        assert!(
            text.contains(
                "batchyard_jobs_total{outcome=\"success\",model=\"small\",tenant=\"default\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE batchyard_job_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("batchyard_job_duration_seconds_bucket{le=\"0.025\"} 1"),
            "{text}"
        );
        assert_eq!(first.render(), text);
    }

    #[tokio::test]
    async fn a_bad_address_is_a_usage_error_naming_it() {
        let e = bind("not an address").await.unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some(), "{e:#}");
        assert!(e.to_string().contains("not an address"), "{e:#}");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr).await.unwrap_err();
        assert!(format!("{e:#}").contains(&addr), "{e:#}");
    }
}
