//! Orchestration overhead per delivery: what batchyard itself adds to a job.
//!
//! [`measure`] wraps one delivery's handling (in the runner) and records its wall time minus
//! the time the delivery spent in places that are not overhead, as
//! `batchyard_job_overhead_seconds` ([`JOB_OVERHEAD`], buckets [`OVERHEAD_BUCKETS`]).
//! What is subtracted, each reported through [`exclude`]:
//! - **provider calls**: every attempt's time, from [`super::provider_called`] (the provider's
//!   latency is not ours);
//! - **deliberate waits**: limiter sleeps, waits for a turn at the limiter and retry backoff
//!   sleeps, wherever the waiting code reports them (they are policy, not work);
//! - **batch finalization**: the last job of a batch writes `output.jsonl` and the manifest
//!   for the whole batch; that is per-batch work, not this job's.
//!
//! What stays in, i.e. the overhead: reading the batch record, routing, the cache lookup,
//! limiter round trips, validation, encoding and storing the outcome, the ledger settle, the
//! ack, and any time the task waited for a CPU or a connection. The claim from the queue is
//! not in it: deliveries are claimed in blocks by the pool, before the handler starts.
//!
//! The accumulator is a tokio task-local, so it costs two clock reads per delivery and one
//! add per exclusion; outside [`measure`] (tests, `batchyard run`'s other paths) [`exclude`]
//! does nothing. Without an installed recorder the histogram call is a no-op.

use std::cell::Cell;
use std::time::{Duration, Instant};

use metrics::histogram;

/// Per-delivery orchestration overhead (see the module doc), in seconds.
pub const JOB_OVERHEAD: &str = "batchyard_job_overhead_seconds";

/// Fine enough around the 1 ms target (a bucket bound at exactly 1 ms, so "p99 ≤ 1 ms" is
/// decided exactly from the cumulative counts); 25 µs at the bottom, 50 ms at the top.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_4, 0.000_5,
    0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.025, 0.05,
];

tokio::task_local! {
    static EXCLUDED: Cell<Duration>;
}

/// Runs `fut` (one delivery's handling) and records its overhead: wall time minus what was
/// reported through [`exclude`] while it ran.
pub async fn measure<F: Future>(fut: F) -> F::Output {
    let started = Instant::now();
    let (out, excluded) = EXCLUDED
        .scope(Cell::new(Duration::ZERO), async {
            let out = fut.await;
            (out, EXCLUDED.with(Cell::get))
        })
        .await;
    histogram!(JOB_OVERHEAD).record(overhead(started.elapsed(), excluded).as_secs_f64());
    out
}

/// Time the current delivery spent that is not overhead (a provider call, a deliberate wait,
/// finalization). Does nothing outside [`measure`].
pub fn exclude(spent: Duration) {
    let _ = EXCLUDED.try_with(|total| total.set(total.get().saturating_add(spent)));
}

/// Wall time minus the excluded time; never negative (the parts are timed with separate
/// clock reads, so they can add up to a hair more than the whole).
fn overhead(wall: Duration, excluded: Duration) -> Duration {
    wall.saturating_sub(excluded)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn excluded_time_is_counted_only_inside_measure() {
        // Outside a scope: no panic, nothing kept.
        exclude(Duration::from_secs(1));
        let seen = measure(async {
            exclude(Duration::from_millis(3));
            exclude(Duration::from_millis(4));
            EXCLUDED.with(Cell::get)
        })
        .await;
        assert_eq!(seen, Duration::from_millis(7));
        // A new delivery starts from zero.
        let again = measure(async { EXCLUDED.with(Cell::get) }).await;
        assert_eq!(again, Duration::ZERO);
    }

    #[tokio::test]
    async fn a_provider_sleep_reported_as_excluded_leaves_little_overhead() {
        let started = Instant::now();
        let excluded = measure(async {
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(30)).await;
            exclude(t.elapsed());
            EXCLUDED.with(Cell::get)
        })
        .await;
        let wall = started.elapsed();
        assert!(excluded >= Duration::from_millis(30), "{excluded:?}");
        assert!(overhead(wall, excluded) < Duration::from_millis(30));
        assert_eq!(overhead(excluded, wall), Duration::ZERO);
    }

    #[test]
    fn the_buckets_rise_and_hold_the_1_ms_target_as_a_bound() {
        assert!(OVERHEAD_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(OVERHEAD_BUCKETS.contains(&0.001));
    }
}
