//! Prometheus metrics: every name, its description, and the one-line calls the hot path makes.
//!
//! Recording goes through the `metrics` facade. Without an installed recorder (no
//! `--metrics-addr`, or `batchyard run`) every call is a no-op, so the calls stay in the code
//! unconditionally. With one, a call is a label lookup and an atomic add: nothing here talks to
//! Redis per job. The queue depth and the batch ETAs are sampled by [`sample`], one task per
//! worker process, every [`SAMPLE_EVERY`].
//!
//! Two choices the `metrics` 0.24 data model forces:
//! - **Cost is counted in nano-dollars** ([`COST_TOTAL`], `batchyard_cost_nanodollars_total`).
//!   `metrics` counters are `u64`; a float "counter" would have to be a gauge, which Prometheus
//!   and Grafana then treat as a gauge (`# TYPE gauge`, `rate()` lint warnings). Nano-dollars
//!   are the ledger's own unit, so the sum is exact and matches `manifest.json`; divide by 1e9
//!   in queries.
//! - **Rate-limit waits are a histogram** ([`RATE_LIMIT_WAIT`]) for the same reason: its `_sum`
//!   series is the float total of seconds waited (a proper counter), and its buckets show
//!   whether the waits are a few long ones or many short ones. It times the whole admission
//!   (the limiter's round trip included, well under a millisecond on a healthy Redis).
//!
//! The batch ETA gauge ([`BATCH_ETA`]) is not kept in the recorder: the facade cannot remove a
//! label set, so every batch ever run would stay in the output at its last value. It is kept
//! here instead, only for batches that are active and that this worker ran in the last
//! [`SEEN_WINDOW`], and the endpoint appends it with [`render_batch_etas`]. A batch's series
//! disappears at the first sample after it ends.
//!
//! - [`overhead`]: the per-job overhead histogram: wall time minus provider calls, batch
//!   finalization and deliberate waits.
//! - [`offload`]: the offload lane's gauges (items by lane, provider batches by state) and
//!   its counter of provider batches sent.
//! - [`throughput`]: the real-time throughput measured on recent items (in process, or
//!   shared through Redis at each offload tick), which the offload lane's deadline uses.
//! - `eta`: a batch's ETA from its recent settle rate, and the gauge's rendering.
//! - `tests`: the unit tests of the recording calls and the ETA sampler.
//!
//! May use: `catalog`, `provider` (for labels). Used by: `job`, `call`, `offload`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use batchyard_jobs::batch::{now_secs, usd_to_nanos};
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::outcome::OutputLine;
use batchyard_jobs::queue::Queue;
use metrics::{
    SharedString, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use tokio_util::sync::CancellationToken;

use crate::catalog::{ModelSpec, TokenCounts};
use crate::provider::{Completion, ProviderError};

/// Jobs by queue and state, sampled: `pending`, `in_flight`, `delayed`, and the dead letters
/// split into `failed` (items that ended with an error, kept for replay) and `lost`
/// ([`batchyard_jobs::queue::LOST_CODES`]: jobs that kept killing workers, undecodable ones).
pub const QUEUE_DEPTH: &str = "batchyard_queue_depth";
/// Jobs that ended, by outcome (`success` or the error code) and the model that answered last.
pub const JOBS_TOTAL: &str = "batchyard_jobs_total";
/// From a delivery's start to its outcome stored, settled and acked.
pub const JOB_DURATION: &str = "batchyard_job_duration_seconds";
/// One provider call (one attempt), by model.
pub const PROVIDER_CALL_DURATION: &str = "batchyard_provider_call_duration_seconds";
/// Tokens the providers reported, by model and direction (`input`, `output`).
pub const TOKENS_TOTAL: &str = "batchyard_tokens_total";
/// The prompt-cache part of the input tokens, by model and `cache` (`read`, `write`): a
/// metric of its own so that summing `batchyard_tokens_total` never counts a token twice.
pub const PROMPT_CACHE_TOKENS_TOTAL: &str = "batchyard_prompt_cache_tokens_total";
/// Spend by model, in nano-dollars (see the module doc).
pub const COST_TOTAL: &str = "batchyard_cost_nanodollars_total";
/// In-place retries of a provider call, by error kind.
pub const RETRIES_TOTAL: &str = "batchyard_retries_total";
/// Escalations to the next candidate (failed check, truncation, overflow), by task.
pub const ESCALATIONS_TOTAL: &str = "batchyard_escalations_total";
/// Items that left a throttled or paused model for the next candidate, by model and reason.
pub const FALLBACKS_TOTAL: &str = "batchyard_fallbacks_total";
/// Webhook delivery attempts, by outcome (`delivered`, `failed`, `gave_up`).
pub const NOTIFICATIONS_TOTAL: &str = "batchyard_notifications_total";
/// Answers served from the result cache, by model.
pub const CACHE_HITS_TOTAL: &str = "batchyard_cache_hits_total";
/// Time spent getting rate-limit admission, by model (see the module doc).
pub const RATE_LIMIT_WAIT: &str = "batchyard_rate_limit_wait_seconds";
/// Estimated seconds until an active batch has settled every item.
pub const BATCH_ETA: &str = "batchyard_batch_eta_seconds";
/// Jobs this worker holds whose outcome Redis would not take yet; while above 0 it claims
/// nothing new and `/readyz` answers 503.
pub const UNSETTLED_JOBS: &str = "batchyard_worker_unsettled_jobs";
/// A delivery's handling minus provider calls and deliberate waits (see [`overhead`]).
pub use overhead::{JOB_OVERHEAD, OVERHEAD_BUCKETS};

mod eta;
pub mod offload;
pub mod overhead;
pub mod throughput;

use eta::estimate;
pub use eta::render_batch_etas;

/// Jobs take milliseconds (cache, simulated) to minutes (slow models, long retries).
pub const JOB_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Provider latency: local servers answer in milliseconds, large models in tens of seconds.
pub const CALL_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
/// Admission is sub-millisecond when there is capacity; waits are capped at the claim's budget.
pub const RATE_LIMIT_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The histograms and their buckets, for the exporter (so they render as histograms).
pub const HISTOGRAMS: [(&str, &[f64]); 4] = [
    (JOB_DURATION, JOB_DURATION_BUCKETS),
    (PROVIDER_CALL_DURATION, CALL_DURATION_BUCKETS),
    (RATE_LIMIT_WAIT, RATE_LIMIT_WAIT_BUCKETS),
    (JOB_OVERHEAD, OVERHEAD_BUCKETS),
];

/// How often [`sample`] reads the queue depth and the batch records.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A batch this worker has not run for this long gets no ETA from it.
pub const SEEN_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The settle rate behind an ETA is measured over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Describes every metric to the installed recorder (its `# HELP` lines). Call once, after
/// installing it.
pub fn describe() {
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Jobs in the queue by state, sampled"
    );
    describe_counter!(
        JOBS_TOTAL,
        Unit::Count,
        "Jobs ended, by outcome (success or error code), model and tenant"
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "A job's run, from delivery to outcome stored and acked"
    );
    describe_histogram!(
        PROVIDER_CALL_DURATION,
        Unit::Seconds,
        "One provider call attempt, by model"
    );
    describe_counter!(
        TOKENS_TOTAL,
        Unit::Count,
        "Tokens reported by providers, by model and direction"
    );
    describe_counter!(
        PROMPT_CACHE_TOKENS_TOTAL,
        Unit::Count,
        "Input tokens read from or written to the provider's prompt cache, by model and cache"
    );
    describe_counter!(
        COST_TOTAL,
        Unit::Count,
        "Provider spend in nano-dollars (1e-9 USD), by model"
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "In-place retries of provider calls, by error kind"
    );
    describe_counter!(
        ESCALATIONS_TOTAL,
        Unit::Count,
        "Escalations to the next candidate model, by task"
    );
    describe_counter!(
        FALLBACKS_TOTAL,
        Unit::Count,
        "Items that left a throttled or paused model for the next candidate, by model and reason"
    );
    describe_counter!(
        NOTIFICATIONS_TOTAL,
        Unit::Count,
        "Webhook delivery attempts for ended batches, by outcome"
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        Unit::Count,
        "Answers served from the result cache, by model"
    );
    describe_histogram!(
        RATE_LIMIT_WAIT,
        Unit::Seconds,
        "Time to get rate-limit admission, by model; _sum is the total waited"
    );
    describe_gauge!(
        UNSETTLED_JOBS,
        Unit::Count,
        "Jobs whose outcome Redis would not take yet; the worker claims nothing new meanwhile"
    );
    describe_histogram!(
        JOB_OVERHEAD,
        Unit::Seconds,
        "A delivery's handling time minus provider calls, deliberate waits and batch finalization"
    );
    offload::describe();
}

