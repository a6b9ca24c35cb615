//! Helpers for the adequacy tests: stores to run scenarios against, a store that counts (or
//! fails) its calls, and a simulated router.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use batchyard_jobs::redis_conn::connect;
use batchyard_testkit::TestRedis;
use batchyard_workers::route::adequacy::memory::MemoryAdequacy;
use batchyard_workers::route::adequacy::redis::RedisAdequacy;
use batchyard_workers::route::adequacy::{
    Adequacy, AdequacyError, AdequacyPolicy, AdequacyStore, Observed,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub type Store = Arc<dyn AdequacyStore>;

/// The bound on every wait for something to become visible.
pub const LIMIT: Duration = Duration::from_secs(5);

/// A task name no other test uses.
pub fn task(test: &str) -> String {
    format!("t-{test}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

pub fn greedy() -> AdequacyPolicy {
    AdequacyPolicy {
        exploration: 0.0,
        ..AdequacyPolicy::default()
    }
}

pub async fn redis_store(redis: &TestRedis, max_evidence: f64) -> Store {
    Arc::new(RedisAdequacy::new(
        connect(redis.url()).await.unwrap(),
        max_evidence,
    ))
}

/// The in-process store, and the Redis one when redis-server is available.
pub async fn stores(redis: &Option<TestRedis>, max_evidence: f64) -> Vec<(&'static str, Store)> {
    let mut all: Vec<(&'static str, Store)> =
        vec![("memory", Arc::new(MemoryAdequacy::new(max_evidence)))];
    if let Some(redis) = redis {
        all.push(("redis", redis_store(redis, max_evidence).await));
    }
    all
}

pub async fn mean(a: &Adequacy, task: &str, bucket: u32, model: &str, tier: u32) -> f64 {
    a.estimates(task, bucket, 1, &[(model, tier)]).await[0].mean
}

/// Counts every store call; `fail` makes each one an error, as an unreachable Redis would.
#[derive(Default)]
pub struct ProbeStore {
    pub calls: AtomicUsize,
    pub fail: bool,
}

#[async_trait]
impl AdequacyStore for ProbeStore {
    async fn observed(&self, _: &str, _: u32) -> Result<Observed, AdequacyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(AdequacyError::Redis("connection refused".into()));
        }
        Ok(Observed::default())
    }
    async fn record(&self, _: &str, _: u32, _: &str, _: bool) -> Result<(), AdequacyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(AdequacyError::Redis("connection refused".into()));
        }
        Ok(())
    }
    async fn reset(&self, _: Option<&str>) -> Result<(), AdequacyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Routes 2,000 items of `task` over `models` (key, tier, cost, true pass rate) in random
/// buckets, ranking by `cost / score` like the router and going down the cascade until an
/// answer passes. Returns how often each model came first over the last half of the items.
pub async fn simulate(a: &Adequacy, task: &str, models: &[(&str, u32, f64, f64)]) -> Vec<usize> {
    let items = 2_000;
    let mut rng = StdRng::seed_from_u64(5);
    let mut first = vec![0; models.len()];
    let keys: Vec<(&str, u32)> = models.iter().map(|m| (m.0, m.1)).collect();
    for item in 0..items {
        let bucket = rng.random_range(8..11);
        let estimates = a.estimates(task, bucket, 1, &keys).await;
        let mut order: Vec<usize> = (0..models.len()).collect();
        order.sort_by(|&i, &j| {
            let ratio = |k: usize| models[k].2 / estimates[k].score;
            ratio(i).total_cmp(&ratio(j))
        });
        if item >= items / 2 {
            first[order[0]] += 1;
        }
        for k in order {
            let passed = rng.random_bool(models[k].3);
            a.record(task, bucket, models[k].0, passed).await;
            if passed {
                break;
            }
        }
    }
    first
}

/// Task-level means with at least 100 answers behind them, from a fresh reader.
pub async fn learned(
    store: Store,
    task: &str,
    models: &[(&str, u32, f64, f64)],
) -> Vec<Option<f64>> {
    let flat = Adequacy::new(
        store,
        AdequacyPolicy {
            feature_buckets: false,
            ..greedy()
        },
    );
    let keys: Vec<(&str, u32)> = models.iter().map(|m| (m.0, m.1)).collect();
    let got = flat.estimates(task, 0, 1, &keys).await;
    got.iter()
        .map(|e| (e.passes + e.fails >= 100.0).then_some(e.mean))
        .collect()
}