/// Sets [`UNSETTLED_JOBS`].
pub fn unsettled_jobs(n: u64) {
    gauge!(UNSETTLED_JOBS).set(n as f64);
}

/// The `outcome` and `model` labels of a job's end, taken before the line is handed on.
pub fn job_labels(line: &OutputLine) -> (SharedString, SharedString) {
    let outcome = match &line.error {
        None => SharedString::const_str("success"),
        Some(e) => SharedString::from_owned(e.code.clone()),
    };
    let model = match &line.batchyard.model {
        Some(m) => SharedString::from_owned(m.clone()),
        None => SharedString::const_str("none"),
    };
    (outcome, model)
}

/// A job of `tenant`'s batch ended (success or typed error) after `duration`.
pub fn job_finished(
    outcome: SharedString,
    model: SharedString,
    tenant: SharedString,
    duration: Duration,
) {
    counter!(JOBS_TOTAL, "outcome" => outcome, "model" => model, "tenant" => tenant).increment(1);
    histogram!(JOB_DURATION).record(duration.as_secs_f64());
}

/// One provider call attempt took `elapsed`; an answer's tokens and cost are counted.
pub fn provider_called(
    model: &ModelSpec,
    elapsed: Duration,
    result: &Result<Completion, ProviderError>,
) {
    overhead::exclude(elapsed);
    histogram!(PROVIDER_CALL_DURATION, "model" => model.key.clone()).record(elapsed.as_secs_f64());
    if let Ok(done) = result {
        counter!(TOKENS_TOTAL, "model" => model.key.clone(), "direction" => "input")
            .increment(done.input_tokens);
        counter!(TOKENS_TOTAL, "model" => model.key.clone(), "direction" => "output")
            .increment(done.output_tokens);
        for (cache, tokens) in [
            ("read", done.cached_input_tokens),
            ("write", done.cache_write_input_tokens),
        ] {
            if tokens > 0 {
                counter!(PROMPT_CACHE_TOKENS_TOTAL, "model" => model.key.clone(), "cache" => cache)
                    .increment(tokens);
            }
        }
        // The same rounding as the ledger's, so the sums agree.
        let nanos = usd_to_nanos(model.cost_usd(TokenCounts::of(done)));
        counter!(COST_TOTAL, "model" => model.key.clone()).increment(nanos.max(0) as u64);
        if SAMPLING.load(Ordering::Relaxed)
            && let Ok(mut costs) = COSTS.lock()
        {
            *costs.entry(model.key.clone()).or_default() += nanos.max(0);
        }
    }
}

/// `batchyard_cost_usd_total{model}`: the same spend in dollars, as the float counter
/// Prometheus expects by that name (the `metrics` facade's counters hold integers only, so it
/// is kept here and appended to the exporter's text).
pub const COST_USD_TOTAL: &str = "batchyard_cost_usd_total";

/// Spend per model in nano-dollars, bounded by the number of configured models.
static COSTS: LazyLock<Mutex<BTreeMap<String, i64>>> = LazyLock::new(Mutex::default);

/// Appends `batchyard_cost_usd_total` in the Prometheus text format.
pub fn render_cost_usd(out: &mut String) {
    let Ok(costs) = COSTS.lock() else {
        return;
    };
    if costs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {COST_USD_TOTAL} Spend in USD by model (the nano-dollar counter, in dollars)"
    );
    let _ = writeln!(out, "# TYPE {COST_USD_TOTAL} counter");
    for (model, nanos) in costs.iter() {
        let label = model.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "{COST_USD_TOTAL}{{model=\"{label}\"}} {}",
            batchyard_jobs::batch::nanos_to_usd(*nanos)
        );
    }
}

/// A provider call is retried in place after an error of this kind.
pub fn retried(kind: &'static str) {
    counter!(RETRIES_TOTAL, "kind" => kind).increment(1);
}

/// A job moved on to its next candidate model.
pub fn escalated(task: Option<&str>) {
    let task = task.map_or(SharedString::const_str("none"), |t| {
        SharedString::from_owned(t.to_string())
    });
    counter!(ESCALATIONS_TOTAL, "task" => task).increment(1);
}

/// An item left `model` for the next candidate because the model was throttled or paused
/// (`reason`: the error code).
pub fn fell_back(model: &str, reason: &'static str) {
    counter!(FALLBACKS_TOTAL, "model" => model.to_string(), "reason" => reason).increment(1);
}

/// A webhook delivery attempt ended (`delivered`, `failed`, `gave_up`).
pub fn notified(outcome: &'static str) {
    counter!(NOTIFICATIONS_TOTAL, "outcome" => outcome).increment(1);
}

/// An answer came from the result cache.
pub fn cache_hit(model: &str) {
    counter!(CACHE_HITS_TOTAL, "model" => model.to_string()).increment(1);
}

/// Getting rate-limit admission for `model` took `waited`.
pub fn rate_limit_waited(model: &str, waited: Duration) {
    histogram!(RATE_LIMIT_WAIT, "model" => model.to_string()).record(waited.as_secs_f64());
}

/// Whether [`sample`] runs in this process; without it [`batch_seen`] keeps nothing.
static SAMPLING: AtomicBool = AtomicBool::new(false);
/// Batches this worker ran, with when it last read their record.
static SEEN: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Mutex::default);
/// The current ETA of each active batch, rendered by [`render_batch_etas`].
static ETAS: LazyLock<Mutex<BTreeMap<String, f64>>> = LazyLock::new(Mutex::default);

/// This worker is running jobs of `batch_id`. Called when the runner reads the batch record
/// (at most every half second per batch), not per job.
pub fn batch_seen(batch_id: &str) {
    if !SAMPLING.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(mut seen) = SEEN.lock() {
        seen.insert(batch_id.to_string(), Instant::now());
    }
}

/// Samples the queue depth and the ETAs of the batches this worker is running, every
/// `every`, until `cancel`.
pub async fn sample(
    queue: Arc<dyn Queue>,
    ledger: Arc<dyn Ledger>,
    every: Duration,
    cancel: CancellationToken,
) {
    SAMPLING.store(true, Ordering::Relaxed);
    let mut progress: HashMap<String, VecDeque<(Instant, u64)>> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        match queue.depth().await {
            Ok(depth) => {
                let name = queue.name().to_string();
                // Dead letters split in two: items that ended with an ordinary error (kept a
                // week for replay, after every normal run) and jobs that were lost. A single
                // `dead` count made `dead > 0` alerts fire after every run.
                let lost = match queue.lost().await {
                    Ok(n) => n.min(depth.dead),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot count the lost jobs for metrics");
                        0
                    }
                };
                for (state, value) in [
                    ("pending", depth.pending),
                    ("in_flight", depth.in_flight),
                    ("delayed", depth.delayed),
                    ("failed", depth.dead - lost),
                    ("lost", lost),
                ] {
                    gauge!(QUEUE_DEPTH, "queue" => name.clone(), "state" => state)
                        .set(value as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot sample the queue depth for metrics"),
        }
        sample_etas(&*ledger, &mut progress).await;
    }
    SAMPLING.store(false, Ordering::Relaxed);
}

async fn sample_etas(
    ledger: &dyn Ledger,
    progress: &mut HashMap<String, VecDeque<(Instant, u64)>>,
) {
    let ids: Vec<String> = match SEEN.lock() {
        Ok(mut seen) => {
            seen.retain(|_, at| at.elapsed() < SEEN_WINDOW);
            seen.keys().cloned().collect()
        }
        Err(_) => return,
    };
    let mut etas = BTreeMap::new();
    for id in ids {
        let record = match ledger.get(&id).await {
            Ok(record) => record,
            Err(e) => {
                // Keep the last estimate rather than flap while Redis is away.
                tracing::debug!(batch_id = %id, error = %e, "cannot read a batch for its ETA");
                if let Some(eta) = ETAS.lock().ok().and_then(|m| m.get(&id).copied()) {
                    etas.insert(id, eta);
                }
                continue;
            }
        };
        let Some(record) = record.filter(|r| !r.state.is_terminal()) else {
            // Ended (or gone): its series goes now.
            if let Ok(mut seen) = SEEN.lock() {
                seen.remove(&id);
            }
            continue;
        };
        let history = progress.entry(id.clone()).or_default();
        if let Some(eta) = estimate(&record, history, Instant::now(), now_secs()) {
            etas.insert(id, eta);
        }
    }
    progress.retain(|id, _| etas.contains_key(id));
    if let Ok(mut current) = ETAS.lock() {
        *current = etas;
    }
}

#[cfg(test)]
mod tests;
